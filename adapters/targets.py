"""Which linear layers to compress: a walk over ``named_modules()`` with a filter on the full name.

A *linear layer* is any module :func:`as_linear` can read as ``y = x W^T + b``: ``nn.Linear`` and
its subclasses, and transformers' ``Conv1D`` (GPT-2; weight stored transposed).  Routed experts
stored as fused 3-D parameters become one linear layer per expert matrix first
(:func:`adapters.experts.open_experts`).  Every other 2-D weight of the blocks (routers, ...)
is listed as left dense, with the reason (:class:`LeftDense`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .calibration import find_decoder_layers
from .experts import fused_experts_problem, is_fused_experts
from .layer import FACTORED_LINEARS, LowRankLinear, _shared_linear

__all__ = [
    "ALL_LINEAR", "DENSE_FROM_LINEAR", "LINEAR_VIEWS", "TARGET_ALIASES", "LeftDense", "Survey", "as_linear",
    "check_uncompressed", "find_targets", "from_linear", "matches", "survey_targets",
]

TARGET_ALIASES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
#: Every linear layer inside the blocks (PEFT's ``"all-linear"``: the output head is not a
#: block module, so it never matches), MoE routers excepted (name one to compress it); the
#: default of every config but CURing's.
ALL_LINEAR = "all-linear"


def _conv1d_view(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight.T, module.bias


@torch.no_grad()
def _conv1d_from(linear: nn.Linear, cls: type) -> nn.Module:
    out = cls(linear.out_features, linear.in_features)  # Conv1D(nf=out, nx=in), weight in x out
    out.to(device=linear.weight.device, dtype=linear.weight.dtype)
    out.weight.copy_(linear.weight.T)
    if linear.bias is None:
        out.bias.zero_()  # Conv1D always has a bias (its forward is one addmm)
    else:
        out.bias.copy_(linear.bias)
    out.requires_grad_(linear.weight.requires_grad)
    return out


#: Module type -> ``view(module) -> (weight (out x in), bias or None)``, sharing storage; looked
#: up along the type's MRO, so subclasses (``FalconLinear``) find their base.
LINEAR_VIEWS: dict[type, Callable] = {nn.Linear: lambda module: (module.weight, module.bias)}
#: The inverse of :data:`LINEAR_VIEWS` for the types that do not store ``out x in``:
#: ``type -> build(linear, type)``, a module of that type computing what ``linear`` computes
#: (what a merged checkpoint must hold for the family's own class to load it).
DENSE_FROM_LINEAR: dict[type, Callable] = {}
try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is what adapters compresses
    pass
else:
    LINEAR_VIEWS[Conv1D] = _conv1d_view
    DENSE_FROM_LINEAR[Conv1D] = _conv1d_from


def _view_of(module: nn.Module):
    for cls in type(module).__mro__:
        if cls in LINEAR_VIEWS:
            return LINEAR_VIEWS[cls]
    return None


def as_linear(module: nn.Module, /) -> nn.Linear:
    """``module`` as an :class:`torch.nn.Linear` (itself, or one sharing its storage).

    Parameters
    ----------
    module : nn.Module
        A type registered in :data:`LINEAR_VIEWS` (``nn.Linear``, ``Conv1D``).

    Returns
    -------
    nn.Linear
        ``weight`` is ``out x in`` (for ``Conv1D`` the transpose of the stored weight, a view).

    Raises
    ------
    TypeError
        For a module of another type; register a view in :data:`LINEAR_VIEWS` to add one.

    Examples
    --------
    >>> from transformers.pytorch_utils import Conv1D
    >>> as_linear(Conv1D(6, 4)).weight.shape
    torch.Size([6, 4])
    """
    if isinstance(module, nn.Linear):
        return module
    view = _view_of(module)
    if view is None:
        raise TypeError(
            f"expected a linear layer ({', '.join(c.__name__ for c in LINEAR_VIEWS)}), got "
            f"{type(module).__name__}; register a view of its weight in adapters.targets.LINEAR_VIEWS"
        )
    weight, bias = view(module)
    return _shared_linear(weight, bias, requires_grad=weight.requires_grad)


def from_linear(linear: nn.Linear, slot: type, /) -> nn.Module:
    """``linear`` as a module of type ``slot`` (the inverse of :func:`as_linear`).

    Parameters
    ----------
    linear : nn.Linear
        A dense layer, e.g. a factored layer folded by :func:`adapters.layer.fold`.
    slot : type
        The type the architecture has in that place: ``nn.Linear`` (or a subclass) returns
        ``linear`` itself; a type in :data:`DENSE_FROM_LINEAR` (``Conv1D``) a new module holding
        the weight in that type's layout, on the same device and dtype.

    Returns
    -------
    nn.Module

    Raises
    ------
    TypeError
        For a type with no entry in :data:`DENSE_FROM_LINEAR` that is not an ``nn.Linear``.

    Examples
    --------
    >>> from transformers.pytorch_utils import Conv1D
    >>> from_linear(torch.nn.Linear(4, 6), Conv1D).weight.shape
    torch.Size([4, 6])
    """
    if issubclass(slot, nn.Linear):
        return linear
    for cls in slot.__mro__:
        if cls in DENSE_FROM_LINEAR:
            return DENSE_FROM_LINEAR[cls](linear, slot)
    raise TypeError(
        f"expected an nn.Linear or a type with an entry in adapters.targets.DENSE_FROM_LINEAR "
        f"({', '.join(c.__name__ for c in DENSE_FROM_LINEAR)}), got {slot.__name__}; register how to build one "
        "from an nn.Linear there"
    )


@dataclass
class LeftDense:
    """A 2-D weight of the blocks that stays dense, and why.

    Attributes
    ----------
    name : str
        Dotted name of the module (for a parameter that is not a linear layer's: of the parameter).
    shape : tuple of int
    params : int
    reason : str
    """

    name: str
    shape: tuple
    params: int
    reason: str


@dataclass
class Survey:
    """What :func:`survey_targets` found in the blocks.

    Attributes
    ----------
    found : dict
        ``{dotted name: (block index, module)}``, the selected linear layers in model order.
    dense : list of LeftDense
        Every other 2-D weight of the blocks, with its reason.
    block_params : int
        Parameters of every 2-D weight of the blocks (linear or not).
    targeted_params : int
        Parameters of the linear layers ``targets`` names (before ``exclude``, ``layers`` and
        ``filter_fn``, which say what the user chose to leave out).
    prefix : str
        Dotted name of the block list.
    """

    found: dict
    dense: list
    block_params: int
    targeted_params: int
    prefix: str

_ERR_UNMATCHED = (
    "{what}={missing} matched no linear layer of the blocks (under {prefix!r}); the names there are "
    "{available} (short names {aliases}); only linear layers inside the blocks are targets, not the "
    "output head or the embeddings. Fix the spelling, or pass targets='all-linear'"
)
_ERR_COMPRESSED = (
    "the model already holds {count} compressed layers (e.g. {example}, {kind}); compressing it again "
    "would stack a second approximation on the first and is refused. Compress the original dense "
    "model once, with the total reduction= you want"
)
_ERR_NO_TARGETS = (
    "no linear layers matched targets={targets} in layers {layers} under {prefix!r}. Linear "
    "modules found (by name pattern): {found}. Pass targets= with the final name parts of the "
    "layers to compress, for example targets=({example})"
)


def matches(name: str, spec, /) -> bool:
    """Whether the dotted module ``name`` matches ``spec``.

    ``spec`` is ``"all-linear"``; one string, read as a regular expression that must match the
    whole dotted name; or an iterable of short names (``"q"``), final name parts
    (``"q_proj"``) and full dotted names.
    """
    if spec == ALL_LINEAR:
        return True
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    last = name.rsplit(".", 1)[-1]
    for item in spec:
        if not isinstance(item, str):
            raise TypeError(f"targets must be strings such as 'q', 'q_proj' or a dotted name, got {type(item).__name__}")
        if TARGET_ALIASES.get(item, item) == last or item == name:
            return True
    return False


_ROUTER = "router ({kind}): kept exact, it decides which experts run"


def _is_router(model: nn.Module, name: str) -> bool:
    """A block's ``gate``/``router`` beside its ``experts``: routers stay exact unless named."""
    parent, _, last = name.rpartition(".")
    return last in ("gate", "router") and hasattr(model.get_submodule(parent), "experts")


def check_uncompressed(model: nn.Module, /) -> None:
    """Raise ``ValueError`` if ``model`` already holds factored layers (compressing twice is refused)."""
    factored = [(n, m) for n, m in model.named_modules() if isinstance(m, (*FACTORED_LINEARS, LowRankLinear))]
    if factored:
        raise ValueError(_ERR_COMPRESSED.format(
            count=len(factored), example=factored[0][0], kind=type(factored[0][1]).__name__))


def _items(spec) -> list:
    """The separate patterns of a targets/exclude spec (a string is one regular expression)."""
    if spec == ALL_LINEAR or not spec:
        return []
    return [spec] if isinstance(spec, str) else list(spec)


def _check_matched(what, spec, names, prefix) -> None:
    """A pattern of ``spec`` that matches none of ``names`` is a typo: say so, with the names there."""
    missing = [item for item in _items(spec) if not any(
        matches(n, item if isinstance(spec, str) else (item,)) for n in names)]
    if missing:
        finals = sorted({n.rsplit(".", 1)[-1] for n in names})
        aliases = sorted(a for a, full in TARGET_ALIASES.items() if full in finals)
        raise ValueError(_ERR_UNMATCHED.format(
            what=what, missing=missing, prefix=prefix, available=finals or "none", aliases=aliases or "none"))


def survey_targets(
    model: nn.Module,
    /,
    *,
    targets=ALL_LINEAR,
    layers=None,
    exclude=(),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> Survey:
    """Every 2-D weight of the blocks: the selected linear layers, and the others with a reason.

    Parameters are those of :func:`find_targets`.

    Returns
    -------
    Survey

    Raises
    ------
    ValueError
        Layer indices out of range; a pattern in ``targets`` or ``exclude`` that matches no
        linear layer of the blocks (a typo: the message lists the names there); nothing
        selected; a model that already holds compressed layers.
    TypeError
        A target that is not a string.
    """
    prefix, layer_list = find_decoder_layers(model)
    wanted = None if layers is None else {int(i) for i in layers}
    if wanted is not None:
        bad = sorted(i for i in wanted if not 0 <= i < len(layer_list))
        if bad:
            raise ValueError(
                f"layers= must be indices in [0, {len(layer_list)}), got {bad}; the model has "
                f"{len(layer_list)} blocks"
            )
    check_uncompressed(model)
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    linears, dense, block_params = {}, [], 0
    for name, mod in model.named_modules():
        m = pat.match(name + ".")
        if not m:
            continue
        view = _view_of(mod)
        if view is not None:
            linears[name] = (int(m.group(1)), mod, view(mod))
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.ndim < 2:
                continue
            block_params += p.numel()
            if is_fused_experts(mod):
                reason = fused_experts_problem(mod) or "fused experts not opened (adapters.experts.open_experts)"
            elif _is_router(model, name):
                reason = _ROUTER.format(kind=type(mod).__name__)
            else:
                reason = f"not a linear layer ({type(mod).__name__}.{pname})"
            dense.append(LeftDense(f"{name}.{pname}", tuple(p.shape), p.numel(), reason))
    names = list(linears)
    _check_matched("targets", targets, names, prefix)
    _check_matched("exclude", exclude, names, prefix)
    found, targeted = {}, 0
    for name, (i, mod, (weight, bias)) in linears.items():
        block_params += weight.numel()
        reason = None
        if targets == ALL_LINEAR and _is_router(model, name):
            reason = _ROUTER.format(kind=type(mod).__name__)
        elif not matches(name, targets):
            reason = "not in targets="
        else:
            targeted += weight.numel()
            if exclude and matches(name, exclude):
                reason = "excluded (exclude=)"
            elif wanted is not None and i not in wanted:
                reason = "block not selected (layers=)"
            elif filter_fn is not None and not filter_fn(mod, name):
                reason = "filter_fn returned False"
        if reason is None:
            found[name] = (i, mod)
        else:
            size = weight.numel() + (0 if bias is None else bias.numel())
            dense.append(LeftDense(name, tuple(weight.shape), size, reason))
    if not found:
        patterns = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names))
        example = ", ".join(repr(p.rsplit(".", 1)[-1]) for p in patterns[:3]) or "'q_proj'"
        shown = targets if isinstance(targets, str) else [TARGET_ALIASES.get(t, t) for t in targets]
        raise ValueError(
            _ERR_NO_TARGETS.format(
                targets=shown, layers="all" if wanted is None else sorted(wanted),
                prefix=prefix, found=patterns[:30] or "none", example=example,
            )
        )
    return Survey(found, dense, block_params, targeted, prefix)


def find_targets(
    model: nn.Module,
    /,
    *,
    targets=ALL_LINEAR,
    layers=None,
    exclude=(),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> dict[str, tuple[int, nn.Module]]:
    r"""Linear layers of the blocks selected by name, block index and an optional filter.

    Parameters
    ----------
    model : nn.Module
        A transformer (its blocks found by :func:`adapters.calibration.find_decoder_layers`):
        decoder or encoder.
    targets : str or iterable of str, default "all-linear"
        See :func:`matches`: short names ``q k v o gate up down``, final name parts, full dotted
        names, ``"all-linear"``, or one regular expression on the full dotted name.  Each
        pattern must match at least one linear layer of the blocks.
    layers : iterable of int, optional
        Block indices (default all).
    exclude : str or iterable of str
        Modules to leave out, in the same forms as ``targets`` (``"all-linear"`` excepted).
    filter_fn : callable, optional
        ``filter_fn(module, fqn) -> bool`` as torchao's ``quantize_``: a further condition.

    Returns
    -------
    dict
        ``{dotted name: (block index, module)}`` in model order; the modules are those of the
        model (:func:`as_linear` reads their weights).

    Raises
    ------
    ValueError
        Layer indices out of range; a pattern that matches nothing (the message lists the
        linear layer names there); nothing selected; an already compressed model.
    TypeError
        A target that is not a string.

    Examples
    --------
    >>> find_targets(model, targets=r"model\.layers\.\d+\.mlp\..*", exclude=("down",))  # doctest: +SKIP
    """
    return survey_targets(model, targets=targets, layers=layers, exclude=exclude, filter_fn=filter_fn).found
