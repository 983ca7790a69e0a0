"""Perplexity with the SparseGPT protocol (the data: :mod:`adapters.wikitext`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .tokens import token_ids
from .wikitext import WikiText2, load_wikitext2

__all__ = ["Perplexity", "WikiText2", "context_length", "load_wikitext2", "perplexity"]

_ERR_LONG_WINDOW = (
    "seqlen={seqlen} is longer than the model's context: {name} has {context} positions "
    "(config.{field}); pass seqlen={context} or less (command line: --eval-seqlen {context})"
)
#: Config fields that bound the positions a model can attend over, in the order read.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")

_ERR_SHORT_TEXT = (
    "perplexity needs at least one full window: expected at least {need} tokens "
    "(seqlen={seqlen} plus one), got {got}; pass a longer text or a smaller seqlen="
)


@dataclass(frozen=True)
class Perplexity:
    """Result of :func:`perplexity`.

    Attributes
    ----------
    ppl : float
        ``exp(nll / tokens)``.
    nll : float
        Summed negative log-likelihood (nats) over all scored tokens.
    tokens : int
        Number of scored (predicted) tokens.
    windows : int
        Number of windows evaluated.
    seqlen, stride : int
        Window length and step, in tokens.
    """

    ppl: float
    nll: float
    tokens: int
    windows: int
    seqlen: int
    stride: int


def _context(model) -> tuple[int, str] | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for field in _CONTEXT_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, field
    return None


def context_length(model, /) -> int | None:
    """The positions ``model`` can attend over, from its config; None when it states none.

    Parameters
    ----------
    model : transformers model

    Returns
    -------
    int or None
        The first of ``max_position_embeddings`` (Llama, ...), ``n_positions`` (GPT-2),
        ``max_sequence_length``, ``seq_length`` and ``n_ctx`` that the (text) config sets.

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> context_length(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=64)))
    64
    """
    found = _context(model)
    return None if found is None else found[0]


#: Tokens past ``max_tokens`` that a prefix of the text must yield before its first ``max_tokens``
#: are taken for the whole text's: the token at the cut may differ, never one this far before it.
_PREFIX_MARGIN = 256


def _text_ids(text, tokenizer, max_tokens):
    """The evaluation ids: the whole text's, or, for a string and ``max_tokens``, those of a
    prefix long enough to yield ``max_tokens + _PREFIX_MARGIN`` tokens (doubled until it does),
    cut to ``max_tokens``: tokenizing a whole corpus (Shakespeare's plays, 1.5 M tokens) to score
    its first 8,192 tokens cost the demo 400 MB of peak memory."""
    def encode(t):
        # The evaluation text itself: no overlap check, and the tokenizer's special tokens as usual.
        return token_ids(t, tokenizer=tokenizer, what="text", check_overlap=False, special_tokens=True)

    if not isinstance(text, str) or max_tokens is None:
        return encode(text)
    chars = 8 * (max_tokens + _PREFIX_MARGIN)
    while True:
        ids = encode(text[:chars])
        if chars >= len(text) or ids.numel() >= max_tokens + _PREFIX_MARGIN:
            return ids.reshape(-1)[:max_tokens]
        chars *= 2


def _token_nll(states: torch.Tensor, ids: torch.Tensor, /, *, head=None, chunk: int = 256) -> torch.Tensor:
    """``-log p(ids[:, t + 1] | ids[:, :t + 1])`` for each position ``t``, in float32, from
    ``chunk`` positions at a time: the log-softmax of a whole window would hold a second copy
    of its vocabulary-wide logits (400 MB for 2048 tokens of a 49,152-token vocabulary).

    ``states`` are the logits, or with ``head`` the final hidden states, which ``head`` (the
    output embeddings) turns into logits ``chunk`` positions at a time, so that the logits of the
    whole window are never held (:func:`_output_head`)."""
    out = []
    for t in range(0, states.shape[1] - 1, chunk):
        end = min(t + chunk, states.shape[1] - 1)
        logits = states[:, t:end] if head is None else head(states[:, t:end])
        logp = torch.log_softmax(logits.float(), dim=-1)
        del logits
        out.append(-logp.gather(-1, ids[:, t + 1 : end + 1, None].to(logp.device)).squeeze(-1))
    return torch.cat(out, dim=1)


#: Config fields that change a model's logits after its output head (Gemma 2 and 3's soft-capping,
#: Cohere's logit scale, Granite's divisor): a model that sets one is scored on its own logits.
_LOGIT_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
#: Tokens of the first window on which the route of :func:`_output_head` is checked.
_PROBE_TOKENS = 8


def _last_hidden(out) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _output_head(model, batch: torch.Tensor, /):
    """``(decoder, head)`` when ``model``'s logits are ``head`` (its output embeddings) applied
    to the final hidden states of ``decoder`` (its base model), else None.

    Refused for a config that sets one of :data:`_LOGIT_FIELDS`, and otherwise checked on the
    first :data:`_PROBE_TOKENS` tokens of ``batch``: the two must give the model's own logits
    bit for bit, so that any other step between the head and the logits (a scale of the hidden
    states, a cast, a cut of the vocabulary) sends the model back to its own forward pass."""
    config = getattr(model, "config", None)
    configs = [config, config.get_text_config()] if hasattr(config, "get_text_config") else [config]
    if any(getattr(c, field, None) is not None for c in configs for field in _LOGIT_FIELDS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = getattr(model, "base_model", model)
    if not isinstance(head, torch.nn.Module) or decoder is model:
        return None
    probe = batch[:1, :_PROBE_TOKENS]
    want = model(input_ids=probe, use_cache=False).logits
    try:
        got = head(_last_hidden(decoder(input_ids=probe, use_cache=False)))
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
        return None  # a base model that takes other inputs, or a head that takes other states
    return (decoder, head) if got.shape == want.shape and torch.equal(got, want) else None


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    text,
    /,
    *,
    seqlen: int = 2048,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> Perplexity:
    """Perplexity of a causal language model over a text, SparseGPT protocol.

    Parameters
    ----------
    model : transformers causal LM
        Evaluated in ``eval()`` mode on its own device.
    tokenizer : transformers tokenizer or None
        Encodes ``text`` (with its default special tokens).  Pass ``None`` when ``text`` is
        already a 1-D tensor of token ids.
    text : str or torch.Tensor
        The text, or its token ids.
    seqlen : int, default 2048
        Window length.
    stride : int, optional
        Step between window starts; defaults to ``seqlen`` (non-overlapping windows, the
        SparseGPT protocol).  With ``stride < seqlen`` each token is scored once, in the first
        window where it lies past the overlap (Hugging Face's sliding-window recipe).
    max_tokens : int, optional
        Use only the first ``max_tokens`` tokens (for example 32,768).
    batch_size : int, default 1
        Windows per forward pass.
    progress : bool, default True
        Show a tqdm bar.

    Returns
    -------
    Perplexity
        ``exp`` of the token-weighted mean negative log-likelihood over all scored tokens.

    Raises
    ------
    ValueError
        If the text is shorter than one window, a window is longer than the model's context
        (:func:`context_length`: GPT-2 has 1024 positions), or the options are inconsistent.

    Notes
    -----
    The token stream is cut into windows ``[k * stride, k * stride + seqlen)``; a trailing
    partial window is dropped, as in SparseGPT.  Within a window the first position has no
    context and is not scored, so each non-overlapping window scores ``seqlen - 1`` tokens and
    the result is ``exp(sum NLL / number of scored tokens)``.

    The vocabulary-wide logits of a whole window are never held when the model's logits are its
    output embeddings applied to its base model's final hidden states (checked on the first
    window's first tokens; a model that soft-caps or scales its logits is scored on its own
    forward pass): the head is applied 256 positions at a time, each turned into negative
    log-likelihoods before the next (2048 tokens of SmolLM2's 49,152-token vocabulary: 400 MB
    of logits not held).

    References
    ----------
    Frantar & Alistarh (2023), "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot", ICML, arXiv 2301.00774 (evaluation code ``datautils.py`` / ``llama.py``).
    """
    stride = seqlen if stride is None else stride
    if seqlen < 2 or stride < 1 or stride > seqlen:
        raise ValueError(
            f"expected seqlen >= 2 and 1 <= stride <= seqlen, got seqlen={seqlen}, stride={stride}"
        )
    found = _context(model)
    if found is not None and seqlen > found[0]:
        raise ValueError(_ERR_LONG_WINDOW.format(seqlen=seqlen, name=type(model).__name__, context=found[0],
                                                 field=found[1]))
    if isinstance(text, str) and tokenizer is None:
        raise TypeError("text is a string, so a tokenizer is needed; pass the model's tokenizer")
    ids = _text_ids(text, tokenizer, max_tokens)
    if not isinstance(ids, torch.Tensor):
        raise TypeError("perplexity scores one text or one token tensor; join batches into one stream first")
    ids = ids.reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < seqlen:
        raise ValueError(_ERR_SHORT_TEXT.format(need=seqlen, seqlen=seqlen, got=ids.numel()))
    starts = list(range(0, ids.numel() - seqlen + 1, stride))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll = 0.0
    scored = 0
    prev_end = 0
    try:
        bar = tqdm(total=len(starts), desc="perplexity", disable=not progress, leave=False)
        for b in range(0, len(starts), batch_size):
            chunk = starts[b : b + batch_size]
            batch = torch.stack([ids[s : s + seqlen] for s in chunk]).to(device)
            if b == 0:
                route = _output_head(model, batch)
            if route is None:
                states, head = model(input_ids=batch, use_cache=False).logits, None
            else:
                states, head = _last_hidden(route[0](input_ids=batch, use_cache=False)), route[1]
            tok_nll = _token_nll(states, batch, head=head)
            del states
            for j, s in enumerate(chunk):
                first = max(prev_end - s, 1)
                nll += tok_nll[j, first - 1 :].double().sum().item()
                scored += seqlen - first
                prev_end = s + seqlen
            bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)
    return Perplexity(
        ppl=math.exp(nll / scored),
        nll=nll,
        tokens=scored,
        windows=len(starts),
        seqlen=seqlen,
        stride=stride,
    )
