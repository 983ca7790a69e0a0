"""Shared small pieces: the project warning class and parameter counting."""

from __future__ import annotations

from torch import nn

__all__ = ["AdaptersWarning", "count_parameters"]


class AdaptersWarning(UserWarning):
    """Warnings raised by :mod:`adapters` (filter them with this class)."""


def count_parameters(model: nn.Module, /) -> int:
    """Number of distinct parameters (tied weights counted once), as ``model.parameters()``.

    A tied weight is one parameter object, so ``parameters()`` yields it once; accelerate's
    offload hooks (``cpu_offload``) replace each module's parameters by separate ``meta``
    ones, so there a parameter that transformers declares tied (``all_tied_weights_keys``) to
    another one still present is not counted again.
    """
    params = dict(model.named_parameters())
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return sum(p.numel() for n, p in params.items()
               if not (p.device.type == "meta" and tied.get(n) in params))
