"""StructuredConfig's attention units: whole KV heads ("heads") through plan, compress, checkpoints
and merge."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from adapters import StructuredConfig, compress, count_parameters, merge, plan
from adapters.pruned import cut_heads

from conftest import one_thread_logits
from families import calibration_tokens, make_tiny

D, KV, Q = 8, 4, 8  # the model below: 8 query heads of dimension 8 sharing 4 KV heads (g = 2)


def make_gqa(seed=0, *, layers=3):
    """A random Llama with 4 KV heads of 2 query heads each (the conftest one has 2 KV heads, which
    leaves a whole-head unit a single choice)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=Q, num_key_value_heads=KV, head_dim=D, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _tokens():
    return torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(2))


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=256 * torch.finfo(a.dtype).eps * max(1.0, float(b.abs().max())))


def _fit(uniform, reduction=0.1, seed=0):
    """``(plan, model, report)`` of heads units alone; with ``uniform=False`` the counts are made
    to differ (the first attention keeps one KV head more or less) so that they go through the
    record."""
    p = plan(make_gqa(seed), StructuredConfig(reduction=reduction, units=("heads",), uniform=uniform),
             calibration=calibration_tokens(), progress=False)
    if not uniform and len({m.rank for m in p.modules}) == 1:
        p.modules[0].rank += 1 if p.modules[0].rank < KV - 1 else -1
    model, report = compress(make_gqa(seed), p, calibration=calibration_tokens(), progress=False)
    return p, model, report


def _group_rows(groups, size):
    return torch.cat([torch.arange(j * size, (j + 1) * size) for j in groups])


def _random_heads(report, seed=0):
    """The dense model cut to the same counts at random KV groups, ``o_proj``'s columns kept as
    they are (no refit)."""
    model = make_gqa()
    gen = torch.Generator().manual_seed(seed)
    for r in report.modules:
        attn = model.get_submodule(r.name)
        groups = torch.sort(torch.randperm(KV, generator=gen)[: r.rank]).values
        held = {p: getattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        cols = _group_rows(groups.tolist(), Q // KV * D)
        for name, layer in cut_heads(held, D, groups, attn.o_proj.weight[:, cols]).items():
            setattr(attn, name, layer)
    return model


def test_heads_keep_whole_kv_groups_within_the_budget():
    p, model, report = _fit(False)
    dense = make_gqa()
    assert {r.unit for r in report.modules} == {"heads"} and len(report.modules) == 3
    assert all(r.shape == (KV, D * (2 * 32 + 2 * (32 + 32))) for r in report.modules)
    assert count_parameters(model) == report.params_after == p.params_after() <= report.target_params
    assert len({r.rank for r in report.modules}) == 2  # per-layer counts
    g = Q // KV
    for r in report.modules:
        attn, ref = model.get_submodule(r.name), dense.get_submodule(r.name)
        assert len(r.rows) == r.rank and r.rows == sorted(set(r.rows))
        assert r.cols == _group_rows(r.rows, g * D).tolist()  # o_proj keeps whole groups of columns
        for name, size in (("q_proj", g * D), ("k_proj", D), ("v_proj", D)):  # the dense rows, exactly
            layer = getattr(attn, name)
            rows = _group_rows(r.rows, size)
            assert type(layer) is nn.Linear and torch.equal(layer.weight, getattr(ref, name).weight[rows])
        assert attn.o_proj.weight.shape == (32, r.rank * g * D) and attn.o_proj.refitted
        assert attn.num_key_value_groups == g  # whole groups: the attention's ratio stays
    tokens = _tokens()
    with torch.no_grad():
        ref, got, rnd = (m(tokens).logits for m in (dense, model, _random_heads(report)))
    assert torch.isfinite(got).all() and not torch.equal(got, ref)
    assert (got - ref).norm() < (rnd - ref).norm()  # chosen and refitted beats random and cut


def test_uniform_heads_make_a_stock_checkpoint_that_loads_without_adapters(tmp_path):
    _, model, report = _fit(True)
    k = report.modules[0].rank
    assert {r.rank for r in report.modules} == {k} and 0 < k < KV
    cfg = model.config
    assert (cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim) == (k, k * Q // KV, D)
    assert not any(hasattr(m, "kept_from") for m in model.modules())
    model.save_pretrained(tmp_path / "stock")
    saved = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["num_key_value_heads"] == k and saved["head_dim"] == D
    tokens = _tokens()
    torch.save(tokens, tmp_path / "tokens.pt")
    code = (
        "import sys, torch, transformers\n"
        "torch.set_num_threads(1)\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'stock')!r})\n"
        f"t = torch.load({str(tmp_path / 'tokens.pt')!r})\n"
        "print(m.config.num_key_value_heads, m.model.layers[0].self_attn.q_proj.out_features)\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(t).logits, {str(tmp_path / 'back.pt')!r})\n"
        "assert 'adapters' not in sys.modules and 'curlinalg' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(k), str(k * Q // KV * D)]
    _close(torch.load(tmp_path / "back.pt"), one_thread_logits(model, tokens))


def test_per_layer_heads_round_trip_through_the_record(tmp_path):
    from transformers import AutoModelForCausalLM

    _, model, report = _fit(False)
    model.save_pretrained(tmp_path / "ckpt")
    record = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization_config"]["modules"]
    g = Q // KV
    for r in report.modules:
        assert record[f"{r.name}.q_proj"] == {"form": "rows", "out_features": Q * D, "in_features": 32,
                                              "rank": r.rank * g * D, "bias": False}
        assert record[f"{r.name}.k_proj"]["rank"] == record[f"{r.name}.v_proj"]["rank"] == r.rank * D
        assert record[f"{r.name}.o_proj"] == {"form": "columns", "out_features": 32, "in_features": Q * D,
                                              "rank": r.rank * g * D, "bias": False}
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert all(back.get_submodule(f"{r.name}.o_proj").refitted for r in report.modules)
    tokens = _tokens()
    assert torch.equal(one_thread_logits(back, tokens), one_thread_logits(model, tokens))
    # the KV cache holds each layer's own number of heads: greedy decoding agrees with full forwards
    out = back.generate(tokens[:1, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(back(out).logits[0, 4:-1].argmax(-1), out[0, 5:])


def test_merge_pads_heads_into_a_stock_architecture_with_the_same_function(tmp_path):
    from transformers import LlamaForCausalLM

    _, fitted, report = _fit(False)
    model = copy.deepcopy(fitted)
    tokens = _tokens()
    before = one_thread_logits(model, tokens)
    merge(model)
    # 3 KV heads would make 6 query heads, and LlamaConfig wants hidden_size a multiple of them:
    # the attentions are padded back to the dense count the config already says
    most = max(r.rank for r in report.modules)
    count = most if 32 % (most * Q // KV) == 0 else KV
    assert model.config.num_key_value_heads == count and model.config.head_dim == D
    assert not any(hasattr(m, "kept_from") for m in model.modules())
    g = Q // KV
    for r in report.modules:  # padded heads: zero rows in q, k, v; zero columns in o
        attn = model.get_submodule(r.name)
        assert attn.k_proj.out_features == count * D and attn.o_proj.in_features == count * g * D
        assert not attn.q_proj.weight[r.rank * g * D:].any() and not attn.k_proj.weight[r.rank * D:].any()
        assert not attn.v_proj.weight[r.rank * D:].any() and not attn.o_proj.weight[:, r.rank * g * D:].any()
    _close(one_thread_logits(model, tokens), before)
    model.save_pretrained(tmp_path / "merged")
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    _close(one_thread_logits(LlamaForCausalLM.from_pretrained(tmp_path / "merged"), tokens), before)


def test_merge_pads_to_the_most_kept_heads_when_the_config_takes_it():
    p = plan(make_gqa(), StructuredConfig(reduction=0.1, units=("heads",), uniform=False),
             calibration=calibration_tokens(), progress=False)
    for m, rank in zip(p.modules, (1, 2, 1)):  # 2 KV heads = 4 query heads divide hidden_size 32
        m.rank = rank
    model, _ = compress(make_gqa(), p, calibration=calibration_tokens(), progress=False)
    tokens = _tokens()
    before = one_thread_logits(model, tokens)
    merge(model)
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    assert {layer.self_attn.k_proj.out_features for layer in model.model.layers} == {2 * D}
    _close(one_thread_logits(model, tokens), before)


def test_uniform_chooses_one_width_and_one_head_count_in_one_budget():
    joint = plan(make_gqa(), StructuredConfig(reduction=0.2, uniform=True, units=("mlp", "heads")),
                 calibration=calibration_tokens(), progress=False)
    assert joint.params_after() <= joint.target_params
    heads = {m.rank for m in joint.modules if m.unit == "heads"}
    widths = {m.rank for m in joint.modules if m.unit == "mlp"}
    assert len(heads) == 1 and len(widths) == 1
    assert heads <= {0, 1, 2}  # 3 KV heads (6 query heads) is no Llama config for hidden_size 32
    assert heads != {0}, "the joint choice kept every head; pick a budget where cutting heads pays"


def test_the_uniform_allocator_takes_the_pair_of_least_total_error():
    """Two MLPs of 10 neurons (5 parameters each), two attentions of 4 KV heads (20 each), 60
    parameters to save: every MLP at width 4 costs 0.6, width 8 with 3 KV heads 0.22 (the least),
    width 9 with 2 heads 0.7. Without 3 among the counts the family's config takes, width 4 and
    every head kept wins."""
    from adapters.methods import method_for
    from adapters.planning import _allocate_uniform

    config = StructuredConfig(reduction=0.1, units=("mlp", "heads"))
    method = method_for(config)
    names = ["m0", "m1", "a0", "a1"]
    units = {"m0": "mlp", "m1": "mlp", "a0": "heads", "a1": "heads"}
    methods = {n: method.for_unit(units[n]) for n in names}
    shapes = {"m0": (10, 5), "m1": (10, 5), "a0": (4, 20), "a1": (4, 20)}
    mlp = [(10 - k) / 20 for k in range(1, 10)]
    curves = {"m0": mlp, "m1": mlp, "a0": [0.9, 0.3, 0.01], "a1": [0.9, 0.3, 0.01]}
    assert _allocate_uniform(config, names, units, methods, shapes, curves, 60) == [8, 8, 3, 3]
    assert _allocate_uniform(config, names, units, methods, shapes, curves, 60, head_counts=[1, 2]) == [4, 4, 0, 0]
    with pytest.raises(ValueError, match=r"the smallest \(width 1, 1 KV heads\) saves 210 parameters"):
        _allocate_uniform(config, names, units, methods, shapes, curves, 500)


def test_heads_with_loss_aware_fit_and_allocation_stay_within_the_budget():
    model, report = compress(make_gqa(layers=2), StructuredConfig(reduction=0.1, units=("heads",), uniform=False,
                                                                  loss_aware=("allocation", "fit")),
                             calibration=calibration_tokens(), progress=False)
    assert count_parameters(model) == report.params_after <= report.target_params
    assert {r.unit for r in report.modules} == {"heads"}


def _inputs(model, child, tokens):
    """Each attention's inputs of ``child`` (``o_proj``, ``q_proj``), tokens as rows, float64."""
    seen = {}
    hooks = [getattr(layer.self_attn, child).register_forward_hook(
        lambda mod, args, out, i=i: seen.setdefault(i, []).append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(calibration_tokens())
    for h in hooks:
        h.remove()
    return {i: torch.cat(x).double() for i, x in seen.items()}


def _tail(s, k):
    return float((s[k:] ** 2).sum() / (s**2).sum()) ** 0.5


@pytest.mark.parametrize("unit", ["heads", "vo", "qk"])
def test_attention_units_report_the_optimum_and_the_optimality_ratio(unit):
    """The Eckart-Young optimum at the kept width, recomputed from the dense model's activations
    (``sequential=False``, plain Gram): of the output through ``o_proj`` at the ``o_proj`` columns
    kept (``heads``, ``vo``), of every head's score matrix at twice the pairs kept (``qk``); and
    ``rel_error / optimal_error >= 1``. Keeping at least the hidden size (32) in ``o_proj``
    columns makes the optimum 0 and the constant None."""
    config = StructuredConfig(reduction=0.1, units=(unit,), uniform=False, sequential=False, token_weighting="none")
    p = plan(make_gqa(), config, calibration=calibration_tokens(), progress=False)
    if unit != "qk":  # o_proj columns kept: vo 16, 24, 40 (of Q * D = 64); heads 16, 16, 32
        for m, rank in zip(p.modules, (2, 3, 5) if unit == "vo" else (1, 1, 2)):
            m.rank = rank
    _, report = compress(make_gqa(), p, calibration=calibration_tokens(), progress=False)
    dense = make_gqa()
    X = _inputs(dense, "q_proj" if unit == "qk" else "o_proj", calibration_tokens())
    assert {r.unit for r in report.modules} == {unit}
    for r in report.modules:
        attn = dense.get_submodule(r.name)
        if unit == "qk":
            Wq, Wk = attn.q_proj.weight.detach().double(), attn.k_proj.weight.detach().double()
            keys = [X[r.layer] @ Wk[j * D:(j + 1) * D].T for j in range(KV)]
            s = [torch.linalg.svdvals((X[r.layer] @ Wq[h * D:(h + 1) * D].T) @ keys[h // (Q // KV)].T) for h in range(Q)]
            tail = (sum(float((v[2 * r.rank:] ** 2).sum()) for v in s) / sum(float((v**2).sum()) for v in s)) ** 0.5
        else:
            kept = r.rank * Q if unit == "vo" else r.rank * (Q // KV) * D
            tail = _tail(torch.linalg.svdvals(X[r.layer] @ attn.o_proj.weight.detach().double().T), kept)
            if kept >= 32:
                assert r.optimal_error == 0.0 and r.rel_error > 1e-3 and r.optimality_ratio is None
                continue
        assert r.optimal_error**2 == pytest.approx(tail**2, abs=1e-6)  # the Gram sums float32 products
        assert 0.0 < r.optimal_error <= r.rel_error
        assert r.optimality_ratio == pytest.approx(r.rel_error / r.optimal_error) and r.optimality_ratio >= 1.0


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma2", "mixtral"])
def test_heads_in_other_families_give_a_stock_model(family, tmp_path):
    """Qwen2's q/k/v biases, Qwen3's per-head q/k norms, Gemma 2's soft-capping, Mixtral's routed
    experts left dense (closed again into their fused parameters): one count of KV heads makes
    each its family's own architecture, which loads back with the same logits."""
    make = _qwen2_with_biases if family == "qwen2" else lambda: make_tiny(family)
    dense = make()
    exclude = r".*\.experts\..*" if family == "mixtral" else ()
    model, report = compress(make(), StructuredConfig(reduction=0.04, units=("heads",), exclude=exclude),
                             calibration=calibration_tokens(), progress=False)
    assert {r.rank for r in report.modules} == {1} and model.config.num_key_value_heads == 1
    assert count_parameters(model) == report.params_after <= report.target_params
    tokens = _tokens()
    got = one_thread_logits(model, tokens)
    assert torch.isfinite(got).all() and not torch.equal(got, one_thread_logits(dense, tokens))
    model.save_pretrained(tmp_path / family)
    assert "quantization_config" not in json.loads((tmp_path / family / "config.json").read_text())
    _close(one_thread_logits(type(model).from_pretrained(tmp_path / family), tokens), got)


@pytest.mark.parametrize("family, targets, match", [
    ("phi3", "all-linear",
     r"qkv_proj is a fused query-key-value projection \(Phi3ForCausalLM\), so no whole-head unit"),
    ("llama", ("q", "k", "v"), r"the targets hold \['k_proj', 'q_proj', 'v_proj'\] of model\.layers\.0\.self_attn "
                               r"but not all of \['q_proj', 'k_proj', 'v_proj', 'o_proj'\]"),
    ("gpt_oss", "all-linear", r"model\.layers\.0\.self_attn \(GptOssAttention\) holds parameters of its own "
                              r"\(\['sinks'\]"),
    ("opt", "all-linear", r"the targets hold \['k_proj', 'q_proj', 'v_proj'\] of model\.decoder\.layers\.0\.self_attn"),
])
def test_attentions_without_a_head_unit_are_refused_by_name_before_any_work(family, targets, match):
    model = make_tiny(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match + r".*drop 'heads' from units="):
        compress(model, StructuredConfig(reduction=0.05, units=("heads",), targets=targets), calibration=None,
                 progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_heads_and_value_output_units_cannot_share_an_attention():
    with pytest.raises(ValueError, match=r"asks for 'heads' and 'vo' units of the same attentions.*"
                                         r"a head is kept whole or cut inside"):
        StructuredConfig(units=("mlp", "heads", "vo"))


# ---- query-key units ("qk"): rotary pairs of dimensions per KV group ----

def _qk_fit(model_fn=make_gqa, reduction=0.05):
    model, report = compress(model_fn(), StructuredConfig(reduction=reduction, units=("qk",), uniform=False),
                             calibration=calibration_tokens(), progress=False)
    return model, report


def _dims(layer, heads, d):
    """The kept dimensions of each head of a ScatteredLinear's rows."""
    return [sorted(int(i) % d for i in layer.rows if int(i) // d == h) for h in range(heads)]


def _random_pairs(report, seed=0):
    """The dense model with the same number of random rotary pairs kept per KV group."""
    from adapters.methods import _kept_rows

    model = make_gqa()
    gen = torch.Generator().manual_seed(seed)
    g = Q // KV
    for r in report.modules:
        attn = model.get_submodule(r.name)
        pairs = [torch.randperm(D // 2, generator=gen)[: r.rank] for _ in range(KV)]
        dims = [torch.sort(torch.cat([p, p + D // 2])).values for p in pairs]
        k_rows = torch.cat([j * D + dims[j] for j in range(KV)])
        q_rows = torch.cat([h * D + dims[h // g] for h in range(Q)])
        attn.q_proj, attn.k_proj = _kept_rows(attn.q_proj, q_rows), _kept_rows(attn.k_proj, k_rows)
    return model


def test_qk_keeps_rotary_pairs_shared_by_each_kv_group_within_the_budget():
    from adapters.layer import ScatteredLinear

    model, report = _qk_fit()
    dense = make_gqa()
    assert {r.unit for r in report.modules} == {"qk"}
    assert all(r.shape == (D // 2, 2 * (KV + Q) * 32) for r in report.modules)
    assert count_parameters(model) == report.params_after <= report.target_params
    assert any(0 < r.rank < D // 2 for r in report.modules)
    g = Q // KV
    for r in report.modules:
        attn, ref = model.get_submodule(r.name), dense.get_submodule(r.name)
        q, k = attn.q_proj, attn.k_proj
        assert isinstance(q, ScatteredLinear) and isinstance(k, ScatteredLinear) and type(attn.v_proj) is nn.Linear
        kept = _dims(k, KV, D)
        for dims in kept:  # r pairs (i, i + d/2) per KV head, never one of a pair
            assert len(dims) == 2 * r.rank and all((i + D // 2) % D in dims for i in dims)
        assert _dims(q, Q, D) == [kept[h // g] for h in range(Q)]  # a KV group's query heads keep its pairs
        assert torch.equal(k.weight, ref.k_proj.weight[k.rows]) and torch.equal(q.weight, ref.q_proj.weight[q.rows])
    tokens = _tokens()
    with torch.no_grad():
        ref, got, rnd = (m(tokens).logits for m in (dense, model, _random_pairs(report)))
    assert torch.isfinite(got).all() and not torch.equal(got, ref)
    assert (got - ref).norm() < (rnd - ref).norm()  # the CR choice beats random pairs


def test_qk_predicted_error_is_the_error_of_the_kept_pairs():
    p = plan(make_gqa(), StructuredConfig(reduction=0.05, units=("qk",), uniform=False, sequential=False),
             calibration=calibration_tokens(), progress=False)
    model, report = compress(make_gqa(), p, calibration=calibration_tokens(), progress=False)
    for m, r in zip(p.modules, report.modules):
        if m.rank:
            assert m.predicted_error == pytest.approx(r.rel_error, rel=1e-9)
            assert 0.0 <= r.rel_error


def _qwen2_with_biases():
    """Qwen2 (q/k/v biases), its biases drawn at random (its init zeroes them)."""
    model = make_tiny("qwen2")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen))
    return model


def test_qk_with_biases_zeroes_the_dropped_entries_and_round_trips(tmp_path):
    dense = _qwen2_with_biases()
    model, report = compress(_qwen2_with_biases(), StructuredConfig(reduction=0.05, units=("qk",), uniform=False),
                             calibration=calibration_tokens(), progress=False)
    for r in report.modules:
        k, ref = model.get_submodule(r.name).k_proj, dense.get_submodule(r.name).k_proj
        dropped = torch.ones(k.out_features, dtype=torch.bool)
        dropped[k.rows] = False
        assert torch.equal(k.bias[k.rows], ref.bias[k.rows]) and not k.bias[dropped].any()
    tokens = _tokens()
    before = one_thread_logits(model, tokens)
    model.save_pretrained(tmp_path / "qk")
    record = json.loads((tmp_path / "qk" / "config.json").read_text())["quantization_config"]["modules"]
    assert record[f"{report.modules[0].name}.k_proj"]["form"] == "scattered"
    assert torch.equal(one_thread_logits(type(model).from_pretrained(tmp_path / "qk"), tokens), before)
    merge(model)
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    _close(one_thread_logits(model, tokens), before)


@pytest.mark.parametrize("family, targets, match", [
    ("qwen3", "all-linear", r"model\.layers\.0\.self_attn \(Qwen3Attention\) holds \['q_norm', 'k_norm'\]"),
    ("opt", "all-linear", r"\(OPTAttention\) has no rotate_half rotary embedding in transformers\.models\.opt"),
    ("phi3", "all-linear", r"qkv_proj is a fused query-key-value projection \(Phi3ForCausalLM\), so no query-key unit"),
    ("llama", ("q", "v"), r"the targets hold \['q_proj'\] of model\.layers\.0\.self_attn but not all of"),
])
def test_attentions_without_a_query_key_unit_are_refused_by_name(family, targets, match):
    model = make_tiny(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match + r".*drop 'qk' from units="):
        compress(model, StructuredConfig(reduction=0.01, units=("qk",), targets=targets), calibration=None,
                 progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_query_key_and_value_output_units_are_not_built_together_yet():
    with pytest.raises(ValueError, match=r"asks for 'vo' and 'qk' units of the same attentions"):
        StructuredConfig(units=("vo", "qk"))
