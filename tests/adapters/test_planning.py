import importlib
import json

import numpy as np
import pytest
import torch

import adapters
from adapters import InterpolativeConfig, Plan, compress, count_parameters, plan

from conftest import make_tiny_llama


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_plan_does_not_touch_the_model(calib_tokens):
    model = make_tiny_llama(3)
    model.train()
    before, modules = _state(model), dict(model.named_modules())
    p = plan(model, InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    assert model.training
    assert dict(model.named_modules()) == modules
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not hasattr(model, "compression_config")
    assert p.params_after() <= p.target_params < p.params_before == count_parameters(model)
    assert all(m.predicted_error is not None for m in p.modules if m.rank)


@pytest.mark.parametrize("sequential", [False, True], ids=["one-pass", "refit"])
def test_apply_a_plan_gives_what_compress_plans(calib_tokens, sequential):
    cfg = InterpolativeConfig(reduction=0.2, sequential=sequential)
    p = plan(make_tiny_llama(3), cfg, calibration=calib_tokens, progress=False)
    direct, rep_direct = compress(make_tiny_llama(3), cfg, calibration=calib_tokens, progress=False)
    applied, rep = compress(make_tiny_llama(3), p, calibration=calib_tokens, progress=False)
    assert [(m.name, m.rank) for m in rep.modules] == [(m.name, m.rank) for m in p.modules if m.rank]
    assert count_parameters(applied) == p.params_after() == rep.params_after == rep_direct.params_after
    a, b = applied.state_dict(), direct.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for m in rep.modules if not sequential else ():  # a refit's error is on the compressed inputs
        # The curve is measured in the ridged metric, the error in the plain one.
        assert m.rel_error == pytest.approx(m.predicted_error, rel=1e-4)


def test_an_edited_plan_is_applied_as_edited(calib_tokens):
    p = plan(make_tiny_llama(3), InterpolativeConfig(rank=3), progress=False)
    assert all(m.rank == 3 and m.predicted_error is None for m in p.modules)
    p.modules[0].rank = 5
    p.modules[1].rank = 0
    model, rep = compress(make_tiny_llama(3), p, calibration=calib_tokens, progress=False)
    ranks = {m.name: m.rank for m in rep.modules}
    assert ranks[p.modules[0].name] == 5 and p.modules[1].name not in ranks
    assert isinstance(model.get_submodule(p.modules[1].name), torch.nn.Linear)
    with pytest.raises(ValueError, match="a Plan fixes every option"):
        compress(make_tiny_llama(3), p, calibration=calib_tokens, reduction=0.1)


def test_plan_json_round_trip(calib_tokens):
    p = plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    back = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and back.params_after() == p.params_after()


def test_overrides_fix_ranks_and_the_rest_takes_the_budget(calib_tokens):
    cfg = InterpolativeConfig(reduction=0.2, overrides={"model.layers.0.self_attn.q_proj": 2, "down_proj": 0.5})
    p = plan(make_tiny_llama(3), cfg, calibration=calib_tokens, progress=False)
    ranks = {m.name: m for m in p.modules}
    assert ranks["model.layers.0.self_attn.q_proj"].rank == 2
    for i in (0, 1):
        down = ranks[f"model.layers.{i}.mlp.down_proj"]
        m, n = down.shape
        assert down.rank == max(r for r in range(1, min(m, n)) if r * n + (m - r) * r <= 0.5 * m * n)
    assert p.params_after() <= p.target_params
    free = plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    assert [m.rank for m in free.modules] != [m.rank for m in p.modules]


def test_statistics_are_recorded_once_without_sequential(calib_tokens, monkeypatch):
    """The default path reads the calibration once: the fit reuses the planning pass's Grams."""
    import adapters.calibration as calibration

    calls = []
    real = calibration.accumulate_statistics

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(calibration, "accumulate_statistics", counting)
    monkeypatch.setattr("adapters.compression.accumulate_statistics", counting)
    compress(make_tiny_llama(3), InterpolativeConfig(reduction=0.2, sequential=False), calibration=calib_tokens,
             progress=False)
    once = len(calls)
    calls.clear()
    compress(make_tiny_llama(3), InterpolativeConfig(reduction=0.2, sequential=True), calibration=calib_tokens,
             progress=False)
    assert once == 2 * 2 and len(calls) > once  # 2 layers x 2 batches of 8 windows


def test_the_package_exposes_the_api():
    for name in ("plan", "compress", "heal", "llama", "mistral", "qwen2", "InterpolativeConfig", "Plan"):
        assert hasattr(adapters, name)
    compression, healing = (importlib.import_module(f"adapters.{m}") for m in ("compression", "healing"))
    assert compression.compress is adapters.compress and healing.heal is adapters.heal


@pytest.mark.parametrize("keep_bytes", [0, 150_000])
def test_statistics_beyond_the_memory_cap_are_recorded_again(calib_tokens, monkeypatch, keep_bytes):
    """Kept or recorded again, the fit sees the same dense statistics: identical layers."""
    import adapters.planning as planning

    cfg = InterpolativeConfig(reduction=0.2)
    kept, _ = compress(make_tiny_llama(3, layers=3), cfg, calibration=calib_tokens, progress=False)
    monkeypatch.setattr(planning, "KEEP_BYTES", keep_bytes)
    capped, _ = compress(make_tiny_llama(3, layers=3), cfg, calibration=calib_tokens, progress=False)
    a, b = kept.state_dict(), capped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_curing_layer_scores_read_the_last_real_token(calib_tokens):
    """Right padding puts pads last: CURing's angular distances must use each row's last real token."""
    from adapters import CURingConfig

    rows = calib_tokens[:4, :24]
    ids = torch.zeros(4, 32, dtype=torch.long)
    ids[:, :24] = rows
    mask = torch.zeros(4, 32, dtype=torch.long)
    mask[:, :24] = 1
    cfg = CURingConfig(n_layers=1)
    plain = plan(make_tiny_llama(), cfg, calibration=rows, progress=False)
    padded = plan(make_tiny_llama(), cfg, calibration={"input_ids": ids, "attention_mask": mask}, progress=False)
    np.testing.assert_allclose(padded.angular_distances, plain.angular_distances, rtol=1e-5)


def test_max_rank_fraction_keeps_high_ranks_dense_and_meets_the_budget(calib_tokens):
    from adapters.methods import method_for

    base = plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    method = method_for(base.config)
    fractions = [m.rank / method.max_rank(*m.shape) for m in base.modules if m.rank]
    cap = 0.5 * max(fractions)
    assert any(f > cap for f in fractions)  # the default allocation uses ranks the cap forbids
    cfg = InterpolativeConfig(reduction=0.2, max_rank_fraction=cap)
    p = plan(make_tiny_llama(3), cfg, calibration=calib_tokens, progress=False)
    assert all(m.rank <= cap * method.max_rank(*m.shape) for m in p.modules)
    assert p.params_after() <= p.target_params == base.target_params
    assert [m.rank for m in p.modules] != [m.rank for m in base.modules]


def test_rank_multiple_rounds_allocated_ranks(calib_tokens):
    base = plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    assert any(m.rank % 4 for m in base.modules)
    p = plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.2, rank_multiple=4), calibration=calib_tokens,
             progress=False)
    assert all(m.rank % 4 == 0 for m in p.modules) and any(m.rank for m in p.modules)
    assert p.params_after() <= p.target_params


def test_rank_options_leave_fixed_ranks_alone(calib_tokens):
    cfg = InterpolativeConfig(reduction=0.2, overrides={"q_proj": 3}, rank_multiple=4, max_rank_fraction=0.5)
    p = plan(make_tiny_llama(3), cfg, calibration=calib_tokens, progress=False)
    assert all(m.rank == 3 for m in p.modules if m.name.endswith("q_proj"))
    assert all(m.rank % 4 == 0 for m in p.modules if not m.name.endswith("q_proj"))


def test_rank_options_count_in_the_feasibility_check(calib_tokens):
    with pytest.raises(ValueError, match="cannot be met"):
        plan(make_tiny_llama(3), InterpolativeConfig(reduction=0.3, max_rank_fraction=0.02),
             calibration=calib_tokens, progress=False)
