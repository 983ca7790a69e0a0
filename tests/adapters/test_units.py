"""adapters.units: which targets form structured units, and what each holds."""

import pytest

from adapters import StructuredConfig
from adapters.targets import survey_targets
from adapters.units import group_units

from conftest import make_tiny_llama


@pytest.mark.parametrize("per_group", [False, True])
def test_units_hold_their_projections_and_per_group_keeps_them_as_matrices(per_group):
    model = make_tiny_llama(layers=2)
    config = StructuredConfig(matrices="interpolative", uniform=not per_group, per_group=per_group, units=("mlp", "vo"))
    found = dict(survey_targets(model, targets=config.targets).found)
    dense = []
    units, members = group_units(model, config, found, dense)
    assert units == {f"model.layers.{i}.{part}": kind for i in range(2)
                     for part, kind in (("self_attn", "vo"), ("mlp", "mlp"))}
    for i in range(2):
        assert sorted(members[f"model.layers.{i}.mlp"]) == [f"model.layers.{i}.mlp.{p}"
                                                             for p in ("down_proj", "gate_proj", "up_proj")]
        assert sorted(members[f"model.layers.{i}.self_attn"]) == [f"model.layers.{i}.self_attn.{p}"
                                                                  for p in ("o_proj", "v_proj")]
        # a unit is recorded at its anchor: the projection whose inputs calibrate it
        assert found[f"model.layers.{i}.mlp"][1] is model.model.layers[i].mlp.down_proj
        assert found[f"model.layers.{i}.self_attn"][1] is model.model.layers[i].self_attn.o_proj
    held = {n for names in members.values() for n in names}
    if per_group:  # the factored option of each unit: its matrices stay targets beside it
        assert held <= set(found)
    else:
        assert not held & set(found)
    assert not dense


def test_dense_matrices_leave_the_rest_with_a_reason():
    model = make_tiny_llama(layers=1)
    found = dict(survey_targets(model, targets="all-linear").found)
    dense = []
    units, _ = group_units(model, StructuredConfig(), found, dense)
    assert units == {"model.layers.0.mlp": "mlp"} and set(found) == {"model.layers.0.mlp"}
    assert sorted(d.name.rsplit(".", 1)[1] for d in dense) == ["k_proj", "o_proj", "q_proj", "v_proj"]
