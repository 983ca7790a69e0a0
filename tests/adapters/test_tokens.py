import pytest
import torch

from adapters.calibration import CalibrationError, prepare_calibration
from adapters.eval import load_wikitext2
from adapters.tokens import EvaluationOverlapError, TokenBatches, token_ids


class _Tok:
    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [ord(c) % 128 for c in text[:5000]]
        return {"input_ids": torch.tensor([([1] if add_special_tokens else []) + ids])}


def test_kinds():
    assert token_ids(torch.arange(5)).dtype == torch.int64
    assert token_ids("abc", tokenizer=_Tok()).tolist() == [97, 98, 99]
    assert token_ids("abc", tokenizer=_Tok(), special_tokens=True).tolist() == [1, 97, 98, 99]
    assert token_ids(["a", "b"], tokenizer=_Tok()).tolist() == [97, 10, 10, 98]
    assert [b.shape for b in token_ids([torch.zeros(3, dtype=torch.long)])] == [(1, 3)]
    assert [b.shape for b in token_ids(iter([{"input_ids": torch.zeros(2, 3, dtype=torch.long)}]))] == [(2, 3)]
    with pytest.raises(TypeError, match="integer ids"):
        token_ids(torch.zeros(3))
    with pytest.raises(TypeError, match="tokenizer= is needed"):
        token_ids("text")
    with pytest.raises(TypeError, match="must be a string"):
        token_ids(3.0)


def test_evaluation_text_is_refused_everywhere():
    split = load_wikitext2()
    with pytest.raises(EvaluationOverlapError, match="evaluation split"):
        token_ids(split.eval_text[:20000], tokenizer=_Tok())
    with pytest.raises(CalibrationError, match="evaluation split"):
        prepare_calibration(split.eval_text[:20000], tokenizer=_Tok(), nsamples=2, seqlen=8)
    assert prepare_calibration(split.calibration_text[:20000], tokenizer=_Tok(), nsamples=2, seqlen=8)[0].shape == (2, 8)
    assert token_ids(split.eval_text[:20000], tokenizer=_Tok(), check_overlap=False).numel() > 0


def test_batches_are_reproducible_from_the_generator():
    stream = torch.arange(100)
    a = TokenBatches(stream, batch_size=2, seqlen=5, generator=torch.Generator().manual_seed(0))
    b = TokenBatches(stream, batch_size=2, seqlen=5, generator=torch.Generator().manual_seed(0))
    c = TokenBatches(stream, batch_size=2, seqlen=5, generator=torch.Generator().manual_seed(1))
    x, y, z = a.next(), b.next(), c.next()
    assert x.shape == (2, 5) and torch.equal(x, y) and not torch.equal(x, z)
    once = TokenBatches(iter([torch.zeros(1, 4, dtype=torch.long)]), batch_size=1, seqlen=4, generator=None)
    assert once.next() is not None and once.next() is None
