"""``merge``: fold every compressed layer back into a dense ``nn.Linear``, for serving engines
that do not know :class:`~adapters.layer.CURLinear` or :class:`~adapters.layer.InterpolativeLinear`."""

from __future__ import annotations

from torch import nn

from .hf_quantizer import detach, is_recorded
from .layer import fold
from .pruned import pad_widths

__all__ = ["merge"]


def merge(model: nn.Module, /) -> nn.Module:
    """Replace every compressed layer of ``model`` by the dense layer it computes, in place.

    Parameters
    ----------
    model : torch.nn.Module
        Typically a transformers model from :func:`adapters.compress` or ``from_pretrained``.

    Returns
    -------
    torch.nn.Module
        The same model: each :class:`~adapters.layer.CURLinear` /
        :class:`~adapters.layer.InterpolativeLinear` is now an ``nn.Linear`` with weight
        ``weight_product()`` (same device, dtype and bias), and the compression record is
        removed, so ``model.save_pretrained(path)`` writes a plain checkpoint that any engine
        loading the original architecture (vLLM, llama.cpp converters, ...) reads without
        :mod:`adapters`.  A model with no compressed layer keeps its layers; a compression
        record it still carries (its layers folded elsewhere, e.g. by PEFT's
        ``merge_and_unload()``, :mod:`adapters.peft`) is removed.
        transformers' own ``model.dequantize()`` does the same on a compressed model.

    Notes
    -----
    The merged model has the dense model's size and speed: merging gives up the compression
    and keeps only the approximation. Gated MLPs cut to different widths by
    :class:`~adapters.configs.StructuredConfig` are padded with zero neurons to the widest one
    (:func:`adapters.pruned.pad_widths`: the same function), which becomes the config's
    ``intermediate_size``; MLPs of one width are the family's architecture already.  The dense weight is the factored product (formed in
    float32 for half-precision layers and rounded once), so outputs agree with the factored
    model up to the rounding of a differently ordered product, not bit for bit.

    Examples
    --------
    >>> import torch
    >>> from adapters.layer import CURLinear
    >>> net = torch.nn.Sequential(CURLinear.from_linear(torch.nn.Linear(6, 4), rows=[0, 2], cols=[1, 5], U=torch.eye(2)))
    >>> type(merge(net)[0]).__name__
    'Linear'
    """
    folded = fold(model)
    padded = pad_widths(model)
    if folded or padded is not None or not any(is_recorded(m) for m in model.modules()):
        detach(model)  # also a record left describing nothing (after PEFT's merge_and_unload)
    return model
