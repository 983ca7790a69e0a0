import numpy as np
import pytest
from array_api_compat import array_namespace
from hypothesis import given
from hypothesis import strategies as st

import warnings

from curlinalg import ConvergenceWarning, maxvol, maxvol_bound, rect_maxvol, selection_constant

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


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"tol": 0.0}, ValueError, "tol must be"),
        ({"max_rank": 11}, ValueError, "max_rank must satisfy k=2 <= max_rank <= n=10"),
        ({"min_rank": 1}, ValueError, "min_rank must be >= 2"),
        ({"min_rank": 6, "max_rank": 5}, ValueError, "lower min_rank or raise max_rank"),
        ({"maxvol_iters": -1}, ValueError, "maxvol_iters must be >= 0"),
        ({"maxvol_iters": 2.5}, TypeError, "maxvol_iters must be an int"),
        ({"identity": "yes"}, TypeError, "identity must be a bool"),
    ],
)
def test_rect_maxvol_bad_options(kwargs, exc, match):
    A = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.raises(exc, match=match):
        rect_maxvol(A, **kwargs)


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


@given(tall, st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 6), st.booleans())
def test_rect_maxvol_min_rank_and_identity(shape, tol, extra, identity):
    """Issue 25, item 3: at least ``min_rank`` rows (teneva's ``dr_min``, maxvolpy's
    ``min_add_K``), and the identity block of teneva and maxvolpy on request; ``A = B A[rows]``
    either way."""
    n, k, seed = shape
    A = np.random.default_rng(seed).standard_normal((n, k))
    min_rank = min(n, k + extra)
    rows, B = rect_maxvol(A, tol=tol, min_rank=min_rank, identity=identity)
    assert len(set(rows.tolist())) == len(rows) >= min_rank
    np.testing.assert_allclose(B @ A[rows], A, atol=1e-8 * (1 + np.abs(A).max()))
    ls = A @ np.linalg.pinv(A[rows])
    others = np.setdiff1d(np.arange(n), rows)
    np.testing.assert_allclose(B[others], ls[others], atol=1e-8)
    if identity:
        np.testing.assert_array_equal(B[rows], np.eye(len(rows)))
    else:
        np.testing.assert_allclose(B[rows], ls[rows], atol=1e-8)
    if len(others):
        assert np.linalg.norm(B[others], axis=1).max() <= tol * (1 + 1e-8)


def test_rect_maxvol_fewer_start_swaps_change_the_start():
    """``maxvol_iters`` is the square start's budget: 0 keeps the LU (DEIM) rows."""
    from curlinalg import deim

    Q = np.linalg.qr(np.random.default_rng(2).standard_normal((400, 12)))[0]
    rows, _ = rect_maxvol(Q, tol=1e9, maxvol_iters=0)
    np.testing.assert_array_equal(np.sort(rows), np.sort(deim(Q)))


# teneva's own maxvol cases (AndreiChertkov/teneva, test/test_maxvol.py): a 5000 x 50 Gaussian
# from default_rng(42), e = 1.01, k = 500 swaps; maxvol_rect with dr_min = 2, dr_max = 8.
TENEVA_A = np.random.default_rng(42).normal(size=(5000, 50))


def test_teneva_maxvol_case():
    rows, B = maxvol(TENEVA_A, tol=1.01, max_iters=500)
    assert 1.0 <= np.abs(B).max() <= 1.01
    assert np.abs(TENEVA_A - B @ TENEVA_A[rows]).max() < 1e-12


def test_teneva_maxvol_rect_case():
    """teneva asserts ``1 <= max |B| <= 1.01`` on its identity-block coefficients (entries;
    58 rows leave row norms above 1.01, which curlinalg reports)."""
    with pytest.warns(ConvergenceWarning, match="max_rank=58"):
        rows, B = rect_maxvol(TENEVA_A, tol=1.01, min_rank=52, max_rank=58, maxvol_iters=10,
                              identity=True)
    assert 52 <= len(rows) <= 58
    assert 1.0 <= np.abs(B).max() <= 1.01
    assert np.abs(TENEVA_A - B @ TENEVA_A[rows]).max() < 1e-12


@pytest.mark.filterwarnings("ignore::curlinalg.ConvergenceWarning")
def test_selections_identical_to_teneva():
    """With the options the rect_maxvol docstring gives, the rows are teneva's, in its order
    (issue 25: 16 of 58 differed with the fixed 100-swap start)."""
    teneva = pytest.importorskip("teneva")
    I, B = teneva.maxvol_rect(TENEVA_A, 1.01, 0, 8)
    rows, ours = rect_maxvol(TENEVA_A, tol=1.01, max_rank=58, maxvol_iters=10, identity=True)
    np.testing.assert_array_equal(rows, I)
    np.testing.assert_allclose(ours, B, atol=1e-10)
    I, B = teneva.maxvol_rect(TENEVA_A, 1.01, 2, 8, 1.05, 10)
    rows, ours = rect_maxvol(TENEVA_A, tol=1.01, min_rank=52, max_rank=58, maxvol_iters=10,
                             identity=True)
    np.testing.assert_array_equal(rows, I)
    Q = np.linalg.qr(TENEVA_A[:600, :20])[0]
    I, _ = teneva.maxvol_rect(Q, 1.0, 5, None, 1.0, 3)
    rows, _ = rect_maxvol(Q, tol=1.0, min_rank=25, maxvol_tol=1.0, maxvol_iters=3, identity=True)
    np.testing.assert_array_equal(rows, I)
    for e, k in ((1.01, 500), (1.05, 10), (1.2, 3)):
        I, B = teneva.maxvol(TENEVA_A, e, k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            rows, ours = maxvol(TENEVA_A, tol=e, max_iters=k)
        np.testing.assert_array_equal(rows, I)
        np.testing.assert_allclose(ours, B, atol=1e-10)


# Complex input: pivots by modulus |B_ij|, row norms sum |B_ij|^2, and the rank-one updates
# with conjugates (B <- [B - l v c, l v], v = B c^H, l = 1 / (1 + c c^H)).
complex_tall = st.tuples(st.integers(2, 80), st.integers(1, 8), st.integers(0, 2**32 - 1)).filter(
    lambda t: t[0] >= t[1]
)


def complex_normal(shape, seed):
    g = np.random.default_rng(seed)
    return g.standard_normal(shape) + 1j * g.standard_normal(shape)


@given(complex_tall, st.sampled_from([1.0, 1.05, 1.5]))
def test_complex_maxvol_postcondition_and_bound(shape, tol):
    n, k, seed = shape
    A = np.linalg.qr(complex_normal((n, k), seed))[0]
    rows, B = maxvol(A, tol=tol, max_iters=10_000)
    assert B.dtype == np.complex128
    assert np.abs(B).max() <= tol * (1 + 1e-12)
    np.testing.assert_allclose(B, A @ np.linalg.inv(A[rows]), atol=1e-8)
    assert selection_constant(A, rows) <= maxvol_bound(n, k, tol) * (1 + 1e-10)


@given(complex_tall, st.sampled_from([0.5, 1.0, 2.0]), st.booleans())
def test_complex_rect_maxvol_postcondition(shape, tol, identity):
    n, k, seed = shape
    A = complex_normal((n, k), seed)
    rows, B = rect_maxvol(A, tol=tol, identity=identity)
    assert len(set(rows.tolist())) == len(rows) >= k
    np.testing.assert_allclose(B @ A[rows], A, atol=1e-8)
    if identity:
        np.testing.assert_allclose(B[rows], np.eye(len(rows)), atol=1e-12)
    else:
        np.testing.assert_allclose(B, A @ np.linalg.pinv(A[rows]), atol=1e-8)
    others = np.setdiff1d(np.arange(n), rows)
    if len(others):
        assert np.linalg.norm(B[others], axis=1).max() <= tol * (1 + 1e-8)


# maxvolpy's own fixture (maxvolpy, tests of maxvol and rect_maxvol): a 1000 x 100 complex
# normal matrix; the coefficients of maxvol have modulus at most tol = 1.05, and the rows of
# rect_maxvol's coefficients outside the selection have norm at most tol = 1.
MAXVOLPY_A = complex_normal((1000, 100), 0)


def test_maxvolpy_complex_maxvol_case():
    rows, B = maxvol(MAXVOLPY_A, tol=1.05, max_iters=100)  # maxvolpy's defaults
    assert rows.shape == (100,) and B.dtype == np.complex128
    assert np.abs(B).max() <= 1.05
    np.testing.assert_allclose(B[rows], np.eye(100), atol=1e-10)
    np.testing.assert_allclose(B, MAXVOLPY_A @ np.linalg.inv(MAXVOLPY_A[rows]), atol=1e-10)


def test_maxvolpy_complex_rect_maxvol_case():
    rows, B = rect_maxvol(MAXVOLPY_A, tol=1.0, maxvol_iters=10, identity=True)  # maxvolpy's form
    others = np.setdiff1d(np.arange(1000), rows)
    assert len(rows) > 100
    assert np.linalg.norm(B[others], axis=1).max() <= 1.0
    np.testing.assert_allclose(B[rows], np.eye(len(rows)), atol=1e-10)
    np.testing.assert_allclose(B @ MAXVOLPY_A[rows], MAXVOLPY_A, atol=1e-8)


def test_complex_numba_device_and_host_loops_agree():
    """The numba kernel (complex specialisation), the array-API loop and the device loop pick the
    same rows on complex coefficients."""
    torch = pytest.importorskip("torch")
    from curlinalg import _numba
    from curlinalg.maxvol import _coefficients, _swap_loop_device, _swap_loop_xp

    A = complex_normal((500, 12), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = maxvol(A, max_iters=0)[0]
    B0 = _coefficients(A, start, np)
    ref_rows, ref_B = _swap_loop_xp(B0.copy(), start.copy(), 1.05, 100, np)
    Bt = torch.from_numpy(B0.copy())
    rows, B = _swap_loop_device(Bt, torch.from_numpy(start.copy()), 1.05, 100, array_namespace(Bt))
    np.testing.assert_array_equal(rows.numpy(), ref_rows)
    np.testing.assert_allclose(B.numpy(), ref_B, rtol=1e-10, atol=1e-12)
    if _numba.available():
        nrows, nB = _numba.maxvol_swaps(np.ascontiguousarray(B0), start.copy(), 1.05, 100)
        np.testing.assert_array_equal(nrows, ref_rows)
        np.testing.assert_allclose(nB, ref_B, rtol=1e-12, atol=1e-12)


def test_complex_backends_agree(xp):
    A = complex_normal((300, 8), 1)
    rows, B = maxvol(xp.asarray(A))
    ref_rows, ref_B = maxvol(A)
    np.testing.assert_array_equal(xp.to_numpy(rows), ref_rows)
    np.testing.assert_allclose(xp.to_numpy(B), ref_B, atol=1e-10)
    rrows, _ = rect_maxvol(xp.asarray(A), tol=1.0)
    np.testing.assert_array_equal(xp.to_numpy(rrows), rect_maxvol(A, tol=1.0)[0])
