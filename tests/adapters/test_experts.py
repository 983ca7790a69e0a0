import pytest
import torch

from adapters import AdaptersWarning, CURConfig, InterpolativeConfig, compress, count_parameters, plan
from adapters.calibration import InputRecorder
from adapters.experts import ExpertLinears, close_experts, fused_experts_problem, open_experts
from adapters.layer import FACTORED_LINEARS

from families import calibration_tokens, make_tiny

pytest.importorskip("transformers")

TOKENS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(5))


def _logits(model, tokens=TOKENS):
    with torch.no_grad():
        return model(tokens).logits


def _experts_of(model):
    return [m for m in model.modules() if isinstance(m, ExpertLinears)]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"])
def test_opened_experts_are_the_same_map_with_the_same_parameters(family):
    model = make_tiny(family)
    ref, before = _logits(model), count_parameters(model)
    fused = model.model.layers[0].mlp.experts
    swaps = open_experts(model)
    opened = model.model.layers[0].mlp.experts
    assert len(swaps) == 2 and isinstance(opened, ExpertLinears) and len(opened) == fused.num_experts
    assert count_parameters(model) == before
    flip = fused.is_transposed  # gpt-oss stores in x out
    torch.testing.assert_close(opened[1].gate_up_proj.weight, fused.gate_up_proj[1].T if flip else fused.gate_up_proj[1],
                               rtol=0, atol=0)
    assert opened[1].down_proj.weight.data_ptr() == fused.down_proj[1].data_ptr()  # a view, no copy
    torch.testing.assert_close(_logits(model), ref)


def test_each_expert_sees_exactly_the_tokens_routed_to_it():
    model = make_tiny("mixtral")
    open_experts(model)
    moe = model.model.layers[0].mlp
    seen = {}
    handle = moe.experts.register_forward_pre_hook(lambda mod, args: seen.update(h=args[0], idx=args[1]))
    linears = {f"{e}.{part}": getattr(moe.experts[e], part) for e in range(4) for part in ("gate_up_proj", "down_proj")}
    with InputRecorder(linears) as rec:
        _logits(model)
        inputs = rec.take()
    handle.remove()
    for e in range(4):
        routed = seen["h"][(seen["idx"] == e).any(-1)]
        x = inputs[f"{e}.gate_up_proj"]
        assert x.shape == routed.shape and inputs[f"{e}.down_proj"].shape[0] == routed.shape[0]
        torch.testing.assert_close(x.sum(0), routed.sum(0))


def test_plan_puts_the_fused_experts_back_and_compress_applies_it():
    model = make_tiny("mixtral")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    p = plan(model, InterpolativeConfig(reduction=0.2), calibration=calibration_tokens(), progress=False)
    assert not _experts_of(model) and type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    names = {m.name for m in p.modules}
    assert "model.layers.1.mlp.experts.3.down_proj" in names
    model, report = compress(model, p, calibration=calibration_tokens(), progress=False)
    assert count_parameters(model) == report.params_after == p.params_after()
    assert {m.name for m in report.modules} == {m.name for m in p.modules if m.rank > 0}


def test_a_failed_compression_restores_the_fused_experts(monkeypatch):
    import adapters.methods

    model = make_tiny("mixtral")
    ref = _logits(model)
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    real = adapters.methods._Interpolative.fit
    monkeypatch.setattr(adapters.methods._Interpolative, "fit", lambda self, *a: boom(self, *a))
    with pytest.raises(RuntimeError, match="boom"):
        compress(model, calibration=calibration_tokens(), progress=False)
    assert type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"
    assert not any(isinstance(m, FACTORED_LINEARS) for m in model.modules())
    torch.testing.assert_close(_logits(model), ref, rtol=0, atol=0)


def test_an_expert_no_token_reaches_stays_dense_with_the_reason():
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=1)
    torch.manual_seed(0)
    model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # experts 0 and 1 get logits +-|h.c|, experts 2 and 3 logit 0
            w = layer.mlp.gate.weight
            c = torch.randn(w.shape[1])
            w.zero_()
            w[0], w[1] = c, -c
    model, report = compress(model, calibration=calibration_tokens(), progress=False)
    silent = {d["name"] for d in report.dense if d["reason"] == "no calibration token was routed to this expert"}
    assert silent == {f"model.layers.{i}.mlp.experts.{e}.{part}"
                      for i in (0, 1) for e in (2, 3) for part in ("gate_up_proj", "down_proj")}
    assert count_parameters(model) == report.params_after


@pytest.mark.parametrize("config", [CURConfig(reduction=0.1), CURConfig(reduction=0.1, mix=0.75, passes=2),
                                    InterpolativeConfig(reduction=0.1, sequential=True, mix=0.75, passes=2)],
                         ids=["cur", "cur-refit-2-passes", "interpolative-refit-2-passes"])
def test_sequential_fits_routed_experts_on_the_dense_inputs(config):
    model, report = compress(make_tiny("mixtral"), config, calibration=calibration_tokens(), progress=False)
    assert any(".experts." in m.name for m in report.modules)
    assert len({m.name for m in report.modules}) == len(report.modules)
    assert torch.isfinite(_logits(model)).all() and count_parameters(model) == report.params_after


def test_experts_keep_their_own_gating():
    model = make_tiny("mixtral")
    fused = type(model.model.layers[0].mlp.experts)

    class OwnGate(fused):
        def _apply_gate(self, gate_up):
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            return torch.sigmoid(gate * self.alpha) * up

    for layer in model.model.layers:
        layer.mlp.experts.__class__ = OwnGate
        layer.mlp.experts.alpha = 1.5
    ref = _logits(model)
    assert fused_experts_problem(model.model.layers[0].mlp.experts) is None
    open_experts(model)
    torch.testing.assert_close(_logits(model), ref)


def test_experts_with_a_norm_after_each_stay_dense_with_the_reason():
    model = make_tiny("mixtral")
    for layer in model.model.layers:
        layer.mlp.experts.has_post_expert_norm = True
        layer.mlp.experts.post_expert_norm = torch.nn.Identity()
    assert "norm after each expert" in fused_experts_problem(model.model.layers[0].mlp.experts)
    with pytest.warns(AdaptersWarning, match=r"reach \d+% .*norm after each expert"):
        model, report = compress(model, calibration=calibration_tokens(), reduction=0.05, progress=False)
    reasons = {d["name"]: d["reason"] for d in report.dense}
    assert "norm after each expert" in reasons["model.layers.0.mlp.experts.gate_up_proj"]
    assert type(model.model.layers[0].mlp.experts).__name__ == "MixtralExperts"


def test_opened_experts_keep_trainable_parameters():
    model = make_tiny("mixtral")
    open_experts(model)
    assert all(p.requires_grad for p in model.model.layers[0].mlp.experts.parameters())


def test_a_typo_leaves_the_moe_model_as_it_was():
    model = make_tiny("qwen2_moe")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"targets=\['gate_up'\] matched no linear layer.*'gate_up_proj'"):
        compress(model, calibration=calibration_tokens(), targets=["gate_up"], progress=False)
    assert type(model.model.layers[0].mlp.experts).__name__ == "Qwen2MoeExperts"
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"])
def test_closed_experts_are_the_fused_module_again(family):
    """Merging must give the family's fused 3-D parameters back (issue 24: merged MoE folders
    held per-expert tensors, and the family's class loaded random experts)."""
    model = make_tiny(family)
    ref = _logits(model)
    fused = model.model.layers[0].mlp.experts
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    open_experts(model)
    for expert in _experts_of(model):
        expert.own_storage()  # as after compression: no view into the fused tensors is left
    assert close_experts(model) == 2
    closed = model.model.layers[0].mlp.experts
    assert type(closed) is type(fused) and not _experts_of(model)
    assert closed.state_dict().keys() == state.keys()
    assert all(torch.equal(closed.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(_logits(model), ref, rtol=0, atol=0)


def test_closing_needs_dense_experts_and_a_fused_origin():
    model, _ = compress(make_tiny("mixtral"), InterpolativeConfig(reduction=0.2), calibration=calibration_tokens(),
                        progress=False)
    experts = _experts_of(model)[0]
    assert any(isinstance(m, FACTORED_LINEARS) for m in experts.modules())
    with pytest.raises(TypeError, match="fold the compressed ones first"):
        experts.close()
    pair = torch.nn.ModuleDict({"gate_up_proj": torch.nn.Linear(4, 6), "down_proj": torch.nn.Linear(3, 4)})
    with pytest.raises(ValueError, match="open_experts"):
        ExpertLinears([pair], act_fn=torch.relu).close()
