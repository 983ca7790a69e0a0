"""Plain ``nn.Linear`` layers cut from dense ones: what structured compression leaves behind.

A structured unit keeps whole neurons (:class:`adapters.configs.StructuredConfig`): ``k`` rows
of ``gate`` and ``up``, ``k`` columns of ``down``. The results are ordinary ``nn.Linear``
layers, which every tool knows (PEFT, ``torch.compile``, serving engines). Only their shapes
differ from the architecture in ``config.json``, so a checkpoint must say so:

* when every MLP keeps the same width, :func:`settle_widths` writes it into the family's own
  config (``intermediate_size``): the model *is* the family's architecture, smaller, and its
  checkpoint is a stock one;
* otherwise each cut layer carries :attr:`kept_from` (a :class:`Kept`), and the checkpoint's
  record (:mod:`adapters.hf_quantizer`) lists it under the form ``"rows"`` or ``"columns"``
  with the dense shape and the kept width, so that ``from_pretrained`` builds it at its size;
  :func:`pad_widths` (used by :func:`adapters.merge`) pads every MLP with zero neurons to the
  widest one instead, which computes the same function in a stock architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layouts import GATED_MLP, is_gated_mlp

__all__ = ["KEPT", "Kept", "KeptColumns", "KeptRows", "kept_linear", "pad_widths", "settle_widths"]


@dataclass(frozen=True)
class Kept:
    """How a plain linear layer was cut from a dense one.

    Attributes
    ----------
    form : {"rows", "columns"}
        Output rows kept (``gate``, ``up``) or input columns kept (``down``).
    out_features, in_features : int
        The dense layer's shape (the architecture's).
    """

    form: str
    out_features: int
    in_features: int


class _KeptForm:
    """Builds the cut layer a checkpoint record names (``form``, dense shape, kept width)."""

    form = ""

    @classmethod
    def _layout(cls, m: int, n: int, rank: int, /) -> tuple[int, int]:
        """``(out, in)`` of the cut layer; ``rank`` is the kept width."""
        size = m if cls.form == "rows" else n
        if not 1 <= rank <= size:
            raise ValueError(f"a width of {rank} is outside [1, {size}] for the {cls.form} of a {m}x{n} weight")
        return (rank, n) if cls.form == "rows" else (m, rank)

    @classmethod
    def empty(cls, m: int, n: int, rank: int, /, *, bias: bool, dtype=None, device=None) -> nn.Linear:
        """An uninitialised cut layer, for a checkpoint to be loaded into (as
        :meth:`adapters.layer.CURLinear.empty`)."""
        out, inp = cls._layout(m, n, rank)
        lin = nn.Linear(inp, out, bias=bias, dtype=dtype, device=device)
        lin.kept_from = Kept(cls.form, m, n)
        return lin


class KeptRows(_KeptForm):
    """Record form ``"rows"``: an ``nn.Linear`` keeping ``rank`` output rows."""

    form = "rows"


class KeptColumns(_KeptForm):
    """Record form ``"columns"``: an ``nn.Linear`` keeping ``rank`` input columns."""

    form = "columns"


#: Record form -> builder of the cut layer.
KEPT = {cls.form: cls for cls in (KeptRows, KeptColumns)}


def kept_linear(weight: torch.Tensor, bias: torch.Tensor | None, /, *, form: str, shape: tuple) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (and ``bias``), marked as cut from a dense ``shape``.

    Parameters
    ----------
    weight : torch.Tensor, shape (out, in)
        The kept rows (``form="rows"``: ``out <= shape[0]``, ``in == shape[1]``) or columns
        (``form="columns"``: ``out == shape[0]``, ``in <= shape[1]``) of the dense weight.
    bias : torch.Tensor or None
    form : {"rows", "columns"}
    shape : tuple of int
        ``(out_features, in_features)`` of the dense layer.

    Returns
    -------
    torch.nn.Linear
        With ``kept_from`` set (:class:`Kept`): what the checkpoint record lists.

    Raises
    ------
    ValueError
        An unknown ``form``, or a ``weight`` that is not a cut of ``shape`` along it.
    """
    if form not in KEPT:
        raise ValueError(f"form must be one of {sorted(KEPT)}, got {form!r}")
    out, inp = weight.shape
    m, n = int(shape[0]), int(shape[1])
    fits = (out <= m and inp == n) if form == "rows" else (out == m and inp <= n)
    if not fits:
        raise ValueError(f"a {out}x{inp} weight is not a cut of the {form} of a {m}x{n} weight; pass the dense shape")
    lin = nn.Linear(inp, out, bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    lin.kept_from = Kept(form, int(shape[0]), int(shape[1]))
    return lin


def _gated_mlps(model: nn.Module):
    for name, mod in model.named_modules():
        if is_gated_mlp(mod, of=nn.Linear):
            yield name, mod


def _width(mlp: nn.Module) -> int:
    return mlp.gate_proj.out_features


def settle_widths(model: nn.Module, /) -> int | None:
    """When every gated MLP of ``model`` has one width below its config's, make it the config's.

    Parameters
    ----------
    model : transformers PreTrainedModel
        Modified in place (``config.intermediate_size``, the MLPs' own attribute, the marks).

    Returns
    -------
    int or None
        The width now in ``model.config.intermediate_size`` (the cut layers' marks are
        dropped: they are the architecture now), or None when the widths differ, nothing was
        cut, or the config has no ``intermediate_size`` (the marks then stay for the record).
    """
    config = getattr(model, "config", None)
    mlps = list(_gated_mlps(model))
    if not mlps or config is None or not isinstance(getattr(config, "intermediate_size", None), int):
        return None
    widths = {_width(m) for _, m in mlps}
    if len(widths) != 1 or widths == {config.intermediate_size}:
        return None
    width = widths.pop()
    config.intermediate_size = width
    for _, mlp in mlps:
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        for attr in GATED_MLP:
            getattr(mlp, attr).__dict__.pop("kept_from", None)
    return width


@torch.no_grad()
def pad_widths(model: nn.Module, /) -> int | None:
    """Pad every cut gated MLP with zero neurons to the widest MLP; the width, or None if none was cut.

    A zero row of ``gate`` and ``up`` gives ``act(0) * 0 = 0`` for the activations of the
    families with a gated MLP (SiLU, GELU), and a zero column of ``down`` reads nothing, so the
    padded model computes the same function, in the family's own architecture with
    ``intermediate_size`` the widest width.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (the cut layers are replaced by padded ``nn.Linear``s).

    Returns
    -------
    int or None
        The common width, or None when no MLP was cut (the model is left as it is).
    """
    mlps = list(_gated_mlps(model))
    if not any(hasattr(getattr(m, a), "kept_from") for _, m in mlps for a in GATED_MLP):
        return None
    width = max(_width(m) for _, m in mlps)
    for _, mlp in mlps:
        k = _width(mlp)
        for attr in GATED_MLP:
            old = getattr(mlp, attr)
            w = old.weight
            if attr == "down_proj":
                pad = torch.zeros(w.shape[0], width - k, dtype=w.dtype, device=w.device)
                new = nn.Linear(width, w.shape[0], bias=old.bias is not None, dtype=w.dtype, device=w.device)
                new.weight.copy_(torch.cat([w, pad], dim=1))
                if old.bias is not None:
                    new.bias.copy_(old.bias)
            else:
                pad = torch.zeros(width - k, w.shape[1], dtype=w.dtype, device=w.device)
                new = nn.Linear(w.shape[1], width, bias=old.bias is not None, dtype=w.dtype, device=w.device)
                new.weight.copy_(torch.cat([w, pad], dim=0))
                if old.bias is not None:
                    new.bias.copy_(torch.cat([old.bias, old.bias.new_zeros(width - k)]))
            new.requires_grad_(old.weight.requires_grad)
            setattr(mlp, attr, new)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    if hasattr(getattr(model, "config", None), "intermediate_size"):
        model.config.intermediate_size = width
    return width
