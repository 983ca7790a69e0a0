import copy
import warnings

import pytest
import torch
from torch import nn

from adapters import InterpolativeConfig
from adapters.targets import as_linear, find_targets, from_linear, survey_targets

from conftest import make_tiny_llama


def _names(found):
    return {n.split("layers.", 1)[1] for n in found}


def test_short_names_final_parts_and_full_names():
    model = make_tiny_llama(layers=2)
    assert _names(find_targets(model, targets=["q", "down_proj"])) == {
        "0.self_attn.q_proj", "0.mlp.down_proj", "1.self_attn.q_proj", "1.mlp.down_proj"}
    assert _names(find_targets(model, targets=["model.layers.1.mlp.up_proj"])) == {"1.mlp.up_proj"}


def test_regex_all_linear_exclusions_and_filter():
    model = make_tiny_llama(layers=2)
    everything = find_targets(model, targets="all-linear")
    assert len(everything) == 14 and "lm_head" not in everything
    mlp = find_targets(model, targets=r"model\.layers\.\d+\.mlp\..*", exclude=("down",))
    assert _names(mlp) == {"0.mlp.gate_proj", "0.mlp.up_proj", "1.mlp.gate_proj", "1.mlp.up_proj"}
    assert _names(find_targets(model, targets="all-linear", exclude=r".*\.0\..*", layers=[0, 1])) == {
        n for n in _names(everything) if n.startswith("1.")}
    wide = find_targets(model, filter_fn=lambda mod, fqn: mod.in_features > 32)
    assert _names(wide) == {"0.mlp.down_proj", "1.mlp.down_proj"}


def test_nothing_matched_says_what_exists():
    with pytest.raises(ValueError, match=r"targets=\['fc1'\] matched no linear layer.*'q_proj'.*short names"):
        find_targets(make_tiny_llama(), targets=["fc1"])
    with pytest.raises(ValueError, match=r"Linear modules found.*q_proj"):
        find_targets(make_tiny_llama(), targets=["q"], filter_fn=lambda mod, fqn: False)
    with pytest.raises(ValueError, match=r"layers= must be indices in \[0, 2\)"):
        find_targets(make_tiny_llama(), layers=[5])
    with pytest.raises(TypeError, match="targets must be strings"):
        find_targets(make_tiny_llama(), targets=[3])


def test_unknown_family_lists_modules_and_targets_hint():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.layers = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])

    with pytest.raises(ValueError, match=r"targets=.*Linear modules found.*layers\.\*\.0") as e:
        find_targets(Toy(), layers=[0], exclude=r"layers\.0\..*")
    assert "targets=(" in str(e.value)
    assert set(find_targets(Toy())) == {"layers.0.0", "layers.1.0"}


def test_a_typo_names_the_pattern_and_the_names_there():
    model = make_tiny_llama()
    with pytest.raises(ValueError, match=r"targets=\['q_prj'\] matched no linear layer.*'q_proj'"):
        find_targets(model, targets=["q", "q_prj"])
    with pytest.raises(ValueError, match=r"exclude=\['dwn'\] matched no linear layer.*'down_proj'"):
        find_targets(model, exclude=["dwn"])
    with pytest.raises(ValueError, match=r"targets=\['.*mpl.*'\] matched no linear layer"):
        find_targets(model, targets=r"model\.layers\.\d+\.mpl\..*")


def test_an_already_compressed_model_is_refused_untouched(calib_tokens):
    from adapters import compress, plan

    model, _ = compress(make_tiny_llama(), calibration=calib_tokens, reduction=0.2, progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"already holds \d+ compressed layers.*Compress the original dense model"):
        compress(model, calibration=calib_tokens, reduction=0.1, progress=False)
    with pytest.raises(ValueError, match=r"already holds \d+ compressed layers"):
        compress(model, plan(make_tiny_llama(), calibration=calib_tokens, progress=False), calibration=calib_tokens,
                 progress=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_conv1d_is_read_through_a_transposed_view():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(6, 4)
    lin = as_linear(conv)
    assert lin.weight.shape == (6, 4) and lin.weight.data_ptr() == conv.weight.data_ptr()
    x = torch.randn(3, 4)
    torch.testing.assert_close(lin(x), conv(x))
    with pytest.raises(TypeError, match="register a view of its weight"):
        as_linear(nn.Embedding(3, 4))


def test_from_linear_gives_back_the_architecture_type():
    """A folded layer in a Conv1D slot must become a Conv1D again (issue 24: merged GPT-2
    checkpoints held [out, in] weights where the family stores [in, out])."""
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(6, 4)
    back = from_linear(copy.deepcopy(as_linear(conv)), Conv1D)
    assert type(back) is Conv1D and back.weight.shape == conv.weight.shape == (4, 6)
    assert torch.equal(back.weight, conv.weight) and torch.equal(back.bias, conv.bias)
    lin = nn.Linear(4, 6, bias=False).to(torch.bfloat16)
    half = from_linear(lin, Conv1D)
    assert not half.bias.any() and half.weight.dtype == torch.bfloat16
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    torch.testing.assert_close(half(x), lin(x))
    assert from_linear(lin, nn.Linear) is lin
    with pytest.raises(TypeError, match="DENSE_FROM_LINEAR"):
        from_linear(lin, nn.Embedding)


class _MoEToy(nn.Module):
    """Blocks with a linear router ``gate`` beside ``experts`` (as older MoE implementations)."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"num_hidden_layers": 1})()
        block = nn.Module()
        block.moe = nn.Module()
        block.moe.gate = nn.Linear(8, 4)
        block.moe.experts = nn.ModuleList([nn.Linear(8, 8) for _ in range(4)])
        block.norm = nn.LayerNorm(8)
        self.layers = nn.ModuleList([block])


def test_routers_stay_dense_unless_named():
    toy = _MoEToy()
    survey = survey_targets(toy)
    assert "layers.0.moe.gate" not in survey.found and len(survey.found) == 4
    assert [d.reason for d in survey.dense] == ["router (Linear): kept exact, it decides which experts run"]
    assert set(find_targets(toy, targets=["layers.0.moe.gate"])) == {"layers.0.moe.gate"}


def test_a_pattern_reaching_few_parameters_warns(calib_tokens):
    from adapters import AdaptersWarning, plan

    with pytest.warns(AdaptersWarning, match=r"reach \d+% .*left dense.*mlp\.down_proj \(not in targets=\)"):
        plan(make_tiny_llama(), InterpolativeConfig(targets=r".*\.k_proj", reduction=0.01), calibration=calib_tokens,
             progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdaptersWarning)
        plan(make_tiny_llama(), InterpolativeConfig(targets=["k"], reduction=0.01), calibration=calib_tokens,
             progress=False)
        plan(make_tiny_llama(), InterpolativeConfig(reduction=0.01), calibration=calib_tokens, progress=False)


def test_an_override_that_matches_nothing_is_an_error(calib_tokens):
    from adapters import plan

    with pytest.raises(ValueError, match=r"overrides keys \['dwon_proj'\] match none.*'down_proj'"):
        plan(make_tiny_llama(), InterpolativeConfig(overrides={"dwon_proj": 0.5}), calibration=calib_tokens,
             progress=False)
