import pytest
import torch

from adapters import count_parameters
from adapters.baselines import LowRankLinear, compress_svd, svd_params

from conftest import make_tiny_llama


@pytest.mark.parametrize("kind", ["plain", "scaled", "whitened"])
def test_svd_baselines_hit_budget_and_run(kind, calib_tokens, eval_tokens):
    model = make_tiny_llama(1)
    target = count_parameters(model) - 4000
    model, report = compress_svd(model, calibration=calib_tokens, kind=kind, target_params=target, progress=False)
    assert count_parameters(model) == report.params_after <= target
    for m in report.modules:
        assert m.params_after == svd_params(*m.shape, m.rank) < m.params_before
    with torch.no_grad():
        assert torch.isfinite(model(eval_tokens).logits).all()


def test_whitened_svd_exact_on_low_rank_weight(calib_tokens):
    model = make_tiny_llama(2)
    lin = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 2) @ torch.randn(2, 64))
    x = torch.randn(5, 64)
    ref = lin(x)
    model, report = compress_svd(model, calibration=calib_tokens, kind="whitened", target_params=count_parameters(model) - 1,
                                 targets=["down"], layers=[1], progress=False)
    new = model.model.layers[1].mlp.down_proj
    assert isinstance(new, LowRankLinear)
    torch.testing.assert_close(new(x), ref, rtol=1e-4, atol=1e-4)


def test_bad_kind_and_budget():
    model = make_tiny_llama(0)
    with pytest.raises(ValueError, match="kind must be"):
        compress_svd(model, calibration=torch.zeros(1, 4, dtype=torch.long), kind="nope")
    with pytest.raises(ValueError, match="cannot be met"):
        compress_svd(model, calibration=torch.zeros(1, 4, dtype=torch.long), reduction=0.99)
