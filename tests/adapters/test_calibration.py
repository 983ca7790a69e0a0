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


def test_nonfinite_checked_again_for_each_batch(tiny_llama, calib_tokens):
    """The check runs once per input tensor, and again after ``take()`` (a new batch), even when
    the new batch's tensor reuses the old one's memory."""
    runner = LayerRunner(tiny_llama, prepare_calibration(calib_tokens), progress=False)
    attn = runner.layers[0].self_attn
    mods = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
    x = torch.randn(2, 5, attn.q_proj.in_features)
    with InputRecorder(mods) as rec:
        for m in mods.values():
            m(x)
        assert set(rec.take()) == {"q", "k", "v"}
        x[1, 2, 3] = float("inf")  # same storage, same shape: a cache that outlived take() would miss it
        with pytest.raises(CalibrationError, match="'q'.*NaN or Inf"):
            attn.q_proj(x)


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


def _padded(rows, side, pad_id=0):
    """Pad token rows of different lengths to one batch, as a tokenizer does: ``(ids, mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


def _all_stats(model, batches):
    from adapters.calibration import record_layer

    runner = LayerRunner(model, batches, progress=False)
    hidden, out = runner.hidden, {}
    for i, layer in enumerate(runner.layers):
        mods = {f"{i}.{n}": m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        stats, hidden = record_layer(runner, i, hidden, mods)
        out.update(stats)
    return out


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_changes_no_statistic(tiny_llama, side):
    """Rows of 7, 12 and 20 tokens padded to one batch give the statistics of the unpadded rows."""
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randint(1, 128, (n,), generator=gen) for n in (7, 12, 20)]
    ids, mask = _padded(rows, side)
    plain = _all_stats(tiny_llama, prepare_calibration([r[None] for r in rows]))
    batches = prepare_calibration({"input_ids": ids, "attention_mask": mask})
    assert batches.tokens == batches.rows == 39 and len(batches) == 1
    padded = _all_stats(tiny_llama, batches)
    assert plain.keys() == padded.keys()
    for name in plain:
        assert padded[name].tokens == plain[name].tokens == 39
        scale = float(plain[name].gram.abs().max())
        torch.testing.assert_close(padded[name].gram, plain[name].gram, rtol=1e-4, atol=1e-4 * scale)
    # Ignoring the mask would count the 21 pad tokens (and shift left-padded positions).
    unmasked = _all_stats(tiny_llama, prepare_calibration(ids))
    assert unmasked["0.self_attn.q_proj"].tokens == 60


def test_masks_come_from_lists_of_mappings_and_are_checked():
    ids, mask = _padded([torch.arange(1, 4), torch.arange(1, 6)], "right")
    got = prepare_calibration([{"input_ids": ids, "attention_mask": mask}, {"input_ids": ids.tolist()}])
    assert got.masks[0].dtype == torch.bool and torch.equal(got.masks[0], mask.bool()) and got.masks[1] is None
    assert got.tokens == 8 + 10
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\) but input_ids \(2, 5\)"):
        prepare_calibration({"input_ids": ids, "attention_mask": mask[:, :4]})
    with pytest.raises(ValueError, match=r"rows \[1\] mask every token"):
        prepare_calibration({"input_ids": ids, "attention_mask": torch.tensor([[1, 0, 0, 0, 0], [0] * 5])})
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        prepare_calibration({"input_ids": ids, "attention_mask": mask * 2})
    with pytest.raises(TypeError, match="attention_mask must hold 0/1 integers"):
        prepare_calibration({"input_ids": ids, "attention_mask": mask.float()})


def test_a_short_stream_is_refused_not_reused():
    """600 tokens cannot make 128 windows of 512: the issue's silent reuse is an error."""
    with pytest.raises(CalibrationError, match=r"600 tokens, but nsamples=128 windows of seqlen=512 need 65,536 "
                                               r"distinct tokens.*nsamples=1 \(--nsamples\)"):
        prepare_calibration(torch.arange(600), nsamples=128, seqlen=512)
    got = prepare_calibration(torch.arange(600), nsamples=1, seqlen=512)
    assert got.tokens == got.rows == 512
    # Enough tokens, windows at random starts: overlap is counted once in ``tokens``.
    got = prepare_calibration(torch.arange(100), nsamples=10, seqlen=10, seed=0)
    starts = {int(b[0]) for batch in got for b in batch}
    covered = set().union(*(range(s, s + 10) for s in starts))
    assert got.rows == 100 and got.tokens == len(covered) < 100


@pytest.mark.parametrize("data, kind, match", [
    (torch.tensor([[1, 2, 128]]), CalibrationError, r"must lie in \[0, 128\).*got ids in \[1, 128\]"),
    (torch.tensor([[-1, 2, 3]]), CalibrationError, r"must lie in \[0, 128\).*got ids in \[-1, 3\]"),
    (torch.tensor([[1.0, 2.5]]), TypeError, "integer ids, got dtype torch.float32"),
    ({"input_ids": [[1.0, 2.5]]}, TypeError, "integer ids, got dtype torch.float32"),
    ([torch.tensor([1.0, 2.5])], TypeError, "integer ids"),
])
def test_bad_ids_are_refused_with_what_to_do(data, kind, match):
    with pytest.raises(kind, match=match):
        prepare_calibration(data, vocab_size=128)
