"""Plain linear layers cut from dense ones: what structured compression leaves behind.

A structured unit keeps whole neurons of an MLP (:class:`adapters.configs.StructuredConfig`):
``k`` rows of each input projection (``gate`` and ``up``, ``fc1``, ...) and ``k`` columns of
the output projection, as its layout says (:class:`adapters.layouts.MLPLayout`). The results are
layers of the dense layer's own type (``nn.Linear``, Falcon's ``FalconLinear``, GPT-2's
``Conv1D``), which every tool knows (PEFT, ``torch.compile``, serving engines). Only their
shapes differ from the architecture in ``config.json``, so a checkpoint must say so:

* when every MLP keeps the same width, :func:`settle_widths` writes it into the family's own
  config (``intermediate_size``, ``ffn_dim``, ``n_inner``, ...): the model *is* the family's
  architecture, smaller, and its checkpoint is a stock one;
* otherwise each cut layer carries :attr:`kept_from` (a :class:`Kept`), and the checkpoint's
  record (:mod:`adapters.hf_quantizer`) lists it under the form ``"rows"`` or ``"columns"``
  with the dense shape and the kept width, so that ``from_pretrained`` builds it at its size;
  :func:`pad_widths` (used by :func:`adapters.merge`) pads every MLP with zero neurons to the
  widest one instead, which computes the same function in a stock architecture.

A whole-head unit keeps ``k`` of the KV heads of an attention with ``q_proj``, ``k_proj``,
``v_proj``, ``o_proj`` and an integer ``head_dim`` (:func:`cut_heads`: the rows of the kept KV
heads in ``k_proj`` and ``v_proj``, of their query heads in ``q_proj``, and those input columns
of ``o_proj``). The same two ways out: :func:`settle_heads` writes one count into the config
(``num_key_value_heads``, ``num_attention_heads`` and, so that it stays, ``head_dim``), and
:func:`pad_heads` pads every attention with zero heads to the most kept.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ._common import architecture_twin
from .layouts import MLPLayout, find_mlps
from .targets import as_linear, from_linear

__all__ = [
    "KEPT", "Kept", "KeptColumns", "KeptRows", "cut_heads", "cut_neurons", "find_cut_heads", "kept_linear", "pad_heads",
    "pad_widths", "settle_heads", "settle_widths", "stock_head_counts",
]


@dataclass(frozen=True)
class Kept:
    """How a plain linear layer was cut from a dense one.

    Attributes
    ----------
    form : {"rows", "columns"}
        Output rows kept (an MLP's input projections) or input columns kept (its output
        projection).
    out_features, in_features : int
        The dense layer's shape (the architecture's), ``out x in`` whatever the storage
        (GPT-2's ``Conv1D`` stores the transpose).
    """

    form: str
    out_features: int
    in_features: int


class _KeptForm:
    """Builds the cut layer a checkpoint record names (``form``, dense shape, kept width)."""

    form = ""
    #: Whether the layer is one a unit refitted (an MLP's output projection): marked
    #: ``refitted`` when loaded, as the fit marks it, so that :func:`adapters.heal` trains it.
    refitted = False

    @classmethod
    def _layout(cls, m: int, n: int, rank: int, /) -> tuple[int, int]:
        """``(out, in)`` of the cut layer; ``rank`` is the kept width."""
        size = m if cls.form == "rows" else n
        if not 1 <= rank <= size:
            raise ValueError(f"a width of {rank} is outside [1, {size}] for the {cls.form} of a {m}x{n} weight")
        return (rank, n) if cls.form == "rows" else (m, rank)

    @classmethod
    def empty(cls, m: int, n: int, rank: int, /, *, bias: bool, dtype=None, device=None,
              slot: type = nn.Linear) -> nn.Module:
        """An uninitialised cut layer of type ``slot`` (the architecture's layer there), for a
        checkpoint to be loaded into (as :meth:`adapters.layer.CURLinear.empty`)."""
        out, inp = cls._layout(m, n, rank)
        weight = torch.empty(out, inp, dtype=dtype, device=device)
        layer = _in_slot(weight, torch.empty(out, dtype=dtype, device=device) if bias else None, slot)
        layer.kept_from = Kept(cls.form, m, n)
        if cls.refitted:
            layer.refitted = True
        return layer


class KeptRows(_KeptForm):
    """Record form ``"rows"``: a linear layer keeping ``rank`` output rows (``out x in``)."""

    form = "rows"


class KeptColumns(_KeptForm):
    """Record form ``"columns"``: a linear layer keeping ``rank`` input columns (``out x in``)."""

    form = "columns"
    refitted = True


#: Record form -> builder of the cut layer.
KEPT = {cls.form: cls for cls in (KeptRows, KeptColumns)}


@torch.no_grad()
def _in_slot(weight: torch.Tensor, bias: torch.Tensor | None, slot: type, /) -> nn.Module:
    """A layer of type ``slot`` computing ``x weight^T + bias`` (``weight`` is ``out x in``).

    ``nn.Linear`` subclasses built like it (Falcon's ``FalconLinear``) keep their type, others
    become ``nn.Linear``; other types (GPT-2's ``Conv1D``) are built by
    :func:`adapters.targets.from_linear`, in their own storage layout.
    """
    cls = slot if issubclass(slot, nn.Linear) and slot.__init__ is nn.Linear.__init__ else nn.Linear
    lin = cls(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype, device=weight.device)
    lin.weight.copy_(weight)
    if bias is not None:
        lin.bias.copy_(bias)
    return from_linear(lin, slot)


def kept_linear(weight: torch.Tensor, bias: torch.Tensor | None, /, *, form: str, shape: tuple,
                slot: type = nn.Linear) -> nn.Module:
    """A linear layer holding ``weight`` (and ``bias``), marked as cut from a dense ``shape``.

    Parameters
    ----------
    weight : torch.Tensor, shape (out, in)
        The kept rows (``form="rows"``: ``out <= shape[0]``, ``in == shape[1]``) or columns
        (``form="columns"``: ``out == shape[0]``, ``in <= shape[1]``) of the dense weight, in
        ``out x in`` orientation whatever ``slot`` stores.
    bias : torch.Tensor or None
    form : {"rows", "columns"}
    shape : tuple of int
        ``(out_features, in_features)`` of the dense layer.
    slot : type, default nn.Linear
        The dense layer's type: ``nn.Linear`` (subclasses built like it keep their type) or a
        type of :data:`adapters.targets.DENSE_FROM_LINEAR` (GPT-2's ``Conv1D``, which stores
        the transpose).

    Returns
    -------
    torch.nn.Module
        Of type ``slot`` (or ``nn.Linear``), with ``kept_from`` set (:class:`Kept`): what the
        checkpoint record lists.

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
    layer = _in_slot(weight, bias, slot)
    layer.kept_from = Kept(form, m, n)
    return layer


def cut_neurons(layout: MLPLayout, projections: dict, neurons: torch.Tensor, output_weight: torch.Tensor,
                /) -> dict[str, nn.Module]:
    """The layers of an MLP keeping ``neurons``, its output projection holding ``output_weight``.

    Parameters
    ----------
    layout : adapters.layouts.MLPLayout
    projections : dict
        ``{path: layer}`` for every path of ``layout.projections`` (the dense layers).
    neurons : torch.Tensor of int
        The kept neurons, in increasing order.
    output_weight : torch.Tensor, shape (out, len(neurons))
        The output projection's new weight (its bias stays).

    Returns
    -------
    dict
        ``{path: cut layer}`` (:func:`kept_linear`: each of its dense layer's type): the input
        projections keep their rows of ``neurons`` and the bias entries, unchanged.
    """
    width = as_linear(projections[layout.output]).in_features
    rows = layout.rows(neurons, width)
    out = {}
    for path in layout.inputs:
        lin = as_linear(projections[path])
        out[path] = kept_linear(lin.weight[rows], None if lin.bias is None else lin.bias[rows], form="rows",
                                shape=lin.weight.shape, slot=type(projections[path]))
    lin = as_linear(projections[layout.output])
    out[layout.output] = kept_linear(output_weight.to(lin.weight), lin.bias, form="columns", shape=lin.weight.shape,
                                     slot=type(projections[layout.output]))
    return out


def _mlps(model: nn.Module) -> dict[str, tuple[nn.Module, MLPLayout]]:
    return {name: (model.get_submodule(name), layout) for name, layout in find_mlps(model).items()}


def _is_cut(mlp: nn.Module, layout: MLPLayout) -> bool:
    return any(hasattr(mlp.get_submodule(p), "kept_from") for p in layout.projections)


def _config_sizes(model: nn.Module, mlps: dict, width: int) -> bool:
    """Set the config's width keys of ``mlps`` to ``width`` when the architecture that config builds
    then has every MLP of ``mlps`` at that width (:func:`adapters._common.architecture_twin`);
    whether it did (otherwise the config is left as it was)."""
    config = getattr(model, "config", None)
    keys = list(dict.fromkeys(k for _, lay in mlps.values() for k in lay.width_keys if hasattr(config, k)))
    if not keys:
        return False
    old = {k: getattr(config, k) for k in keys}
    for k in keys:
        setattr(config, k, width)
    twin = architecture_twin(model)
    try:
        fits = twin is not None and all(lay.holds(twin.get_submodule(n)) and lay.width(twin.get_submodule(n)) == width
                                        for n, (_, lay) in mlps.items())
    except AttributeError:
        fits = False
    if not fits:
        for k, v in old.items():
            setattr(config, k, v)
    return fits


def settle_widths(model: nn.Module, /) -> int | None:
    """When every MLP of ``model`` has one width below its config's, make it the config's.

    Parameters
    ----------
    model : transformers PreTrainedModel
        Modified in place (the config's width key, e.g. ``intermediate_size``, ``ffn_dim`` or
        ``n_inner`` (:attr:`adapters.layouts.MLPLayout.width_keys`), the MLPs' own
        ``intermediate_size`` attribute where they have one, the marks).

    Returns
    -------
    int or None
        The width now in the config (the cut layers' marks are dropped: they are the
        architecture now), or None when the widths differ, nothing was cut, or no config key
        builds the model's MLPs at that width (the marks then stay for the record).

    Notes
    -----
    The key is checked, not assumed: the family's class is built from the changed config on
    the ``meta`` device, and its MLPs must have the width (Qwen2-MoE's shared experts, for
    one, are sized by another key than a dense MLP).
    """
    mlps = _mlps(model)
    if getattr(model, "config", None) is None or not any(_is_cut(m, lay) for m, lay in mlps.values()):
        return None
    widths = {lay.width(m) for m, lay in mlps.values()}
    if len(widths) != 1:
        return None
    width = widths.pop()
    if not _config_sizes(model, mlps, width):
        return None
    for mlp, layout in mlps.values():
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
        for path in layout.projections:
            mlp.get_submodule(path).__dict__.pop("kept_from", None)
    return width


def _padded(layer: nn.Module, width: int, /, *, rows: int = 0) -> nn.Module:
    """``layer`` (of an MLP of ``k`` neurons) with zero neurons up to ``width``: ``rows`` blocks
    of zero rows (and zero bias entries) after each block of ``k`` rows, or (``rows=0``) zero
    columns after its ``k`` columns."""
    lin = as_linear(layer)
    w, b = lin.weight, lin.bias
    if rows:
        k = w.shape[0] // rows
        w = torch.cat([torch.cat([blk, blk.new_zeros(width - k, blk.shape[1])]) for blk in w.split(k)])
        if b is not None:
            b = torch.cat([torch.cat([blk, blk.new_zeros(width - k)]) for blk in b.split(k)])
    else:
        w = torch.cat([w, w.new_zeros(w.shape[0], width - w.shape[1])], dim=1)
    new = _in_slot(w, b, type(layer))
    new.requires_grad_(lin.weight.requires_grad)
    return new


@torch.no_grad()
def pad_widths(model: nn.Module, /) -> int | None:
    """Pad every cut MLP with zero neurons to the widest MLP; the width, or None if none was cut.

    A padded neuron has zero rows and bias entries in the input projections and a zero column
    in the output projection, so its contribution is ``0 * act(0 + 0) = 0`` whatever the
    activation (``act(0)`` need not be 0: a plain MLP's input bias moves it there otherwise),
    and the padded model computes the same function, in the family's own architecture with
    the widest width in its config (:attr:`adapters.layouts.MLPLayout.width_keys`).

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place (the cut layers are replaced by padded layers of their type).

    Returns
    -------
    int or None
        The widest MLP's width, now every MLP's (see Notes for when it is not), or None when no
        MLP was cut (the model is left as it is).

    Notes
    -----
    Where no config key builds every MLP at the widest width (a model that is not a
    transformers model, or MLPs that several keys size), each MLP is padded to its dense
    width instead: the architecture in the config, unchanged.
    """
    mlps = _mlps(model)
    if not any(_is_cut(m, lay) for m, lay in mlps.values()):
        return None
    width = max(lay.width(m) for m, lay in mlps.values())
    common = _config_sizes(model, mlps, width)
    for mlp, layout in mlps.values():
        out = mlp.get_submodule(layout.output)
        kept = getattr(out, "kept_from", None)
        target = width if common else (layout.width(mlp) if kept is None else kept.in_features)
        new = {p: _padded(mlp.get_submodule(p), target, rows=layout.stacked) for p in layout.inputs}
        new[layout.output] = _padded(out, target)
        for path, layer in new.items():
            parent, _, attr = path.rpartition(".")
            setattr(mlp.get_submodule(parent), attr, layer)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = target
    return width if common else max(layout.width(m) for m, layout in mlps.values())


#: The projections of an attention that a whole-head unit cuts: query, key, value rows, output columns.
HEAD_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
#: Attributes an attention module may keep of its own head counts (set with the config's).
_HEAD_ATTRS = {"num_heads": "q", "num_attention_heads": "q", "num_key_value_heads": "kv", "num_kv_heads": "kv"}


def _group_rows(groups: torch.Tensor, size: int, /) -> torch.Tensor:
    """Rows ``j * size .. (j + 1) * size - 1`` of every ``j`` in ``groups``, in order."""
    return (groups[:, None] * size + torch.arange(size, device=groups.device)).reshape(-1)


def cut_heads(projections: dict, head_dim: int, groups: torch.Tensor, output_weight: torch.Tensor, /
              ) -> dict[str, nn.Module]:
    """The projections of an attention keeping the KV heads ``groups`` and their query heads.

    Parameters
    ----------
    projections : dict
        ``{name: layer}`` for ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (plain linear
        layers, :data:`HEAD_PROJECTIONS`); query head ``h`` reads KV head ``h // g``, ``g``
        query heads per KV head.
    head_dim : int
    groups : torch.Tensor of int
        The kept KV heads, in increasing order.
    output_weight : torch.Tensor, shape (out, len(groups) * g * head_dim)
        ``o_proj``'s new weight (its bias stays).

    Returns
    -------
    dict
        ``{name: cut layer}`` (:func:`kept_linear`): ``q_proj`` keeps the rows of the kept
        groups' query heads, ``k_proj`` and ``v_proj`` the rows of the kept KV heads (with their
        bias entries, unchanged); ``o_proj`` holds ``output_weight`` (marked ``refitted``).
    """
    d = int(head_dim)
    kv = projections["k_proj"].out_features // d
    g = projections["q_proj"].out_features // (kv * d)
    groups = torch.as_tensor(groups, device=projections["q_proj"].weight.device)
    rows = {"q_proj": _group_rows(groups, g * d), "k_proj": _group_rows(groups, d), "v_proj": _group_rows(groups, d)}
    out = {}
    for name, keep in rows.items():
        lin = projections[name]
        out[name] = kept_linear(lin.weight[keep], None if lin.bias is None else lin.bias[keep], form="rows",
                                shape=lin.weight.shape, slot=type(lin))
    o = projections["o_proj"]
    out["o_proj"] = kept_linear(output_weight.to(o.weight), o.bias, form="columns", shape=o.weight.shape, slot=type(o))
    out["o_proj"].refitted = True  # what adapters.heal trains in a structured model
    return out


def find_cut_heads(model: nn.Module, /) -> dict[str, nn.Module]:
    """Every attention of ``model`` with :data:`HEAD_PROJECTIONS` and an int ``head_dim``, by name."""
    found = {}
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "head_dim", None), int) and all(
                isinstance(getattr(mod, p, None), nn.Linear) for p in HEAD_PROJECTIONS):
            found[name] = mod
    return found


def _heads(attention: nn.Module, /) -> tuple[int, int]:
    """``(kv_heads, query heads per KV head)`` that ``attention``'s projections hold now."""
    d = attention.head_dim
    kv = attention.k_proj.out_features // d
    return kv, attention.q_proj.out_features // (kv * d)


def _config_accepts(config) -> bool:
    """Whether ``config`` passes its family's own validation (transformers' strict configs check
    e.g. that ``hidden_size`` is a multiple of ``num_attention_heads``, whatever ``head_dim`` says:
    ``save_pretrained`` and ``from_pretrained`` would refuse it)."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return True
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub: no strict configs to fail
        StrictDataclassError = ValueError  # noqa: N806
    try:
        validate()
    except (StrictDataclassError, ValueError, TypeError):
        return False
    return True


def stock_head_counts(model: nn.Module, heads: tuple, /) -> list[int]:
    """The numbers ``k`` of KV heads (``1 <= k <= kv``) that ``model``'s config takes for attentions
    of ``heads = (kv, query heads, head_dim)``: with ``num_key_value_heads = k``,
    ``num_attention_heads = k q / kv`` and ``head_dim`` kept, it passes the family's validation.
    Every ``k`` where the model has no config of that kind."""
    kv, q, d = heads
    config = getattr(model, "config", None)
    if config is None or not all(hasattr(config, k) for k in ("num_attention_heads", "num_key_value_heads")):
        return list(range(1, kv + 1))
    trial = copy.deepcopy(config)
    out = []
    for k in range(1, kv + 1):
        trial.num_attention_heads, trial.num_key_value_heads, trial.head_dim = k * (q // kv), k, d
        if _config_accepts(trial):
            out.append(k)
    return out


def _head_config(model: nn.Module, attentions: dict, kv: int, /) -> bool:
    """Set the config's head counts to ``kv`` KV heads (``head_dim`` kept) when the architecture
    that config builds then has every attention of ``attentions`` at that count; whether it did
    (otherwise the config is left as it was)."""
    config = getattr(model, "config", None)
    if config is None or not all(hasattr(config, k) for k in ("num_attention_heads", "num_key_value_heads")):
        return False
    d = {a.head_dim for a in attentions.values()}
    g = {_heads(a)[1] for a in attentions.values()}
    if len(d) != 1 or len(g) != 1:
        return False
    d, g = d.pop(), g.pop()
    keys = ("num_attention_heads", "num_key_value_heads", "head_dim")
    old = {k: getattr(config, k) for k in keys if hasattr(config, k)}
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = kv * g, kv, d
    twin = architecture_twin(model) if _config_accepts(config) else None
    try:
        fits = twin is not None and all(
            twin.get_submodule(n).head_dim == d and _heads(twin.get_submodule(n)) == (kv, g)
            and twin.get_submodule(n).o_proj.in_features == kv * g * d for n in attentions)
    except AttributeError:
        fits = False
    if not fits:
        for k in keys:
            if k in old:
                setattr(config, k, old[k])
            else:
                delattr(config, k)
    return fits


def _own_counts(attention: nn.Module, kv: int, g: int, /) -> None:
    """The head counts an attention keeps as attributes, made those of its projections."""
    for attr, which in _HEAD_ATTRS.items():
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, kv * g if which == "q" else kv)


def _cut_attentions(model: nn.Module, /) -> dict[str, nn.Module]:
    return {n: a for n, a in find_cut_heads(model).items() if hasattr(a.q_proj, "kept_from")}


def settle_heads(model: nn.Module, /) -> int | None:
    """When every attention of ``model`` keeps one number of whole KV heads, make it the config's.

    Parameters
    ----------
    model : transformers PreTrainedModel
        Modified in place: ``config.num_key_value_heads`` (the kept KV heads),
        ``config.num_attention_heads`` (their query heads) and ``config.head_dim`` (set to the
        heads' dimension, which a family computes as ``hidden_size // num_attention_heads``
        otherwise), the attentions' own head counts where they keep them, the marks.

    Returns
    -------
    int or None
        The KV heads now in the config (the cut layers' marks are dropped), or None when the
        counts differ, no head was cut, or the family's class built from the changed config on
        the ``meta`` device does not have every attention at that count (the marks then stay
        for the record).
    """
    cut = _cut_attentions(model)
    if not cut:
        return None
    attentions = find_cut_heads(model)
    counts = {_heads(a)[0] for a in attentions.values()}
    if len(counts) != 1:
        return None
    kv = counts.pop()
    if not _head_config(model, attentions, kv):
        return None
    for attention in attentions.values():
        _own_counts(attention, *_heads(attention))
        for p in HEAD_PROJECTIONS:
            getattr(attention, p).__dict__.pop("kept_from", None)
    return kv


def _padded_heads(layer: nn.Module, size: int, /, *, rows: bool) -> nn.Module:
    """``layer`` with zero rows (and zero bias entries) or zero columns appended up to ``size``."""
    w, b = layer.weight, layer.bias
    if rows:
        w = torch.cat([w, w.new_zeros(size - w.shape[0], w.shape[1])])
        b = None if b is None else torch.cat([b, b.new_zeros(size - b.shape[0])])
    else:
        w = torch.cat([w, w.new_zeros(w.shape[0], size - w.shape[1])], dim=1)
    new = _in_slot(w, b, type(layer))
    new.requires_grad_(layer.weight.requires_grad)
    return new


@torch.no_grad()
def pad_heads(model: nn.Module, /) -> int | None:
    """Pad every attention cut by whole KV heads with zero heads to the most kept; that count, or
    None if no head was cut.

    A padded KV head has zero rows (and bias entries) in ``k_proj`` and ``v_proj``, its query
    heads zero rows in ``q_proj`` and zero columns in ``o_proj``: a zero query and key stay zero
    under a rotary embedding (a rotation) and a per-head norm, give equal scores over the
    attended positions, hence a mean of zero values, read by zero columns. The padded model
    computes the same function in the family's own architecture, with that count in its
    config (:func:`settle_heads`); where no config builds it, each attention is padded to its
    dense count instead (the architecture in the config, unchanged).
    """
    cut = _cut_attentions(model)
    if not cut:
        return None
    attentions = find_cut_heads(model)
    most = max(_heads(a)[0] for a in attentions.values())
    common = _head_config(model, attentions, most)
    for attention in attentions.values():
        kv, g = _heads(attention)
        d = attention.head_dim
        kept = getattr(attention.k_proj, "kept_from", None)
        target = most if common else (kv if kept is None else kept.out_features // d)
        for p in HEAD_PROJECTIONS:
            layer = getattr(attention, p)
            size = {"q_proj": target * g * d, "o_proj": target * g * d}.get(p, target * d)
            setattr(attention, p, _padded_heads(layer, size, rows=p != "o_proj"))
        _own_counts(attention, target, g)
    return most if common else max(_heads(a)[0] for a in attentions.values())
