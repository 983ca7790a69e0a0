"""Each config type's method against direct computations of the same mathematics."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import curlinalg
from adapters import CURConfig, CURingConfig, CURLinear, InterpolativeConfig, SVDConfig
from adapters.configs import CompressionConfig
from adapters.layer import break_even_rank, interpolative_break_even_rank
from adapters.methods import Metrics, method_for

from conftest import make_tiny_llama


def _problem(seed, m=40, n=24, tokens=300):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, n, dtype=torch.float64)
    Xd = torch.randn(tokens, n, generator=gen, dtype=torch.float64) @ torch.randn(n, n, generator=gen, dtype=torch.float64)
    Xc = Xd + 0.3 * torch.randn(tokens, n, generator=gen, dtype=torch.float64)
    return W, Xd, Xc


def _linear(W):
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(W)
    return lin


def test_dispatch_is_by_config_type():
    assert method_for(InterpolativeConfig()).form == "interpolative"
    assert method_for(CURConfig()).form == "cur" and method_for(CURingConfig()).form == "cur"
    assert method_for(SVDConfig()).form == "svd"
    with pytest.raises(TypeError, match="no compression method is registered for CompressionConfig"):
        method_for(CompressionConfig())


def test_interpolative_fit_is_the_whitened_svd_optimum_at_every_rank():
    """Same inputs: the fit's error is the best rank-r weighted error (the allocator's curve)."""
    W, X, _ = _problem(4)
    st = SimpleNamespace(gram=X.T @ X, cross=None)
    cfg = InterpolativeConfig(ridge=1e-12)
    method = method_for(cfg)
    curve = method.curve(cfg, W, st, Metrics(1e-12))
    assert len(curve) == interpolative_break_even_rank(*W.shape) == W.shape[1] - 1
    for r in (1, 4, 11, len(curve)):
        fit = method.fit(cfg, _linear(W), st, Metrics(1e-12), r)
        assert curve[r - 1] == pytest.approx(fit.rel_error**2, rel=1e-6, abs=1e-12)
        L = torch.linalg.cholesky(st.gram)
        ref = torch.linalg.svd(W @ L)
        Mr = (ref.U[:, :r] * ref.S[:r]) @ ref.Vh[:r] @ torch.linalg.inv(L)
        torch.testing.assert_close(fit.module.weight_product().detach().detach(), Mr, rtol=1e-7, atol=1e-9)


def test_interpolative_fit_solves_the_sequential_reduced_rank_regression():
    """Compressed inputs X_c, dense targets W X_d: the fit is the rank-r least-squares optimum.

    Reference: reduced-rank regression on the data matrices (OLS, then projection of the fitted
    values on their top-r left singular vectors).
    """
    W, Xd, Xc = _problem(5)
    st = SimpleNamespace(gram=Xc.T @ Xc, cross=Xc.T @ Xd)
    Y, X = W @ Xd.T, Xc.T
    B_ols = torch.linalg.lstsq(X.T, Y.T).solution.T
    Uf = torch.linalg.svd(B_ols @ X, full_matrices=False).U
    cfg = InterpolativeConfig(ridge=1e-14, sequential=False)  # no mix, no ridge: the plain regression
    for r in (2, 9):
        M = method_for(cfg).fit(cfg, _linear(W), st, Metrics(1e-14), r).module.weight_product().detach()
        ref = Uf[:, :r] @ Uf[:, :r].T @ B_ols
        assert torch.linalg.norm(M @ X - Y) == pytest.approx(float(torch.linalg.norm(ref @ X - Y)), rel=1e-8)
        torch.testing.assert_close(M, ref, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mix, refit_ridge", [(0.0, 0.0), (0.75, 0.0), (0.75, 0.05), (0.3, 2.0), (1.0, 0.05)])
def test_interpolative_fit_solves_the_mixed_ridge_refit(mix, refit_ridge):
    """The refit's options reach the fit: it is the rank-r optimum of

    alpha ||(M - W) Xc^T||^2 + (1 - alpha) ||M Xc^T - W Xd^T||^2 + lambda ||M - W||^2,

    lambda = refit_ridge * mean(diag Xc^T Xc): reduced-rank regression on stacked data
    [sqrt(alpha) Xc; sqrt(1 - alpha) Xc; sqrt(lambda) I], computed here without curlinalg.
    """
    W, Xd, Xc = _problem(9)
    n = W.shape[1]
    st = SimpleNamespace(gram=Xc.T @ Xc, cross=Xc.T @ Xd)
    lam = refit_ridge * float(torch.diagonal(st.gram).mean())
    a, b = mix**0.5, (1 - mix) ** 0.5
    X = torch.cat([a * Xc, b * Xc, lam**0.5 * torch.eye(n, dtype=torch.float64)])
    Y = torch.cat([a * Xc @ W.T, b * Xd @ W.T, lam**0.5 * W.T])
    ols = torch.linalg.lstsq(X, Y).solution.T
    Uf = torch.linalg.svd(ols @ X.T, full_matrices=False).U
    cfg = InterpolativeConfig(ridge=1e-14, sequential=True, mix=mix, refit_ridge=refit_ridge)
    for r in (2, 9):
        M = method_for(cfg).fit(cfg, _linear(W), st, Metrics(1e-14 + refit_ridge), r).module.weight_product().detach()
        torch.testing.assert_close(M, Uf[:, :r] @ Uf[:, :r].T @ ols, rtol=1e-6, atol=1e-8)


def test_cur_fit_core_follows_the_mixed_target():
    """The C U R form's core is fitted to the mixed target: with mix=1 and the same rows and
    columns, the core of the fit on the compressed Gram alone; mix moves it."""
    W, Xd, Xc = _problem(10)
    st = SimpleNamespace(gram=Xc.T @ Xc, cross=Xc.T @ Xd)
    fits = {}
    for mix in (0.0, 1.0):
        cfg = CURConfig(ridge=1e-12, mix=mix)
        fits[mix] = method_for(cfg).fit(cfg, _linear(W), st, Metrics(1e-12), 6).module
    alone = method_for(CURConfig(ridge=1e-12)).fit(
        CURConfig(ridge=1e-12), _linear(W), SimpleNamespace(gram=st.gram, cross=None), Metrics(1e-12), 6).module
    torch.testing.assert_close(fits[1.0].weight_product(), alone.weight_product(), rtol=1e-6, atol=1e-9)
    assert not torch.allclose(fits[0.0].weight_product(), fits[1.0].weight_product(), rtol=1e-3)


def test_cur_curve_matches_the_fitted_cur_at_every_rank():
    W, X, _ = _problem(3)
    st = SimpleNamespace(gram=X.T @ X, cross=None)
    cfg = CURConfig(ridge=1e-12, allocation="cur")
    method = method_for(cfg)
    curve = method.curve(cfg, W, st, Metrics(1e-12))
    assert len(curve) == break_even_rank(*W.shape)
    svd = method_for(InterpolativeConfig()).curve(InterpolativeConfig(ridge=1e-12), W, st, Metrics(1e-12))
    assert np.all(curve >= svd[: len(curve)] - 1e-10)
    assert not np.allclose(curve, svd[: len(curve)])
    for r in (1, 3, 7, len(curve)):
        fit = method.fit(cfg, _linear(W), st, Metrics(1e-12), r)
        assert curve[r - 1] == pytest.approx(fit.rel_error**2, rel=1e-6, abs=1e-12)


def test_cur_fit_reproduces_a_rank_deficient_weight():
    W, X, _ = _problem(6)
    W = W[:, :3] @ torch.randn(3, W.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    st = SimpleNamespace(gram=X.T @ X, cross=None)
    cfg = CURConfig(ridge=1e-12)
    fit = method_for(cfg).fit(cfg, _linear(W), st, Metrics(1e-12), 3)
    assert isinstance(fit.module, CURLinear) and fit.rel_error < 1e-6
    np.testing.assert_array_equal(fit.module.R.detach(), W[fit.rows])


def test_one_factor_per_shared_input(monkeypatch):
    """q/k/v share one statistics object, so one whitening, whatever the number of modules."""
    calls = []
    real = curlinalg.metric.whitening

    def counting(H, **kw):
        calls.append(1)
        return real(H, **kw)

    monkeypatch.setattr("adapters.methods.whitening", counting)
    W, X, _ = _problem(7)
    st = SimpleNamespace(gram=X.T @ X, cross=None)
    cfg, metrics = InterpolativeConfig(), Metrics(1e-6)
    for _ in range(3):
        method_for(cfg).curve(cfg, W, st, metrics)
        method_for(cfg).fit(cfg, _linear(W), st, metrics, 5)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["plain", "scaled", "whitened"])
def test_svd_fit_error_is_its_curve(kind):
    W, X, _ = _problem(8)
    st = SimpleNamespace(gram=X.T @ X, cross=None, tokens=X.shape[0])
    cfg = SVDConfig(kind=kind, ridge=0.0)
    method = method_for(cfg)
    curve = method.curve(cfg, W, st, Metrics(1e-14))
    for r in (2, 6):
        fit = method.fit(cfg, _linear(W), st, Metrics(1e-14), r)
        y = fit.module(torch.eye(W.shape[1], dtype=torch.float64)).T.detach()
        if kind == "whitened":
            assert curve[r - 1] == pytest.approx(fit.rel_error**2, rel=1e-6)
        if kind == "plain":
            s = torch.linalg.svdvals(W)
            assert float(torch.linalg.norm(W - y)) == pytest.approx(float(torch.sqrt((s[r:] ** 2).sum())), rel=1e-8)


def test_curing_fit_matches_pinv_core():
    model = make_tiny_llama(4)
    lin = model.model.layers[0].self_attn.q_proj
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, lin.in_features, generator=gen, dtype=torch.float64)
    st = SimpleNamespace(sq_sum=(X * X).sum(0), gram=None, cross=None)
    cfg = CURingConfig()
    fit = method_for(cfg).fit(cfg, lin, st, Metrics(0.0), 5)
    W = lin.weight.detach().double()
    C, R = W[:, fit.cols], W[fit.rows, :]
    U = torch.linalg.pinv(C) @ W @ torch.linalg.pinv(R)
    torch.testing.assert_close(fit.module.U.detach().double(), U, rtol=1e-4, atol=1e-4)
    E, d = W - C @ U @ R, torch.diag(st.sq_sum)  # the error in the diagonal metric, through a full Gram
    assert fit.rel_error == pytest.approx(float(torch.sqrt(torch.trace(E @ d @ E.T) / torch.trace(W @ d @ W.T))),
                                          rel=1e-6)


def test_curing_large_score_matrix_takes_a_randomized_svd_from_the_seed(monkeypatch):
    """Above 512 x 512 the WANDA score's top vectors come from a randomized SVD drawn from
    ``config.seed`` (CURing's full SVD dominated its time at the 8B shape); same seed, same fit."""
    seen = []
    real = curlinalg.truncated_svd
    monkeypatch.setattr(curlinalg, "truncated_svd", lambda *a, **k: seen.append(k) or real(*a, **k))
    gen = torch.Generator().manual_seed(1)
    lin = _linear(torch.randn(700, 600, generator=gen, dtype=torch.float64))
    X = torch.randn(900, 600, generator=gen, dtype=torch.float64)
    st = SimpleNamespace(sq_sum=(X * X).sum(0), gram=None, cross=None)
    fits = [method_for(c).fit(c, lin, st, Metrics(0.0), 12) for c in (CURingConfig(seed=3), CURingConfig(seed=3),
                                                                      CURingConfig(seed=4))]
    assert [k["kind"] for k in seen] == ["auto"] * 3 and [k["rng"] for k in seen] == [3, 3, 4]
    assert fits[0].rows == fits[1].rows and fits[0].cols == fits[1].cols
    assert curlinalg.truncated_svd(lin.weight.abs(), rank=12, kind="auto", rng=0).kind == "randomized"


def test_metrics_report_a_whitening_fallback_only_where_it_happened():
    gen = torch.Generator().manual_seed(0)
    few = torch.randn(5, 20, generator=gen, dtype=torch.float64)       # 5 tokens, 20 features
    many = torch.randn(200, 20, generator=gen, dtype=torch.float64)
    singular, regular = SimpleNamespace(gram=few.T @ few), SimpleNamespace(gram=many.T @ many)
    for ridge in (0.0, 1e-6):
        metrics = Metrics(ridge)
        assert metrics.fallback(singular) is None                        # nothing factored yet
        metrics.of(singular), metrics.of(regular)
        assert metrics.fallback(regular) is None
        if ridge == 0.0:
            assert "shifted Cholesky" in metrics.fallback(singular)
        else:
            assert metrics.fallback(singular) is None
        metrics.drop(singular)
        assert metrics.fallback(singular) is None


@pytest.mark.parametrize("config", [CURConfig(ridge=0.0), InterpolativeConfig(ridge=0.0), SVDConfig(ridge=0.0)],
                         ids=lambda c: c.method)
def test_rank_deficient_weight_at_a_larger_rank_is_exact(config):
    """A pruned layer (zero rows and columns, rank 4) fitted at rank 12: dependent rows made the
    C U R core's normal equations singular (a raw LinAlgError on numpy, a wrong core on torch)."""
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(32, 48, generator=gen, dtype=torch.float64)
    W[:, 4:] = 0
    W[10:] = 0
    X = torch.randn(100, 48, generator=gen, dtype=torch.float64)
    st = SimpleNamespace(gram=X.T @ X, cross=None, tokens=100)
    method = method_for(config)
    for _ in range(3):
        fit = method.fit(config, _linear(W), st, Metrics(0.0), 12)
        assert fit.rel_error < 1e-10


def test_metrics_prepare_factors_each_shared_input_once(monkeypatch):
    import adapters.methods as methods

    calls = []
    real = methods.whitening
    monkeypatch.setattr(methods, "whitening", lambda g, **k: calls.append(g) or real(g, **k))
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    a, b = SimpleNamespace(gram=X.T @ X), SimpleNamespace(gram=2 * X.T @ X)
    m = Metrics(1e-6)
    m.prepare([a, a, b, a], workers=2)
    assert len(calls) == 2
    m.of(a), m.of(b)  # already factored: no further factorisation
    assert len(calls) == 2
