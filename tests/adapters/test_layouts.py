"""adapters.layouts: every family's MLP layout is found; gated MLPs' interpolative gate/up return
the transposed view for long inputs."""

import pytest
import torch
from torch import nn

from adapters import InterpolativeConfig, compress, load_compressed, save_compressed
from adapters.layer import TRANSPOSED_FROM, InterpolativeLinear
from adapters.calibration import find_decoder_layers
from adapters.experts import open_experts
from adapters.layouts import GATED_MLP, MLP_LAYOUTS, MLP_MATRIX_NAMES, find_mlps, mark_feature_major, mlp_layout

from conftest import make_tiny_llama
from families import FAMILIES, make_tiny


def _marked(model):
    return sorted(n for n, m in model.named_modules() if getattr(m, "feature_major_output", False))


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module")
def compressed():
    calib = torch.randint(0, 128, (16, 32), generator=torch.Generator().manual_seed(1))
    model, _ = compress(make_tiny_llama(), InterpolativeConfig(reduction=0.3), calibration=calib, progress=False)
    return model


def test_compress_marks_exactly_the_gated_mlps_interpolative_gate_and_up(compressed):
    expected = sorted(f"model.layers.{i}.mlp.{a}" for i in range(len(compressed.model.layers)) for a in GATED_MLP[:2]
                      if isinstance(compressed.get_submodule(f"model.layers.{i}.mlp.{a}"), InterpolativeLinear))
    assert expected and _marked(compressed) == expected
    assert not any(getattr(compressed.get_submodule(n), "feature_major_output", False)
                   for n, m in compressed.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")))


def test_long_inputs_give_the_logits_of_the_copying_layout(compressed):
    tokens = torch.randint(3, 128, (2, TRANSPOSED_FROM), generator=torch.Generator().manual_seed(3))
    seen = {}

    def record(name):
        def hook(mod, args, out):
            seen[name] = out.is_contiguous()  # returns None: the output is kept
        return hook

    hooks = [compressed.get_submodule(n).register_forward_hook(record(n)) for n in _marked(compressed)]
    try:
        fast = _logits(compressed, tokens)
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen.values())  # the marked layers did skip their copy
    names = _marked(compressed)
    for n in names:
        compressed.get_submodule(n).feature_major_output = False
    try:
        copied = _logits(compressed, tokens)
    finally:
        for n in names:
            compressed.get_submodule(n).feature_major_output = True
    torch.testing.assert_close(fast, copied, rtol=1e-5, atol=1e-6)


def test_a_loaded_checkpoint_is_marked_as_the_saved_model(compressed, tmp_path):
    save_compressed(compressed, tmp_path / "m")
    back = load_compressed(tmp_path / "m")
    assert _marked(back) == _marked(compressed)


def test_only_modules_holding_all_three_are_gated_mlps():
    torch.manual_seed(0)
    layer = InterpolativeLinear.from_linear(nn.Linear(8, 6), rows=[0, 2], P=torch.randn(4, 2))
    partial = nn.Module()
    partial.gate_proj, partial.up_proj = layer, nn.Linear(8, 6)  # no down_proj: not a gated MLP
    assert mark_feature_major(partial) == [] and not layer.feature_major_output
    partial.down_proj = nn.Linear(6, 8)
    assert mark_feature_major(partial) == ["gate_proj"] and layer.feature_major_output


# ---- MLP layouts: one description per layout, found in every family ----

#: family -> (layout name, how the MLP's module is named below the layer); routed experts have none.
_MLP_OF = {
    "phi3": ("fused gated", "mlp"), "gpt2": ("conv1d", "mlp"), "opt": ("fc", ""), "gpt_neox": ("h_to_4h", "mlp"),
    "falcon": ("h_to_4h", "mlp"), "bert": ("intermediate-output", ""), "roberta": ("intermediate-output", ""),
    "qwen2_moe": ("gated", "mlp.shared_expert"), "mixtral": None, "qwen3_moe": None, "gpt_oss": None,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_find_mlps_gives_every_family_its_layout(family):
    model = make_tiny(family)
    opened = open_experts(model)  # as the planner sees them: routed experts are ExpertLinears
    prefix, layers = find_decoder_layers(model)
    expected = _MLP_OF.get(family, ("gated", "mlp"))
    found = {name: layout.name for name, layout in find_mlps(model).items()}
    if expected is None:
        assert opened and found == {}
        return
    kind, below = expected
    assert found == {".".join(filter(None, (f"{prefix}.{i}", below))): kind for i in range(len(layers))}


def test_a_layout_is_held_only_by_plain_linears_of_matching_widths():
    layout = next(lay for lay in MLP_LAYOUTS if lay.name == "fused gated")
    mlp = nn.Module()
    mlp.gate_up_proj, mlp.down_proj = nn.Linear(4, 12, bias=True), nn.Linear(6, 4)
    assert mlp_layout(mlp) is layout and layout.width(mlp) == 6
    assert layout.per_neuron(mlp) == 2 * (4 + 1) + 4  # a row and a bias entry of gate and of up, a column of down
    assert layout.rows(torch.tensor([0, 2]), 6).tolist() == [0, 2, 6, 8]  # the gate rows, then the up rows
    mlp.down_proj = nn.Linear(5, 4)  # 12 rows are not [gate; up] of 5 neurons
    assert mlp_layout(mlp) is None
    mlp.down_proj = InterpolativeLinear.from_linear(nn.Linear(6, 4), rows=[0, 1], P=torch.randn(2, 2))
    assert mlp_layout(mlp) is None  # a factored layer is no neuron unit's


def test_every_mlp_matrix_name_of_a_layout_is_listed_unless_attention_shares_it():
    finals = {p.rpartition(".")[2] for lay in MLP_LAYOUTS for p in lay.projections}
    assert finals - set(MLP_MATRIX_NAMES) == {"c_proj", "dense"}  # GPT-2's and BERT's attention outputs too
