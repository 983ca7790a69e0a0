import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import optimal_core, weighted_cur, weighted_norm, whitening
from curlinalg.metric import Whitening, mixed_cross, solve_psd


def _inputs(seed, tokens, n, rank=None):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((tokens, n)) * np.logspace(0, -3, n)
    if rank is not None:
        X = X[:, :rank] @ rng.standard_normal((rank, n))
    return X


@given(st.integers(2, 30), st.integers(0, 2**31), st.sampled_from([None, 1, 3]))
def test_whitening_factors_the_shifted_gram(n, seed, rank):
    X = _inputs(seed, 40, n, rank if rank is None or rank < n else None)
    H = X.T @ X
    w = whitening(H, ridge=1e-8)
    np.testing.assert_allclose(w.L @ w.L.T, w.shifted_gram(), rtol=1e-10, atol=1e-10 * np.trace(H))
    assert np.allclose(w.L, np.tril(w.L))
    assert w.shift >= 1e-8 * np.trace(H) / n * (1 - 1e-12)


def test_singular_gram_never_raises():
    X = _inputs(0, 5, 20)                      # 5 tokens, 20 features: rank 5
    H = X.T @ X
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(H)                  # what a raw Cholesky does
    w = whitening(H, ridge=0.0)
    assert w.route == "cholesky" and w.shift > 0 and w.fell_back
    assert not whitening(H, ridge=1e-6).fell_back          # the default ridge suffices here
    indefinite = H - 1e-3 * np.trace(H) * np.eye(20)
    w = whitening(indefinite)
    assert w.route == "eigh"
    assert np.all(np.isfinite(w.L)) and np.all(np.linalg.eigvalsh(w.L @ w.L.T) > 0)


def test_whitening_computes_in_float64():
    X = _inputs(1, 50, 6).astype(np.float32)
    w = whitening(X.T @ X)
    assert w.L.dtype == np.float64


@given(st.integers(2, 20), st.integers(2, 20), st.integers(0, 2**31))
def test_weighted_norm_is_the_whitened_frobenius_norm(m, n, seed):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((m, n))
    X = _inputs(seed, 3 * n, n)
    w = whitening(X.T @ X, ridge=0.0)
    assert weighted_norm(E, gram=X.T @ X) == pytest.approx(np.linalg.norm(E @ w.L), rel=1e-9)
    assert weighted_norm(E, gram=X.T @ X) == pytest.approx(np.linalg.norm(E @ X.T), rel=1e-9)


@pytest.mark.parametrize("method", ["deim", "qdeim", "maxvol"])
@given(seed=st.integers(0, 2**31), k=st.integers(1, 8))
def test_weighted_cur_core_is_optimal_in_the_metric(method, seed, k):
    """The weighted error of the fitted core equals the best core of the whitened problem."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((18, 12))
    X = _inputs(seed, 60, 12)
    w = whitening(X.T @ X, ridge=0.0)
    res = weighted_cur(A, w, rank=k, method=method)
    np.testing.assert_array_equal(res.R, A[res.rows])
    B = A @ w.L
    np.testing.assert_allclose(res.C, B[:, res.cols], rtol=1e-12, atol=1e-12)
    best = optimal_core(B, res.C, res.R @ w.L)
    got = np.linalg.norm((A - res.to_dense()) @ w.L)
    want = np.linalg.norm(B - res.C @ best @ (res.R @ w.L))
    assert got == pytest.approx(want, rel=1e-7, abs=1e-10 * np.linalg.norm(B))
    assert res.rank == k and res.shape == A.shape


def test_weighted_cur_exact_on_low_rank_and_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 10))
    X = _inputs(2, 80, 10)
    res = weighted_cur(torch.from_numpy(A), whitening(torch.from_numpy(X.T @ X), ridge=0.0), rank=3)
    assert isinstance(res.U, torch.Tensor)
    np.testing.assert_allclose(res.to_dense().numpy(), A, atol=1e-8)


def test_cross_gives_the_reduced_rank_regression_target():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((8, 5))
    Xd = rng.standard_normal((50, 5))
    Xc = Xd + 0.1 * rng.standard_normal((50, 5))
    w = whitening(Xc.T @ Xc, ridge=0.0)
    B = w.whiten(A, cross=Xc.T @ Xd)
    # Full rank: B L^{-1} is the least-squares map from X_c to the outputs A X_d^T.
    ols = np.linalg.lstsq(Xc, Xd @ A.T, rcond=None)[0].T
    np.testing.assert_allclose(w.unwhiten(B), ols, rtol=1e-8, atol=1e-10)


def _mixed_problem(seed, m=9, n=6, tokens=60):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    Xd = rng.standard_normal((tokens, n)) @ rng.standard_normal((n, n))
    Xc = Xd + 0.3 * rng.standard_normal((tokens, n))
    return A, Xd, Xc


@pytest.mark.parametrize("mix", [0.0, 0.25, 0.75, 1.0])
@pytest.mark.parametrize("rank", [2, 6])
@pytest.mark.parametrize("ridge", [0.0, 0.05, 3.0])
def test_mixed_cross_solves_the_mixed_ridge_regression(mix, rank, ridge):
    """The rank-r fit with the mixed cross is the reduced-rank regression of stacked data.

    alpha ||(M - A) Xc^T||^2 + (1 - alpha) ||M Xc^T - A Xd^T||^2 + lambda ||M - A||^2 is one
    least-squares problem on the inputs [sqrt(alpha) Xc; sqrt(1 - alpha) Xc; sqrt(lambda) I]:
    its rank-r optimum is the OLS map projected on the top-r left singular vectors of the fitted
    values (Izenman 1975), computed here without curlinalg.
    """
    A, Xd, Xc = _mixed_problem(11)
    n = A.shape[1]
    H = Xc.T @ Xc
    w = whitening(H, ridge=ridge)  # the metric's whole shift is the ridge: no toward-zero part
    lam = ridge * np.mean(np.diag(H))
    X = np.vstack([np.sqrt(mix) * Xc, np.sqrt(1 - mix) * Xc, np.sqrt(lam) * np.eye(n)])
    Y = np.vstack([np.sqrt(mix) * Xc @ A.T, np.sqrt(1 - mix) * Xd @ A.T, np.sqrt(lam) * A.T])
    ols = np.linalg.lstsq(X, Y, rcond=None)[0].T
    Uf = np.linalg.svd(ols @ X.T, full_matrices=False)[0][:, :rank]
    ref = Uf @ Uf.T @ ols
    B = w.whiten(A, cross=mixed_cross(w, Xc.T @ Xd, mix=mix, ridge=ridge))
    P, s, Qt = np.linalg.svd(B, full_matrices=False)
    M = w.unwhiten((P[:, :rank] * s[:rank]) @ Qt[:rank])
    np.testing.assert_allclose(M, ref, rtol=1e-7, atol=1e-9)


def test_mixed_cross_ends():
    """alpha = 0, no ridge: the cross itself; alpha = 1: the shifted Gram (the plain metric fit);
    a large ridge: the fit tends to the plain truncation of A."""
    A, Xd, Xc = _mixed_problem(12)
    K = Xc.T @ Xd
    w = whitening(Xc.T @ Xc, ridge=1e-3)
    assert mixed_cross(w, K, mix=0.0) is K
    np.testing.assert_allclose(mixed_cross(w, K, mix=1.0), w.shifted_gram())
    np.testing.assert_allclose(w.whiten(A, cross=mixed_cross(w, K, mix=1.0)), w.whiten(A), rtol=1e-10, atol=1e-10)
    big = whitening(Xc.T @ Xc, ridge=1e8)
    B = big.whiten(A, cross=mixed_cross(big, K, mix=0.5, ridge=1e8))
    P, s, Qt = np.linalg.svd(B, full_matrices=False)
    U, sa, Vt = np.linalg.svd(A, full_matrices=False)
    np.testing.assert_allclose(big.unwhiten((P[:, :2] * s[:2]) @ Qt[:2]), (U[:, :2] * sa[:2]) @ Vt[:2], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda w: mixed_cross(w, np.eye(3), mix=1.5), ValueError, r"mix must be a real number in \[0, 1\]"),
        (lambda w: mixed_cross(w, np.eye(3), mix="0.5"), TypeError, "mix must be a real number"),
        (lambda w: mixed_cross(w, np.eye(3), mix=0.5, ridge=-1.0), ValueError, "ridge must be"),
        (lambda w: mixed_cross(w, np.eye(3), mix=0.5, ridge=1e-2), ValueError, r"whitening\(H, ridge="),
    ],
)
def test_mixed_cross_errors_say_what_to_pass(call, error, match):
    with pytest.raises(error, match=match):
        call(whitening(np.eye(3), ridge=1e-6))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: whitening(np.ones((3, 4))), "square symmetric Gram"),
        (lambda: whitening(np.full((2, 2), np.nan)), "NaN or Inf"),
        (lambda: whitening(np.eye(2), ridge=-1.0), "ridge must be"),
        (lambda: whitening(np.eye(3)).whiten(np.ones((2, 4))), "4 columns but the metric is 3 x 3"),
        (lambda: weighted_cur(np.ones((4, 3)), whitening(np.eye(3)), rank=2, method="cur"), "method must be one of"),
    ],
)
def test_errors_say_what_to_pass(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    assert isinstance(whitening(np.eye(2)), Whitening)


@given(st.integers(0, 2**31), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["numpy", "torch"]))
def test_weighted_cur_above_the_rank_of_A_is_exact_and_never_raises(seed, r, extra, lib):
    """Rows beyond ``rank(A)`` are dependent, so ``R H R^T`` is singular: the solve falls back."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((16, r)) @ rng.standard_normal((r, 10))
    X = _inputs(seed, 40, 10)
    H = X.T @ X
    if lib == "torch":
        torch = pytest.importorskip("torch")
        A, H = torch.from_numpy(A), torch.from_numpy(H)
    res = weighted_cur(A, whitening(H, ridge=0.0), rank=min(r + extra, 10))
    got = np.asarray(res.to_dense())
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.asarray(A), atol=1e-8 * np.linalg.norm(np.asarray(A)))


@given(st.integers(2, 12), st.integers(0, 11), st.integers(0, 2**31))
def test_solve_psd_is_the_pseudo_inverse_on_singular_matrices(n, rank, seed):
    rng = np.random.default_rng(seed)
    rank = min(rank, n)
    F = rng.standard_normal((n, rank))
    N = F @ F.T
    Y = rng.standard_normal((n, 3))
    Z = solve_psd(N, Y, np)
    # N Z is the projection of Y onto range(N): the least-squares residual is orthogonal to it.
    np.testing.assert_allclose(F.T @ (N @ Z - Y), 0.0, atol=1e-8 * (1 + np.linalg.norm(N) * np.linalg.norm(Z)))
    if rank == n:
        np.testing.assert_allclose(N @ Z, Y, atol=1e-8 * np.linalg.cond(N) * np.linalg.norm(Y))


@given(st.integers(2, 20), st.integers(1, 19), st.integers(0, 2**31), st.sampled_from([0.0, 1e-12, 1e-6]))
def test_whitening_says_when_it_fell_back(n, tokens, seed, ridge):
    """``fell_back`` is False exactly when the requested shift was used on the Cholesky route."""
    X = _inputs(seed, tokens, n)
    H = X.T @ X
    w = whitening(H, ridge=ridge)
    scale = np.trace(H) / n
    assert w.requested_shift == pytest.approx(ridge * scale, rel=1e-12, abs=0.0)
    assert w.fell_back == (w.route == "eigh" or w.shift > w.requested_shift)
    if w.route == "cholesky":
        assert w.shift <= max(1e-2 * scale, w.requested_shift) * (1 + 1e-12)
        assert "Cholesky" in w.describe()
    if not w.fell_back:
        assert w.shift == w.requested_shift


def test_shift_never_passes_its_cap_before_the_eigh_route():
    """Growing ``1e-6`` tenfold rounds below ``1e-2``; the shift must stop at the cap, not 1e-1."""
    X = _inputs(0, 5, 20)
    H = X.T @ X
    w = whitening(H - 0.02 * np.trace(H) / 20 * np.eye(20))
    assert w.route == "eigh" and w.fell_back
    assert "eigendecomposition" in w.describe()


def test_weighted_cur_core_is_repeatable_on_rank_deficient_torch_input():
    """``torch.linalg.lstsq`` gave a different (wrong) core from call to call on this input."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    A = torch.randn(32, 64, generator=g, dtype=torch.float64)
    A[:, 4:] = 0                                   # rank 4, and rows 10: of A are zero
    A[10:] = 0
    X = torch.randn(128, 64, generator=g, dtype=torch.float64)
    w = whitening(X.T @ X, ridge=0.0)
    for _ in range(10):
        res = weighted_cur(A, w, rank=15)
        assert weighted_norm(A - res.to_dense(), gram=X.T @ X) <= 1e-12 * weighted_norm(A, gram=X.T @ X)


def test_plus_diagonal_shifts_a_copy(xp):
    from curlinalg.metric import _plus_diagonal

    H = np.random.default_rng(0).standard_normal((7, 7))
    arr = xp.asarray(H)
    out = xp.to_numpy(_plus_diagonal(arr, 0.25))
    np.testing.assert_array_equal(out, H + 0.25 * np.eye(7))
    np.testing.assert_array_equal(xp.to_numpy(arr), H)  # the Gram itself is untouched


@pytest.mark.parametrize("n", [1, 7, 512, 513, 1100])
@pytest.mark.parametrize("xp_name", ["numpy", "torch"])
def test_gram_matrix_is_the_exactly_symmetric_gram(n, xp_name):
    """``gram_matrix(X)`` is ``X^T X`` (to rounding), exactly symmetric, in the input's namespace,
    across the block boundaries (one block up to GRAM_BLOCK columns, then 2 or 3)."""
    from curlinalg.metric import GRAM_BLOCK, gram_matrix

    X = np.random.default_rng(n).standard_normal((40, n))
    if xp_name == "torch":
        torch = pytest.importorskip("torch")
        X = torch.asarray(X)
    G = gram_matrix(X)
    assert type(G) is type(X) and tuple(G.shape) == (n, n)
    G, X = np.asarray(G), np.asarray(X)
    np.testing.assert_allclose(G, X.T @ X, rtol=1e-12, atol=1e-10)
    assert np.array_equal(G, G.T)
    assert GRAM_BLOCK == 512


@pytest.mark.parametrize("X, error, match", [
    (np.ones(3), ValueError, r"expected a matrix \(m, n\)"),
    (np.ones((4, 3), dtype=np.int64), TypeError, "float"),
])
def test_gram_matrix_refuses_what_is_not_a_real_float_matrix(X, error, match):
    from curlinalg.metric import gram_matrix

    with pytest.raises(error, match=match):
        gram_matrix(X)


def test_gram_matrix_of_no_tokens_is_zero():
    from curlinalg.metric import gram_matrix

    G = gram_matrix(np.ones((0, 3)))
    assert G.shape == (3, 3) and not G.any()


def test_the_activation_metric_is_real_only():
    """Complex input to the metric routines (weights and activations of a network are real) is
    refused before any work, naming the routine and the operand."""
    from curlinalg.metric import gram_matrix

    Z = np.ones((6, 4), dtype=np.complex128)
    H = np.eye(4)
    cases = [
        (lambda: weighted_cur(Z, whitening(H), rank=2), "weighted_cur.*A of dtype complex128"),
        (lambda: whitening(H.astype(np.complex64)), "whitening.*H of dtype complex64"),
        (lambda: gram_matrix(Z), "gram_matrix.*X of dtype complex128"),
        (lambda: weighted_norm(Z, gram=H), "weighted_norm.*E of dtype complex128"),
        (lambda: whitening(H).whiten(Z), "Whitening.whiten.*A of dtype complex128"),
        (lambda: whitening(H).whiten(Z.real, cross=H.astype(complex)), "whiten.*cross of dtype complex128"),
        (lambda: weighted_cur(Z.real, whitening(H), rank=2, cross=H.astype(complex)),
         "weighted_cur.*cross of dtype complex128"),
    ]
    for call, match in cases:
        with pytest.raises(TypeError, match=f"{match}.*drop metric=/cross= for a complex matrix"):
            call()
