"""StructuredConfig: gated MLPs as neuron units through plan, compress, checkpoints and merge."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import adapters
from adapters import InterpolativeLinear, StructuredConfig, compress, merge, plan
from adapters.configs import config_from_dict

from conftest import make_tiny_llama
from families import calibration_tokens, make_tiny


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def _widths(model):
    return [layer.mlp.gate_proj.out_features for layer in model.model.layers]


def _close(a, b, dtype=torch.float32):
    """Same weights, possibly other kernels (another process, a padded GEMM): the rounding of a
    few dot products of length <= 128 through 3 layers, far below any real difference (0.59
    between two random initialisations)."""
    torch.testing.assert_close(a, b, rtol=0, atol=256 * torch.finfo(dtype).eps * max(1.0, float(b.abs().max())))


def test_plan_has_one_unit_per_mlp_and_meets_the_budget(calib_tokens):
    model = make_tiny_llama(layers=3)
    p = plan(model, StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    units = [m for m in p.modules if m.unit == "mlp"]
    assert [m.name for m in units] == [f"model.layers.{i}.mlp" for i in range(3)]
    assert all(m.shape == (64, 3 * 32) for m in units) and all(0 < m.rank < 64 for m in units)
    assert len(units) == len(p.modules)  # matrices="dense": attention stays dense, with the reason
    assert {d.reason for d in p.dense} == {"not in a structured unit (StructuredConfig matrices='dense')"}
    assert p.params_after() <= p.target_params
    assert p.params_after() > p.target_params - 3 * 32 * 3  # within one width step of each unit
    again = adapters.Plan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert [(m.name, m.unit, m.rank) for m in again.modules] == [(m.name, m.unit, m.rank) for m in p.modules]
    assert again.params_after() == p.params_after()


def test_compress_keeps_whole_neurons_and_the_planned_count(calib_tokens, eval_tokens):
    dense = make_tiny_llama(layers=3)
    model = make_tiny_llama(layers=3)
    model, report = compress(model, StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    assert report.params_after <= report.target_params
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    for r, layer, ref in zip(report.modules, model.model.layers, dense.model.layers):
        assert r.unit == "mlp" and type(layer.mlp.gate_proj) is nn.Linear
        keep = torch.tensor(r.rows)
        assert layer.mlp.gate_proj.out_features == layer.mlp.down_proj.in_features == r.rank == len(r.rows)
        # gate and up keep the dense rows of the kept neurons exactly; down is refitted
        assert torch.equal(layer.mlp.gate_proj.weight, ref.mlp.gate_proj.weight[keep])
        assert torch.equal(layer.mlp.up_proj.weight, ref.mlp.up_proj.weight[keep])
        assert 0.0 <= r.rel_error < 1.0
    out = _logits(model, eval_tokens)
    assert torch.isfinite(out).all() and not torch.equal(out, _logits(dense, eval_tokens))


def test_sequential_option_changes_the_refit(calib_tokens):
    fits = []
    for sequential in (True, False):
        model, _ = compress(make_tiny_llama(), StructuredConfig(reduction=0.2, sequential=sequential),
                            calibration=calib_tokens, progress=False)
        fits.append(model.model.layers[1].mlp.down_proj.weight)
    assert fits[0].shape != fits[1].shape or not torch.allclose(fits[0], fits[1])


def test_uniform_widths_make_a_stock_model(calib_tokens, eval_tokens, tmp_path):
    model, report = compress(make_tiny_llama(layers=3), StructuredConfig(reduction=0.2, uniform=True, width_multiple=8),
                             calibration=calib_tokens, progress=False)
    widths = _widths(model)
    assert len(set(widths)) == 1 and widths[0] % 8 == 0
    assert model.config.intermediate_size == widths[0]
    assert getattr(model.config, "quantization_config", None) is None  # nothing for adapters to record
    model.save_pretrained(tmp_path / "stock")
    torch.save(eval_tokens, tmp_path / "tokens.pt")
    torch.save(_logits(model, eval_tokens), tmp_path / "logits.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'stock')!r})\n"
        "assert 'adapters' not in sys.modules and 'curlinalg' not in sys.modules\n"
        f"t = torch.load({str(tmp_path / 'tokens.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(t).logits, {str(tmp_path / 'back.pt')!r})\n"
        "print(type(m).__name__, m.config.intermediate_size)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LlamaForCausalLM", str(widths[0])]
    _close(torch.load(tmp_path / "back.pt"), torch.load(tmp_path / "logits.pt"))


def test_per_layer_widths_round_trip_through_the_record(calib_tokens, eval_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = compress(make_tiny_llama(layers=3), StructuredConfig(reduction=0.25, uniform=False), calibration=calib_tokens,
                        progress=False)
    widths = _widths(model)
    assert len(set(widths)) > 1, "the allocation gave every MLP one width; pick a budget where they differ"
    model.save_pretrained(tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]
    spec = record["modules"]["model.layers.0.mlp.down_proj"]
    assert spec == {"form": "columns", "out_features": 32, "in_features": 64, "rank": widths[0], "bias": False}
    assert record["modules"]["model.layers.0.mlp.gate_proj"]["form"] == "rows"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert _widths(loaded) == widths
    assert isinstance(loaded.compression_config, StructuredConfig)
    assert torch.equal(_logits(loaded, eval_tokens), _logits(model, eval_tokens))


def test_merge_pads_per_layer_widths_into_a_stock_checkpoint(calib_tokens, eval_tokens, tmp_path):
    model, _ = compress(make_tiny_llama(layers=3), StructuredConfig(reduction=0.25, matrices="interpolative", uniform=False),
                        calibration=calib_tokens, progress=False)
    assert any(isinstance(m, InterpolativeLinear) for m in model.modules())
    before = _logits(model, eval_tokens)
    widths = _widths(model)
    merge(model)
    assert set(_widths(model)) == {max(widths)} == {model.config.intermediate_size}
    assert not any(isinstance(m, InterpolativeLinear) for m in model.modules())
    _close(_logits(model, eval_tokens), before)
    model.save_pretrained(tmp_path / "merged")
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    code = (
        "import sys\nfrom transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'merged')!r})\n"
        "assert 'adapters' not in sys.modules\nprint(m.config.intermediate_size)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(max(widths))]


def test_hybrid_allocates_widths_and_ranks_in_one_budget(calib_tokens):
    p = plan(make_tiny_llama(layers=3), StructuredConfig(reduction=0.35, matrices="interpolative"),
             calibration=calib_tokens, progress=False)
    kinds = {m.unit for m in p.modules if m.rank > 0}
    assert kinds == {"mlp", "linear"}
    assert p.params_after() <= p.target_params


def test_width_multiple_is_honoured(calib_tokens):
    p = plan(make_tiny_llama(layers=3), StructuredConfig(reduction=0.2, width_multiple=16), calibration=calib_tokens,
             progress=False)
    assert all(m.rank % 16 == 0 for m in p.modules if m.rank)


def test_config_round_trip_and_bad_options():
    cfg = StructuredConfig(reduction=0.2, matrices="interpolative", uniform=True, width_multiple=64)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="matrices must be one of"):
        StructuredConfig(matrices="cur")
    with pytest.raises(ValueError, match="passes must be 1"):
        StructuredConfig(passes=2)
    with pytest.raises(ValueError, match="not rank="):
        StructuredConfig(rank=4)


@pytest.mark.parametrize("family, match", [
    ("mixtral", r"experts\.0\.gate_up_proj is a routed expert's matrix \(MixtralForCausalLM\)"),
    ("gpt_oss", r"experts\.0\.gate_up_proj is a routed expert's matrix \(GptOssForCausalLM\)"),
])
def test_routed_experts_are_refused_by_name_before_any_work(family, match):
    model = make_tiny(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match + r".*exclude=\('experts',\)"):
        compress(model, StructuredConfig(reduction=0.1), calibration=calibration_tokens(), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert type(model.model.layers[0].mlp.experts).__name__ != "ExpertLinears"  # closed again


def test_an_unknown_mlp_layout_is_refused_by_name_with_the_known_ones():
    model = make_tiny_llama()
    for layer in model.model.layers:  # the names of older MoE experts: w1 (gate), w3 (up), w2 (down)
        mlp = layer.mlp
        mlp.w1, mlp.w3, mlp.w2 = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        del mlp.gate_proj, mlp.up_proj, mlp.down_proj
    with pytest.raises(ValueError, match=r"gate_proj \+ up_proj -> down_proj.*fc1 -> fc2.*"
                                         r"model\.layers\.0\.mlp\.w1 is an MLP matrix of another layout "
                                         r"\(LlamaForCausalLM: model\.layers\.0\.mlp holds \['w1', 'w3', 'w2'\]\)"):
        plan(model, StructuredConfig(reduction=0.1), calibration=None, progress=False)


def test_partial_mlp_targets_and_infeasible_budget_are_refused_before_calibration():
    with pytest.raises(ValueError, match=r"the targets hold \['down_proj', 'gate_proj'\] of the MLP model\.layers\.0\.mlp "
                                         r"but not all of \['gate_proj', 'up_proj', 'down_proj'\]"):
        plan(make_tiny_llama(), StructuredConfig(reduction=0.1, targets=("gate", "down")), calibration=None,
             progress=False)
    # the narrowest allowed width (width_multiple) bounds what the units can save; no calibration is needed to say so
    with pytest.raises(ValueError, match=r"cannot be met.*at most 0\.2294"):
        plan(make_tiny_llama(), StructuredConfig(reduction=0.3, uniform=True, width_multiple=32), calibration=None,
             progress=False)


def test_value_output_units_keep_the_same_dimensions_across_a_kv_group(calib_tokens, eval_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    from adapters.layer import GatheredLinear, ScatteredLinear

    model, report = compress(make_tiny_llama(layers=3), StructuredConfig(reduction=0.1, units=("vo",)),
                             calibration=calib_tokens, progress=False)
    d, kv, q = 8, 2, 4  # the tiny Llama: 4 query heads of dimension 8 sharing 2 KV heads
    assert {r.unit for r in report.modules} == {"vo"} and all(r.shape == (d, kv * 32 + q * 32) for r in report.modules)
    for r, layer in zip(report.modules, model.model.layers):
        v, o = layer.self_attn.v_proj, layer.self_attn.o_proj
        assert isinstance(v, ScatteredLinear) and isinstance(o, GatheredLinear)
        kept = [sorted(int(i) % d for i in v.rows if int(i) // d == j) for j in range(kv)]
        assert all(len(k) == r.rank for k in kept)
        for h in range(q):  # query head h reads KV head h // 2: it keeps that head's dimensions
            assert sorted(int(c) % d for c in o.cols if int(c) // d == h) == kept[h // 2]
    assert sum(p.numel() for p in model.parameters()) == report.params_after <= report.target_params
    before = _logits(model, eval_tokens)
    model.save_pretrained(tmp_path / "vo")
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "vo"), eval_tokens), before)
    merge(model)
    assert type(model.model.layers[0].self_attn.v_proj) is nn.Linear
    _close(_logits(model, eval_tokens), before)


def test_both_kinds_of_unit_share_one_budget(calib_tokens):
    p = plan(make_tiny_llama(layers=3), StructuredConfig(reduction=0.3, units=("mlp", "vo")),
             calibration=calib_tokens, progress=False)
    assert {m.unit for m in p.modules} == {"mlp", "vo"}
    assert p.params_after() <= p.target_params


def test_fused_attention_has_no_value_output_unit():
    with pytest.raises(ValueError, match=r"qkv_proj is a fused query-key-value projection \(Phi3ForCausalLM\)"):
        plan(make_tiny("phi3"), StructuredConfig(reduction=0.1, units=("vo",)), calibration=None, progress=False)
    with pytest.raises(ValueError, match="units must be"):
        StructuredConfig(units=("mlp", "heads"))


def test_save_compressed_writes_a_stock_folder_for_one_width(calib_tokens, eval_tokens, tmp_path):
    from adapters import load_compressed, save_compressed
    from transformers import AutoModelForCausalLM

    model, _ = compress(make_tiny_llama(), StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    path = save_compressed(model, tmp_path / "stock")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    back = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(_logits(back, eval_tokens), _logits(model, eval_tokens))
    with pytest.raises(Exception, match="not a CUR-compressed"):
        load_compressed(path)  # a stock folder loads with from_pretrained, not as a compressed checkpoint


def test_heal_trains_the_refitted_projections_only(calib_tokens):
    model, report = compress(make_tiny_llama(), StructuredConfig(reduction=0.2), calibration=calib_tokens,
                             progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = adapters.heal(model, data=calib_tokens, steps=2, progress=False)
    assert result.trainable_params == sum(layer.mlp.down_proj.weight.numel() for layer in model.model.layers)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)}


def test_a_stock_result_from_a_gguf_model_drops_the_gguf_record_and_saves(calib_tokens, eval_tokens, tmp_path):
    """The demo model comes from GGUF: transformers dequantizes it but keeps a ``gguf`` quantizer,
    which makes save_pretrained refuse; a stock structured result must not carry it."""
    from transformers import AutoModelForCausalLM, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    model = make_tiny_llama()
    config = GgufConfig(gguf_file="x.gguf")
    model.hf_quantizer = GgufHfQuantizer(config)
    model.hf_quantizer.quantized = {}  # every weight dequantized on load (CPU)
    model.config.quantization_config = config
    model, _ = compress(model, StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "stock")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "stock")
    assert torch.equal(_logits(back, eval_tokens), _logits(model, eval_tokens))


def test_cut_layers_refuse_indices_and_shapes_that_do_not_fit():
    from adapters.layer import GatheredLinear, ScatteredLinear
    from adapters.pruned import kept_linear

    w = torch.ones(2, 5)
    with pytest.raises(ValueError, match="rows must be 2 distinct indices in"):
        ScatteredLinear(w, rows=[0, 0], out_features=4)
    with pytest.raises(ValueError, match="rows must be 2 distinct indices in"):
        ScatteredLinear(w, rows=[1, 4], out_features=4)
    with pytest.raises(ValueError, match="cols must be 5 distinct indices in"):
        GatheredLinear(w, cols=[0, 1], in_features=8)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        ScatteredLinear(w, rows=[0, 3], out_features=4, bias=torch.zeros(2))
    layer = ScatteredLinear(w, rows=[3, 1], out_features=4)
    assert torch.equal(layer(torch.ones(1, 5)), torch.tensor([[0.0, 5.0, 0.0, 5.0]]))
    with pytest.raises(ValueError, match="form must be one of"):
        kept_linear(w, None, form="neurons", shape=(4, 5))
    with pytest.raises(ValueError, match="not a cut of the rows of a 1x5 weight"):
        kept_linear(w, None, form="rows", shape=(1, 5))
