import pytest
import torch
from torch import nn

from adapters.layer import (
    CURLinear,
    TRANSPOSED_FROM,
    InterpolativeLinear,
    break_even_rank,
    cur_params,
    interpolative_break_even_rank,
    interpolative_params,
)


def test_break_even_rank_is_largest_strictly_smaller():
    for m, n in [(576, 576), (192, 576), (1536, 576), (4096, 14336), (3, 2), (1, 1)]:
        r = break_even_rank(m, n)
        assert r == 0 or cur_params(m, n, r) < m * n
        assert cur_params(m, n, r + 1) >= m * n


def test_from_linear_matches_cut_product_and_counts_all_factors():
    torch.manual_seed(0)
    lin = nn.Linear(12, 8, bias=True)
    rows, cols = torch.tensor([0, 3, 5]), torch.tensor([1, 2, 7])
    U = torch.randn(3, 3)
    layer = CURLinear.from_linear(lin, rows=rows, cols=cols, U=U)
    W = lin.weight.detach()
    expected = W[:, cols] @ U @ W[rows, :]
    torch.testing.assert_close(layer.weight_product(), expected)
    x = torch.randn(4, 5, 12)
    torch.testing.assert_close(layer(x), x @ expected.T + lin.bias, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) == cur_params(8, 12, 3) + 8
    assert not isinstance(layer, nn.Linear)
    assert "rank=3" in repr(layer)


def test_to_linear_folds_back():
    torch.manual_seed(1)
    layer = CURLinear(torch.randn(6, 2), torch.randn(2, 2), torch.randn(2, 4), bias=torch.randn(6))
    lin = layer.to_linear()
    x = torch.randn(3, 4)
    torch.testing.assert_close(lin(x), layer(x), rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="matching r"):
        CURLinear(torch.randn(6, 2), torch.randn(3, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="bias must have shape"):
        CURLinear(torch.randn(6, 2), torch.randn(2, 2), torch.randn(2, 4), bias=torch.randn(5))
    with pytest.raises(TypeError, match="2-D weight"):
        CURLinear.from_linear(nn.ReLU(), rows=[0], cols=[0], U=torch.ones(1, 1))


def test_interpolative_break_even_is_every_rank_below_min_dim():
    for m, n in [(576, 576), (192, 576), (1536, 576), (3, 2), (1, 1)]:
        r = interpolative_break_even_rank(m, n)
        assert r == min(m, n) - 1
        assert all(interpolative_params(m, n, k) < m * n for k in range(1, r + 1))
        assert interpolative_params(m, n, r + 1) >= m * n
        # r^2 fewer than a rank-r SVD, 2 r^2 fewer than a rank-r CUR
        assert interpolative_params(m, n, 7) == cur_params(m, n, 7) - 2 * 49


def test_interpolative_layer_keeps_rows_exactly_and_interpolates_the_rest():
    torch.manual_seed(3)
    lin = nn.Linear(10, 7, bias=True)
    rows = torch.tensor([5, 1, 3])
    P = torch.randn(4, 3)
    layer = InterpolativeLinear.from_linear(lin, rows=rows, P=P)
    W = lin.weight.detach()
    expected = torch.empty(7, 10)
    expected[rows] = W[rows]
    rest = torch.tensor([0, 2, 4, 6])
    expected[rest] = P @ W[rows]
    torch.testing.assert_close(layer.weight_product(), expected)
    x = torch.randn(2, 3, 10)
    y = layer(x)
    torch.testing.assert_close(y, x @ expected.T + lin.bias, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[..., rows], lin(x)[..., rows], rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in layer.parameters()) == interpolative_params(7, 10, 3) + 7
    torch.testing.assert_close(layer.to_linear()(x), y, rtol=1e-5, atol=1e-5)
    assert "form=interpolative" in repr(layer) and "rank=3" in repr(layer)
    y.sum().backward()
    assert layer.P.grad is not None and layer.R.grad is not None


@pytest.mark.parametrize("tokens", [1, 5, TRANSPOSED_FROM - 1, TRANSPOSED_FROM, 3 * TRANSPOSED_FROM])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("feature_major", [False, True], ids=["copied", "feature-major"])
def test_interpolative_forward_and_gradients_match_the_weight_product(tokens, bias, feature_major):
    """Every output placement (the gather along the last dimension, rows of ``y^T`` copied into
    place, or returned as the transposed view) gives ``x W^T + b`` with ``W`` the weight product,
    and the gradients of the dense layer."""
    torch.manual_seed(4)
    lin = nn.Linear(12, 9, bias=bias).double()
    layer = InterpolativeLinear.from_linear(lin, rows=[7, 0, 4, 2], P=torch.randn(5, 4, dtype=torch.float64))
    layer.feature_major_output = feature_major
    dense = layer.to_linear()
    x = torch.randn(tokens, 12, dtype=torch.float64).reshape(1, tokens, 12)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = layer(x1)
    torch.testing.assert_close(y, dense(x2), rtol=1e-12, atol=1e-12)
    long = tokens >= TRANSPOSED_FROM
    assert y.shape == (1, tokens, 9) and y.is_contiguous() is not (feature_major and long)
    if feature_major and long:  # the transposed view of one contiguous (out x tokens) buffer
        assert y.stride() == (tokens, 1, tokens) and y.reshape(tokens, 9).t().is_contiguous()
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (dense(x2) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    W = layer.weight_product().detach().requires_grad_()
    (gW,) = torch.autograd.grad((x.reshape(-1, 12) @ W.T * g.reshape(-1, 9)).sum(), W)
    rows, rest, P, R = layer.rows, layer.rest, layer.P.detach(), layer.R.detach()
    torch.testing.assert_close(layer.R.grad, gW[rows] + P.T @ gW[rest], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.P.grad, gW[rest] @ R.T, rtol=1e-10, atol=1e-10)
    assert sorted(layer.state_dict()) == (
        ["P", "R", "bias", "rest", "rows"] if bias else ["P", "R", "rest", "rows"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(P=torch.randn(4, 3), R=torch.randn(2, 10), rows=[0, 1]), "matching r"),
        (dict(P=torch.randn(4, 3), R=torch.randn(3, 10), rows=[0, 1, 1]), "distinct indices"),
        (dict(P=torch.randn(4, 3), R=torch.randn(3, 10), rows=[0, 1, 7]), "distinct indices"),
        (dict(P=torch.randn(4, 3), R=torch.randn(3, 10), rows=[0, 1]), "distinct indices"),
        (dict(P=torch.randn(4, 3), R=torch.randn(3, 10), rows=[0, 1, 2], bias=torch.randn(4)), "bias must"),
    ],
)
def test_interpolative_bad_input_raises(kwargs, match):
    P, R = kwargs.pop("P"), kwargs.pop("R")
    with pytest.raises(ValueError, match=match):
        InterpolativeLinear(P, R, **kwargs)


@pytest.mark.parametrize("form", ["cur", "interpolative"])
@pytest.mark.parametrize("bias", [False, True])
def test_empty_matches_a_built_layer_and_allocates_nothing_on_meta(form, bias):
    from adapters.layer import LAYERS

    lin = torch.nn.Linear(6, 4, bias=bias)
    built = (CURLinear.from_linear(lin, rows=[0, 2], cols=[1, 5], U=torch.eye(2)) if form == "cur"
             else InterpolativeLinear.from_linear(lin, rows=[0, 2], P=torch.ones(2, 2)))
    shell = LAYERS[form].empty(4, 6, 2, bias=bias, dtype=torch.bfloat16, device="meta")
    got = {k: (tuple(t.shape), t.dtype, t.device.type) for k, t in shell.state_dict().items()}
    want = {k: (tuple(t.shape), torch.bfloat16 if t.is_floating_point() else t.dtype, "meta")
            for k, t in built.state_dict().items()}
    assert got == want
    assert (shell.out_features, shell.in_features, shell.rank) == (4, 6, 2)


def test_empty_refuses_ranks_the_form_cannot_hold():
    with pytest.raises(ValueError, match="rank >= 1"):
        CURLinear.empty(4, 6, 0, bias=False)
    with pytest.raises(ValueError, match="0 < rank < min"):
        InterpolativeLinear.empty(4, 6, 4, bias=False)


def test_interpolative_gather_order_follows_the_buffers():
    """The decoding path's gather order is derived from ``rows``/``rest``, never stale: a load in
    place or a move recomputes it."""
    torch.manual_seed(5)
    lin = nn.Linear(6, 5, bias=False).double()
    layer = InterpolativeLinear.from_linear(lin, rows=[3, 1], P=torch.randn(3, 2, dtype=torch.float64))
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.weight_product().T)
    other = InterpolativeLinear.from_linear(lin, rows=[0, 4], P=torch.randn(3, 2, dtype=torch.float64))
    layer.load_state_dict(other.state_dict())  # copies into the same buffers
    torch.testing.assert_close(layer(x), x @ other.weight_product().T)
    moved = layer.to(torch.float32)
    torch.testing.assert_close(moved(x.float()), x.float() @ other.weight_product().float().T)
