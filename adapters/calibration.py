"""Calibration: token batches, and per-linear input statistics collected layer by layer.

Statistics are gathered with forward hooks while the decoder layers are run one at a time on
stored hidden states (the GPTQ/SparseGPT scheme), so only one layer's statistics are alive at
once and the model is never copied.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from curlinalg.metric import gram_matrix

from .offload import compute_device, onloaded_block
from .tokens import EvaluationOverlapError, as_masked_batch, token_ids
from . import texts

__all__ = [
    "CalibrationBatches",
    "CalibrationError",
    "InputStatistics",
    "LayerRunner",
    "InputRecorder",
    "TOKEN_WEIGHTINGS",
    "accumulate_statistics",
    "token_weights",
    "angular_distance",
    "record_layer",
    "default_calibration",
    "find_decoder_layers",
    "prepare_calibration",
]

_ERR_NONFINITE = (
    "calibration activations entering {name!r} contain NaN or Inf (batch {batch}); expected "
    "finite values. Check the calibration tokens, run the model in float32/bfloat16 instead of "
    "float16, or drop the offending samples"
)


class CalibrationError(ValueError):
    """Calibration data or activations are unusable (empty, NaN/Inf, wrong kind)."""


@dataclass
class InputStatistics:
    """Accumulated statistics of the inputs ``X`` (tokens x features) of one linear layer.

    Attributes
    ----------
    sq_sum : torch.Tensor
        ``(in_features,)``, per-column sums of squares ``diag(X^T X)``.
    gram : torch.Tensor or None
        ``(in_features, in_features)`` input covariance ``X^T D X``; None if not requested.
        ``D`` holds the token weights (see :func:`token_weights`; the identity by default).
    cross : torch.Tensor or None
        ``X^T D X_ref`` between these inputs and reference inputs (the dense model's inputs in
        sequential calibration); None if not requested.
    tokens : int
        Number of token rows accumulated.
    """

    sq_sum: torch.Tensor
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    tokens: int = 0


_ERR_SHORT_STREAM = (
    "calibration stream has {n:,} tokens, but nsamples={nsamples} windows of seqlen={seqlen} need "
    "{need:,} distinct tokens; the windows would reuse the same tokens while counting {need:,}. "
    "Pass more calibration text or ids, or ask for fewer windows: "
    "nsamples={fit} (--nsamples), or a smaller seqlen= (--seqlen)"
)
_ERR_VOCAB = (
    "calibration token ids must lie in [0, {vocab}) (the model's input embedding has {vocab} rows), "
    "got ids in [{lo}, {hi}]{where}; tokenize with the model's own tokenizer"
)


class CalibrationBatches(list):
    """The calibration token batches: a list of ``(batch, seqlen)`` int64 tensors, and what they hold.

    Attributes
    ----------
    masks : list of (torch.Tensor or None)
        Per batch, the ``(batch, seqlen)`` bool attention mask (True: a real token, False:
        padding), or None when every token is real. Padding never enters the statistics.
    tokens : int
        Distinct real tokens: for windows drawn from a stream, the stream positions covered by
        at least one window (overlapping windows count a token once); otherwise the unmasked
        tokens of the batches.
    rows : int
        Real tokens the statistics sum over (a token in two windows counts twice).
    """

    def __init__(self, batches=(), masks=None, *, tokens: int | None = None):
        super().__init__(batches)
        self.masks = list(masks) if masks is not None else [None] * len(self)
        self.rows = sum(int(b.numel()) if m is None else int(m.sum()) for b, m in zip(self, self.masks))
        self.tokens = self.rows if tokens is None else tokens


def _chunks(ids: torch.Tensor, mask, batch_size: int) -> list[tuple]:
    return [(ids[i : i + batch_size], None if mask is None else mask[i : i + batch_size])
            for i in range(0, ids.shape[0], batch_size)]


def _windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> tuple[torch.Tensor, int]:
    """``nsamples`` random windows of a 1-D stream and the number of distinct positions they cover."""
    n = ids.numel()
    if n <= seqlen or n < nsamples * seqlen:
        fit = n // seqlen
        if fit == 0:
            raise CalibrationError(
                f"calibration stream has {n} tokens, expected more than seqlen={seqlen}; pass more text or a "
                "smaller seqlen="
            )
        raise CalibrationError(_ERR_SHORT_STREAM.format(n=n, nsamples=nsamples, seqlen=seqlen,
                                                        need=nsamples * seqlen, fit=fit))
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen, (nsamples,), generator=gen).tolist()
    covered = torch.zeros(n, dtype=torch.bool)
    for s in starts:
        covered[s : s + seqlen] = True
    return torch.stack([ids[s : s + seqlen] for s in starts]), int(covered.sum())


def _check_vocab(batches: CalibrationBatches, vocab_size: int) -> None:
    lo = min(int(b.min()) for b in batches)
    hi = max(int(b.max()) for b in batches)
    if lo < 0 or hi >= vocab_size:
        bad = next(k for k, b in enumerate(batches) if int(b.min()) < 0 or int(b.max()) >= vocab_size)
        raise CalibrationError(_ERR_VOCAB.format(vocab=vocab_size, lo=lo, hi=hi, where=f" (first in batch {bad})"))


def prepare_calibration(
    calibration,
    /,
    *,
    tokenizer=None,
    nsamples: int = 128,
    seqlen: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    vocab_size: int | None = None,
) -> CalibrationBatches:
    """Turn calibration input into ``(batch, seqlen)`` int64 token batches, with their masks.

    Parameters
    ----------
    calibration : str, list of str, torch.Tensor, mapping or iterable
        Parsed by :func:`adapters.tokens.token_ids` (text from the WikiText-2 evaluation split
        is refused):

        * a string or list of strings: tokenized with ``tokenizer`` (strings joined by blank
          lines), then ``nsamples`` windows of ``seqlen`` tokens are drawn at random;
        * a 1-D token tensor: windows drawn the same way;
        * a 2-D token tensor: each row is a sample (used as is, ``nsamples`` ignored);
        * a mapping with ``input_ids`` and optionally ``attention_mask`` (what a tokenizer
          returns with ``padding=True``): rows used as is, padding left out of the statistics;
        * any other iterable: each item is a token tensor or such a mapping.
    tokenizer : transformers tokenizer, optional
        Needed for text input.
    nsamples, seqlen : int
        Number and length of windows drawn from a long token stream. The stream must hold at
        least ``nsamples * seqlen`` tokens (windows may still overlap: they start at random).
    batch_size : int, default 8
        Samples per batch for tensor, mapping and text input.
    seed : int, default 0
        Seed of the window draw (a private ``torch.Generator``; the global RNG is untouched).
    vocab_size : int, optional
        Rows of the model's input embedding: every id must lie in ``[0, vocab_size)``.

    Returns
    -------
    CalibrationBatches
        A list of token batches, with ``masks``, ``tokens`` (distinct real tokens) and ``rows``.

    Raises
    ------
    TypeError
        For an unsupported kind, float ids or masks, or text without a tokenizer.
    ValueError
        A mask of another shape than its ids, or masking a whole row.
    CalibrationError
        If the stream is shorter than ``nsamples`` windows of ``seqlen`` tokens, the text is from
        the evaluation split, an id lies outside ``[0, vocab_size)``, or the result is empty.
    """
    if isinstance(calibration, Mapping):
        pairs = _chunks(*as_masked_batch(calibration, what="calibration"), batch_size)
        tokens = None
    else:
        try:
            ids = token_ids(calibration, tokenizer=tokenizer, what="calibration", masks=True)
        except EvaluationOverlapError as exc:
            raise CalibrationError(str(exc)) from None
        tokens = None
        if isinstance(ids, torch.Tensor):
            if ids.ndim == 2:
                pairs = _chunks(ids, None, batch_size)
            elif ids.ndim == 1:
                windows, tokens = _windows(ids, nsamples, seqlen, seed)
                pairs = _chunks(windows, None, batch_size)
            else:
                raise CalibrationError(f"calibration token tensor must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        else:
            pairs = list(ids)
    if not pairs:
        raise CalibrationError("calibration is empty; expected at least one token batch")
    batches = CalibrationBatches([b for b, _ in pairs], [m for _, m in pairs], tokens=tokens)
    if vocab_size is not None:
        _check_vocab(batches, vocab_size)
    return batches


_ERR_NO_TOKENIZER = (
    "no calibration= was given, so the bundled default calibration set (adapters.texts) is used, which needs "
    "the model's tokenizer; none was found (tried tokenizer=, model.tokenizer and "
    "AutoTokenizer.from_pretrained(model.config._name_or_path={path!r}, local_files_only=True)). "
    "Pass tokenizer=AutoTokenizer.from_pretrained(...), or calibration= token ids "
    "(a (samples, seqlen) int64 tensor) or text with tokenizer="
)


def default_calibration(model: nn.Module, /, *, tokenizer=None):
    """The default calibration set's text and a tokenizer for it: ``(text, tokenizer)``.

    The set is :data:`adapters.texts.DEFAULT_CALIBRATION_SET` (``"mix"``: WikiText-2's
    calibration split, public-domain literature, dialogue in the chat template and a legal text,
    all bundled; see :func:`adapters.texts.load_calibration_set`). The
    tokenizer is ``tokenizer``, else ``model.tokenizer``, else the one saved beside the model
    (``model.config._name_or_path``, local files only).

    Raises
    ------
    CalibrationError
        If no tokenizer can be found; the message says how to pass one.
    """
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    path = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if tok is None and path:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure means "no tokenizer here"
            tok = None
    if tok is None:
        raise CalibrationError(_ERR_NO_TOKENIZER.format(path=path))
    return texts.load_calibration_set(texts.DEFAULT_CALIBRATION_SET, tokenizer=tok).text, tok


class _Stop(Exception):
    pass


#: Final names of the block list in transformers' models (``encoder.layer``: BERT, RoBERTa).
BLOCK_LIST_NAMES = ("layers", "h", "blocks", "layer")


def find_decoder_layers(model: nn.Module, /) -> tuple[str, nn.ModuleList]:
    """The block list of a Hugging Face model, decoder or encoder: ``(dotted name, ModuleList)``.

    Raises
    ------
    ValueError
        If no ``ModuleList`` named as in :data:`BLOCK_LIST_NAMES` is found.
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{type(model).__name__} is an encoder-decoder model ({getattr(config, 'model_type', '?')}); "
            "adapters compresses decoder-only and encoder-only models (docs/adapters.md, Families); "
            "encoder-decoder models are not supported"
        )
    n = getattr(config, "num_hidden_layers", None)
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES:
            if n is None or len(mod) == n:
                if best is None or len(name) < len(best[0]):
                    best = (name, mod)
    if best is None:
        raise ValueError(
            f"could not find the blocks: expected a ModuleList named one of {BLOCK_LIST_NAMES} with "
            f"config.num_hidden_layers={n} entries in {type(model).__name__}. Decoder-only and encoder-only "
            "models are supported; encoder-decoder models (T5, BART) are not"
        )
    return best


class LayerRunner:
    """Run a decoder's layers one at a time on stored calibration hidden states.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A decoder-only model; only its embedding stage runs as a whole (stopped at layer 0).
    batches : list of torch.Tensor or CalibrationBatches
        Token batches from :func:`prepare_calibration`; their ``masks``, when present, go to
        the model as ``attention_mask`` (with ``position_ids`` counting real tokens only).
    progress : bool
        Show a progress bar over layers.

    Attributes
    ----------
    masks : list of (torch.Tensor or None)
        Per batch, the bool mask of real tokens, or None (all real): what
        :class:`InputRecorder` keeps.

    Notes
    -----
    The inputs of layer 0 (hidden states and keyword arguments such as position embeddings and
    the attention mask) are caught with a pre-hook that stops the forward pass, as in GPTQ and
    SparseGPT; afterwards ``run_layer`` maps stored hidden states through one layer.
    """

    def __init__(self, model: nn.Module, batches: list[torch.Tensor], /, *, progress: bool = True):
        self.model = model
        self.prefix, self.layers = find_decoder_layers(model)
        self.progress = progress
        self.hidden: list[torch.Tensor] = []
        self.kwargs: list[dict] = []
        self.masks = list(getattr(batches, "masks", None) or [None] * len(batches))
        first = self.layers[0]
        device = compute_device(first)  # an offloaded layer's weights are on meta (adapters.offload)
        takes_positions = "position_ids" in inspect.signature(model.forward).parameters

        signature = inspect.signature(first.forward)
        first_arg = next(iter(signature.parameters))

        def catch(_mod, args, kwargs):
            # Positional arguments after the hidden states (GPT-2's mask, BERT's) become keywords.
            try:
                bound = signature.bind(*args, **kwargs).arguments
            except TypeError:  # a forward whose signature does not show its arguments
                bound = {first_arg: args[0], **kwargs} if args else dict(kwargs)
            kw = {}
            for key, value in bound.items():
                if key in signature.parameters and signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    kw.update(value)
                else:
                    kw[key] = value
            self.hidden.append(kw.pop(first_arg) if first_arg in kw else kw.pop("hidden_states"))
            self.kwargs.append(kw)
            raise _Stop

        handle = first.register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for b, mask in zip(batches, self.masks):
                    extra = {}
                    if mask is not None:
                        # Left padding must not shift the real tokens' positions (absolute
                        # position embeddings; RoPE is shift-invariant anyway).
                        extra["attention_mask"] = mask.to(device=device, dtype=torch.long)
                        if takes_positions:
                            extra["position_ids"] = (mask.long().cumsum(1) - 1).clamp_min(0).to(device)
                    try:
                        model(input_ids=b.to(device), use_cache=False, **extra)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        for kw in self.kwargs:
            kw["use_cache"] = False
            for key in ("past_key_values", "past_key_value", "layer_past", "cache"):
                kw.pop(key, None)

    @torch.no_grad()
    def run_layer(self, index: int, hidden: list[torch.Tensor], /) -> list[torch.Tensor]:
        """Map each stored batch through layer ``index``; returns the new hidden states."""
        out = []
        with onloaded_block(self.model, f"{self.prefix}.{index}"):
            for h, kw in zip(hidden, self.kwargs):
                y = self.layers[index](h, **kw)
                out.append(y[0] if isinstance(y, tuple) else y)
        return out


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite: one sum (NaN or Inf makes it non-finite), and the
    elementwise test only when the sum is not finite (it may overflow)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


class InputRecorder:
    """Forward pre-hooks that keep the latest input of each named linear layer.

    Parameters
    ----------
    modules : dict of str to nn.Module
        The linears to watch, by dotted name.

    Attributes
    ----------
    batch : int
        Index of the batch being run (for messages).
    mask : torch.Tensor or None
        The current batch's ``(batch, seqlen)`` bool mask of real tokens: inputs with one row
        per token keep only the real ones; None keeps every row. Set both before each batch.

    Raises
    ------
    CalibrationError
        From inside the forward pass, when an input holds NaN or Inf.
    """

    def __init__(self, modules: dict[str, nn.Module], /):
        self.modules = modules
        self.inputs: dict[str, torch.Tensor] = {}
        self.batch = 0
        self.mask: torch.Tensor | None = None
        self._kept: dict[tuple, tuple] = {}
        self._checked: set = set()
        self._handles = []

    def __enter__(self):
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def _hook(self, name: str) -> Callable:
        def hook(_mod, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1])
            if self.mask is not None and x.shape[0] == self.mask.numel():
                # One masked copy per input tensor, so that modules fed the same tensor (q/k/v)
                # still share it, and their statistics (accumulate_statistics).
                # The source stays referenced, so its address is not reused within the batch.
                key = (x.data_ptr(), tuple(x.shape))
                if key not in self._kept:
                    self._kept[key] = (x, x[self.mask.reshape(-1).to(x.device)])
                x = self._kept[key][1]
            key = (x.data_ptr(), tuple(x.shape))
            if key not in self._checked:  # once per input tensor: q/k/v (gate/up) share theirs
                if not _all_finite(x):
                    raise CalibrationError(_ERR_NONFINITE.format(name=name, batch=self.batch))
                self._checked.add(key)
            self.inputs[name] = x

        return hook

    def take(self) -> dict[str, torch.Tensor]:
        """Return and forget the recorded inputs."""
        out, self.inputs = self.inputs, {}
        self._kept, self._checked = {}, set()
        return out


TOKEN_WEIGHTINGS = ("none", "norm", "clip")


def token_weights(x: torch.Tensor, /, weighting: str = "none") -> torch.Tensor | None:
    """Per-token weights ``d_t`` of the covariance ``sum_t d_t x_t x_t^T``.

    Parameters
    ----------
    x : torch.Tensor
        ``(tokens, features)`` float32 inputs.
    weighting : {"none", "norm", "clip"}
        ``"none"``: ``d_t = 1`` (returns None), the plain ``X^T X`` of SVD-LLM and GPTQ.
        ``"norm"``: ``d_t = mean_s ||x_s||^2 / ||x_t||^2``, so every token's *relative* output
        error counts equally.
        ``"clip"``: ``d_t = min(1, median_s ||x_s||^2 / ||x_t||^2)``: tokens above the median
        energy count as if they had the median norm, the others as they are.

    Returns
    -------
    torch.Tensor or None
        ``(tokens,)`` float32 weights, or None for ``"none"``.

    Notes
    -----
    Decoder LMs put "massive activations" on a few tokens (the first position of a window,
    some delimiters; Sun et al. 2024, arXiv 2402.17762).  On SmolLM2-135M the input of layer
    11's ``down_proj`` has norm 3540 on the first token against a median of 5.8: that token
    holds 99.8% of ``trace(X^T X)``, so the plain covariance only measures how well the
    approximation reproduces that one token, and a rank-1 factor looks nearly exact while it
    destroys every other token.  Normalising each token keeps the outlier (its output must
    still be reproduced, to within the same relative error) without letting it drown the rest.
    """
    if weighting == "none":
        return None
    if weighting not in TOKEN_WEIGHTINGS:
        raise ValueError(f"token weighting must be one of {TOKEN_WEIGHTINGS}, got {weighting!r}")
    sq = (x * x).sum(1)
    ref = sq.mean() if weighting == "norm" else sq.median()
    w = ref / torch.where(sq > 0, sq, torch.full_like(sq, math.inf))  # an all-zero token: 0
    return w.clamp_max(1.0) if weighting == "clip" else w


def accumulate_statistics(
    stats: dict[str, InputStatistics],
    inputs: dict[str, torch.Tensor],
    /,
    *,
    reference: dict[str, torch.Tensor] | None = None,
    gram: bool = True,
    weighting: str = "none",
    dtype=torch.float64,
) -> None:
    """Add one batch of recorded inputs to ``stats`` (in place).

    Modules fed the very same tensor (``q/k/v_proj``, ``gate/up_proj``) share one
    :class:`InputStatistics` object, so each covariance is formed once.  The per-batch products
    are computed in float32 and accumulated in ``dtype``.

    Parameters
    ----------
    stats : dict
        Accumulators by module name (filled on the first call).
    inputs : dict of str to torch.Tensor
        ``(tokens, in_features)`` inputs by module name.
    reference : dict, optional
        Reference inputs (same names and shapes); accumulates ``cross = X^T X_ref``.
    gram : bool
        Accumulate ``X^T X``.
    weighting : {"none", "norm", "clip"}
        Token weights of ``gram`` and ``cross`` (:func:`token_weights`); ``sq_sum`` is never
        weighted.  The weights come from ``inputs``, so ``gram`` and ``cross`` share them.
    dtype : torch.dtype
        Accumulation dtype.
    """
    done: dict[tuple, InputStatistics] = {}
    for name, x in inputs.items():
        key = (x.data_ptr(), tuple(x.shape))
        if key in done:
            stats.setdefault(name, done[key])
            continue
        st = stats.get(name)
        if st is None:
            st = stats[name] = InputStatistics(sq_sum=torch.zeros(x.shape[1], dtype=dtype, device=x.device))
        done[key] = st
        xf = x.float()
        st.sq_sum += (xf * xf).sum(0).to(dtype)
        st.tokens += x.shape[0]
        w = token_weights(xf, weighting)
        if gram:  # X^T D X = (D^{1/2} X)^T (D^{1/2} X), a symmetric product (weights are >= 0)
            g = gram_matrix(xf if w is None else xf * w.sqrt()[:, None]).to(dtype)
            st.gram = g if st.gram is None else st.gram.add_(g)
        if reference is not None:
            xw = xf if w is None else xf * w[:, None]
            c = (xw.T @ reference[name].float()).to(dtype)
            st.cross = c if st.cross is None else st.cross.add_(c)


def record_layer(
    runner: LayerRunner, index: int, hidden: list, modules: dict, /, *, gram: bool = True,
    weighting: str = "none",
) -> tuple[dict[str, InputStatistics], list[torch.Tensor]]:
    """Run decoder layer ``index`` on every batch of ``hidden``, recording the inputs of ``modules``.

    Returns the accumulated input statistics by module name (see :func:`accumulate_statistics`)
    and the layer's outputs, which are the next layer's ``hidden``.
    """
    stats: dict[str, InputStatistics] = {}
    out = []
    with onloaded_block(runner.model, f"{runner.prefix}.{index}"), InputRecorder(modules) as rec:
        for b, (h, kw) in enumerate(zip(hidden, runner.kwargs)):
            rec.batch, rec.mask = b, runner.masks[b]
            y = runner.layers[index](h, **kw)
            out.append(y[0] if isinstance(y, tuple) else y)
            accumulate_statistics(stats, rec.take(), gram=gram, weighting=weighting)
    return stats, out


def angular_distance(x: torch.Tensor, y: torch.Tensor, /) -> torch.Tensor:
    """``arccos(cos(x, y)) / pi`` along the last axis (Gromov et al. 2024; CURing 2025)."""
    cos = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1.0, 1.0)
    return torch.arccos(cos) / math.pi


