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


# torch.compile (issue 24, item 6): a compressed model is one graph, whatever its ranks.

_CALIB = torch.randint(3, 128, (16, 32), generator=torch.Generator().manual_seed(1))


def _compressed_for_compile(config):
    from adapters import compress

    from conftest import make_tiny_llama

    model, _ = compress(make_tiny_llama(layers=3), config, calibration=_CALIB, progress=False)
    ranks = {m.rank for m in model.modules() if hasattr(m, "rank") and isinstance(m, nn.Module)}
    assert len(ranks) > 1  # layers of different ranks: the case that recompiled per layer
    return model


def _configs():
    from adapters import CURConfig, InterpolativeConfig, StructuredConfig, SVDConfig

    return {
        "interpolative": InterpolativeConfig(reduction=0.3),
        "cur": CURConfig(reduction=0.3),
        "svd": SVDConfig(reduction=0.3),
        "structured-vo": StructuredConfig(reduction=0.1, units=("vo",)),
    }


@pytest.mark.parametrize("form", ["interpolative", "cur", "svd", "structured-vo"])
def test_compiled_model_is_one_graph_per_input_length_with_the_eager_logits(form):
    """``torch.compile(fullgraph=True)`` after an eager call (the data-pointer check of the
    cached order used to break the graph), short inputs (the gather) and long ones (rows of
    ``y^T``): no graph break, one graph per code path, not one per layer; Dynamo's eager
    backend runs the traced graph with the same kernels, so the logits are bitwise equal."""
    from torch._dynamo.utils import counters

    model = _compressed_for_compile(_configs()[form])
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        for seed, length in enumerate((16, TRANSPOSED_FROM + 16)):
            tokens = torch.randint(3, 128, (2, length), generator=torch.Generator().manual_seed(seed))
            eager = model(tokens).logits
            assert torch.equal(compiled(tokens).logits, eager)
    # with fullgraph each compilation of the model's forward is one graph: one per code path,
    # below the recompile limit Dynamo applies to a frame (before, it was hit inside the layers)
    assert counters["stats"]["unique_graphs"] <= 2 < torch._dynamo.config.recompile_limit
    assert not counters["graph_break"]


def test_dynamo_without_fullgraph_neither_breaks_nor_recompiles_per_layer():
    """Without ``fullgraph`` a graph break used to resume inside each layer's ``forward``, whose
    frames then recompiled for every rank ("'rest' size mismatch") until the recompile limit
    left the later layers uncompiled."""
    from torch._dynamo.utils import counters

    model = _compressed_for_compile(_configs()["interpolative"])
    torch._dynamo.reset()
    counters.clear()
    tokens = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(tokens).logits  # as a user would, before compiling
        assert torch.equal(torch.compile(model, backend="eager")(tokens).logits, eager)
    assert counters["frames"]["total"] == counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_inductor_compiled_model_gives_the_eager_logits_to_rounding():
    """The default backend (inductor) fuses and reorders float32 sums, so the logits match to
    rounding: each logit is a chain of dot products of at most ``n = 64`` terms per block, whose
    reassociation moves it by at most about ``n`` units in the last place of the largest
    intermediate; allowed: ``n`` ulps of the largest logit (the activations here are of its
    order)."""
    import shutil

    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("inductor needs a C++ compiler on CPU")
    model = _compressed_for_compile(_configs()["interpolative"])
    torch._dynamo.reset()
    tokens = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(tokens).logits
        got = torch.compile(model, fullgraph=True)(tokens).logits
    n = 64
    tol = n * torch.finfo(eager.dtype).eps * float(eager.abs().max())
    torch.testing.assert_close(got, eager, rtol=0, atol=tol)


def test_interpolative_order_is_a_derived_buffer_rebuilt_where_indices_are_written():
    """``order`` is not saved (the checkpoint keeps ``rows``/``rest``), follows ``.to()``, and is
    recomputed by ``load_state_dict`` and by :meth:`rebuild_order` after an in-place write."""
    torch.manual_seed(6)
    lin = nn.Linear(6, 5, bias=False).double()
    layer = InterpolativeLinear.from_linear(lin, rows=[3, 1], P=torch.randn(3, 2, dtype=torch.float64))
    assert "order" not in layer.state_dict() and torch.equal(layer.order, torch.argsort(torch.cat((layer.rows, layer.rest))))
    other = InterpolativeLinear.from_linear(lin, rows=[0, 4], P=torch.randn(3, 2, dtype=torch.float64))
    layer.rows.copy_(other.rows)
    layer.rest.copy_(other.rest)
    layer.P.data.copy_(other.P)
    layer.R.data.copy_(other.R)
    layer.rebuild_order()
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ other.weight_product().T)
    shell = InterpolativeLinear.empty(5, 6, 2, bias=False, device="meta")
    assert shell.order.is_meta
    shell.load_state_dict(other.state_dict(), assign=True)
    assert torch.equal(shell.order, other.order)
