"""Healing: a short core-only distillation run that recovers the quality lost to compression.

Only the small cores ``U`` of the :class:`~adapters.layer.CURLinear` modules train (for
:class:`~adapters.layer.InterpolativeLinear`, the interpolation coefficients ``P``; optionally
the biases and the norm scales); ``C`` and ``R`` stay fixed, so they remain actual columns and
rows of the original weights, and the healed model saves and loads like any compressed model.

>>> import adapters                                               # doctest: +SKIP
>>> teacher, tok = adapters.cli.load_model("smollm2")             # doctest: +SKIP
>>> result = adapters.heal.heal(model, teacher=teacher, tokenizer=tok, steps=200)  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ._common import AdaptersWarning
from .layer import FACTORED_LINEARS

__all__ = ["HealResult", "HealingError", "add_arguments", "cli_main", "heal", "trainable_parameters"]

_ERR_NO_CUR = (
    "heal trains the cores of CURLinear (U) and InterpolativeLinear (P) modules, but the model "
    "holds none; compress it first "
    "with adapters.compress(...) or load a compressed checkpoint with adapters.load_compressed(...)"
)
_ERR_NONFINITE = (
    "healing stopped at step {step}: the {what} is {value} (NaN or Inf). The cores (U or P) hold the "
    "last good values (after {good} completed steps), so nothing is lost. Check the data of this step, "
    "lower lr= (now {lr:g}) or max_grad_norm=, or run in float32; result.losses has the history"
)
_ERR_DATA_KIND = (
    "data must be a string or list of strings (with tokenizer=), a 1-D token stream or 2-D "
    "(samples x seqlen) int64 tensor, or an iterable of token batches (tensors or dicts with "
    "'input_ids'); got {kind}"
)
_ERR_EVAL_SPLIT = (
    "data contains text of the WikiText-2 evaluation split (articles holding the first 75% of "
    "the tokens of adapters/data/wiki.test.raw); healing on it would make the evaluation "
    "meaningless. Pass load_wikitext2(tokenizer=tok).calibration_text, or data=None for it"
)
_ERR_NO_TEACHER = (
    "alpha={alpha} gives weight to distillation, which needs teacher=; pass the uncompressed "
    "model as teacher= or set alpha=0 to train on cross-entropy only"
)


class HealingError(RuntimeError):
    """Healing stopped on a non-finite loss or gradient; the cores hold their last good values.

    Attributes
    ----------
    step : int
        The 0-based step whose loss or gradient was not finite.
    result : HealResult
        The history up to (not including) that step.
    """

    def __init__(self, message: str, *, step: int, result: "HealResult"):
        super().__init__(message)
        self.step = step
        self.result = result


@dataclass
class HealResult:
    """Result of :func:`heal`.

    Attributes
    ----------
    steps : int
        Steps asked for.
    steps_run : int
        Optimizer steps taken (``< steps`` when an iterable of batches ran out).
    losses : list of float
        Total loss of each step (before its update).
    ce_losses, kl_losses, hidden_losses : list of float
        The parts of each loss: cross-entropy on the data, logit KL to the teacher, hidden-state
        MSE; a part that is switched off is not recorded (empty list).
    lrs : list of float
        Learning rate used at each step.
    grad_norms : list of float
        Gradient norm of the trainable parameters at each step, before clipping.
    evals : list of (int, object)
        ``(step, eval_callback(model, step))`` pairs, step 0 being before any update.
    seconds : float
        Wall time of the call (evaluations included).
    tokens : int
        Tokens trained on (input positions).
    trainable_params : int
        Parameters that trained.
    shared_params : int
        Teacher parameters that were made to share the student's storage (``share_weights``).
    options : dict
        The options used, for reproducibility.
    """

    steps: int
    steps_run: int = 0
    losses: list = field(default_factory=list)
    ce_losses: list = field(default_factory=list)
    kl_losses: list = field(default_factory=list)
    hidden_losses: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    trainable_params: int = 0
    shared_params: int = 0
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


def _cur_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, FACTORED_LINEARS)}


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()


def trainable_parameters(model: nn.Module, /, *, train_bias: bool = False, train_norms: bool = False) -> dict[str, nn.Parameter]:
    """The parameters :func:`heal` trains: every ``U`` (``P``), optionally biases and norms.

    Parameters
    ----------
    model : nn.Module
        A model holding :class:`~adapters.layer.CURLinear` or
        :class:`~adapters.layer.InterpolativeLinear` modules.
    train_bias : bool, default False
        Also the biases of those modules.
    train_norms : bool, default False
        Also the parameters of normalisation modules (``LayerNorm``, ``LlamaRMSNorm``, any
        module whose class name contains ``Norm``).

    Returns
    -------
    dict
        ``{dotted parameter name: parameter}`` in model order.

    Raises
    ------
    ValueError
        If the model holds no compressed layer.
    """
    curs = _cur_modules(model)
    if not curs:
        raise ValueError(_ERR_NO_CUR)
    out = {}
    for name, mod in curs.items():
        out[f"{name}.{mod.core}"] = getattr(mod, mod.core)
        if train_bias and mod.bias is not None:
            out[f"{name}.bias"] = mod.bias
    if train_norms:
        for name, mod in model.named_modules():
            if _is_norm(mod):
                for pname, p in mod.named_parameters(recurse=False):
                    out[f"{name}.{pname}"] = p
    return out


def _eval_probes() -> list[str]:
    from .eval import _split_articles, load_wikitext2

    # The opening of every evaluation article's body: a healing text that holds any whole
    # evaluation article holds one of these.
    probes = []
    for article in _split_articles(load_wikitext2().eval_text):
        body = article.split("\n", 2)[-1].strip()
        if len(body) >= 200:
            probes.append(body[:200])
    return probes


def _check_not_eval_split(text: str) -> None:
    if any(p in text for p in _eval_probes()):
        raise ValueError(_ERR_EVAL_SPLIT)


class _Batches:
    """Endless (or, for a one-shot iterable, finite) supply of ``(batch, seqlen)`` token batches."""

    def __init__(self, data, *, tokenizer, batch_size, seqlen, generator):
        self.generator = generator
        self.batch_size = batch_size
        self.seqlen = seqlen
        self.stream = None
        self.rows = None
        self.items: Iterator | None = None
        self.cycle: list | None = None
        if data is None:
            if tokenizer is None:
                raise TypeError(
                    "data=None heals on the WikiText-2 calibration split, which needs tokenizer= "
                    "to encode it; pass the model's tokenizer, or pass token tensors as data="
                )
            from .eval import load_wikitext2

            data = load_wikitext2(tokenizer=tokenizer).calibration_text
        elif isinstance(data, str) or (
            isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data)
        ):
            data = data if isinstance(data, str) else "\n\n".join(data)
            _check_not_eval_split(data)
        if isinstance(data, str):
            if tokenizer is None:
                raise TypeError("data is text, so tokenizer= is needed to encode it; pass the model's tokenizer")
            data = tokenizer(data, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        if isinstance(data, torch.Tensor):
            self._set_tensor(data)
        elif isinstance(data, (list, tuple)) and data:
            self.cycle = [self._as_batch(b) for b in data]
            self.position = 0
        elif isinstance(data, Iterable) and not isinstance(data, (bytes, dict)):
            self.items = iter(data)
        else:
            raise TypeError(_ERR_DATA_KIND.format(kind=type(data).__name__))

    def _set_tensor(self, data):
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise TypeError(f"token tensors must hold integer ids, got dtype {data.dtype}; pass ids, not embeddings")
        ids = data.long()
        if ids.ndim == 1:
            if ids.numel() <= self.seqlen:
                raise ValueError(
                    f"the token stream has {ids.numel()} tokens, expected more than seqlen={self.seqlen}; "
                    "pass more data or a smaller seqlen="
                )
            self.stream = ids
        elif ids.ndim == 2:
            if ids.shape[0] < 1 or ids.shape[1] < 2:
                raise ValueError(f"a 2-D token tensor needs at least one row of 2 tokens, got shape {tuple(ids.shape)}")
            self.rows = ids
        else:
            raise ValueError(f"token tensors must be 1-D (a stream) or 2-D (samples x seqlen), got shape {tuple(ids.shape)}")

    @staticmethod
    def _as_batch(item) -> torch.Tensor:
        if isinstance(item, dict):
            item = item.get("input_ids")
        if not isinstance(item, torch.Tensor):
            raise TypeError(_ERR_DATA_KIND.format(kind=f"an iterable of {type(item).__name__}"))
        if item.is_floating_point() or item.is_complex() or item.dtype == torch.bool:
            raise TypeError(f"token batches must hold integer ids, got dtype {item.dtype}")
        if item.ndim not in (1, 2) or item.shape[-1] < 2:
            raise ValueError(f"token batches must be (seqlen,) or (batch, seqlen) with seqlen >= 2, got {tuple(item.shape)}")
        return item.long().reshape(-1, item.shape[-1])

    def next(self) -> torch.Tensor | None:
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
        try:
            return self._as_batch(next(self.items))
        except StopIteration:
            return None


def _lr_at(step: int, *, lr: float, steps: int, warmup: int, min_lr_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _share_frozen(student: nn.Module, teacher: nn.Module, trainable: set[int]) -> int:
    """Point the teacher's parameters at the student's identical frozen tensors; count them."""
    mine = dict(student.named_parameters())
    shared = 0
    with torch.no_grad():
        for name, tp in teacher.named_parameters():
            sp = mine.get(name)
            if (
                sp is None or id(sp) in trainable or sp is tp or sp.shape != tp.shape
                or sp.dtype != tp.dtype or sp.device != tp.device or not torch.equal(sp, tp)
            ):
                continue
            tp.data = sp.data
            shared += tp.numel()
    return shared


def _forward(model, ids, *, hidden: bool):
    return model(input_ids=ids, use_cache=False, output_hidden_states=hidden)


def _kl(student_logits, teacher_logits, temperature):
    s = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = torch.sum(t.exp() * (t - s), dim=-1).mean()
    return kl * temperature**2


def _hidden_mse(student_h, teacher_h):
    parts = []
    for hs, ht in zip(student_h[1:], teacher_h[1:]):
        ht = ht.float()
        parts.append(torch.sum((hs.float() - ht) ** 2) / torch.sum(ht**2).clamp_min(1e-30))
    return torch.stack(parts).mean()


def heal(
    model: nn.Module,
    /,
    *,
    teacher: nn.Module | None = None,
    data=None,
    tokenizer=None,
    steps: int = 200,
    lr: float = 1e-3,
    relative_lr: bool = True,
    batch_size: int = 8,
    seqlen: int = 512,
    alpha: float | None = None,
    temperature: float = 1.0,
    hidden_weight: float = 0.0,
    warmup: int | None = None,
    min_lr_ratio: float = 0.0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    train_bias: bool = False,
    train_norms: bool = False,
    share_weights: bool = True,
    autocast: bool | None = None,
    seed: int | torch.Generator = 0,
    progress: bool = True,
    eval_callback: Callable | None = None,
    eval_every: int | None = None,
) -> HealResult:
    """Fine-tune the cores (``U``, or ``P``) of a compressed model, in place, by distillation and/or CE.

    Parameters
    ----------
    model : transformers causal LM
        The compressed model (holding :class:`~adapters.layer.CURLinear` or
        :class:`~adapters.layer.InterpolativeLinear` modules).  Modified in
        place; only the trainable parameters change.
    teacher : transformers causal LM, optional
        The uncompressed model, same tokenizer and vocabulary.  Its outputs are computed on the
        fly, batch by batch, under ``torch.no_grad``.  Without it only cross-entropy is used and
        the dense weights are not needed at all.
    data : str, list of str, torch.Tensor or iterable of batches, optional
        Healing data.  Default (``None``): the calibration split of the bundled WikiText-2 file
        (:func:`adapters.eval.load_wikitext2`; needs ``tokenizer``).  Text is tokenized into one
        stream; a 1-D token stream yields ``batch_size`` random windows of ``seqlen`` tokens per
        step; a 2-D ``(samples, length)`` tensor yields ``batch_size`` random rows per step; a
        list or tuple of batches is cycled in order; any other iterable (e.g. a generator or a
        ``DataLoader``) is consumed once, one batch per step, and healing stops early, with a
        warning, if it runs out.  Text overlapping the WikiText-2 evaluation split is refused.
    tokenizer : transformers tokenizer, optional
        Needed for text data (and for ``data=None``).
    steps : int, default 200
        Optimizer steps.
    lr : float, default 1e-3
        Peak learning rate of AdamW; with ``relative_lr`` a relative step size.
    relative_lr : bool, default True
        Scale the learning rate of each trained tensor by its initial root-mean-square value,
        so ``lr`` is the relative size of an Adam step (as Adafactor's relative step).  The
        cores of different layers differ in scale by orders of magnitude (``U`` scales like
        ``1 / (|C| |R|)``), so one absolute rate is either too small for some or too large
        for others.
    batch_size, seqlen : int, default 8 and 512
        Shape of the batches drawn from a stream or from rows (ignored for batch iterables).
    alpha : float in [0, 1], optional
        Weight of the distillation term; the loss is ``(1 - alpha) CE + alpha KD``.  Default 1
        (pure distillation) with a teacher and 0 (pure cross-entropy) without one.
    temperature : float, default 1.0
        Softmax temperature of the logit KL (the KL is multiplied by ``T^2``, Hinton et al.).
    hidden_weight : float, default 0.0
        Weight of an extra hidden-state term (needs a teacher of the same depth and width): the
        relative squared error ``||h_s - h_t||^2 / ||h_t||^2`` of every decoder layer's output,
        averaged over the layers.
    warmup : int, optional
        Linear warm-up steps; default ``max(1, steps // 10)``.
    min_lr_ratio : float, default 0.0
        The cosine decay ends at ``min_lr_ratio * lr``.
    weight_decay : float, default 0.0
        AdamW decoupled weight decay.  Off by default: it would pull U towards 0, not towards
        the fitted core that is the natural prior.
    max_grad_norm : float, default 1.0
        Clip the global gradient norm of the trainable parameters (``inf`` to disable).
    train_bias, train_norms : bool, default False
        Also train the compressed layers' biases / the normalisation scales.
    share_weights : bool, default True
        Before training, make every teacher parameter that is equal to a frozen student
        parameter of the same name point at the student's storage (embeddings, norms, the
        layers left dense), so those tensors are held once.  The teacher's values do not change;
        its storage does, and stays shared after the call.
    autocast : bool, optional
        Run forward passes under ``torch.autocast(dtype=bfloat16)``.  Default: on for CUDA or
        for a model stored in bfloat16/float16, off otherwise.  The trainable parameters are
        kept in float32 during the run (master copies) and cast back to the model's dtype at
        the end.
    seed : int or torch.Generator, default 0
        Seeds the draw of windows and rows (a private generator; the global RNG is untouched).
    progress : bool, default True
        tqdm bar showing the loss.
    eval_callback : callable, optional
        ``eval_callback(model, step) -> value``, called in eval mode under ``torch.no_grad``
        before training (step 0), every ``eval_every`` steps and after the last step; the
        values are kept in ``result.evals``.
    eval_every : int, optional
        Period of ``eval_callback`` in steps (default: only before and after).

    Returns
    -------
    HealResult
        Loss history, steps run, time, evaluations.

    Raises
    ------
    ValueError
        No compressed layer in the model; bad option values; token ids outside the vocabulary; text
        from the evaluation split; teacher vocabulary that differs from the student's.
    TypeError
        Unsupported data kind; text without a tokenizer.
    HealingError
        A loss or gradient norm is NaN or Inf.  The update of that step is not applied, so the
        trainable parameters keep the values of the last good step (and are cast back to the
        model's dtype); the error carries ``step`` and the partial ``result``.

    Notes
    -----
    Write ``W ~ C U R`` for each compressed layer.  ``C`` and ``R`` are columns and rows of the
    original weight and stay fixed; only the ``r x r`` cores ``U`` (``sum r^2`` parameters, a
    few percent of the model) train, as in CURing's healing.  With teacher logits ``z_t``,
    student logits ``z_s`` and data tokens ``y`` the loss per token is

    .. math::

        L = (1 - \\alpha)\\, \\mathrm{CE}(z_s, y)
            + \\alpha\\, T^2\\, \\mathrm{KL}(\\mathrm{softmax}(z_t / T) \\,\\|\\, \\mathrm{softmax}(z_s / T))
            + \\lambda_h \\frac{1}{L} \\sum_l \\|h^l_s - h^l_t\\|^2 / \\|h^l_t\\|^2 .

    Default: ``alpha = 1``, ``T = 1``, ``lambda_h = 0`` with a teacher.  At ``T = 1`` the KL is
    the student's excess cross-entropy over the teacher on text drawn from the teacher, which is
    exactly what compression damaged; it gives a target over the whole vocabulary at every
    position rather than one label, which matters with few steps (Hinton et al., 2015), and it
    does not reward drifting towards the domain of the healing text (cross-entropy on WikiText
    lowers WikiText perplexity of the dense model too, see ``docs/healing.md``).  Without a
    teacher the loss is cross-entropy alone.

    Optimizer: AdamW, linear warm-up then cosine decay, global gradient clipping; with
    ``relative_lr`` the rate of each tensor is ``lr * rms(U_0)`` (Shazeer & Stern, 2018).  Forward
    passes run in eval mode (no dropout), so a run is a deterministic function of the model,
    the data and ``seed`` on a given machine.  Memory: teacher activations exist only for the
    current batch; nothing is cached.  The student stores one float32 copy of each ``U`` (last
    good values) besides AdamW's two moments.

    References
    ----------
    CURing (2025), "CURing Large Models: Compression via CUR Decomposition", arXiv 2501.04211
    (healing of U only).  Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural
    Network", arXiv 1503.02531.  Loshchilov & Hutter (2019), "Decoupled Weight Decay
    Regularization" (AdamW), ICLR.  Shazeer & Stern (2018), "Adafactor: Adaptive Learning
    Rates with Sublinear Memory Cost", ICML (relative step size).

    Examples
    --------
    >>> from adapters.heal import heal                          # doctest: +SKIP
    >>> res = heal(model, teacher=dense, tokenizer=tok, steps=100)   # doctest: +SKIP
    >>> res.losses[0] > res.losses[-1]                          # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    params = trainable_parameters(model, train_bias=train_bias, train_norms=train_norms)
    if teacher is not None:
        if teacher is model:
            raise ValueError("teacher= is the model being healed; pass the uncompressed model (or teacher=None)")
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch module (the uncompressed model), got {type(teacher).__name__}")
    alpha = (1.0 if teacher is not None else 0.0) if alpha is None else alpha
    for label, value, ok, hint in (
        ("steps", steps, isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "a positive int"),
        ("lr", lr, isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0, "a finite float > 0"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "a positive int"),
        ("seqlen", seqlen, isinstance(seqlen, int) and seqlen >= 2, "an int >= 2"),
        ("alpha", alpha, isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0, "a float in [0, 1]"),
        ("temperature", temperature, isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0, "a finite float > 0"),
        ("hidden_weight", hidden_weight, isinstance(hidden_weight, (int, float)) and math.isfinite(hidden_weight) and hidden_weight >= 0, "a finite float >= 0"),
        ("warmup", warmup, warmup is None or (isinstance(warmup, int) and 0 <= warmup <= steps), "an int in [0, steps]"),
        ("min_lr_ratio", min_lr_ratio, isinstance(min_lr_ratio, (int, float)) and 0.0 <= min_lr_ratio <= 1.0, "a float in [0, 1]"),
        ("weight_decay", weight_decay, isinstance(weight_decay, (int, float)) and weight_decay >= 0, "a float >= 0"),
        ("max_grad_norm", max_grad_norm, isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0, "a float > 0 (inf disables clipping)"),
        ("eval_every", eval_every, eval_every is None or (isinstance(eval_every, int) and eval_every >= 1), "a positive int"),
    ):
        if not ok:
            raise ValueError(f"{label} must be {hint}, got {value!r}")
    if teacher is None and (alpha > 0 or hidden_weight > 0):
        raise ValueError(_ERR_NO_TEACHER.format(alpha=alpha if alpha > 0 else f"{alpha}, hidden_weight={hidden_weight}"))
    if eval_callback is not None and not callable(eval_callback):
        raise TypeError(f"eval_callback must be callable as eval_callback(model, step), got {type(eval_callback).__name__}")
    if isinstance(seed, torch.Generator):
        generator = seed
    elif isinstance(seed, int) and not isinstance(seed, bool):
        generator = torch.Generator().manual_seed(seed)
    else:
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    warmup = max(1, steps // 10) if warmup is None else warmup
    batches = _Batches(data, tokenizer=tokenizer, batch_size=batch_size, seqlen=seqlen, generator=generator)

    first = next(iter(params.values()))
    device = first.device
    vocab = model.get_input_embeddings().num_embeddings
    if teacher is not None:
        t_vocab = teacher.get_input_embeddings().num_embeddings
        if t_vocab != vocab:
            raise ValueError(
                f"teacher vocabulary has {t_vocab} tokens, the model's {vocab}; the teacher must be the "
                "uncompressed model with the same tokenizer"
            )
    if autocast is None:
        autocast = device.type == "cuda" or first.dtype in (torch.bfloat16, torch.float16)
    amp = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    )
    t_device = None if teacher is None else next(teacher.parameters()).device
    t_amp = (
        torch.autocast(device_type=t_device.type, dtype=torch.bfloat16)
        if teacher is not None and autocast else contextlib.nullcontext()
    )

    result = HealResult(
        steps=steps, trainable_params=sum(p.numel() for p in params.values()),
        options=dict(
            lr=lr, relative_lr=relative_lr, batch_size=batch_size, seqlen=seqlen, alpha=alpha, temperature=temperature,
            hidden_weight=hidden_weight, warmup=warmup, min_lr_ratio=min_lr_ratio,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, train_bias=train_bias,
            train_norms=train_norms, autocast=bool(autocast), teacher=teacher is not None,
            seed=seed if isinstance(seed, int) else "generator",
            data="wikitext2-calibration" if data is None else type(data).__name__,
        ),
    )
    all_params = list(model.parameters())
    saved_flags = [p.requires_grad for p in all_params]
    saved_dtypes = {name: p.dtype for name, p in params.items()}
    was_training = model.training
    t_was_training = None if teacher is None else teacher.training
    t_flags = None if teacher is None else [p.requires_grad for p in teacher.parameters()]
    good: dict[str, torch.Tensor] = {}
    bar = None
    try:
        for p in all_params:
            p.requires_grad_(False)
        with torch.no_grad():
            for name, p in params.items():
                if p.dtype != torch.float32:
                    p.data = p.data.float()
                p.requires_grad_(True)
                good[name] = p.detach().clone()
        if teacher is not None:
            for p in teacher.parameters():
                p.requires_grad_(False)
            teacher.eval()
            if share_weights:
                result.shared_params = _share_frozen(model, teacher, {id(p) for p in params.values()})
        model.eval()
        groups = []
        for p in params.values():
            rms = float(p.detach().pow(2).mean().sqrt()) if relative_lr else 1.0
            groups.append({"params": [p], "scale": rms if math.isfinite(rms) and rms > 0 else 1.0})
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)

        def evaluate(step):
            if eval_callback is None:
                return
            with torch.no_grad(), amp:
                result.evals.append((step, eval_callback(model, step)))
            model.eval()

        evaluate(0)
        bar = tqdm(total=steps, desc="heal", disable=not progress, leave=False)
        for step in range(steps):
            ids = batches.next()
            if ids is None:
                warnings.warn(
                    f"the data iterable ran out after {step} of {steps} steps; healing stopped there. "
                    "Pass a list (it is cycled), a token tensor, or fewer steps=",
                    AdaptersWarning, stacklevel=2,
                )
                break
            if int(ids.min()) < 0 or int(ids.max()) >= vocab:
                raise ValueError(
                    f"token ids must lie in [0, {vocab}) (the model's vocabulary), got ids in "
                    f"[{int(ids.min())}, {int(ids.max())}] at step {step}; tokenize with the model's tokenizer"
                )
            ids = ids.to(device)
            cur_lr = _lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr_ratio=min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = cur_lr * group["scale"]
            need_hidden = hidden_weight > 0
            t_out = None
            if teacher is not None:
                with torch.no_grad(), t_amp:
                    t_out = _forward(teacher, ids.to(t_device), hidden=need_hidden)
            with amp:
                out = _forward(model, ids, hidden=need_hidden)
            logits = out.logits
            loss = logits.new_zeros((), dtype=torch.float32)
            parts = {}
            if alpha < 1.0:
                ce = nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
                )
                parts["ce"] = ce
                loss = loss + (1.0 - alpha) * ce
            if alpha > 0.0:
                t_logits = t_out.logits.to(logits.device)
                if t_logits.shape != logits.shape:
                    raise ValueError(
                        f"teacher logits have shape {tuple(t_logits.shape)}, the model's {tuple(logits.shape)}; "
                        "the teacher must be the uncompressed model with the same vocabulary"
                    )
                kl = _kl(logits, t_logits, temperature)
                parts["kl"] = kl
                loss = loss + alpha * kl
            if need_hidden:
                t_hidden = [h.to(logits.device) for h in t_out.hidden_states]
                if len(t_hidden) != len(out.hidden_states) or t_hidden[-1].shape != out.hidden_states[-1].shape:
                    raise ValueError(
                        "hidden_weight > 0 needs a teacher of the same depth and width as the model; "
                        "set hidden_weight=0 for a different teacher"
                    )
                hid = _hidden_mse(out.hidden_states, t_hidden)
                parts["hidden"] = hid
                loss = loss + hidden_weight * hid
            del out, t_out
            value = float(loss.detach())
            if not math.isfinite(value):
                raise HealingError(
                    _ERR_NONFINITE.format(step=step, what="loss", value=value, good=step, lr=cur_lr),
                    step=step, result=result,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), max_grad_norm))
            if not math.isfinite(gnorm):
                raise HealingError(
                    _ERR_NONFINITE.format(step=step, what="gradient norm", value=gnorm, good=step, lr=cur_lr),
                    step=step, result=result,
                )
            optimizer.step()
            with torch.no_grad():
                finite = all(bool(torch.isfinite(p).all()) for p in params.values())
                if not finite:
                    raise HealingError(
                        _ERR_NONFINITE.format(step=step, what="updated core", value="non-finite", good=step, lr=cur_lr),
                        step=step, result=result,
                    )
                for name, p in params.items():
                    good[name].copy_(p)
            result.losses.append(value)
            for key, target in (("ce", result.ce_losses), ("kl", result.kl_losses), ("hidden", result.hidden_losses)):
                if key in parts:
                    target.append(float(parts[key].detach()))
            result.lrs.append(cur_lr)
            result.grad_norms.append(gnorm)
            result.tokens += ids.numel()
            result.steps_run = step + 1
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update(1)
            if eval_every is not None and (step + 1) % eval_every == 0 and step + 1 < steps:
                evaluate(step + 1)
        if eval_callback is not None and (not result.evals or result.evals[-1][0] != result.steps_run):
            evaluate(result.steps_run)
    finally:
        if bar is not None:
            bar.close()
        with torch.no_grad():
            for name, p in params.items():
                src = good.get(name, p.data)
                p.data = src.to(saved_dtypes[name])
                p.grad = None
        for p, flag in zip(all_params, saved_flags):
            p.requires_grad_(flag)
        model.train(was_training)
        if teacher is not None:
            for p, flag in zip(teacher.parameters(), t_flags):
                p.requires_grad_(flag)
            teacher.train(t_was_training)
        result.seconds = time.perf_counter() - t0
    return result


def add_arguments(parser: argparse.ArgumentParser, /) -> None:
    """Add the options of ``python -m adapters heal`` to ``parser``."""
    parser.add_argument("model", help="a compressed folder written by adapters.save_compressed")
    parser.add_argument("--output", "-o", required=True, help="folder for the healed model")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--teacher", default=None,
        help="'smollm2', or a local folder with the uncompressed model (default: none, cross-entropy only)",
    )
    parser.add_argument("--teacher-gguf-file", help="GGUF file name inside the teacher folder")
    parser.add_argument("--data", help="text file to heal on (default: WikiText-2 calibration split)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3, help="relative step size (default 1e-3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--alpha", type=float, help="distillation weight (default 1 with a teacher, 0 without)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--train-bias", action="store_true")
    parser.add_argument("--train-norms", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--eval-tokens", type=int, default=0,
                        help="also report WikiText-2 perplexity before and after on this many evaluation tokens (0: skip)")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--report", help="write the HealResult as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cli_main(argv, /) -> int:
    """``python -m adapters heal MODEL -o OUT [options]``; returns the exit status.

    Parameters
    ----------
    argv : list of str
        The arguments after ``heal``.
    """
    import json
    from pathlib import Path

    from .cli import load_model
    from .eval import load_wikitext2, perplexity
    from .serialization import save_compressed

    parser = argparse.ArgumentParser(
        prog="python -m adapters heal",
        description="Heal a CUR-compressed model: train only the cores U or P (adapters.heal.heal)",
    )
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(args.model)
    if not _cur_modules(model):
        print(f"error: {args.model} holds no compressed (CURLinear/InterpolativeLinear) modules; compress it first with "
              "'python -m adapters compress'", file=sys.stderr)
        return 2
    model.to(device)
    teacher = None
    if args.teacher:
        teacher, _ = load_model(args.teacher, gguf_file=args.teacher_gguf_file)
        teacher.to(device)
    data = Path(args.data).read_text(encoding="utf-8") if args.data else None

    def ppl():
        text = load_wikitext2(tokenizer=tok).eval_text
        return perplexity(model, tok, text, seqlen=args.eval_seqlen, max_tokens=args.eval_tokens,
                          progress=not args.quiet).ppl

    before = ppl() if args.eval_tokens else None
    result = heal(
        model, teacher=teacher, data=data, tokenizer=tok, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seqlen=args.seqlen, alpha=args.alpha, temperature=args.temperature,
        hidden_weight=args.hidden_weight, train_bias=args.train_bias, train_norms=args.train_norms,
        seed=args.seed, progress=not args.quiet,
    )
    print(f"healed {result.steps_run} steps in {result.seconds:.1f}s: loss {result.losses[0]:.4f} -> "
          f"{result.losses[-1]:.4f} ({result.trainable_params:,} trainable parameters)")
    if args.eval_tokens:
        print(f"WikiText-2 perplexity {before:.3f} -> {ppl():.3f} ({args.eval_tokens} evaluation tokens)")
    save_compressed(model, args.output, tokenizer=tok, overwrite=args.overwrite)
    if args.report:
        Path(args.report).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    print(f"saved to {args.output}")
    return 0
