"""Plan, then apply: per-module ranks, parameter counts and predicted errors, model untouched."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import curlinalg

from ._common import AdaptersWarning, count_parameters
from ._parallel import map_modules, workers_for
from .calibration import LayerRunner, angular_distance, default_calibration, prepare_calibration, record_layer
from .configs import BudgetConfig, CompressionConfig, CURingConfig, InterpolativeConfig, StructuredConfig, config_from_dict
from .layer import cur_params
from .methods import Method, Metrics, heads_of, method_for, rank_for_fraction
from .experts import open_experts
from .offload import check_readable, onloaded, onloaded_block
from .pruned import stock_head_counts
from .sensitivity import check_causal_lm, fit_weights, output_sensitivity
from .targets import LeftDense, as_linear, matches, survey_targets
from .units import group_units

__all__ = ["ModulePlan", "Plan", "allocate_ranks", "plan"]

#: Statistics of the dense model kept between planning and fitting (so that a non-sequential
#: run reads each Gram and factors it once) up to this many bytes; later layers are recorded
#: again when they are fitted.
KEEP_BYTES = 6 << 30

#: Below this fraction of the blocks' 2-D parameters reached by a pattern (``"all-linear"`` or a
#: regular expression), a warning says what the pattern leaves out: fused experts that cannot be
#: opened, weights that are not linear layers, a regular expression narrower than meant. A list
#: of names selects what it names (a name that matches nothing is an error).
MIN_COVERAGE = 0.5

_WARN_COVERAGE = (
    "targets={targets!r} reach {covered:.0%} of the parameters of the blocks' 2-D weights; left dense: "
    "{left}. Pass targets naming the layers you mean; weights that are not linear layers stay dense "
    "(report.dense says why)"
)

_ERR_INFEASIBLE = (
    "the budget target_params={target:,} cannot be met: the model has {before:,} parameters and "
    "compressing every eligible matrix ({count}) at the smallest rank allowed (1, or rank_multiple=; "
    "max_rank_fraction= leaves the matrices it allows no rank dense) still leaves {floor:,}. Ask for a "
    "smaller reduction= (at most {maxred:.4f}), a larger target_params=, or add targets={dense}"
)


@dataclass
class ModulePlan:
    """What will happen to one linear layer.

    Attributes
    ----------
    name : str
        Dotted module name.
    layer : int
        Decoder-layer index.
    shape : tuple of int
        ``(out_features, in_features)``.
    rank : int
        Rank to build; 0 keeps the layer dense. Edit it to change the plan.
    params_before : int
        Weight (and bias) parameters now.
    predicted_error : float or None
        Predicted relative activation-weighted error at ``rank`` (the square root of the error
        curve the ranks were allocated on); None when the ranks were not allocated.
    unit : str
        ``"linear"``: one matrix (``shape`` its weight's, ``rank`` its rank). ``"mlp"``: an MLP
        as a structured unit (:class:`adapters.configs.StructuredConfig`): ``name`` is the
        module holding it (:func:`adapters.layouts.find_mlps`: the MLP module, or the layer for
        OPT and BERT), ``shape`` is ``(neurons, parameters per neuron)`` and ``rank`` the neurons
        kept. ``"vo"``: an attention's value-output pair (``name`` the attention, ``rank`` the
        value dimensions kept per head). ``"heads"``: an attention's whole KV groups (``shape``
        ``(kv_heads, parameters per KV group)``, ``rank`` the KV heads kept). ``"qk"``: its
        query-key pair (``shape`` ``(head_dim // 2, parameters per rotary pair)``, ``rank``
        the rotary pairs kept per KV group).
    """

    name: str
    layer: int
    shape: tuple
    rank: int
    params_before: int
    predicted_error: float | None = None
    unit: str = "linear"


@dataclass
class Plan:
    """Result of :func:`plan`: a value to inspect, edit and pass to :func:`adapters.compress`.

    Attributes
    ----------
    config : CompressionConfig
    modules : list of ModulePlan
        Every target, in model order (rank 0: left dense).
    params_before : int
        Parameters of the model (tied weights once).
    target_params : int or None
        The budget (None for fixed ranks).
    angular_distances : list of float or None
        CURing's per-layer scores, when computed.
    dense : list of LeftDense
        Every other 2-D weight of the blocks, with the reason it stays dense (targets at rank
        0 are in ``modules``).
    """

    config: CompressionConfig
    modules: list
    params_before: int
    target_params: int | None
    angular_distances: list | None = None
    dense: list = field(default_factory=list)
    _kept: dict = field(default_factory=dict, repr=False, compare=False)
    _sensitivity: dict = field(default_factory=dict, repr=False, compare=False)

    def params_after(self, method: Method | None = None) -> int:
        """Parameters of the model once the plan is applied (biases stay)."""
        method = method or method_for(self.config)
        return self.params_before - sum(
            m.shape[0] * m.shape[1] - method.for_unit(m.unit).params(*m.shape, m.rank) for m in self.modules
            if m.rank > 0
        )

    @property
    def layers(self) -> list:
        """Decoder layers with at least one compressed module."""
        return sorted({m.layer for m in self.modules if m.rank > 0})

    def to_dict(self) -> dict:
        """JSON-ready dictionary (the config by its own ``to_dict``)."""
        return {
            "config": self.config.to_dict(), "modules": [asdict(m) for m in self.modules],
            "params_before": self.params_before, "target_params": self.target_params,
            "params_after": self.params_after(), "angular_distances": self.angular_distances,
            "dense": [asdict(d) for d in self.dense],
        }

    @classmethod
    def from_dict(cls, data: dict, /) -> "Plan":
        """Rebuild a plan written by :meth:`to_dict`."""
        mods = [ModulePlan(**{**m, "shape": tuple(m["shape"])}) for m in data["modules"]]
        dense = [LeftDense(**{**d, "shape": tuple(d["shape"])}) for d in data.get("dense", [])]
        return cls(config_from_dict(data["config"]), mods, data["params_before"], data["target_params"],
                   data.get("angular_distances"), dense)

    def summary(self) -> str:
        """A short table."""
        lines = [f"{self.config.method}: {self.params_before:,} -> {self.params_after():,} parameters"]
        for m in self.modules:
            err = "" if m.predicted_error is None else f"{m.predicted_error:8.4f}"
            lines.append(f"{m.name:48s} {m.shape[0]:>5d}x{m.shape[1]:<6d} {m.rank:>5d} {err}")
        return "\n".join(lines + dense_lines(self.dense))


def _pattern(name: str) -> str:
    """``model.layers.3.mlp.experts.7.down_proj`` -> ``model.layers.*.mlp.experts.*.down_proj``."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def dense_lines(dense) -> list[str]:
    """Summary lines for the block weights left dense: one per distinct (pattern, reason), counted."""
    groups: dict[tuple, list] = {}
    for d in dense:
        groups.setdefault((_pattern(d.name), d.reason), []).append(d)
    if not groups:
        return []
    lines = ["left dense:"]
    for (pattern, reason), items in groups.items():
        lines.append(f"  {pattern:46s} x{len(items):<4d} {sum(d.params for d in items):>12,d}  {reason}")
    return lines


def allocate_ranks(shapes, errors, /, *, need: int, cost=cur_params, max_ranks=None,
                   multiple: int = 1, exclusive=()) -> tuple[list[int], int]:
    """Ranks for matrices of ``shapes`` removing at least ``need`` parameters at least error.

    A thin map onto :func:`curlinalg.allocate_ranks` (kept for the earlier API): ``cost(m, n, r)``
    is the parameter count of a rank-``r`` layer (default :func:`adapters.layer.cur_params`), so
    a rank saves ``m n - cost(m, n, r)``; ``errors[j][r - 1]`` is matrix ``j``'s error at rank
    ``r``. Matrix ``j`` chooses among the multiples of ``multiple`` (or ``multiple[j]``) up to
    ``max_ranks[j]`` (default: the length of its curve), or stays dense; ``cost`` may be a list
    of one cost per matrix; ``exclusive`` as :func:`curlinalg.allocate_ranks`. Returns
    ``(ranks, slack)``.
    """
    caps = [len(e) for e in errors] if max_ranks is None else [min(len(e), int(c)) for e, c in zip(errors, max_ranks)]
    multiples = [multiple] * len(caps) if isinstance(multiple, int) else list(multiple)
    costs = [cost] * len(caps) if callable(cost) else list(cost)
    allowed = [np.arange(q, cap + 1, q, dtype=np.int64) for q, cap in zip(multiples, caps)]
    curves = [np.asarray(e, dtype=np.float64)[a - 1] for e, a in zip(errors, allowed)]
    savings = [m * n - np.array([c(m, n, int(k)) for k in a], dtype=np.int64)
               for (m, n), a, c in zip(shapes, allowed, costs)]
    res = curlinalg.allocate_ranks(curves, savings, need=need, exclusive=exclusive)
    return [int(a[k - 1]) if k else 0 for a, k in zip(allowed, res.ranks)], res.slack


def allowed_ranks(config, method, m: int, n: int, /) -> tuple[int, int]:
    """``(smallest, largest)`` rank the allocator may give an ``m x n`` matrix under ``config``.

    ``largest`` is the largest multiple of ``config.rank_multiple`` at most
    ``config.max_rank_fraction`` times the break-even rank; ``smallest > largest`` when no rank
    is allowed (the matrix stays dense). An MLP unit's widths are the multiples of
    ``config.width_multiple`` below its full width; a value-output unit's every head dimension
    below the full one.
    """
    if method.unit != "linear":  # MLP widths in multiples of width_multiple; head dimensions one by one
        q = config.width_multiple if method.unit == "mlp" else 1
        cap = method.max_rank(m, n)
        return q, cap - cap % q
    q = getattr(config, "rank_multiple", 1)
    cap = math.floor(getattr(config, "max_rank_fraction", 1.0) * method.max_rank(m, n))
    return q, cap - cap % q


def _override_spec(key: str):
    """An ``overrides`` key as a :func:`~adapters.targets.matches` spec: a regular expression or a name."""
    return key if any(c in key for c in "\\[(*+?^$") else (key,)


def _fixed_rank(config, method, name, shape) -> int | None:
    for key, value in config.overrides.items():
        if matches(name, _override_spec(key)):
            return rank_for_fraction(method, *shape, value) if isinstance(value, float) else value
    rank = getattr(config, "rank", None)
    if rank is not None and not isinstance(config, CURingConfig):
        return rank
    return None


def _shape(mod) -> tuple:
    return tuple(as_linear(mod).weight.shape)


def _dense_note(dense) -> str:
    """What stays dense in the blocks, for the infeasible-budget message."""
    if not dense:
        return ""
    reasons = sorted({d.reason for d in dense})
    return (f"; {len(dense)} block weights ({sum(d.params for d in dense):,} parameters) stay dense: "
            f"{reasons[:5]}{' ...' if len(reasons) > 5 else ''}")


def _check_feasible(config, methods, shapes, fixed, params_before, dense=(), alternatives=None) -> int | None:
    """The budget, checked against what compressing every target as far as allowed leaves.
    ``methods`` and ``shapes`` map each target to its unit's method and shape; ``alternatives``
    (``per_group``) each unit's matrices, of which a unit or its matrices are compressed, not both."""
    too_big = [n for n, r in fixed.items() if r > methods[n].max_rank(*shapes[n])]
    if too_big:
        (m, k), r = shapes[too_big[0]], fixed[too_big[0]]
        raise ValueError(
            f"rank={r} would make {len(too_big)} matrices larger than dense (e.g. {too_big[0]}, "
            f"{m}x{k}, break-even rank {methods[too_big[0]].max_rank(m, k)}); pass a smaller rank="
        )
    if not isinstance(config, BudgetConfig) or config.rank is not None:
        return None
    target = config.target(params_before)

    def most(nm):
        (m, n), (low, high) = shapes[nm], allowed_ranks(config, methods[nm], *shapes[nm])
        return m * n - methods[nm].params(m, n, fixed.get(nm, low)) if nm in fixed or low <= high else 0

    alternatives = alternatives or {}
    held = {n for names in alternatives.values() for n in names}
    floor = params_before - sum(most(nm) for nm in shapes if nm not in held and nm not in alternatives)
    floor -= sum(max(most(u), sum(most(n) for n in names)) for u, names in alternatives.items())
    if target < floor:
        raise ValueError(_ERR_INFEASIBLE.format(
            target=target, before=params_before, count=len(shapes), floor=floor, maxred=1.0 - floor / params_before,
            dense=_dense_note(dense),
        ))
    if target >= params_before:
        raise ValueError(f"target_params={target:,} must be below the current {params_before:,} parameters")
    return target


def _vocab_size(model) -> int | None:
    """Rows of the input embedding (what an id indexes), else ``config.vocab_size``."""
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError):
        return getattr(getattr(model, "config", None), "vocab_size", None)


class Calibration:
    """Calibration batches and the layer runner, built on first use (after the option checks)."""

    def __init__(self, model, config, calibration, tokenizer, progress, workers=None):
        self.model, self.config, self.data, self.tokenizer, self.progress = model, config, calibration, tokenizer, progress
        self.batches = None  # the CalibrationBatches, once the runner is built
        self._runner = None
        # Side-by-side factorisations only on a CPU model held in memory: an offloaded module is
        # onloaded one at a time, and on a GPU the kernels queue on one stream anyway.
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        self.workers = workers_for(workers) if on_cpu else 1

    def batches_ready(self):
        """The calibration batches (:class:`~adapters.calibration.CalibrationBatches`), made on first use."""
        self.runner  # noqa: B018 -- builds the batches with the runner
        return self.batches

    @property
    def runner(self) -> LayerRunner:
        if self._runner is None:
            if self.data is None:
                self.data, self.tokenizer = default_calibration(self.model, tokenizer=self.tokenizer)
            c = self.config
            batches = prepare_calibration(self.data, tokenizer=self.tokenizer, nsamples=c.nsamples, seqlen=c.seqlen,
                                          batch_size=c.batch_size, seed=c.seed, vocab_size=_vocab_size(self.model))
            self.batches = batches
            self._runner = LayerRunner(self.model, batches, progress=self.progress)
        return self._runner


def _by_layer(found) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for name, (i, mod) in found.items():
        out.setdefault(i, {})[name] = mod
    return out


def _kind(name: str, units: dict) -> str:
    """The kind of a target for :func:`_per_kind`: its unit's kind, or a matrix's final name."""
    return units.get(name) or name.rsplit(".", 1)[-1]


def _per_kind(scales: dict, units: dict) -> dict:
    """Loss scales divided by their mean over the targets of the same kind (the MLP units, the
    ``q_proj`` matrices, ...).

    The diagonal Fisher ranks the targets of one kind along the depth well (on SmolLM2-135M at
    -20%, per-layer MLP widths by it gave perplexity 40.28 where relative errors gave 54.45),
    but not targets of different kinds against each other: its second-order, diagonal view of
    an error that passes through the attention's softmax made ``q_proj`` errors look nearly
    free, and the hybrid allocated on raw loss scales reached 112.44 where relative errors gave
    35.06 (docs/benchmarks.md, section 12). So each kind keeps the weight relative errors give
    it, and the loss redistributes it over the depth.
    """
    groups: dict[str, list] = {}
    for n in scales:
        groups.setdefault(_kind(n, units), []).append(n)
    out = {}
    for names in groups.values():
        mean = sum(scales[n] for n in names) / len(names)
        out.update({n: scales[n] / mean if mean > 0 else 1.0 for n in names})
    return out


def _loss_scale(model, method, name, stats, sensitivity) -> float:
    """``||D^{1/2} W L||_F^2`` of the anchor's weight: what turns a relative curve into a loss.

    ``D`` the diagonal of the gradient covariance at its output divided by the tokens
    (:meth:`adapters.sensitivity.OutputSensitivity.row_weights` squared), ``L L^T`` the input
    Gram the curve was made with.
    """
    with onloaded(model, method.anchor(model, name)) as lin:
        W = as_linear(lin).weight.detach().to(torch.float64)
    H = stats.gram.to(device=W.device, dtype=torch.float64)
    w2 = sensitivity[name].row_weights().to(W.device) ** 2
    return float((((W @ H) * W).sum(1) * w2).sum())


@torch.no_grad()
def _curves(config, method, found, calib, metrics, keep, units=None, sensitivity=None
            ) -> tuple[dict, dict, list, dict]:
    """One pass over the dense model: ``(curves, kept statistics, silent experts, loss scales)``.

    With ``sensitivity`` (a ``loss_aware`` config, :mod:`adapters.sensitivity`) the curves of
    the structured units are those of the two-sided metric when ``"fit"`` is asked, and with
    ``"allocation"`` every curve also has its loss scale (``scales``, by name; relative curve
    times scale: the predicted loss).
    """
    by_layer, curves, kept, used = _by_layer(found), {}, {}, 0
    scales = {}
    aware = getattr(config, "loss_aware", ()) if sensitivity is not None else ()
    silent = []
    weighting = config.token_weighting
    runner = calib.runner
    hidden = runner.hidden
    for i in tqdm(range(max(by_layer) + 1), desc="spectra", disable=not calib.progress, leave=False):
        mods = by_layer.get(i, {})
        with onloaded_block(runner.model, f"{runner.prefix}.{i}"):  # an offloaded layer is read once here
            stats, out = record_layer(runner, i, hidden, mods, weighting=weighting)
            silent.extend(name for name in mods if name not in stats)  # experts no token was routed to
            heard = [name for name in mods if name in stats]

            def curve(name):
                # Relative errors: absolute ones follow the activation scale, which grows with
                # depth, and would strip the early layers (measured: perplexity 5e4 at -8.8%).
                # A loss scale puts them in one unit without that bias (adapters.sensitivity).
                kind = (units or {}).get(name, "linear")
                um = method.for_unit(kind)
                c = um.unit_curve(config, calib.model, name, stats[name], metrics,
                                  outputs=fit_weights(config, sensitivity, name, kind))
                if "allocation" in aware:
                    scales[name] = _loss_scale(calib.model, um, name, stats[name], sensitivity)
                return c

            if method.needs_gram:  # one factor per shared input, made before the matrices use it
                # (a structured unit's curve factors its own statistics: a factor here would go unused)
                metrics.prepare([stats[n] for n in heard if (units or {}).get(n, "linear") == "linear"],
                                workers=calib.workers)
            curves.update(zip(heard, map_modules(curve, heard, workers=calib.workers)))
        distinct = {id(s): s for s in stats.values()}.values()
        size = sum(2 * s.gram.numel() * s.gram.element_size() for s in distinct if s.gram is not None)
        if keep and used + size <= KEEP_BYTES:
            kept.update(stats)
            used += size
        else:
            keep = False
            for s in distinct:
                metrics.drop(s)
        hidden = out
    return curves, kept, silent, scales


def _last(h: torch.Tensor, mask) -> torch.Tensor:
    """Each row's hidden state at its last real token (the last position without a mask)."""
    if mask is None:
        return h[:, -1]
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, pos, -1).argmax(1).to(h.device)
    return h[torch.arange(h.shape[0], device=h.device), last]


@torch.no_grad()
def _curing_pass(config, found, calib) -> tuple[list, dict]:
    by_layer, kept, ang = _by_layer(found), {}, []
    runner = calib.runner
    hidden = runner.hidden
    for i in tqdm(range(len(runner.layers)), desc="curing: calibration", disable=not calib.progress, leave=False):
        stats, out = record_layer(runner, i, hidden, by_layer.get(i, {}), gram=False)
        ang.append(float(torch.cat([angular_distance(_last(h, m), _last(y, m))
                                    for h, y, m in zip(hidden, out, runner.masks)]).mean()))
        kept.update(stats)
        hidden = out
    return ang, kept


_ERR_PER_GROUP_FIXED = (
    "overrides fix {names}, a unit or a matrix of a unit that per_group=True leaves to the allocation (the unit "
    "or its matrices); drop those overrides, or pass per_group=False"
)
def _survey(model, config, method, filter_fn):
    """The targets that can be compressed, every other block weight with its reason, the kinds
    of the structured units among the targets (by name; matrices are not listed), and the
    matrices each unit holds (:func:`adapters.units.group_units`)."""
    survey = survey_targets(model, targets=config.targets, layers=config.layers, exclude=config.exclude,
                            filter_fn=filter_fn)
    found, dense = {}, list(survey.dense)
    for name, (i, mod) in survey.found.items():
        m, n = _shape(mod)
        if method.for_unit("linear").max_rank(m, n) < 1:
            bias = as_linear(mod).bias
            dense.append(LeftDense(name, (m, n), m * n + (0 if bias is None else bias.numel()),
                                   f"no rank below the break-even rank of a {m}x{n} weight"))
        else:
            found[name] = (i, mod)
    if not found:
        raise ValueError(
            f"no selected layer can be factored: each of {sorted(survey.found)[:5]} is too small (no rank "
            "below its break-even rank); pass targets= naming larger layers"
        )
    covered = survey.targeted_params / max(survey.block_params, 1)
    if config.covers_blocks and isinstance(config.targets, str) and covered < MIN_COVERAGE:
        left = sorted({f"{_pattern(d.name)} ({d.reason})" for d in dense
                       if d.reason not in ("excluded (exclude=)", "block not selected (layers=)", "filter_fn returned False")})
        warnings.warn(_WARN_COVERAGE.format(targets=config.targets, covered=covered, left=left[:10]),
                      AdaptersWarning, stacklevel=4)
    units, members = group_units(model, config, found, dense) if isinstance(config, StructuredConfig) else ({}, {})
    return found, dense, units, members


def _params_of(model, name, mod, method, units) -> int:
    """Weight and bias parameters of a target now (a unit's: its members')."""
    held = method.members(model, name) if name in units else [as_linear(mod)]
    return sum(p.numel() for m in held for p in m.parameters())


_ERR_UNIFORM = (
    "uniform=True keeps one width for every MLP, but no width (a multiple of width_multiple={q} below "
    "{width}) meets the budget: the narrowest saves {most:,} parameters with the other targets as allowed, "
    "the budget needs {need:,}. Ask for a smaller reduction=, pass matrices='interpolative' to factor "
    "the other targets too, or pass uniform=False"
)


_ERR_UNIFORM_HEADS = (
    "uniform=True keeps one width for every MLP and one number of KV heads for every attention, but no pair "
    "meets the budget: the smallest ({smallest}) saves {most:,} parameters with the other targets as allowed, "
    "the budget needs {need:,}. Ask for a smaller reduction=, pass matrices='interpolative' to factor the other "
    "targets too, or pass uniform=False"
)


def _uniform_choices(config, names, methods, shapes, what) -> tuple[list, int]:
    """``(choices, full)``: the widths (or head counts) allowed to every unit of ``names``, which
    must share one shape, and the full one."""
    sizes = {shapes[n] for n in names}
    if len(sizes) != 1:
        raise ValueError(f"uniform=True needs {what} of one shape, got {sorted(sizes)}; pass uniform=False")
    q, cap = allowed_ranks(config, methods[names[0]], *shapes[names[0]])
    return list(range(q, cap + 1, q)), shapes[names[0]][0]


def _allocate_uniform(config, free, units, methods, shapes, curves, need, *, head_counts=None) -> list[int]:
    """One width for every MLP unit and one number of KV heads for every whole-head unit, chosen
    together: the pair (with the other targets' ranks allocated in what remains of the budget) of
    least total predicted error that saves at least ``need``. Every MLP is cut (as before the
    head units); the attentions may all stay whole (count 0 in the plan). ``head_counts``: the
    counts the family's config takes (:func:`adapters.pruned.stock_head_counts`), so that the
    result is a stock model."""
    mlps = [n for n in free if units.get(n) == "mlp"]
    heads = [n for n in free if units.get(n) == "heads"]
    mats = [n for n in free if units.get(n) not in ("mlp", "heads")]
    widths, full = _uniform_choices(config, mlps, methods, shapes, "MLPs") if mlps else ([0], 0)
    counts = [0]
    if heads:
        counts += [h for h in _uniform_choices(config, heads, methods, shapes, "attentions")[0]
                   if head_counts is None or h in head_counts]

    def saved_and_error(names, k):
        if k == 0:
            return 0, 0.0
        return (sum(shapes[n][0] * shapes[n][1] - methods[n].params(*shapes[n], k) for n in names),
                sum(float(curves[n][k - 1]) for n in names))

    best, best_err = None, math.inf
    for k in widths:
        for h in counts:
            (s_mlp, e_mlp), (s_heads, e_heads) = saved_and_error(mlps, k), saved_and_error(heads, h)
            err, rest = e_mlp + e_heads, need - s_mlp - s_heads
            ranks = [0] * len(mats)
            if rest > 0:
                if not mats:
                    continue
                try:
                    ranks, _ = allocate_ranks(
                        [shapes[n] for n in mats], [curves[n] for n in mats], need=rest,
                        cost=[methods[n].params for n in mats],
                        multiple=[allowed_ranks(config, methods[n], *shapes[n])[0] for n in mats],
                        max_ranks=[allowed_ranks(config, methods[n], *shapes[n])[1] for n in mats],
                    )
                except ValueError:
                    continue
                err += sum(float(curves[n][r - 1]) for n, r in zip(mats, ranks) if r > 0)
            if err < best_err:
                best, best_err = (k, h, ranks), err
    if best is None:
        fewest = counts[1] if len(counts) > 1 else 0
        most = saved_and_error(mlps, widths[0])[0] + saved_and_error(heads, fewest)[0]
        if not heads:
            raise ValueError(_ERR_UNIFORM.format(q=widths[0], width=full, most=most, need=need))
        smallest = (f"width {widths[0]}, " if mlps else "") + f"{fewest} KV heads"
        raise ValueError(_ERR_UNIFORM_HEADS.format(smallest=smallest, most=most, need=need))
    k, h, ranks = best
    by_name = dict(zip(mats, ranks))
    return [k if units.get(n) == "mlp" else h if units.get(n) == "heads" else by_name[n] for n in free]


def _budget_fixes_width(config, found, fixed, units) -> bool:
    """Whether the budget alone decides the plan: ``uniform`` widths, and every target not fixed
    by ``overrides`` an MLP unit (nothing else shares the budget)."""
    free = [n for n in found if n not in fixed]
    return bool(free) and getattr(config, "uniform", False) and all(units.get(n) == "mlp" for n in free)


def _widest_within(config, free, methods, shapes, need) -> int:
    """The widest width (a multiple of ``width_multiple``) that saves at least ``need`` over the
    MLP units ``free``; ``ValueError`` (what the budget can meet) when none does."""
    widths = {shapes[n][0] for n in free}
    if len(widths) != 1:
        raise ValueError(f"uniform=True needs MLPs of one width, got widths {sorted(widths)}; pass uniform=False")
    q, cap = allowed_ranks(config, methods[free[0]], *shapes[free[0]])
    for k in range(cap, q - 1, -q):
        if sum(shapes[n][0] * shapes[n][1] - methods[n].params(*shapes[n], k) for n in free) >= need:
            return k
    most = sum(shapes[n][0] * shapes[n][1] - methods[n].params(*shapes[n], q) for n in free)
    raise ValueError(_ERR_UNIFORM.format(q=q, width=widths.pop(), most=most, need=need))


def build_plan(model, config, /, *, calib: Calibration, metrics: Metrics, filter_fn=None, keep=False,
               placing=False, offload_folder=None) -> Plan:
    """:func:`plan`'s work; with ``keep`` the dense statistics stay in ``plan._kept`` for the fit.

    With ``placing`` (:func:`adapters.compress`) the targets are also checked for a place to put
    their replacements (:func:`adapters.offload.check_readable`), before any calibration runs.
    """
    method = method_for(config)
    if getattr(config, "loss_aware", ()):
        check_causal_lm(model)
    found, dense, units, members = _survey(model, config, method, filter_fn)
    # per_group: each unit or its matrices (the factored option), chosen by the allocation
    alternatives = members if getattr(config, "per_group", False) else {}
    check_readable(model, names=found if placing else (), offload_folder=offload_folder)
    unused = [k for k in config.overrides if not any(matches(n, _override_spec(k)) for n in found)]
    if unused:
        finals = sorted({n.rsplit(".", 1)[-1] for n in found})
        raise ValueError(
            f"overrides keys {unused} match none of the selected layers (final names {finals}); fix the "
            "spelling, or add the layers to targets="
        )
    params_before = count_parameters(model)
    methods = {n: method.for_unit(units.get(n, "linear")) for n in found}
    shapes = {n: methods[n].shape(model.get_submodule(n) if n in units else mod) for n, (_, mod) in found.items()}
    fixed = {n: r for n in found if (r := _fixed_rank(config, methods[n], n, shapes[n])) is not None}
    chosen_by_plan = [n for n in fixed if n in alternatives or any(n in names for names in alternatives.values())]
    if chosen_by_plan:
        raise ValueError(_ERR_PER_GROUP_FIXED.format(names=sorted(chosen_by_plan)[:5]))
    target = _check_feasible(config, methods, shapes, fixed, params_before, dense, alternatives)
    ranks, errors, ang, kept, sensitivity = dict(fixed), {}, None, {}, None
    if isinstance(config, CURingConfig):
        ang, kept = _curing_pass(config, found, calib)
        layers = config.layers or sorted(sorted(_by_layer(found), key=lambda i: ang[i])[: config.n_layers])
        for name, (i, mod) in found.items():
            m, n = _shape(mod)
            ranks[name] = 0 if i not in layers else (config.rank or min(method.max_rank(m, n), config.max_rank))
    elif target is not None and _budget_fixes_width(config, found, fixed, units):
        # One width for every MLP and nothing else to allocate: the error falls with the width,
        # so the widest that meets the budget is the allocation, and no curve is needed (one
        # pass over the calibration tokens saved; predicted errors stay None).
        free = [n for n in found if n not in fixed]
        need = params_before - target - sum(
            shapes[n][0] * shapes[n][1] - methods[n].params(*shapes[n], r) for n, r in fixed.items()
        )
        k = _widest_within(config, free, methods, shapes, need) if need > 0 else 0
        ranks.update({n: k for n in free})
    elif target is not None:
        if getattr(config, "loss_aware", ()):
            sensitivity = output_sensitivity(calib.model, calib.batches_ready(),
                                             {n: mod for n, (_, mod) in found.items()}, progress=calib.progress)
        curves, kept, silent, scales = _curves(config, method, found, calib, metrics, keep, units, sensitivity)
        # the allocator reads predicted losses under loss_aware "allocation" (normalised per kind
        # of target), relative errors otherwise
        scales = _per_kind(scales, units)
        costs = {n: np.asarray(c) * scales[n] if n in scales else c for n, c in curves.items()}
        for name in silent:
            _, mod = found.pop(name)
            lin = as_linear(mod)
            dense.append(LeftDense(name, tuple(lin.weight.shape), sum(p.numel() for p in lin.parameters()),
                                   "no calibration token was routed to this expert"))
            fixed.pop(name, None)
            ranks.pop(name, None)
        free = [n for n in found if n not in fixed]
        need = params_before - target - sum(
            shapes[n][0] * shapes[n][1] - methods[n].params(*shapes[n], r) for n, r in fixed.items()
        )
        if need <= 0:
            chosen = [0] * len(free)
        elif getattr(config, "uniform", False) and any(units.get(n) in ("mlp", "heads") for n in free):
            heads = [n for n in free if units.get(n) == "heads"]
            counts = stock_head_counts(model, heads_of(model.get_submodule(heads[0]))) if heads else None
            chosen = _allocate_uniform(config, free, units, methods, shapes, costs, need, head_counts=counts)
        else:
            at = {n: j for j, n in enumerate(free)}
            chosen = allocate_ranks(
                [shapes[n] for n in free], [costs[n] for n in free], need=need,
                cost=[methods[n].params for n in free],
                multiple=[allowed_ranks(config, methods[n], *shapes[n])[0] for n in free],
                max_ranks=[allowed_ranks(config, methods[n], *shapes[n])[1] for n in free],
                exclusive=[[[at[u]], [at[n] for n in names]] for u, names in alternatives.items() if u in at],
            )[0]
        ranks.update(zip(free, chosen))
        errors = {n: math.sqrt(max(float(curves[n][r - 1]), 0.0)) for n, r in ranks.items() if r > 0}
    for unit, names in alternatives.items():  # the plan lists the option taken (the unit when neither is)
        drop = names if ranks.get(unit, 0) > 0 or not any(ranks.get(n, 0) for n in names) else [unit]
        for name in drop:
            found.pop(name, None)
    modules = [
        ModulePlan(name, i, shapes[name], ranks.get(name, 0), _params_of(model, name, mod, methods[name], units),
                   errors.get(name), units.get(name, "linear"))
        for name, (i, mod) in found.items()
    ]
    return Plan(config, modules, params_before, target, ang, dense, kept if keep else {}, sensitivity or {})


def plan(
    model: nn.Module,
    config: CompressionConfig | None = None,
    /,
    *,
    calibration=None,
    tokenizer=None,
    filter_fn=None,
    progress: bool = True,
    workers: int | None = None,
) -> Plan:
    """Decide ranks and sizes without touching the model: a dry run of :func:`adapters.compress`.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A decoder or encoder model; read, never modified (the calibration forward passes run in eval mode
        and the mode is restored).
    config : CompressionConfig, default InterpolativeConfig()
    calibration, tokenizer
        As :func:`adapters.compress` (only used when ranks are allocated, or for CURing's
        layer choice; None: the bundled default calibration set, :mod:`adapters.texts`).
    filter_fn : callable, optional
        ``filter_fn(module, fqn) -> bool``, a further target condition.
    progress : bool, default True
    workers : int, optional
        Threads for the error curves, as in :func:`adapters.compress`.

    Returns
    -------
    Plan
        Ranks, parameter counts and predicted errors; edit ``plan.modules[i].rank`` and pass the
        plan to :func:`adapters.compress` to apply it.

    Raises
    ------
    ValueError
        No matching layers, a target pattern that matches nothing, an already compressed
        model; infeasible budget or ranks (before any calibration runs).

    adapters.offload.OffloadError
        A weight on the meta device that no accelerate offload hook holds (before any
        calibration runs).

    Warns
    -----
    AdaptersWarning
        When ``targets``, ``"all-linear"`` or a regular expression, reach less than
        :data:`MIN_COVERAGE` of the parameters of the blocks' 2-D weights.

    Notes
    -----
    Fused 3-D expert parameters are opened into per-expert linear layers
    (:func:`adapters.experts.open_experts`, views of the same tensors) for the duration of the
    call and put back before it returns.

    Examples
    --------
    >>> p = adapters.plan(model, InterpolativeConfig(reduction=0.2), calibration=ids)  # doctest: +SKIP
    >>> model, report = adapters.compress(model, p, calibration=ids)                  # doctest: +SKIP
    """
    config = InterpolativeConfig() if config is None else config
    was_training = model.training
    model.eval()
    opened = open_experts(model)
    try:
        calib = Calibration(model, config, calibration, tokenizer, progress, workers)
        return build_plan(model, config, calib=calib, metrics=Metrics(getattr(config, "ridge", 0.0)),
                          filter_fn=filter_fn)
    finally:
        for parent, attr, old in reversed(opened):
            setattr(parent, attr, old)
        model.train(was_training)
