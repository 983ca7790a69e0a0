"""adapters.sensitivity and StructuredConfig(loss_aware=...): gradient statistics at module
outputs, the loss-aware allocation and the loss-aware fit of structured units."""

import json

import pytest
import torch

import curlinalg
from adapters import Plan, StructuredConfig, compress, plan
from adapters.configs import config_from_dict
from adapters.methods import _unweighted, _weighted
from adapters.sensitivity import OutputSensitivity, output_sensitivity

from conftest import make_tiny_llama


def _anchors(model):
    return {f"model.layers.{i}.mlp": layer.mlp.down_proj for i, layer in enumerate(model.model.layers)}


def test_sums_the_squared_gradients_of_the_summed_loss_at_each_output(calib_tokens):
    model = make_tiny_llama()
    batches = [calib_tokens[:8], calib_tokens[8:]]
    got = output_sensitivity(model, batches, _anchors(model), progress=False)
    # the same sums by hand: retain each down_proj output's gradient of the summed cross-entropy
    want = {n: torch.zeros(32, dtype=torch.float64) for n in _anchors(model)}
    outs = {}

    def keep(name):
        def hook(_mod, _args, y):
            y.retain_grad()
            outs[name] = y

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in _anchors(model).items()]
    for b in batches:
        logits = model(b).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), b[:, 1:].reshape(-1), reduction="sum")
        loss.backward()
        for n, y in outs.items():
            want[n] += (y.grad.double().reshape(-1, 32) ** 2).sum(0)
    for h in hooks:
        h.remove()
    for n in want:
        torch.testing.assert_close(got[n].sq_grad, want[n], rtol=1e-4, atol=0)
        assert got[n].tokens == calib_tokens.numel()


def test_leaves_the_model_as_it_was(calib_tokens):
    model = make_tiny_llama()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # a mix of flags, restored as they were
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    output_sensitivity(model, [calib_tokens], _anchors(model), progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_padding_counts_neither_in_the_loss_nor_in_the_sums(calib_tokens):
    from adapters.calibration import CalibrationBatches

    model = make_tiny_llama()
    mask = torch.ones_like(calib_tokens, dtype=torch.bool)
    mask[:, :8] = False  # left padding
    padded = output_sensitivity(model, CalibrationBatches([calib_tokens], [mask]), _anchors(model), progress=False)
    assert all(s.tokens == int(mask.sum()) for s in padded.values())
    plain = output_sensitivity(model, [calib_tokens], _anchors(model), progress=False)
    assert not torch.allclose(padded["model.layers.0.mlp"].sq_grad, plain["model.layers.0.mlp"].sq_grad)


def test_a_model_without_a_loss_is_refused(calib_tokens):
    model = make_tiny_llama().model  # LlamaModel: no head, no labels
    with pytest.raises((ValueError, TypeError), match="labels|loss"):
        output_sensitivity(model, [calib_tokens], {"layers.0.mlp": model.layers[0].mlp.down_proj}, progress=False)


def test_row_weights_are_the_root_mean_square_gradient():
    s = OutputSensitivity(torch.tensor([4.0, 9.0, 0.0], dtype=torch.float64), tokens=4)
    torch.testing.assert_close(s.row_weights(), torch.tensor([1.0, 1.5, 0.0], dtype=torch.float64))


def test_a_two_sided_refit_is_the_one_sided_refit_of_the_same_neurons():
    """What methods._unweighted relies on: the refit is one least-squares problem per output
    row, so weighting the rows changes which neurons are kept, not how a kept set is refitted."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g, dtype=torch.float64)
    Xc = X + 0.1 * torch.randn(200, 12, generator=g, dtype=torch.float64)
    W = torch.randn(7, 12, generator=g, dtype=torch.float64)
    s = torch.rand(7, generator=g, dtype=torch.float64) * 3
    order = torch.randperm(12, generator=g)
    kw = dict(rank=5, order=order, cross=Xc.T @ X, mix=0.75, ridge=1e-2, shift=1e-8)
    plain = curlinalg.output_id(Xc.T @ Xc, W, **kw)
    Ws, s_ = _weighted(W, s)
    two = curlinalg.output_id(Xc.T @ Xc, Ws, **kw)
    assert torch.equal(torch.as_tensor(plain.indices), torch.as_tensor(two.indices))
    torch.testing.assert_close(_unweighted(two.weight, s_), plain.weight, rtol=1e-10, atol=1e-12)


def test_config_field_is_checked_and_version_1_reads_without_it():
    assert StructuredConfig(loss_aware="fit").loss_aware == ("fit",)
    for bad in (("gradient",), ("fit", "fit")):
        with pytest.raises(ValueError, match="loss_aware"):
            StructuredConfig(loss_aware=bad)
    old = StructuredConfig(reduction=0.2).to_dict() | {"version": 1}
    old.pop("loss_aware")
    assert config_from_dict(old).loss_aware == ()
    cfg = StructuredConfig(reduction=0.2, loss_aware=("allocation", "fit"))
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _sensitive_first_layer(monkeypatch, factor):
    """Make the loss care ``factor`` times more about layer 0's MLP output than measured."""
    import adapters.planning as planning

    real = planning.output_sensitivity

    def fake(model, batches, modules, /, *, progress=True):
        out = real(model, batches, modules, progress=progress)
        out["model.layers.0.mlp"].sq_grad *= factor
        return out

    monkeypatch.setattr(planning, "output_sensitivity", fake)


def test_loss_aware_allocation_gives_width_where_the_loss_cares(calib_tokens, monkeypatch):
    model = make_tiny_llama(layers=3)
    cfg = StructuredConfig(reduction=0.2, uniform=False, loss_aware=("allocation",))
    base = {m.name: m.rank for m in plan(model, cfg, calibration=calib_tokens, progress=False).modules}
    _sensitive_first_layer(monkeypatch, 1e6)
    p = plan(model, cfg, calibration=calib_tokens, progress=False)
    got = {m.name: m.rank for m in p.modules}
    assert 0 < base["model.layers.0.mlp"]
    assert got["model.layers.0.mlp"] == 0  # rank 0: left dense, the budget taken from the others
    assert p.params_after() <= p.target_params
    # without "allocation" the same sensitivities leave the allocation alone
    rel = plan(model, StructuredConfig(reduction=0.2, uniform=False), calibration=calib_tokens, progress=False)
    assert {m.name: m.rank for m in rel.modules} != got


def _skew(sens):
    """Sensitivities far from uniform over the output rows (a random tiny model's are nearly
    uniform, so they would pick the neurons of the one-sided metric)."""
    for s in sens.values():
        s.sq_grad *= torch.logspace(-4, 4, s.sq_grad.numel(), dtype=torch.float64)
    return sens


def test_loss_aware_fit_keeps_the_neurons_of_the_two_sided_metric(calib_tokens, monkeypatch):
    import adapters.compression as compression
    import adapters.planning as planning
    from adapters.calibration import record_layer
    from adapters.planning import Calibration

    real = planning.output_sensitivity
    for where in (planning, compression):  # the plan's (allocation), the fit's (a budget-fixed width)
        monkeypatch.setattr(where, "output_sensitivity", lambda *a, **k: _skew(real(*a, **k)))
    dense = make_tiny_llama()
    cfg = StructuredConfig(reduction=0.2, loss_aware=("fit",), sequential=False)
    model, report = compress(make_tiny_llama(), cfg, calibration=calib_tokens, progress=False)
    _, plain = compress(make_tiny_llama(), StructuredConfig(reduction=0.2, sequential=False),
                        calibration=calib_tokens, progress=False)
    assert [r.rank for r in report.modules] == [r.rank for r in plain.modules]  # "fit" alone: same widths
    assert [r.rows for r in report.modules] != [r.rows for r in plain.modules]
    # the kept neurons are those output_id picks in the metric diag(s) W, s the rms gradient
    calib = Calibration(dense, cfg, calib_tokens, None, False)
    sens = _skew(real(dense, calib.batches_ready(), _anchors(dense), progress=False))
    hidden = calib.runner.hidden
    for i, r in enumerate(report.modules):
        name = f"model.layers.{i}.mlp"
        stats, hidden = record_layer(calib.runner, i, hidden, {name: dense.model.layers[i].mlp.down_proj},
                                     weighting=cfg.token_weighting)
        Ws, _ = _weighted(dense.model.layers[i].mlp.down_proj.weight, sens[name].row_weights())
        res = curlinalg.output_id(stats[name].gram, Ws, rank=r.rank, shift=cfg.ridge)
        assert sorted(torch.as_tensor(res.indices).tolist()) == r.rows


def test_an_edited_plan_gets_its_sensitivities_again(calib_tokens):
    cfg = StructuredConfig(reduction=0.2, uniform=False, loss_aware=("allocation", "fit"))
    p = plan(make_tiny_llama(), cfg, calibration=calib_tokens, progress=False)
    again = Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    _, direct = compress(make_tiny_llama(), p, calibration=calib_tokens, progress=False)
    _, edited = compress(make_tiny_llama(), again, calibration=calib_tokens, progress=False)
    assert p._sensitivity and not again._sensitivity
    assert [r.rows for r in edited.modules] == [r.rows for r in direct.modules]


def test_one_width_and_nothing_else_to_allocate_skips_the_curves(calib_tokens, monkeypatch):
    import adapters.planning as planning

    model = make_tiny_llama(layers=3)
    p = plan(model, StructuredConfig(reduction=0.2, uniform=False), calibration=calib_tokens, progress=False)
    monkeypatch.setattr(planning, "_curves", lambda *a, **k: pytest.fail("no curve is needed"))
    uni = plan(model, StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    widths = {m.rank for m in uni.modules}
    assert len(widths) == 1 and all(m.predicted_error is None for m in uni.modules)
    k = widths.pop()  # the widest that meets the budget: one neuron more in every MLP misses it
    assert uni.params_after() <= uni.target_params
    per_neuron = uni.modules[0].shape[1]
    assert uni.params_after() + per_neuron * len(uni.modules) > uni.target_params and k < 64
    assert p.params_after() <= p.target_params


def test_loss_scales_are_normalised_per_kind(calib_tokens, monkeypatch):
    """Scaling every q_proj's sensitivity by one factor leaves the hybrid's allocation as it was:
    the loss ranks targets of one kind along the depth, relative errors weigh the kinds."""
    import adapters.planning as planning
    from adapters.planning import _per_kind

    got = _per_kind({"a.0.q_proj": 2.0, "a.1.q_proj": 6.0, "a.0.mlp": 5.0}, {"a.0.mlp": "mlp"})
    assert got == {"a.0.q_proj": 0.5, "a.1.q_proj": 1.5, "a.0.mlp": 1.0}
    cfg = StructuredConfig(reduction=0.2, matrices="interpolative", uniform=False, loss_aware=("allocation",))
    model = make_tiny_llama(layers=3)
    base = [(m.name, m.rank) for m in plan(model, cfg, calibration=calib_tokens, progress=False).modules]
    real = planning.output_sensitivity

    def louder_queries(*a, **k):
        out = real(*a, **k)
        for name, s in out.items():
            if name.endswith("q_proj"):
                s.sq_grad *= 1e6
        return out

    monkeypatch.setattr(planning, "output_sensitivity", louder_queries)
    assert [(m.name, m.rank) for m in plan(model, cfg, calibration=calib_tokens, progress=False).modules] == base


@pytest.mark.parametrize("which", ["classifier", "bert"])
def test_a_model_without_a_next_token_loss_is_refused_before_any_work(which):
    from conftest import make_tiny_classifier
    from families import calibration_tokens, make_tiny

    model = make_tiny_classifier() if which == "classifier" else make_tiny("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="causal language model.*loss_aware=\\(\\)"):
        plan(model, StructuredConfig(reduction=0.2, uniform=False, loss_aware=("allocation",)),
             calibration=calibration_tokens(), progress=False)
    assert not calls and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_left_padding_keeps_the_positions_of_the_real_tokens():
    """GPT-2's absolute positions: a left-padded window gives its real tokens the sums of the
    same window unpadded (the positions count real tokens only)."""
    from adapters.calibration import CalibrationBatches
    from families import make_tiny

    model = make_tiny("gpt2")
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([torch.zeros(1, 8, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 8, dtype=torch.bool), torch.ones(1, 24, dtype=torch.bool)], dim=1)
    mods = {"transformer.h.0.mlp.c_proj": model.transformer.h[0].mlp.c_proj}
    plain = output_sensitivity(model, [ids], mods, progress=False)
    left = output_sensitivity(model, CalibrationBatches([padded], [mask]), mods, progress=False)
    name = "transformer.h.0.mlp.c_proj"
    assert left[name].tokens == plain[name].tokens == 24
    torch.testing.assert_close(left[name].sq_grad, plain[name].sq_grad, rtol=1e-4, atol=1e-12)


def test_fit_weights_only_under_fit_and_only_for_units():
    from adapters.sensitivity import fit_weights

    sens = {"u": OutputSensitivity(torch.tensor([4.0, 1.0], dtype=torch.float64), tokens=1)}
    fit, alloc = StructuredConfig(loss_aware=("fit",)), StructuredConfig(loss_aware=("allocation",))
    torch.testing.assert_close(fit_weights(fit, sens, "u", "mlp"), torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert fit_weights(alloc, sens, "u", "mlp") is None
    assert fit_weights(fit, sens, "u", "linear") is None
    assert fit_weights(fit, None, "u", "mlp") is None
