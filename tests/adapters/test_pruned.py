"""adapters.pruned: cut layers keep their dense layer's type; padding keeps the function whatever act(0)."""

import pytest
import torch
from torch import nn

from adapters.hf_quantizer import CompressedCheckpointConfig
from adapters.layouts import mlp_layout
from adapters.pruned import KEPT, cut_neurons, kept_linear, pad_widths, settle_widths
from adapters.targets import as_linear

Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D


class _Plain(nn.Module):
    """``fc2(act(fc1(x)))`` with biases and ``act(0) = 1``: a padded neuron must read nothing."""

    def __init__(self, hidden=6, width=8):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, width), nn.Linear(width, hidden)

    def forward(self, x):
        return self.fc2(torch.exp(self.fc1(x)))


def _cut(mlp, keep):
    layout = mlp_layout(mlp)
    held = {p: getattr(mlp, p) for p in layout.projections}
    keep = torch.tensor(keep)
    for path, layer in cut_neurons(layout, held, keep, torch.randn(6, len(keep))).items():
        setattr(mlp, path, layer)


def test_padding_a_plain_mlp_with_input_biases_keeps_its_function():
    torch.manual_seed(0)
    model = nn.Sequential(_Plain(), _Plain())
    _cut(model[0], [1, 4, 6])
    _cut(model[1], [0, 2, 3, 5, 7])
    x = torch.randn(3, 6)
    with torch.no_grad():
        before = model(x)
    assert pad_widths(model) == 8  # no config to hold a width: each MLP back to its dense width
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-6, atol=1e-6)
    first = model[0]
    assert first.fc1.out_features == first.fc2.in_features == 8 and not hasattr(first.fc1, "kept_from")
    assert not first.fc1.weight[3:].any() and not first.fc1.bias[3:].any() and not first.fc2.weight[:, 3:].any()
    assert settle_widths(model) is None and pad_widths(model) is None  # nothing cut any more


def test_a_cut_conv1d_stays_conv1d_and_is_recorded_and_rebuilt_in_out_x_in_terms():
    torch.manual_seed(0)
    mlp = nn.Module()
    mlp.c_fc, mlp.c_proj = Conv1D(8, 6), Conv1D(6, 8)  # Conv1D(nf=out, nx=in): weights stored in x out
    dense_fc = as_linear(mlp.c_fc).weight.clone()
    _cut(mlp, [0, 5, 7])
    assert type(mlp.c_fc) is Conv1D and type(mlp.c_proj) is Conv1D
    assert mlp.c_fc.weight.shape == (6, 3) and torch.equal(as_linear(mlp.c_fc).weight, dense_fc[[0, 5, 7]])
    record = CompressedCheckpointConfig.from_model(mlp).modules
    assert record["c_fc"] == {"form": "rows", "out_features": 8, "in_features": 6, "rank": 3, "bias": True}
    assert record["c_proj"] == {"form": "columns", "out_features": 6, "in_features": 8, "rank": 3, "bias": True}
    for name, spec in record.items():
        shell = KEPT[spec["form"]].empty(spec["out_features"], spec["in_features"], spec["rank"], bias=spec["bias"],
                                         slot=Conv1D)
        assert type(shell) is Conv1D
        assert {k: v.shape for k, v in shell.state_dict().items()} == {
            k: v.shape for k, v in getattr(mlp, name).state_dict().items()}


def test_kept_linear_keeps_a_linear_subclass_built_like_nn_linear():
    class Plain(nn.Linear):  # e.g. Falcon's FalconLinear: nn.Linear's constructor, its own forward
        pass

    layer = kept_linear(torch.ones(2, 5), torch.zeros(2), form="rows", shape=(4, 5), slot=Plain)
    assert type(layer) is Plain and layer.kept_from.form == "rows"
