import numpy as np
import pytest
from array_api_compat import array_namespace
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import maxvol, maxvol_bound, rect_maxvol, selection_constant

tall = st.tuples(st.integers(2, 120), st.integers(1, 10), st.integers(0, 2**32 - 1)).filter(
    lambda t: t[0] >= t[1]
)


@given(tall, st.sampled_from([1.0, 1.05, 1.5]))
def test_maxvol_postcondition_and_bound(shape, tol):
    n, k, seed = shape
    A = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0]
    rows, B = maxvol(A, tol=tol, max_iters=10_000)
    assert np.abs(B).max() <= tol * (1 + 1e-12)
    np.testing.assert_allclose(B, A @ np.linalg.inv(A[rows]), atol=1e-8)
    assert selection_constant(A, rows) <= maxvol_bound(n, k, tol) * (1 + 1e-10)


@given(tall, st.sampled_from([0.5, 1.0, 2.0]))
def test_rect_maxvol_postcondition(shape, tol):
    n, k, seed = shape
    A = np.random.default_rng(seed).standard_normal((n, k))
    rows, B = rect_maxvol(A, tol=tol)
    assert len(set(rows.tolist())) == len(rows) >= k
    np.testing.assert_allclose(B, A @ np.linalg.pinv(A[rows]), atol=1e-8)
    others = np.setdiff1d(np.arange(n), rows)
    if len(others):
        assert np.linalg.norm(B[others], axis=1).max() <= tol * (1 + 1e-8)


def test_rect_maxvol_respects_max_rank():
    A = np.random.default_rng(0).standard_normal((200, 5))
    rows, B = rect_maxvol(A, tol=0.1, max_rank=9)
    assert rows.shape == (9,) and B.shape == (200, 9)


def test_backends_agree(xp):
    A = np.random.default_rng(1).standard_normal((300, 8))
    rows, B = maxvol(xp.asarray(A))
    ref_rows, ref_B = maxvol(A)
    np.testing.assert_array_equal(xp.to_numpy(rows), ref_rows)
    np.testing.assert_allclose(xp.to_numpy(B), ref_B, atol=1e-10)
    rrows, _ = rect_maxvol(xp.asarray(A), tol=1.0)
    np.testing.assert_array_equal(xp.to_numpy(rrows), rect_maxvol(A, tol=1.0)[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tol": 0.9}, "tol must be"), ({"max_iters": -1}, "max_iters must be")],
)
def test_maxvol_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        maxvol(np.random.default_rng(0).standard_normal((10, 2)), **kwargs)


def test_maxvol_rank_deficient():
    A = np.ones((10, 2))
    with pytest.raises(ValueError, match="full column rank"):
        maxvol(A)


def test_rect_maxvol_bad_options():
    A = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.raises(ValueError, match="tol must be"):
        rect_maxvol(A, tol=0.0)
    with pytest.raises(ValueError, match="max_rank"):
        rect_maxvol(A, max_rank=11)


def test_numba_kernel_matches_the_array_api_loop():
    from curlinalg import _numba
    from curlinalg.maxvol import _NUMBA_MIN_ENTRIES, _coefficients, _swap_loop_xp

    if not _numba.available():
        pytest.skip("numba is not installed")
    A = np.random.default_rng(3).standard_normal((_NUMBA_MIN_ENTRIES // 4, 8))
    rows, B = maxvol(A)  # takes the numba path: n * k >= _NUMBA_MIN_ENTRIES
    start = np.array([int(r) for r in maxvol(A, max_iters=0)[0]])
    ref_rows, ref_B = _swap_loop_xp(_coefficients(A, start, np), start.copy(), 1.05, 100, np)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(B, ref_B, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_iters", [0, 3, 100])
def test_device_swap_loop_matches_the_host_loop(max_iters):
    """The sync-free loop CUDA tensors take, exercised on CPU tensors."""
    torch = pytest.importorskip("torch")
    from curlinalg.maxvol import _coefficients, _swap_loop_device, _swap_loop_xp

    A = np.random.default_rng(4).standard_normal((500, 12))
    start = maxvol(A, max_iters=0)[0]
    B0 = _coefficients(A, start, np)
    ref_rows, ref_B = _swap_loop_xp(B0.copy(), start.copy(), 1.05, max_iters, np)
    Bt = torch.from_numpy(B0.copy())
    rows, B = _swap_loop_device(
        Bt, torch.from_numpy(start.copy()), 1.05, max_iters, array_namespace(Bt)
    )
    np.testing.assert_array_equal(rows.numpy(), ref_rows)
    np.testing.assert_allclose(B.numpy(), ref_B, rtol=1e-10, atol=1e-12)


def test_maxvol_reports_non_convergence():
    """Finding 6: max_iters=3 returned max |B| = 1.18 > tol silently."""
    import warnings

    from curlinalg import ConvergenceWarning

    M = np.random.default_rng(0).standard_normal((500, 20))
    with pytest.warns(ConvergenceWarning, match="max_iters=3"):
        rows, B = maxvol(M, max_iters=3)
    assert np.abs(B).max() > 1.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows, B = maxvol(M)
    assert np.abs(B).max() <= 1.05


@pytest.mark.parametrize("tol", [0.5, 0.8, 1.0, 2.0])
def test_rect_maxvol_agrees_with_its_docstring(tol):
    """Finding 6: rect_maxvol(Q, tol=0.5) returned rows with ||B_i|| > 0.5."""
    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((300, 10)))[0]
    rows, B = rect_maxvol(Q, tol=tol)
    norms = np.linalg.norm(B, axis=1)
    outside = np.setdiff1d(np.arange(300), rows)
    assert norms[outside].max() <= tol * (1 + 1e-10)
    assert norms[rows].max() <= 1 + 1e-10
    np.testing.assert_allclose(B, Q @ np.linalg.pinv(Q[rows]), atol=1e-10)


def test_rect_maxvol_warns_when_max_rank_stops_it():
    from curlinalg import ConvergenceWarning

    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((300, 10)))[0]
    with pytest.warns(ConvergenceWarning, match="max_rank=12"):
        rows, _ = rect_maxvol(Q, tol=0.1, max_rank=12)
    assert rows.shape == (12,)
