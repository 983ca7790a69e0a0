import pytest
import torch

from adapters.calibration import (
    CalibrationError,
    InputRecorder,
    LayerRunner,
    accumulate_statistics,
    prepare_calibration,
    token_weights,
)


class _Tok:
    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = torch.tensor([[ord(c) % 128 for c in text]])
        return {"input_ids": ids}


def test_prepare_calibration_kinds_and_seed():
    stream = torch.arange(1000)
    a = prepare_calibration(stream, nsamples=6, seqlen=10, batch_size=4, seed=3)
    b = prepare_calibration(stream, nsamples=6, seqlen=10, batch_size=4, seed=3)
    assert [x.shape for x in a] == [(4, 10), (2, 10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(prepare_calibration(torch.zeros(5, 7, dtype=torch.long), batch_size=2)) == 3
    text = prepare_calibration("hello world " * 20, tokenizer=_Tok(), nsamples=2, seqlen=8)
    assert text[0].shape == (2, 8)
    assert len(prepare_calibration([{"input_ids": torch.zeros(1, 4, dtype=torch.long)}, torch.zeros(4, dtype=torch.long)])) == 2
    with pytest.raises(TypeError, match="integer ids"):
        prepare_calibration([torch.zeros(1, 4)])


def test_prepare_calibration_errors():
    with pytest.raises(TypeError, match="tokenizer"):
        prepare_calibration("some text")
    with pytest.raises(CalibrationError, match="more than seqlen"):
        prepare_calibration(torch.arange(5), seqlen=8)
    with pytest.raises(TypeError, match="calibration must be"):
        prepare_calibration(3.0)
    with pytest.raises(CalibrationError, match="empty"):
        prepare_calibration([])


def test_statistics_match_direct_computation(tiny_llama, calib_tokens):
    batches = prepare_calibration(calib_tokens, batch_size=4)
    runner = LayerRunner(tiny_llama, batches, progress=False)
    layer = runner.layers[0]
    mods = {"q": layer.self_attn.q_proj, "k": layer.self_attn.k_proj, "down": layer.mlp.down_proj}
    stats = {}
    xs = []
    with InputRecorder(mods) as rec:
        for h, kw in zip(runner.hidden, runner.kwargs):
            layer(h, **kw)
            got = rec.take()
            xs.append(got["q"].double())
            accumulate_statistics(stats, got)
    X = torch.cat(xs)
    torch.testing.assert_close(stats["q"].gram, X.T @ X, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["q"].sq_sum, (X * X).sum(0), rtol=1e-5, atol=1e-5)
    assert stats["q"] is stats["k"]
    assert stats["down"] is not stats["q"]
    assert stats["q"].tokens == calib_tokens.numel()


def test_nonfinite_activation_raises(tiny_llama, calib_tokens):
    runner = LayerRunner(tiny_llama, prepare_calibration(calib_tokens), progress=False)
    layer = runner.layers[0]
    h = runner.hidden[0].clone()
    h[0, 0, 0] = float("nan")
    with InputRecorder({"model.layers.0.mlp.down_proj": layer.mlp.down_proj}):
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            layer(h, **runner.kwargs[0])


def test_norm_weighting_counts_every_token_equally():
    """With ``weighting="norm"`` a token scaled by 1000 weighs what it did unscaled."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 6, generator=gen)
    big = X.clone()
    big[0] *= 1000.0
    ref = torch.randn(50, 6, generator=gen)
    plain, normed, normed_big = {}, {}, {}
    accumulate_statistics(plain, {"a": big})
    accumulate_statistics(normed, {"a": X}, reference={"a": ref}, weighting="norm")
    accumulate_statistics(normed_big, {"a": big}, reference={"a": ref}, weighting="norm")
    # Plain covariance: the scaled token holds nearly all of the trace.
    share = float(big[0].double().norm() ** 2 / torch.trace(plain["a"].gram))
    assert share > 0.99
    # Normalised: sum_t x_t x_t^T / ||x_t||^2 up to one common factor, the same with or without
    # the outlier (its row is x_0 either way after normalisation).
    d = X.double().norm(dim=1) ** 2
    direct = (X.double() / d[:, None]).T @ X.double()
    g = normed["a"].gram
    torch.testing.assert_close(g / g.trace(), direct / direct.trace(), rtol=1e-5, atol=1e-7)
    gb = normed_big["a"].gram
    torch.testing.assert_close(gb / gb.trace(), g / g.trace(), rtol=1e-4, atol=1e-6)
    cross = (X.double() / d[:, None]).T @ ref.double()
    torch.testing.assert_close(normed["a"].cross / g.trace(), cross / direct.trace(), rtol=1e-5, atol=1e-7)
    assert token_weights(X, "none") is None
    with pytest.raises(ValueError, match="token weighting must be one of"):
        token_weights(X, "cap")


def test_clip_weighting_only_caps_heavy_tokens():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(41, 5, generator=gen)
    X[3] *= 500.0
    w = token_weights(X, "clip")
    sq = (X * X).sum(1)
    med = sq.median()
    assert torch.all(w <= 1.0) and torch.all(w[sq <= med] == 1.0)
    torch.testing.assert_close(w[3] * sq[3], med)
    heavy = sq > med
    torch.testing.assert_close(w[heavy] * sq[heavy], med.expand(int(heavy.sum())))


@pytest.mark.parametrize("weighting", ["norm", "clip"])
def test_zero_token_gets_zero_weight_not_nan(weighting):
    X = torch.randn(10, 4) * 100.0
    X[2] = 0.0
    w = token_weights(X, weighting)
    assert torch.isfinite(w).all() and w[2] == 0.0
