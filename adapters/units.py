"""Structured units: which targets of a model form one (an MLP, an attention's value-output or
query-key pair, its whole KV groups), and what each holds.

:func:`group_units` turns the targets a survey found (name -> ``(layer, module)``) into the
units of a :class:`adapters.configs.StructuredConfig`, in place, refusing by name, before any
calibration, a target that a family's layout cannot make a unit of.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .experts import ExpertLinears
from .layouts import MLP_LAYOUTS, MLP_MATRIX_NAMES, find_mlps
from .targets import LINEAR_VIEWS, LeftDense, as_linear

__all__ = ["group_units"]

_ERR_NO_UNIT = (
    "StructuredConfig keeps whole neurons of MLPs laid out as one of: {layouts}; {what}. Pass targets= or "
    "exclude= leaving them out, or use InterpolativeConfig for this model"
)
#: The layouts with a unit, as the refusals list them.
_LAYOUTS = "; ".join(layout.describe() for layout in MLP_LAYOUTS)
_ERR_EXPERT = (
    "{name} is a routed expert's matrix ({cls}), and routed experts have no MLP unit (leave them dense with "
    "exclude=r'.*\\.experts\\..*')"
)
_ERR_UNKNOWN_MLP = "{name} is an MLP matrix of another layout ({cls}: {parent} holds {held}), which has no unit"
_ERR_PARTIAL_MLP = "the targets hold {held} of the MLP {parent} but not all of {wanted}; target the whole MLP"
_ERR_NO_VO = (
    "StructuredConfig(units=(..., 'vo')) keeps value dimensions of attentions with v_proj, o_proj and an int "
    "head_dim; {what}. Target both projections, or drop 'vo' from units="
)
#: Final names of fused attention projections (no value-output unit: v is not a matrix of its own).
_FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "W_pack")
#: The projections of an attention that a whole-head unit holds.
_HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_ERR_NO_HEADS = (
    "StructuredConfig(units=(..., 'heads')) keeps whole KV heads of attentions with q_proj, k_proj, v_proj and "
    "o_proj as nn.Linear, an int head_dim and no parameters of their own; {what}. Target all four projections, "
    "or drop 'heads' from units="
)


def _no_unit(model, name) -> str:
    """Why the MLP matrix ``name`` is in no unit (a routed expert's, or another layout's)."""
    parent = name.rpartition(".")[0]
    for prefix, mod in model.named_modules():
        if isinstance(mod, ExpertLinears) and name.startswith(prefix + "."):
            return _ERR_EXPERT.format(name=name, cls=type(model).__name__)
    held = [n for n, m in model.get_submodule(parent).named_children() if isinstance(m, tuple(LINEAR_VIEWS))]
    return _ERR_UNKNOWN_MLP.format(name=name, cls=type(model).__name__, parent=parent, held=held)


def _group_mlp(model, found) -> dict:
    """Each MLP among ``found`` (:func:`adapters.layouts.find_mlps`) becomes one ``"mlp"`` unit
    (keyed by the name of the module holding it, holding its output projection, whose inputs
    calibrate it), in place."""
    mlps = find_mlps(model)
    unit_of = {f"{name}.{p}": name for name, layout in mlps.items() for p in layout.projections}
    members: dict[str, list] = {}
    for name in found:
        if name in unit_of:
            members.setdefault(unit_of[name], []).append(name)
        elif name.rpartition(".")[2] in MLP_MATRIX_NAMES:
            raise ValueError(_ERR_NO_UNIT.format(layouts=_LAYOUTS, what=_no_unit(model, name)))
    units = {}
    for parent, names in members.items():
        layout = mlps[parent]
        if len(names) != len(layout.projections):
            raise ValueError(_ERR_NO_UNIT.format(layouts=_LAYOUTS, what=_ERR_PARTIAL_MLP.format(
                held=sorted(n[len(parent) + 1:] for n in names), parent=parent, wanted=list(layout.projections))))
        output = f"{parent}.{layout.output}"
        i = found[output][0]
        for name in names:
            found.pop(name)
        found[parent] = (i, model.get_submodule(output))
        units[parent] = "mlp"
    if not units:
        raise ValueError(_ERR_NO_UNIT.format(layouts=_LAYOUTS, what=f"none of the targets of {type(model).__name__} is one"))
    return units


def _group_value_output(model, found) -> dict:
    """Each attention among ``found`` with ``v_proj``, ``o_proj`` and ``head_dim`` becomes one
    ``"vo"`` unit (keyed by its name, holding ``o_proj``, whose inputs calibrate it), in place."""
    units = {}
    for name in list(found):
        parent, _, attr = name.rpartition(".")
        if attr in _FUSED_QKV:
            raise ValueError(_ERR_NO_VO.format(
                what=f"{name} is a fused query-key-value projection ({type(model).__name__}), so no value-output unit"))
        if attr != "v_proj":
            continue
        attn = model.get_submodule(parent)
        o_name = f"{parent}.o_proj"
        if o_name not in found or not isinstance(getattr(attn, "head_dim", None), int):
            lacks = "o_proj among the targets" if o_name not in found else "an int head_dim"
            raise ValueError(_ERR_NO_VO.format(what=f"{parent} ({type(attn).__name__}) lacks {lacks}"))
        i = found.pop(name)[0]
        found[parent] = (i, found.pop(o_name)[1])
        units[parent] = "vo"
    if not units:
        raise ValueError(_ERR_NO_VO.format(what=f"none of the targets of {type(model).__name__} is one"))
    return units


def _heads_problem(attn) -> str | None:
    """Why the attention ``attn`` cannot be a whole-head unit, or None."""
    d = getattr(attn, "head_dim", None)
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        return "lacks an int head_dim"
    kinds = {p: type(getattr(attn, p, None)).__name__ for p in _HEAD_PROJECTIONS}
    if not all(isinstance(getattr(attn, p, None), nn.Linear) for p in _HEAD_PROJECTIONS):
        return f"holds {kinds}"
    own = [n for n, _ in attn.named_parameters(recurse=False)]
    if own:
        return f"holds parameters of its own ({own}: one per head, which the unit would have to cut too)"
    q, k, v, o = (getattr(attn, p) for p in _HEAD_PROJECTIONS)
    kv = k.out_features // d
    if (k.out_features != v.out_features or k.out_features % d or q.out_features != o.in_features
            or q.out_features % (kv * d) or kv < 1):
        return (f"has projections that do not split into heads of dimension {d} (q_proj {q.out_features}, k_proj "
                f"{k.out_features}, v_proj {v.out_features} outputs, o_proj {o.in_features} inputs)")
    return None


def _group_attention(model, found, *, kind, projections, anchor, problem, error, label) -> dict:
    """Each attention among ``found`` holding ``projections`` becomes one ``kind`` unit (keyed by
    its name, holding its ``anchor`` projection, whose inputs calibrate it), in place.

    ``problem(model, attention)`` says why an attention cannot be one (or None); ``error`` is the
    message of a refusal, with ``{what}``; ``label`` names the unit in the refusal of a fused
    projection.
    """
    members: dict[str, list] = {}
    for name in found:
        parent, _, attr = name.rpartition(".")
        if attr in _FUSED_QKV:
            raise ValueError(error.format(
                what=f"{name} is a fused query-key-value projection ({type(model).__name__}), so no {label}"))
        if attr in projections:
            members.setdefault(parent, []).append(attr)
    units = {}
    for parent, attrs in members.items():
        attn = model.get_submodule(parent)
        if len(attrs) != len(projections):
            raise ValueError(error.format(what=f"the targets hold {sorted(attrs)} of {parent} but not all of "
                                               f"{list(projections)}"))
        why = problem(model, attn)
        if why is not None:
            raise ValueError(error.format(what=f"{parent} ({type(attn).__name__}) {why}"))
        i = found[f"{parent}.{anchor}"][0]
        for attr in attrs:
            found.pop(f"{parent}.{attr}")
        found[parent] = (i, getattr(attn, anchor))
        units[parent] = kind
    if not units:
        raise ValueError(error.format(what=f"none of the targets of {type(model).__name__} is one"))
    return units


def _group_heads(model, found) -> dict:
    """Each attention among ``found`` with the four projections of :data:`_HEAD_PROJECTIONS` becomes
    one ``"heads"`` unit (keyed by its name, holding ``o_proj``, whose inputs calibrate it), in place."""
    return _group_attention(model, found, kind="heads", projections=_HEAD_PROJECTIONS, anchor="o_proj",
                            problem=lambda _model, attn: _heads_problem(attn), error=_ERR_NO_HEADS,
                            label="whole-head unit")


_ERR_NO_QK = (
    "StructuredConfig(units=(..., 'qk')) keeps rotary pairs of query-key dimensions of attentions with q_proj and "
    "k_proj as nn.Linear, an even int head_dim, a full rotary embedding of the rotate_half convention (dimension "
    "i paired with i + head_dim/2) and no module between the projections and the rotary embedding; {what}. "
    "Target both projections, or drop 'qk' from units="
)


def _rotates_half(attn) -> bool:
    """Whether the module defining ``attn``'s class rotates as Llama does (``rotate_half``: dimension
    ``i`` paired with ``i + d/2``), checked on a vector, not by name."""
    rotate = getattr(sys.modules.get(type(attn).__module__), "rotate_half", None)
    if not callable(rotate):
        return False
    try:
        return torch.equal(rotate(torch.arange(4.0)), torch.tensor([-2.0, -3.0, 0.0, 1.0]))
    except (TypeError, RuntimeError, ValueError):
        return False


def _qk_problem(model, attn) -> str | None:
    """Why the attention ``attn`` cannot be a query-key unit, or None."""
    d = getattr(attn, "head_dim", None)
    if not isinstance(d, int) or isinstance(d, bool) or d < 2 or d % 2:
        return f"has head_dim {d!r}"
    kinds = {p: type(getattr(attn, p, None)).__name__ for p in ("q_proj", "k_proj")}
    if not all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q_proj", "k_proj")):
        return f"holds {kinds}"
    others = [n for n, c in attn.named_children() if not isinstance(c, nn.Linear) and any(True for _ in c.parameters())]
    if others:
        return (f"holds {others} (a module with parameters between the projections and the scores, e.g. a per-head "
                "norm over every dimension of a head, which zero dimensions would change)")
    if not _rotates_half(attn):
        return f"has no rotate_half rotary embedding in {type(attn).__module__}"
    factor = getattr(getattr(model, "config", None), "partial_rotary_factor", 1.0)
    if factor not in (None, 1, 1.0):
        return f"rotates only part of each head (partial_rotary_factor={factor})"
    q, k = attn.q_proj, attn.k_proj
    if k.out_features % d or q.out_features % k.out_features:
        return f"has projections that do not split into heads of dimension {d} (q_proj {q.out_features}, k_proj " \
               f"{k.out_features} outputs)"
    return None


def _group_query_key(model, found) -> dict:
    """Each attention among ``found`` with ``q_proj`` and ``k_proj`` becomes one ``"qk"`` unit
    (keyed by its name, holding ``q_proj``, whose inputs calibrate it), in place."""
    return _group_attention(model, found, kind="qk", projections=("q_proj", "k_proj"), anchor="q_proj",
                            problem=_qk_problem, error=_ERR_NO_QK, label="query-key unit")


def group_units(model, config, found, dense, /) -> tuple[dict, dict]:
    """Group the targets of ``found`` into the structured units of ``config.units``, in place.

    A unit is keyed by the module that holds it (an MLP, or the layer for OPT and BERT; an
    attention) and recorded at its anchor, the projection whose inputs calibrate it (an MLP's
    output projection, ``o_proj`` for ``"vo"`` and ``"heads"``, ``q_proj`` for ``"qk"``).

    Parameters
    ----------
    model : nn.Module
    config : StructuredConfig
        Its ``units``, ``matrices`` and ``per_group`` are read.
    found : dict of str to (int, nn.Module)
        The targets (name -> ``(layer, module)``, as :func:`adapters.targets.survey_targets`
        finds them). A unit's matrices are replaced by the unit; with ``config.per_group`` they
        stay too, as matrices: the factored option of their unit. With ``matrices="dense"``
        the targets in no unit are removed.
    dense : list of LeftDense
        Gets the targets left dense by ``matrices="dense"``, with that reason.

    Returns
    -------
    units, members : dict, dict
        The units' kinds by name (``"mlp"``, ``"vo"``, ``"heads"``, ``"qk"``), and the names of
        the matrices each unit holds.

    Raises
    ------
    ValueError
        A target the family's layout cannot make a unit of (a routed expert, another MLP
        layout, a fused or partial attention, a unit missing some of its projections), by
        name, or no unit of a kind asked for among the targets.
    """
    snapshot = dict(found)
    units, members = {}, {}
    for kind, group in (("heads", _group_heads), ("qk", _group_query_key), ("vo", _group_value_output),
                        ("mlp", _group_mlp)):
        if kind not in config.units:
            continue
        before = set(found)
        made = group(model, found)
        removed = [n for n in before if n not in found]
        members.update({u: [n for n in removed if n.startswith(u + ".")] for u in made})
        units.update(made)
    if config.matrices == "dense":
        for name in [n for n in found if n not in units]:
            lin = as_linear(found.pop(name)[1])
            dense.append(LeftDense(name, tuple(lin.weight.shape), sum(p.numel() for p in lin.parameters()),
                                   "not in a structured unit (StructuredConfig matrices='dense')"))
    if getattr(config, "per_group", False):
        found.update({n: snapshot[n] for names in members.values() for n in names})
    return units, members
