import pytest
from torch import nn

from adapters.targets import find_targets

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
