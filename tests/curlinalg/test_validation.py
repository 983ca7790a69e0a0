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
