"""Core-only distillation, step by step: the loss, set up, one step, restore (used by :func:`adapters.heal`)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HealingError", "Loss", "Session", "lr_at"]

_ERR_NONFINITE = (
    "healing stopped at step {step}: the {what} is {value} (NaN or Inf). The cores (U or P) hold the "
    "last good values (after {good} completed steps), so nothing is lost. Check the data of this step, "
    "lower lr= (now {lr:g}) or max_grad_norm=, or run in float32; result.losses has the history"
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

    def __init__(self, message: str, *, step: int, result):
        super().__init__(message)
        self.step = step
        self.result = result


def lr_at(step: int, *, lr: float, steps: int, warmup: int, min_lr_ratio: float) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr``."""
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


@dataclass
class Loss:
    """``(1 - alpha) CE + alpha T^2 KL + hidden_weight * H`` and its parts."""

    alpha: float
    temperature: float
    hidden_weight: float

    def __call__(self, ids, out, t_out) -> tuple[torch.Tensor, dict]:
        logits = out.logits
        loss = logits.new_zeros((), dtype=torch.float32)
        parts = {}
        if self.alpha < 1.0:
            parts["ce"] = nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
            )
            loss = loss + (1.0 - self.alpha) * parts["ce"]
        if self.alpha > 0.0:
            t_logits = t_out.logits.to(logits.device)
            if t_logits.shape != logits.shape:
                raise ValueError(
                    f"teacher logits have shape {tuple(t_logits.shape)}, the model's {tuple(logits.shape)}; "
                    "the teacher must be the uncompressed model with the same vocabulary"
                )
            parts["kl"] = _kl(logits, t_logits, self.temperature)
            loss = loss + self.alpha * parts["kl"]
        if self.hidden_weight > 0:
            t_hidden = [h.to(logits.device) for h in t_out.hidden_states]
            if len(t_hidden) != len(out.hidden_states) or t_hidden[-1].shape != out.hidden_states[-1].shape:
                raise ValueError(
                    "hidden_weight > 0 needs a teacher of the same depth and width as the model; "
                    "set hidden_weight=0 for a different teacher"
                )
            parts["hidden"] = _hidden_mse(out.hidden_states, t_hidden)
            loss = loss + self.hidden_weight * parts["hidden"]
        return loss, parts


class Session:
    """Set up (freeze, float32 master copies, optimizer), step, and restore a healing run."""

    def __init__(self, model, teacher, params, *, autocast):
        self.model, self.teacher, self.params = model, teacher, params
        first = next(iter(params.values()))
        self.device = first.device
        self.vocab = model.get_input_embeddings().num_embeddings
        self.autocast = bool(
            self.device.type == "cuda" or first.dtype in (torch.bfloat16, torch.float16) if autocast is None else autocast
        )
        self.amp = self._amp(self.device)
        self.t_device = None if teacher is None else next(teacher.parameters()).device
        self.t_amp = self._amp(self.t_device) if teacher is not None else contextlib.nullcontext()
        self.all_params = list(model.parameters())
        self.saved_flags = [p.requires_grad for p in self.all_params]
        self.saved_dtypes = {name: p.dtype for name, p in params.items()}
        self.was_training = model.training
        self.t_was_training = None if teacher is None else teacher.training
        self.t_flags = None if teacher is None else [p.requires_grad for p in teacher.parameters()]
        self.good: dict[str, torch.Tensor] = {}
        self.optimizer = None

    def _amp(self, device):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def set_up(self, *, share_weights, relative_lr, lr, weight_decay) -> int:
        """Freeze all but the cores (kept in float32 with a last-good copy); returns shared params."""
        for p in self.all_params:
            p.requires_grad_(False)
        with torch.no_grad():
            for name, p in self.params.items():
                if p.dtype != torch.float32:
                    p.data = p.data.float()
                p.requires_grad_(True)
                self.good[name] = p.detach().clone()
        shared = 0
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.teacher.eval()
            if share_weights:
                shared = _share_frozen(self.model, self.teacher, {id(p) for p in self.params.values()})
        self.model.eval()
        groups = []
        for p in self.params.values():
            rms = float(p.detach().pow(2).mean().sqrt()) if relative_lr else 1.0
            groups.append({"params": [p], "scale": rms if math.isfinite(rms) and rms > 0 else 1.0})
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        return shared

    def _nonfinite(self, step, what, value, lr, result):
        return HealingError(_ERR_NONFINITE.format(step=step, what=what, value=value, good=step, lr=lr),
                            step=step, result=result)

    def step(self, ids, step, *, loss, lr, max_grad_norm, result) -> tuple[float, dict, float]:
        """One optimizer step; a non-finite loss, gradient or update raises before it is kept."""
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab}) (the model's vocabulary), got ids in "
                f"[{int(ids.min())}, {int(ids.max())}] at step {step}; tokenize with the model's tokenizer"
            )
        ids = ids.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        need_hidden = loss.hidden_weight > 0
        t_out = None
        if self.teacher is not None:
            with torch.no_grad(), self.t_amp:
                t_out = _forward(self.teacher, ids.to(self.t_device), hidden=need_hidden)
        with self.amp:
            out = _forward(self.model, ids, hidden=need_hidden)
        total, parts = loss(ids, out, t_out)
        del out, t_out
        value = float(total.detach())
        if not math.isfinite(value):
            raise self._nonfinite(step, "loss", value, lr, result)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), max_grad_norm))
        if not math.isfinite(gnorm):
            raise self._nonfinite(step, "gradient norm", gnorm, lr, result)
        self.optimizer.step()
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in self.params.values()):
                raise self._nonfinite(step, "updated core", "non-finite", lr, result)
            for name, p in self.params.items():
                self.good[name].copy_(p)
        return value, {k: float(v.detach()) for k, v in parts.items()}, gnorm

    def restore(self) -> None:
        """Cores to their last good values in their dtype; flags and modes as they were."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.data = self.good.get(name, p.data).to(self.saved_dtypes[name])
                p.grad = None
        for p, flag in zip(self.all_params, self.saved_flags):
            p.requires_grad_(flag)
        self.model.train(self.was_training)
        if self.teacher is not None:
            for p, flag in zip(self.teacher.parameters(), self.t_flags):
                p.requires_grad_(flag)
            self.teacher.train(self.t_was_training)
