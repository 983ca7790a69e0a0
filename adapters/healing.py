"""Healing: a short core-only distillation run that recovers the quality lost to compression.

Only the small cores ``U`` of the :class:`~adapters.layer.CURLinear` modules train (for
:class:`~adapters.layer.InterpolativeLinear`, the interpolation coefficients ``P``; optionally
the biases and the norm scales); ``C`` and ``R`` stay fixed, so they remain actual columns and
rows of the original weights, and the healed model saves and loads like any compressed model.
:func:`heal` runs four steps: validate the options, set up (freeze, master copies, optimizer),
step, restore (always, also on errors).

>>> import adapters                                               # doctest: +SKIP
>>> teacher, tok = adapters.cli.load_model("smollm2")             # doctest: +SKIP
>>> result = adapters.heal(model, teacher=teacher, tokenizer=tok, steps=200)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ._common import AdaptersWarning
from .layer import FACTORED_LINEARS, GatheredLinear
from .distillation import HealingError, Loss, Session, lr_at
from .tokens import TokenBatches
from .wikitext import load_wikitext2

__all__ = ["HealResult", "HealingError", "heal", "trainable_parameters"]

_ERR_NO_CUR = (
    "heal trains the cores of CURLinear (U) and InterpolativeLinear (P) modules and the refitted "
    "projections of structured units, but the model holds none; compress it first "
    "with adapters.compress(...) or load a compressed checkpoint with adapters.load_compressed(...). "
    "A structured model saved with one MLP width is a plain model of its family: fine-tune it as one"
)
_ERR_NO_TEACHER = (
    "alpha={alpha} gives weight to distillation, which needs teacher=; pass the uncompressed "
    "model as teacher= or set alpha=0 to train on cross-entropy only"
)


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
    """The modules whose core heal trains: factored layers, and the projections a structured unit
    refitted (an MLP's output projection, ``down_proj``, ``fc2``, ...: marked ``refitted`` by the
    fit and on load; an attention's gathered ``o_proj``)."""
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, (*FACTORED_LINEARS, GatheredLinear)) or getattr(mod, "refitted", False)}


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(mod).__name__.lower()


def trainable_parameters(model: nn.Module, /, *, train_bias: bool = False, train_norms: bool = False) -> dict[str, nn.Parameter]:
    """The parameters :func:`heal` trains: every ``U`` (``P``) and every weight a structured unit
    refitted (an MLP's output projection, an attention's gathered ``o_proj``), optionally biases
    and norms.

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
        core = getattr(mod, "core", "weight")  # a refitted nn.Linear trains its weight
        out[f"{name}.{core}"] = getattr(mod, core)
        if train_bias and mod.bias is not None:
            out[f"{name}.bias"] = mod.bias
    if train_norms:
        for name, mod in model.named_modules():
            if _is_norm(mod):
                for pname, p in mod.named_parameters(recurse=False):
                    out[f"{name}.{pname}"] = p
    return out



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
    >>> from adapters.healing import heal                       # doctest: +SKIP
    >>> res = heal(model, teacher=dense, tokenizer=tok, steps=100)   # doctest: +SKIP
    >>> res.losses[0] > res.losses[-1]                          # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    params, alpha, generator, warmup = _validate(
        model, teacher, steps=steps, lr=lr, batch_size=batch_size, seqlen=seqlen, alpha=alpha,
        temperature=temperature, hidden_weight=hidden_weight, warmup=warmup, min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay, max_grad_norm=max_grad_norm, eval_every=eval_every,
        eval_callback=eval_callback, seed=seed, train_bias=train_bias, train_norms=train_norms,
    )
    if data is None:
        if tokenizer is None:
            raise TypeError(
                "data=None heals on the WikiText-2 calibration split, which needs tokenizer= "
                "to encode it; pass the model's tokenizer, or pass token tensors as data="
            )
        data = load_wikitext2(tokenizer=tokenizer).calibration_text
    batches = TokenBatches(data, tokenizer=tokenizer, batch_size=batch_size, seqlen=seqlen, generator=generator)
    loss = Loss(alpha=alpha, temperature=temperature, hidden_weight=hidden_weight)
    session = Session(model, teacher, params, autocast=autocast)
    result = HealResult(
        steps=steps, trainable_params=sum(p.numel() for p in params.values()),
        options=dict(
            lr=lr, relative_lr=relative_lr, batch_size=batch_size, seqlen=seqlen, alpha=alpha, temperature=temperature,
            hidden_weight=hidden_weight, warmup=warmup, min_lr_ratio=min_lr_ratio,
            weight_decay=weight_decay, max_grad_norm=max_grad_norm, train_bias=train_bias,
            train_norms=train_norms, autocast=session.autocast, teacher=teacher is not None,
            seed=seed if isinstance(seed, int) else "generator",
            data="wikitext2-calibration" if data is None else type(data).__name__,
        ),
    )
    bar = None
    try:
        result.shared_params = session.set_up(share_weights=share_weights, relative_lr=relative_lr,
                                              lr=lr, weight_decay=weight_decay)

        def evaluate(step):
            if eval_callback is not None:
                with torch.no_grad(), session.amp:
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
            cur_lr = lr_at(step, lr=lr, steps=steps, warmup=warmup, min_lr_ratio=min_lr_ratio)
            value, parts, gnorm = session.step(ids, step, loss=loss, lr=cur_lr, max_grad_norm=max_grad_norm,
                                               result=result)
            result.losses.append(value)
            for key, target in (("ce", result.ce_losses), ("kl", result.kl_losses), ("hidden", result.hidden_losses)):
                if key in parts:
                    target.append(parts[key])
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
        session.restore()
        result.seconds = time.perf_counter() - t0
    return result


def _validate(model, teacher, *, steps, lr, batch_size, seqlen, alpha, temperature, hidden_weight, warmup,
              min_lr_ratio, weight_decay, max_grad_norm, eval_every, eval_callback, seed, train_bias, train_norms):
    """Check every option before anything changes; returns ``(params, alpha, generator, warmup)``."""
    params = trainable_parameters(model, train_bias=train_bias, train_norms=train_norms)
    if teacher is not None:
        if teacher is model:
            raise ValueError("teacher= is the model being healed; pass the uncompressed model (or teacher=None)")
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch module (the uncompressed model), got {type(teacher).__name__}")
    alpha = (1.0 if teacher is not None else 0.0) if alpha is None else alpha
    real = (int, float)
    for label, value, ok, hint in (
        ("steps", steps, isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "a positive int"),
        ("lr", lr, isinstance(lr, real) and math.isfinite(lr) and lr > 0, "a finite float > 0"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "a positive int"),
        ("seqlen", seqlen, isinstance(seqlen, int) and seqlen >= 2, "an int >= 2"),
        ("alpha", alpha, isinstance(alpha, real) and 0.0 <= alpha <= 1.0, "a float in [0, 1]"),
        ("temperature", temperature, isinstance(temperature, real) and math.isfinite(temperature) and temperature > 0,
         "a finite float > 0"),
        ("hidden_weight", hidden_weight, isinstance(hidden_weight, real) and math.isfinite(hidden_weight)
         and hidden_weight >= 0, "a finite float >= 0"),
        ("warmup", warmup, warmup is None or (isinstance(warmup, int) and 0 <= warmup <= steps), "an int in [0, steps]"),
        ("min_lr_ratio", min_lr_ratio, isinstance(min_lr_ratio, real) and 0.0 <= min_lr_ratio <= 1.0, "a float in [0, 1]"),
        ("weight_decay", weight_decay, isinstance(weight_decay, real) and weight_decay >= 0, "a float >= 0"),
        ("max_grad_norm", max_grad_norm, isinstance(max_grad_norm, real) and max_grad_norm > 0,
         "a float > 0 (inf disables clipping)"),
        ("eval_every", eval_every, eval_every is None or (isinstance(eval_every, int) and eval_every >= 1),
         "a positive int"),
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
    if teacher is not None:
        vocab, t_vocab = (m.get_input_embeddings().num_embeddings for m in (model, teacher))
        if t_vocab != vocab:
            raise ValueError(
                f"teacher vocabulary has {t_vocab} tokens, the model's {vocab}; the teacher must be the "
                "uncompressed model with the same tokenizer"
            )
    return params, alpha, generator, (max(1, steps // 10) if warmup is None else warmup)


