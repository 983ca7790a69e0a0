"""The one parser of token input (calibration, healing, evaluation), with the evaluation-overlap check."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Iterator, Mapping

import torch

from .wikitext import load_wikitext2, split_articles

__all__ = [
    "EvaluationOverlapError", "TokenBatches", "as_batch", "as_masked_batch", "check_not_evaluation_text", "token_ids",
]

_ERR_KIND = (
    "{what} must be a string or list of strings (with tokenizer=), a 1-D token stream or 2-D "
    "(samples x seqlen) int64 tensor, or an iterable of token batches (tensors or dicts with "
    "'input_ids'); got {kind}"
)
_ERR_EVAL_SPLIT = (
    "{what} contains text of the WikiText-2 evaluation split (articles holding the first 75% of "
    "the tokens of adapters/data/wiki.test.raw); using it would make the evaluation "
    "meaningless. Pass load_wikitext2(tokenizer=tok).calibration_text instead"
)


class EvaluationOverlapError(ValueError):
    """Text meant for calibration or healing contains an article of the evaluation split."""


@lru_cache(maxsize=1)
def _eval_probes() -> tuple[str, ...]:
    # The opening of every evaluation article's body: a text that holds any whole evaluation
    # article holds one of these.
    probes = []
    for article in split_articles(load_wikitext2().eval_text):
        body = article.split("\n", 2)[-1].strip()
        if len(body) >= 200:
            probes.append(body[:200])
    return tuple(probes)


def check_not_evaluation_text(text: str, /, *, what: str = "data") -> None:
    """Raise :class:`EvaluationOverlapError` if ``text`` holds a whole evaluation article."""
    if any(p in text for p in _eval_probes()):
        raise EvaluationOverlapError(_ERR_EVAL_SPLIT.format(what=what))


def _check_ids(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what}: token tensors must hold integer ids, got dtype {t.dtype}; pass ids, not embeddings")
    return t.long()


def as_batch(item, /, *, what: str = "data") -> torch.Tensor:
    """One batch of an iterable: a token tensor or a dict with ``input_ids``, as ``(batch, seqlen)``."""
    return as_masked_batch(item, what=what)[0]


def as_masked_batch(item, /, *, what: str = "data") -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch and its attention mask: ``(ids, mask)``, both ``(batch, seqlen)``, mask None if absent.

    ``item`` is a token tensor, or a mapping (a dict, a tokenizer's ``BatchEncoding``) with
    ``input_ids`` and optionally ``attention_mask`` (1 for real tokens, 0 for padding), as
    tensors or nested lists.

    Raises
    ------
    TypeError
        Not a tensor or mapping; float, complex or bool ids; a mask that is not 0/1 integers or bool.
    ValueError
        Bad shapes; a mask whose shape differs from the ids'; a row with no real token.
    """
    mask = None
    if isinstance(item, Mapping):
        mask = item.get("attention_mask")
        item = item.get("input_ids")
        if isinstance(item, list):
            item = torch.as_tensor(item)
        if isinstance(mask, list):
            mask = torch.as_tensor(mask)
    if not isinstance(item, torch.Tensor):
        raise TypeError(_ERR_KIND.format(what=what, kind=f"an iterable of {type(item).__name__}"))
    item = _check_ids(item, what)
    if item.ndim not in (1, 2) or item.shape[-1] < 1:
        raise ValueError(f"{what}: token batches must be (seqlen,) or (batch, seqlen), got {tuple(item.shape)}")
    item = item.reshape(-1, item.shape[-1])
    if mask is None:
        return item, None
    if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or mask.is_complex():
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{what}: attention_mask must hold 0/1 integers or bools, got {kind}; pass the "
                        "tokenizer's attention_mask as it is")
    mask = mask.reshape(-1, mask.shape[-1]) if mask.ndim in (1, 2) else mask
    if tuple(mask.shape) != tuple(item.shape):
        raise ValueError(f"{what}: attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(item.shape)}; "
                         "pass the mask the tokenizer returned with these ids")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{what}: attention_mask must hold only 0 (padding) and 1 (real token), got values "
                         f"{sorted(set(mask.unique().tolist()))[:5]}")
    mask = mask.bool()
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{what}: attention_mask rows {empty[:5]} mask every token; expected at least one real "
                         "token per row. Drop those rows")
    return item, mask


def token_ids(
    data,
    /,
    *,
    tokenizer=None,
    what: str = "data",
    check_overlap: bool = True,
    special_tokens: bool = False,
    masks: bool = False,
) -> torch.Tensor | list | Iterator:
    """Token ids from any supported input.

    Parameters
    ----------
    data : str, list of str, torch.Tensor or iterable of batches
        Text (a list is joined by blank lines) is encoded with ``tokenizer`` into one stream;
        a 1-D or 2-D integer tensor is returned as is (int64); a list or tuple of batches
        becomes a list of ``(batch, seqlen)`` tensors; any other iterable is wrapped lazily.
    tokenizer : transformers tokenizer, optional
        Needed for text.
    what : str
        Name of the argument, for messages.
    check_overlap : bool, default True
        Refuse text that contains an article of the WikiText-2 evaluation split.
    special_tokens : bool, default False
        Let the tokenizer add its special tokens (evaluation does; calibration and healing
        windows do not).
    masks : bool, default False
        Batches of a list or iterable come as ``(ids, attention_mask or None)`` pairs
        (:func:`as_masked_batch`) instead of bare ids.

    Returns
    -------
    torch.Tensor (1-D stream or 2-D rows), list of torch.Tensor, or iterator of torch.Tensor

    Raises
    ------
    TypeError
        Unsupported kind, float ids, or text without a tokenizer.
    EvaluationOverlapError
        Text from the evaluation split (``check_overlap``).
    """
    if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data)):
        text = data if isinstance(data, str) else "\n\n".join(data)
        if tokenizer is None:
            raise TypeError(f"{what} is text, so tokenizer= is needed to encode it; pass the model's tokenizer")
        if check_overlap:
            check_not_evaluation_text(text, what=what)
        return tokenizer(text, return_tensors="pt", add_special_tokens=special_tokens)["input_ids"][0]
    if isinstance(data, torch.Tensor):
        return _check_ids(data, what)
    parse = as_masked_batch if masks else as_batch
    if isinstance(data, (list, tuple)):
        return [parse(b, what=what) for b in data]
    if isinstance(data, Iterable) and not isinstance(data, (bytes, Mapping)):
        return (parse(b, what=what) for b in data)
    raise TypeError(_ERR_KIND.format(what=what, kind=type(data).__name__))


class TokenBatches:
    """Endless (or, for a one-shot iterable, finite) supply of ``(batch, seqlen)`` token batches.

    Parameters
    ----------
    data
        Anything :func:`token_ids` reads: a stream yields ``batch_size`` random windows of
        ``seqlen`` tokens per call, 2-D rows ``batch_size`` random rows, a list of batches is
        cycled in order, any other iterable is consumed once.
    tokenizer, what
        As :func:`token_ids` (text from the evaluation split is refused).
    batch_size, seqlen : int
    generator : torch.Generator
        Draws the windows and rows.
    """

    def __init__(self, data, /, *, tokenizer=None, what="data", batch_size: int, seqlen: int, generator):
        self.generator, self.batch_size, self.seqlen = generator, batch_size, seqlen
        self.stream = self.rows = self.items = self.cycle = None
        ids = token_ids(data, tokenizer=tokenizer, what=what)
        if isinstance(ids, torch.Tensor):
            if ids.ndim == 1 and ids.numel() <= seqlen:
                raise ValueError(
                    f"the token stream has {ids.numel()} tokens, expected more than seqlen={seqlen}; "
                    "pass more data or a smaller seqlen="
                )
            if ids.ndim == 2 and (ids.shape[0] < 1 or ids.shape[1] < 2):
                raise ValueError(f"a 2-D token tensor needs at least one row of 2 tokens, got shape {tuple(ids.shape)}")
            if ids.ndim not in (1, 2):
                raise ValueError(f"token tensors must be 1-D (a stream) or 2-D (samples x seqlen), got shape {tuple(ids.shape)}")
            self.stream, self.rows = (ids, None) if ids.ndim == 1 else (None, ids)
        elif isinstance(ids, list):
            if not ids:
                raise TypeError(_ERR_KIND.format(what=what, kind="an empty list"))
            self.cycle, self.position = ids, 0
        else:
            self.items = ids

    def next(self) -> torch.Tensor | None:
        """The next batch; None when a one-shot iterable is exhausted."""
        if self.stream is not None:
            starts = torch.randint(0, self.stream.numel() - self.seqlen + 1, (self.batch_size,), generator=self.generator)
            return torch.stack([self.stream[s : s + self.seqlen] for s in starts.tolist()])
        if self.rows is not None:
            pick = torch.randint(0, self.rows.shape[0], (self.batch_size,), generator=self.generator)
            return self.rows[pick]
        if self.cycle is not None:
            batch = self.cycle[self.position % len(self.cycle)]
            self.position += 1
            return batch
        return next(self.items, None)
