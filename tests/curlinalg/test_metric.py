import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import optimal_core, weighted_cur, weighted_norm, whitening
from curlinalg.metric import Whitening


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
    assert w.route == "cholesky" and w.shift > 0
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
