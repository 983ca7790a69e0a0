import numpy as np
import pytest
from hypothesis import given

from curlinalg.testing import clustered_spectrum, graded, kahan, known_spectrum, step_spectrum
from curlinalg.testing.strategies import COMPLEX_DTYPES, HARD_KINDS, hard_problems, problems


@given(problems())
def test_problems_have_the_stated_spectrum(problem):
    s = np.linalg.svd(problem.A, compute_uv=False)
    np.testing.assert_allclose(s, problem.s, atol=1e-12)
    assert 1 <= problem.rank < max(2, min(problem.A.shape))


def test_builders():
    assert np.allclose(np.triu(kahan(5)), kahan(5))
    g = graded(6, 3, ratio=1e-4, rng=0)
    assert np.linalg.norm(g[-1]) < 1e-3 * np.linalg.norm(g[0])
    with pytest.raises(ValueError, match="min\\(m, n\\)"):
        known_spectrum(3, 2, [1.0])
    with pytest.raises(ValueError, match="gap"):
        step_spectrum(3, rank=1, gap=2.0)


@given(hard_problems())
def test_hard_problems_state_their_spectrum_and_precision(problem):
    m, n = problem.A.shape
    assert problem.A.dtype == np.dtype(problem.dtype)
    assert 1 <= problem.rank <= min(m, n)
    assert problem.kind in HARD_KINDS
    s = np.linalg.svd(problem.A.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s, problem.s, rtol=1e-10, atol=1e-14)


def test_new_builders():
    from curlinalg.testing import clustered_spectrum, duplicated_columns, hilbert_like

    s = clustered_spectrum(9, clusters=3, spread=0.0)
    assert sorted(set(s.tolist()), reverse=True) == [1.0, 1e-4, 1e-8]
    H = hilbert_like(5, 4)
    assert H[2, 3] == 1 / 6
    D = duplicated_columns(np.arange(6.0).reshape(2, 3), copies=3, rng=0)
    assert D.shape == (2, 9) and sorted(map(tuple, D.T.tolist())) == sorted(
        [(0.0, 3.0), (1.0, 4.0), (2.0, 5.0)] * 3)


@given(problems(dtypes=COMPLEX_DTYPES))
def test_complex_problems_have_the_stated_spectrum(problem):
    assert problem.A.dtype.kind == "c" and np.abs(problem.A.imag).max() > 0
    s = np.linalg.svd(problem.A.astype(np.complex128), compute_uv=False)
    atol = 1e-12 if problem.A.dtype == np.complex128 else 1e-5
    np.testing.assert_allclose(s, problem.s, atol=atol)


@given(hard_problems(dtypes=COMPLEX_DTYPES))
def test_complex_hard_problems_state_their_spectrum_and_precision(problem):
    assert problem.A.dtype == np.dtype(problem.dtype) and problem.A.dtype.kind == "c"
    assert problem.kind in HARD_KINDS
    s = np.linalg.svd(problem.A.astype(np.complex128), compute_uv=False)
    np.testing.assert_allclose(s, problem.s, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", HARD_KINDS)
def test_complex_hard_kinds_keep_the_real_structure(kind):
    """Each complex hard kind has the singular values (or, for graded and duplicated, the
    structure) of the real one built from the same draw."""
    from curlinalg.testing.strategies import _hard_matrix

    params = {"exponential": {"s": np.exp(-0.5 * np.arange(12))}, "clustered": {
        "s": clustered_spectrum(12, clusters=3, spread=1e-3)}, "graded": {"ratio": 1e-8},
        "hilbert": {"shift": 1.0}, "kahan": {"theta": 1.2}}.get(kind, {})
    if kind in ("polynomial", "step", "deficient"):
        params = {"s": np.linspace(1.0, 0.0, 12)}
    real = _hard_matrix(kind, 15, 12, params, 3, np.float64)
    cplx = _hard_matrix(kind, 15, 12, params, 3, np.complex128)
    assert cplx.dtype == np.complex128 and np.abs(cplx.imag).max() > 0
    if kind == "graded":
        assert np.linalg.norm(cplx[-1]) < 1e-6 * np.linalg.norm(cplx[0])
    elif kind == "duplicated":
        assert len({tuple(c) for c in np.round(cplx.T, 12)}) < cplx.shape[1]
    else:
        np.testing.assert_allclose(np.linalg.svd(cplx, compute_uv=False),
                                   np.linalg.svd(real, compute_uv=False), rtol=1e-8, atol=1e-14)
    if kind == "kahan":
        np.testing.assert_allclose(np.abs(cplx), np.abs(real), rtol=1e-15)


def test_complex_builders():
    Z = known_spectrum(6, 4, [3.0, 2.0, 1.0, 0.5], rng=0, dtype=np.complex128)
    np.testing.assert_allclose(np.linalg.svd(Z, compute_uv=False), [3.0, 2.0, 1.0, 0.5])
    g = graded(6, 3, ratio=1e-4, rng=0, dtype=np.complex128)
    assert g.dtype == np.complex128 and np.linalg.norm(g[-1]) < 1e-3 * np.linalg.norm(g[0])
    with pytest.raises(ValueError, match="float64 or complex128"):
        known_spectrum(3, 2, [1.0, 0.5], dtype=np.float32)
