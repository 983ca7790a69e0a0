"""Which linear layers to compress: a walk over ``named_modules()`` with a filter on the full name."""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

from .calibration import find_decoder_layers

__all__ = ["ALL_LINEAR", "TARGET_ALIASES", "find_targets", "matches"]

TARGET_ALIASES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
}
#: Every ``nn.Linear`` inside the decoder layers (PEFT's ``"all-linear"``: the output head is
#: not a decoder-layer module, so it never matches).
ALL_LINEAR = "all-linear"

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


def find_targets(
    model: nn.Module,
    /,
    *,
    targets=tuple(TARGET_ALIASES),
    layers=None,
    exclude=(),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> dict[str, tuple[int, nn.Linear]]:
    """Linear layers of the decoder blocks selected by name, layer index and an optional filter.

    Parameters
    ----------
    model : nn.Module
        A decoder model (its blocks found by :func:`adapters.calibration.find_decoder_layers`).
    targets : str or iterable of str, default the seven Llama projections
        See :func:`matches`: short names ``q k v o gate up down``, final name parts, full dotted
        names, ``"all-linear"``, or one regular expression on the full dotted name.
    layers : iterable of int, optional
        Decoder-layer indices (default all).
    exclude : str or iterable of str
        Modules to leave out, in the same forms as ``targets`` (``"all-linear"`` excepted).
    filter_fn : callable, optional
        ``filter_fn(module, fqn) -> bool`` as torchao's ``quantize_``: a further condition.

    Returns
    -------
    dict
        ``{dotted name: (layer index, module)}`` in model order.

    Raises
    ------
    ValueError
        Layer indices out of range, or nothing matches (the message lists the linear name
        patterns present and how to pass ``targets=``).
    TypeError
        A target that is not a string.

    Examples
    --------
    >>> find_targets(model, targets=r"model\\.layers\\.\\d+\\.mlp\\..*", exclude=("down",))  # doctest: +SKIP
    """
    prefix, layer_list = find_decoder_layers(model)
    wanted = None if layers is None else {int(i) for i in layers}
    if wanted is not None:
        bad = sorted(i for i in wanted if not 0 <= i < len(layer_list))
        if bad:
            raise ValueError(
                f"layers= must be indices in [0, {len(layer_list)}), got {bad}; the model has "
                f"{len(layer_list)} decoder layers"
            )
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found, patterns = {}, []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        generic = re.sub(r"\.\d+\.", ".*.", name)
        if generic not in patterns:
            patterns.append(generic)
        m = pat.match(name)
        if not m or (wanted is not None and int(m.group(1)) not in wanted):
            continue
        if not matches(name, targets) or (exclude and matches(name, exclude)):
            continue
        if filter_fn is not None and not filter_fn(mod, name):
            continue
        found[name] = (int(m.group(1)), mod)
    if not found:
        example = ", ".join(repr(p.rsplit(".", 1)[-1]) for p in patterns[:3]) or "'q_proj'"
        shown = targets if isinstance(targets, str) else [TARGET_ALIASES.get(t, t) for t in targets]
        raise ValueError(
            _ERR_NO_TARGETS.format(
                targets=shown, layers="all" if wanted is None else sorted(wanted),
                prefix=prefix, found=patterns[:30] or "none", example=example,
            )
        )
    return found
