"""``merge``: fold every compressed layer back into the family's dense layer (``nn.Linear``,
GPT-2's ``Conv1D``, fused experts), for serving engines and tools that do not know
:class:`~adapters.layer.CURLinear` or :class:`~adapters.layer.InterpolativeLinear`."""

from __future__ import annotations

from torch import nn

from .experts import close_experts
from .hf_quantizer import architecture_twin, detach, is_recorded
from .layer import SAVED_LINEARS, fold
from .pruned import pad_heads, pad_widths
from .targets import from_linear

__all__ = ["densify", "merge"]


def _slots(model: nn.Module, names) -> dict[str, type]:
    """``{name: type}`` for the ``names`` whose module in the family's architecture is not an
    ``nn.Linear`` (GPT-2's ``Conv1D``): the types a folded layer must take back."""
    if not names:
        return {}
    twin = architecture_twin(model)
    if twin is None:
        return {}
    out = {}
    for name in names:
        try:
            slot = type(twin.get_submodule(name))
        except AttributeError:  # an opened expert's layer: its fused module is closed instead
            continue
        if not issubclass(slot, nn.Linear):
            out[name] = slot
    return out


def densify(model: nn.Module, /) -> bool:
    """Put ``model`` back in its family's dense layout, in place; whether anything changed.

    Folds every compressed layer (:func:`adapters.layer.fold`), gives a layer that replaced a
    ``Conv1D`` its ``Conv1D`` back (:func:`adapters.targets.from_linear`), closes opened
    experts into their fused 3-D parameters (:func:`adapters.experts.close_experts`) and pads
    cut MLPs, of any layout, to one width (:func:`adapters.pruned.pad_widths`) and attentions cut by
    whole KV heads to one count (:func:`adapters.pruned.pad_heads`). The record stays: :func:`merge`
    and ``model.dequantize()`` remove it.
    """
    names = [name for name, mod in model.named_modules() if isinstance(mod, SAVED_LINEARS)]
    slots = _slots(model, names)
    folded = fold(model)
    for name, slot in slots.items():
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, from_linear(model.get_submodule(name), slot))
    closed = close_experts(model)
    padded = pad_widths(model)
    headed = pad_heads(model)
    return bool(folded or closed or padded is not None or headed is not None)


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
        :class:`~adapters.layer.InterpolativeLinear` is now the dense layer of the family's
        architecture with weight ``weight_product()`` (same device, dtype and bias): an
        ``nn.Linear``, or a ``Conv1D`` holding its transpose where the architecture has one
        (GPT-2); opened experts are fused 3-D parameters again; and the compression record is
        removed, so ``model.save_pretrained(path)`` writes a plain checkpoint that any engine
        loading the original architecture (vLLM, llama.cpp converters, ...) reads without
        :mod:`adapters`.  A model with no compressed layer keeps its layers; a compression
        record it still carries (its layers folded elsewhere, e.g. by PEFT's
        ``merge_and_unload()``, :mod:`adapters.peft`) is removed.
        transformers' own ``model.dequantize()`` does the same on a compressed model.

    Notes
    -----
    The merged model has the dense model's size and speed: merging gives up the compression
    and keeps only the approximation. MLPs cut to different widths by
    :class:`~adapters.configs.StructuredConfig` (any layout of
    :data:`adapters.layouts.MLP_LAYOUTS`) are padded with zero neurons to the widest one
    (:func:`adapters.pruned.pad_widths`: the same function), which becomes the config's width
    (``intermediate_size``, ``ffn_dim``, ...); MLPs of one width are the family's architecture
    already. Attentions cut to different numbers of whole KV heads are padded with zero heads to
    the most kept (:func:`adapters.pruned.pad_heads`), which becomes the config's
    ``num_key_value_heads`` (and its query heads ``num_attention_heads``, with ``head_dim`` set). The dense weight is the factored product (formed in float32 for half-precision
    layers and rounded once), so outputs agree with the factored model up to the rounding of a
    differently ordered product, not bit for bit.

    Examples
    --------
    >>> import torch
    >>> from adapters.layer import CURLinear
    >>> net = torch.nn.Sequential(CURLinear.from_linear(torch.nn.Linear(6, 4), rows=[0, 2], cols=[1, 5], U=torch.eye(2)))
    >>> type(merge(net)[0]).__name__
    'Linear'
    """
    if densify(model) or not any(is_recorded(m) for m in model.modules()):
        detach(model)  # also a record left describing nothing (after PEFT's merge_and_unload)
    return model
