"""StructuredConfig: MLPs (every layout of adapters.layouts) and attention value-output pairs as
units through plan, compress, checkpoints and merge."""

import copy
import functools
import json
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

import adapters
from adapters import InterpolativeLinear, StructuredConfig, compress, count_parameters, merge, plan
from adapters.configs import config_from_dict
from adapters.layouts import find_mlps, mlp_layout
from adapters.pruned import cut_neurons
from adapters.targets import as_linear

from conftest import make_tiny_llama, one_thread_logits
from families import FAMILIES, calibration_tokens, make_tiny


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
    """One width in multiples of width_multiple, written to the config; that plain transformers
    loads it without adapters is tested for every family below
    (test_stock_checkpoints_of_every_family_load_without_adapters)."""
    model, report = compress(make_tiny_llama(layers=3), StructuredConfig(reduction=0.2, uniform=True, width_multiple=8),
                             calibration=calib_tokens, progress=False)
    widths = _widths(model)
    assert len(set(widths)) == 1 and widths[0] % 8 == 0
    assert model.config.intermediate_size == widths[0]
    assert getattr(model.config, "quantization_config", None) is None  # nothing for adapters to record
    assert not any(hasattr(m, "kept_from") for m in model.modules())


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
    with pytest.raises(ValueError, match=match + r".*exclude=r'\.\*\\\.experts\\\.\.\*'"):
        compress(model, StructuredConfig(reduction=0.1), calibration=calibration_tokens(), progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert type(model.model.layers[0].mlp.experts).__name__ != "ExpertLinears"  # closed again


def test_a_shared_expert_is_a_unit_whose_width_the_dense_mlp_key_does_not_hold(tmp_path):
    """Qwen2-MoE's shared expert is a gated MLP sized by shared_expert_intermediate_size: with the
    routed experts left dense (as the refusal says), one width is not written to
    intermediate_size (the class built from that config would not have it) but recorded."""
    tokens = _family_tokens()
    model, report = compress(make_tiny("qwen2_moe"), StructuredConfig(reduction=0.05, exclude=r".*\.experts\..*"),
                             calibration=calibration_tokens(), progress=False)
    assert [r.name for r in report.modules] == [f"model.layers.{i}.mlp.shared_expert" for i in range(2)]
    assert len({r.rank for r in report.modules}) == 1 and model.config.intermediate_size == 64
    model.save_pretrained(tmp_path / "moe")
    assert "quantization_config" in json.loads((tmp_path / "moe" / "config.json").read_text())
    back = type(model).from_pretrained(tmp_path / "moe")
    before = one_thread_logits(model, tokens)
    assert torch.equal(one_thread_logits(back, tokens), before)
    merge(model)  # no config key holds the cut width: padded back to the dense width the config says
    assert [m.mlp.shared_expert.down_proj.in_features for m in model.model.layers] == [64, 64]
    assert model.config.shared_expert_intermediate_size == 64 and model.config.intermediate_size == 64
    _close(one_thread_logits(model, tokens), before)


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
        StructuredConfig(units=("mlp", "neurons"))


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


# ---- every family with a dense MLP: the unit in each layout of adapters.layouts.MLP_LAYOUTS ----

#: Families whose MLPs are routed experts (refused above); every other family of the table has a dense MLP.
_MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")
MLP_FAMILIES = [f for f in FAMILIES if f not in _MOE]
#: The config key that sizes each family's MLP (intermediate_size where not listed).
WIDTH_KEY = {"opt": "ffn_dim", "gpt2": "n_inner", "falcon": "ffn_hidden_size"}


def _family_tokens():
    return torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(2))


@functools.lru_cache(maxsize=None)
def _family_fit(family, uniform):
    """``(plan, compressed model, report)`` of the family at -20%; with ``uniform=False`` the
    first MLP is one neuron narrower than the allocation if it gave every MLP one width, so that
    the widths differ and go through the record."""
    p = plan(make_tiny(family), StructuredConfig(reduction=0.2, uniform=uniform), calibration=calibration_tokens(),
             progress=False)
    if not uniform and len({m.rank for m in p.modules}) == 1:
        p.modules[0].rank -= 1
    model, report = compress(make_tiny(family), p, calibration=calibration_tokens(), progress=False)
    return p, model, report


def _random_neurons(family, report):
    """The dense model cut to the same widths at random neurons, the output projection's
    columns kept as they are (no refit)."""
    model = make_tiny(family)
    gen = torch.Generator().manual_seed(0)
    for r in report.modules:
        mlp = model.get_submodule(r.name)
        layout = mlp_layout(mlp)
        keep = torch.sort(torch.randperm(layout.width(mlp), generator=gen)[: r.rank]).values
        held = {p: mlp.get_submodule(p) for p in layout.projections}
        for path, layer in cut_neurons(layout, held, keep, as_linear(held[layout.output]).weight[:, keep]).items():
            parent, _, attr = path.rpartition(".")
            setattr(mlp.get_submodule(parent), attr, layer)
    return model


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("family", MLP_FAMILIES)
def test_every_dense_family_keeps_whole_neurons_within_the_budget(family, uniform):
    fresh = plan(make_tiny(family), StructuredConfig(reduction=0.2, uniform=uniform), calibration=calibration_tokens(),
                 progress=False)
    assert fresh.params_after() <= fresh.target_params
    p, model, report = _family_fit(family, uniform)
    dense = make_tiny(family)
    mlps = find_mlps(dense)
    assert [r.name for r in report.modules] == list(mlps) and {r.unit for r in report.modules} == {"mlp"}
    assert count_parameters(model) == report.params_after == p.params_after() <= report.target_params
    widths = [r.rank for r in report.modules]
    assert len(set(widths)) == (1 if uniform else 2)
    for r in report.modules:
        layout, mlp, ref = mlps[r.name], model.get_submodule(r.name), dense.get_submodule(r.name)
        keep = torch.tensor(r.rows)
        assert len(keep) == r.rank == layout.width(mlp) < layout.width(ref)
        rows = layout.rows(keep, layout.width(ref))
        for path in layout.inputs:  # the input projections keep the dense rows and bias entries exactly
            cut, full = as_linear(mlp.get_submodule(path)), as_linear(ref.get_submodule(path))
            assert type(mlp.get_submodule(path)) is type(ref.get_submodule(path))  # GPT-2: Conv1D stays Conv1D
            assert torch.equal(cut.weight, full.weight[rows])
            assert (cut.bias is None) == (full.bias is None) and (cut.bias is None or torch.equal(cut.bias, full.bias[rows]))
        out, full = as_linear(mlp.get_submodule(layout.output)), as_linear(ref.get_submodule(layout.output))
        assert out.weight.shape == (full.out_features, r.rank) and getattr(mlp.get_submodule(layout.output), "refitted")
        assert (out.bias is None) == (full.bias is None) and (out.bias is None or torch.equal(out.bias, full.bias))
    tokens = _family_tokens()
    with torch.no_grad():
        ref, got, rnd = (m(tokens).logits for m in (dense, model, _random_neurons(family, report)))
    assert torch.isfinite(got).all() and not torch.equal(got, ref)
    assert (got - ref).norm() < (rnd - ref).norm()  # chosen and refitted beats random and cut


@pytest.mark.parametrize("family", MLP_FAMILIES)
def test_every_dense_family_round_trips_through_its_checkpoint(family, tmp_path):
    tokens = _family_tokens()
    for uniform in (True, False):
        _, model, report = _family_fit(family, uniform)
        model.save_pretrained(tmp_path / str(uniform))
        config = json.loads((tmp_path / str(uniform) / "config.json").read_text())
        key = WIDTH_KEY.get(family, "intermediate_size")
        if uniform:  # the family's own config, smaller: nothing to record
            assert "quantization_config" not in config and config[key] == report.modules[0].rank
        else:
            names = find_mlps(model)
            record = config["quantization_config"]["modules"]
            assert set(record) == {f"{n}.{p}" for n, lay in names.items() for p in lay.projections}
            for n, lay in names.items():
                assert {record[f"{n}.{p}"]["form"] for p in lay.inputs} == {"rows"}
                assert record[f"{n}.{lay.output}"]["form"] == "columns"
                assert record[f"{n}.{lay.output}"]["rank"] == lay.width(model.get_submodule(n))
        back = type(model).from_pretrained(tmp_path / str(uniform))
        assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
        if not uniform:  # what adapters.heal trains comes back marked as the fit marked it
            assert all(back.get_submodule(f"{n}.{lay.output}").refitted for n, lay in names.items())
        assert torch.equal(one_thread_logits(back, tokens), one_thread_logits(model, tokens))


@pytest.mark.parametrize("family", MLP_FAMILIES)
def test_merge_pads_every_family_to_the_widest_mlp_with_the_same_function(family):
    _, fitted, report = _family_fit(family, False)
    model = copy.deepcopy(fitted)
    tokens = _family_tokens()
    before = one_thread_logits(model, tokens)
    merge(model)
    widest = max(r.rank for r in report.modules)
    mlps = find_mlps(model)
    assert {lay.width(model.get_submodule(n)) for n, lay in mlps.items()} == {widest}
    for r in report.modules:  # padded neurons: zero rows and bias entries in, zero columns out
        mlp, layout = model.get_submodule(r.name), mlps[r.name]
        pad = layout.rows(torch.arange(r.rank, widest), widest)
        for path in layout.inputs:
            lin = as_linear(mlp.get_submodule(path))
            assert not lin.weight[pad].any() and (lin.bias is None or not lin.bias[pad].any())
        assert not as_linear(mlp.get_submodule(layout.output)).weight[:, r.rank:].any()
    assert getattr(model.config, WIDTH_KEY.get(family, "intermediate_size")) == widest
    assert not any(hasattr(m, "kept_from") for m in model.modules())
    _close(one_thread_logits(model, tokens), before)


def test_stock_checkpoints_of_every_family_load_without_adapters(tmp_path):
    """One width (compress) and per-layer widths merged (merge): plain transformers loads both,
    in a process that never imports adapters, and gets the logits of the model that was saved."""
    tokens = _family_tokens()
    torch.save(tokens, tmp_path / "tokens.pt")
    cases = []
    for family in MLP_FAMILIES:
        for kind in ("uniform", "merged"):
            _, fitted, report = _family_fit(family, kind == "uniform")
            model = fitted if kind == "uniform" else merge(copy.deepcopy(fitted))
            folder = tmp_path / f"{family}-{kind}"
            model.save_pretrained(folder)
            torch.save(one_thread_logits(model, tokens), folder / "logits.pt")
            width = max(r.rank for r in report.modules)
            cases.append((str(folder), FAMILIES[family][2], WIDTH_KEY.get(family, "intermediate_size"), width))
    code = (
        "import sys, torch, transformers\n"
        "torch.set_num_threads(1)\n"
        f"t = torch.load({str(tmp_path / 'tokens.pt')!r})\n"
        f"for folder, cls, key, width in {cases!r}:\n"
        "    m = getattr(transformers, cls).from_pretrained(folder)\n"
        "    assert getattr(m.config, key) == width, (folder, key, getattr(m.config, key), width)\n"
        "    with torch.no_grad():\n"
        "        torch.save(m(t).logits, folder + '/back.pt')\n"
        "assert 'adapters' not in sys.modules and 'curlinalg' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for folder, *_ in cases:
        _close(torch.load(f"{folder}/back.pt"), torch.load(f"{folder}/logits.pt"))


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_heal_trains_the_refitted_output_projection_of_other_layouts(family):
    model = copy.deepcopy(_family_fit(family, True)[1])
    outputs = [f"{n}.{lay.output}" for n, lay in find_mlps(model).items()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = adapters.heal(model, data=calibration_tokens(), steps=2, progress=False)
    assert result.trainable_params == sum(model.get_submodule(n).weight.numel() for n in outputs)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {f"{n}.weight" for n in outputs}


def test_a_unit_spanning_two_children_of_the_layer_follows_targets_layers_and_exclude():
    one = plan(make_tiny("bert"), StructuredConfig(reduction=0.05, layers=(1,)), calibration=calibration_tokens(),
               progress=False)
    assert [(m.name, m.unit) for m in one.modules] == [("bert.encoder.layer.1", "mlp")]
    with pytest.raises(ValueError, match=r"the targets hold \['intermediate\.dense'\] of the MLP bert\.encoder\.layer\.0 "
                                         r"but not all of \['intermediate\.dense', 'output\.dense'\]"):
        plan(make_tiny("bert"), StructuredConfig(reduction=0.05, exclude=("bert.encoder.layer.0.output.dense",)),
             calibration=None, progress=False)
    named = plan(make_tiny("opt"), StructuredConfig(reduction=0.05, targets=("fc1", "fc2"), layers=(0,)),
                 calibration=calibration_tokens(), progress=False)
    assert [(m.name, m.params_before) for m in named.modules] == [("model.decoder.layers.0", 2 * 32 * 64 + 64 + 32)]


def test_the_default_costs_three_passes_over_the_calibration_tokens(calib_tokens):
    """One MLP width and nothing else to allocate: no planning pass, and the sequential refit
    runs each layer on the dense path, on the compressed path, and again once fitted."""
    model = make_tiny_llama(layers=3)
    windows = [0, 0, 0]
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: windows.__setitem__(
                i, windows[i] + (args[0] if args else kwargs["hidden_states"]).shape[0]),
            with_kwargs=True)
    compress(model, StructuredConfig(reduction=0.2), calibration=calib_tokens, progress=False)
    n = calib_tokens.shape[0]
    # layer 0: the embeddings' pass that catches its inputs (stopped there), then one run that
    # records both paths (they start from the same embeddings) and one that propagates
    assert windows == [3 * n, 3 * n, 3 * n]


def _two_kinds_of_mlp(layers=3):
    """A tiny Llama whose first MLP is rank 2 in each matrix (factoring it is exact at rank 2,
    keeping fewer of its 64 neurons is not) and whose second has 8 live neurons (keeping them
    is exact and cheaper than factoring its matrices at rank 8)."""
    model = make_tiny_llama(layers=layers)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lin in (model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj,
                    model.model.layers[0].mlp.down_proj):
            m, n = lin.weight.shape
            lin.weight.copy_(torch.randn(m, 2, generator=g) @ torch.randn(2, n, generator=g) / n**0.5)
        mlp = model.model.layers[1].mlp
        mlp.gate_proj.weight[8:] = 0.0
        mlp.up_proj.weight[8:] = 0.0
    return model


def test_per_group_factors_one_mlp_and_keeps_neurons_of_another(calib_tokens, eval_tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    # 28%: more than layer 0's factored matrices (at rank 2) and layer 1's factored ones (at
    # rank 8) save together, so the error-free plan is layer 0 factored and layer 1's 8 neurons
    config = StructuredConfig(reduction=0.28, matrices="interpolative", uniform=False)
    chosen = plan(_two_kinds_of_mlp(), StructuredConfig.with_options(config, per_group=True), calibration=calib_tokens,
                  progress=False)
    by_name = {m.name: m for m in chosen.modules}
    # the option taken is the one listed: layer 0's matrices, layer 1's unit
    assert "model.layers.0.mlp" not in by_name
    assert all(by_name[f"model.layers.0.mlp.{p}"].rank > 0 for p in ("gate_proj", "up_proj", "down_proj"))
    assert by_name["model.layers.1.mlp"].unit == "mlp"
    assert by_name["model.layers.1.mlp"].rank > 0
    assert not any(n.startswith("model.layers.1.mlp.") for n in by_name)
    assert chosen.params_after() <= chosen.target_params
    # without per_group every MLP is a unit, the rank-2 one included
    units = plan(_two_kinds_of_mlp(), config, calibration=calib_tokens, progress=False)
    assert {m.name for m in units.modules if m.name.startswith("model.layers.0.mlp")} == {"model.layers.0.mlp"}

    model, report = compress(_two_kinds_of_mlp(), chosen, calibration=calib_tokens, progress=False)
    assert count_parameters(model) == report.params_after <= report.target_params
    assert isinstance(model.model.layers[0].mlp.gate_proj, InterpolativeLinear)
    assert type(model.model.layers[1].mlp.gate_proj) is nn.Linear
    assert model.model.layers[1].mlp.gate_proj.out_features == by_name["model.layers.1.mlp"].rank
    units_of = {r.name: r.unit for r in report.modules}
    assert units_of["model.layers.0.mlp.down_proj"] == "linear" and units_of["model.layers.1.mlp"] == "mlp"
    assert report.modules and all(r.rel_error < 0.05 for r in report.modules if r.layer in (0, 1)
                                  and r.name.startswith(("model.layers.0.mlp", "model.layers.1.mlp")))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, eval_tokens), _logits(model, eval_tokens))
    # merge folds the factored MLP and pads the cut one to its full width: a stock model
    before = _logits(model, eval_tokens)
    merge(model)
    assert not any(isinstance(m, InterpolativeLinear) for m in model.modules())
    assert set(_widths(model)) == {64} == {model.config.intermediate_size}
    _close(_logits(model, eval_tokens), before)


def test_per_group_needs_the_factored_option_and_free_choices(calib_tokens):
    with pytest.raises(ValueError, match="per_group=True chooses per unit"):
        StructuredConfig(per_group=True, uniform=False)
    with pytest.raises(ValueError, match="uniform=False"):
        StructuredConfig(per_group=True, matrices="interpolative")
    with pytest.raises(TypeError, match="per_group must be a bool"):
        StructuredConfig(per_group=1, matrices="interpolative", uniform=False)
    # version 2 dictionaries read without it
    data = StructuredConfig().to_dict()
    data.pop("per_group")
    assert config_from_dict({**data, "version": 2}).per_group is False
    config = StructuredConfig(reduction=0.1, matrices="interpolative", uniform=False, per_group=True,
                              overrides={r"model\.layers\.0\.mlp\.gate_proj": 4})
    with pytest.raises(ValueError, match="per_group=True leaves to the allocation"):
        plan(make_tiny_llama(), config, calibration=calib_tokens, progress=False)


@pytest.mark.parametrize("units", [("mlp", "vo"), ("heads", "mlp")])
def test_per_group_lists_each_unit_or_its_matrices_never_both(calib_tokens, units):
    model = make_tiny_llama(layers=3)
    p = plan(model, StructuredConfig(reduction=0.3, matrices="interpolative", uniform=False, per_group=True,
                                     units=units), calibration=calib_tokens, progress=False)
    names = {m.name for m in p.modules}
    parents = [f"model.layers.{i}.{part}" for i in range(3) for part in ("mlp", "self_attn")]
    for parent in parents:
        held = [n for n in names if n.startswith(parent + ".")]
        assert not (parent in names and held), (parent, held)
    # every target of the model is in the plan once: as a unit, or as one of its matrices
    covered = {n for n in names if n.count(".") == 4} | {f"{u}.{c}" for u in names if u in parents
                                                         for c, _ in model.get_submodule(u).named_children()
                                                         if c.endswith("proj")}
    assert len(covered) == 7 * 3
    assert p.params_after() <= p.target_params


def _inner_activations(model, tokens):
    """Each layer's inputs of ``down_proj`` (the MLP's inner activations), tokens as rows, float64."""
    inner = {}
    hooks = [layer.mlp.down_proj.register_forward_hook(
        lambda mod, args, out, i=i: inner.setdefault(i, []).append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    return {i: torch.cat(z).double() for i, z in inner.items()}


def test_unit_reports_carry_the_optimum_and_the_optimality_ratio(calib_tokens):
    """Each MLP's report gives the Eckart-Young optimum at its kept width, recomputed here from an
    SVD of the dense model's output ``Z W^T`` (``sequential=False`` fits on those activations,
    unweighted tokens on their plain Gram), and ``rel_error / optimal_error >= 1``; a width at
    least the hidden size makes the optimum 0 and the constant None; a matrix reports neither."""
    config = StructuredConfig(reduction=0.3, matrices="interpolative", uniform=False, sequential=False,
                              token_weighting="none")
    p = plan(make_tiny_llama(layers=3), config, calibration=calib_tokens, progress=False)
    mlps = [m for m in p.modules if m.unit == "mlp"]
    for m, width in zip(mlps, (8, 20, 40)):  # the hidden size is 32
        m.rank = width
    model, report = compress(make_tiny_llama(layers=3), p, calibration=calib_tokens, progress=False)
    inner = _inner_activations(make_tiny_llama(layers=3), calib_tokens)
    dense = make_tiny_llama(layers=3)
    assert any(r.unit == "linear" for r in report.modules)
    for r in report.modules:
        if r.unit == "linear":
            assert r.optimal_error is None and r.optimality_ratio is None
            continue
        W = dense.get_submodule(f"{r.name}.down_proj").weight.detach().double()
        s = torch.linalg.svdvals(inner[r.layer] @ W.T)
        tail = float((s[r.rank:] ** 2).sum() / (s**2).sum()) ** 0.5
        assert r.optimal_error**2 == pytest.approx(tail**2, abs=1e-6)  # the Gram sums float32 products
        if r.rank >= 32:
            assert r.optimal_error == 0.0 and r.rel_error > 1e-3 and r.optimality_ratio is None
        else:
            assert 0.0 < r.optimal_error <= r.rel_error
            assert r.optimality_ratio == pytest.approx(r.rel_error / r.optimal_error) and r.optimality_ratio >= 1.0
    text = report.summary()
    constants = [r.optimality_ratio for r in report.modules if r.optimality_ratio is not None]
    assert f"mlp median {statistics.median(constants):.3g}, max {max(constants):.3g}" in text
    again = json.loads(json.dumps(report.to_dict()))
    assert [m["optimality_ratio"] for m in again["modules"]] == [r.optimality_ratio for r in report.modules]
