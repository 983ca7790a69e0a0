import numpy as np
import pytest

from curlinalg._backend import namespace
from curlinalg._validation import all_finite, check_matrix


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_entry(xp, bad):
    A = np.ones((30, 20))
    A[7, 3] = bad
    arr = xp.asarray(A)
    assert not all_finite(arr, namespace(arr))
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_matrix(arr)


def test_all_finite_when_the_sum_overflows_or_cancels_infinities():
    A = np.full((4, 4), 1e308)
    assert all_finite(A, np)  # the sum overflows; the entries are finite
    A[0, 0], A[1, 1] = np.inf, -np.inf  # inf - inf: the sum is NaN, not a finite cancellation
    assert not all_finite(A, np)


@pytest.mark.parametrize("part", [complex(np.nan, 0.0), complex(0.0, np.inf), complex(1.0, -np.inf)])
def test_all_finite_reads_both_parts_of_complex_entries(xp, part):
    A = np.ones((30, 20), dtype=np.complex128)
    assert all_finite(xp.asarray(A), namespace(xp.asarray(A)))
    A[7, 3] = part
    arr = xp.asarray(A)
    assert not all_finite(arr, namespace(arr))
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_matrix(arr)


def test_real_only_and_mixed_field_messages():
    from curlinalg import _errors
    from curlinalg._validation import check_dtype, check_same_field

    check_dtype(np.dtype(np.complex64), np)  # complex is accepted by default
    with pytest.raises(TypeError, match="weighted_cur supports real matrices only.*got A of dtype complex64. why"):
        check_dtype(np.dtype(np.complex64), np, real_only=("weighted_cur", "why"))
    check_same_field(A=np.ones(2), B=np.float32, C=None)
    with pytest.raises(TypeError, match=r"A is real \(float64\), B is complex \(complex64\)") as info:
        check_same_field(A=np.ones(2), B=np.ones(2, dtype=np.complex64))
    assert str(info.value).startswith(_errors.MIXED_FIELDS.split("{")[0])
