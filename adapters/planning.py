"""Plan, then apply: per-module ranks, parameter counts and predicted errors, model untouched."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import curlinalg

from ._common import count_parameters
from .calibration import LayerRunner, angular_distance, default_calibration, prepare_calibration, record_layer
from .configs import BudgetConfig, CompressionConfig, CURingConfig, InterpolativeConfig, config_from_dict
from .layer import cur_params
from .methods import Method, Metrics, method_for, rank_for_fraction
from .offload import check_readable, onloaded, onloaded_block
from .targets import find_targets, matches

__all__ = ["ModulePlan", "Plan", "allocate_ranks", "plan"]

#: Statistics of the dense model kept between planning and fitting (so that a non-sequential
#: run reads each Gram and factors it once) up to this many bytes; later layers are recorded
#: again when they are fitted.
KEEP_BYTES = 6 << 30

_ERR_INFEASIBLE = (
    "the budget target_params={target:,} cannot be met: the model has {before:,} parameters and "
    "compressing every eligible matrix ({count}) at rank 1 still leaves {floor:,}. Ask for a "
    "smaller reduction= (at most {maxred:.4f}), a larger target_params=, or add targets="
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
    """

    name: str
    layer: int
    shape: tuple
    rank: int
    params_before: int
    predicted_error: float | None = None


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
    """

    config: CompressionConfig
    modules: list
    params_before: int
    target_params: int | None
    angular_distances: list | None = None
    _kept: dict = field(default_factory=dict, repr=False, compare=False)

    def params_after(self, method: Method | None = None) -> int:
        """Parameters of the model once the plan is applied (biases stay)."""
        method = method or method_for(self.config)
        return self.params_before - sum(
            m.shape[0] * m.shape[1] - method.params(*m.shape, m.rank) for m in self.modules if m.rank > 0
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
        }

    @classmethod
    def from_dict(cls, data: dict, /) -> "Plan":
        """Rebuild a plan written by :meth:`to_dict`."""
        mods = [ModulePlan(**{**m, "shape": tuple(m["shape"])}) for m in data["modules"]]
        return cls(config_from_dict(data["config"]), mods, data["params_before"], data["target_params"],
                   data.get("angular_distances"))

    def summary(self) -> str:
        """A short table."""
        lines = [f"{self.config.method}: {self.params_before:,} -> {self.params_after():,} parameters"]
        for m in self.modules:
            err = "" if m.predicted_error is None else f"{m.predicted_error:8.4f}"
            lines.append(f"{m.name:48s} {m.shape[0]:>5d}x{m.shape[1]:<6d} {m.rank:>5d} {err}")
        return "\n".join(lines)


def allocate_ranks(shapes, errors, /, *, need: int, cost=cur_params) -> tuple[list[int], int]:
    """Ranks for matrices of ``shapes`` removing at least ``need`` parameters at least error.

    A thin map onto :func:`curlinalg.allocate_ranks` (kept for the earlier API): ``cost(m, n, r)``
    is the parameter count of a rank-``r`` layer (default :func:`adapters.layer.cur_params`), so
    a rank saves ``m n - cost(m, n, r)``. Returns ``(ranks, slack)``.
    """
    savings = [m * n - np.array([cost(m, n, int(k)) for k in range(1, len(e) + 1)], dtype=np.int64)
               for (m, n), e in zip(shapes, errors)]
    res = curlinalg.allocate_ranks(errors, savings, need=need)
    return res.ranks, res.slack


def _fixed_rank(config, method, name, shape) -> int | None:
    for key, value in config.overrides.items():
        if matches(name, key if any(c in key for c in "\\[(*+?^$") else (key,)):
            return rank_for_fraction(method, *shape, value) if isinstance(value, float) else value
    rank = getattr(config, "rank", None)
    if rank is not None and not isinstance(config, CURingConfig):
        return rank
    return None


def _check_feasible(config, method, found, fixed, params_before) -> int | None:
    shapes = {name: tuple(mod.weight.shape) for name, (_, mod) in found.items()}
    too_big = [n for n, r in fixed.items() if r > method.max_rank(*shapes[n])]
    if too_big:
        (m, k), r = shapes[too_big[0]], fixed[too_big[0]]
        raise ValueError(
            f"rank={r} would make {len(too_big)} matrices larger than dense (e.g. {too_big[0]}, "
            f"{m}x{k}, break-even rank {method.max_rank(m, k)}); pass a smaller rank="
        )
    if not isinstance(config, BudgetConfig) or config.rank is not None:
        return None
    target = config.target(params_before)
    floor = params_before - sum(
        m * n - method.params(m, n, fixed.get(nm, 1)) for nm, (m, n) in shapes.items() if method.max_rank(m, n) >= 1
    )
    if target < floor:
        raise ValueError(_ERR_INFEASIBLE.format(
            target=target, before=params_before, count=len(found), floor=floor, maxred=1.0 - floor / params_before,
        ))
    if target >= params_before:
        raise ValueError(f"target_params={target:,} must be below the current {params_before:,} parameters")
    return target


class Calibration:
    """Calibration batches and the layer runner, built on first use (after the option checks)."""

    def __init__(self, model, config, calibration, tokenizer, progress):
        self.model, self.config, self.data, self.tokenizer, self.progress = model, config, calibration, tokenizer, progress
        self._runner = None

    @property
    def runner(self) -> LayerRunner:
        if self._runner is None:
            if self.data is None:
                self.data, self.tokenizer = default_calibration(self.model, tokenizer=self.tokenizer)
            c = self.config
            batches = prepare_calibration(self.data, tokenizer=self.tokenizer, nsamples=c.nsamples, seqlen=c.seqlen,
                                          batch_size=c.batch_size, seed=c.seed)
            self._runner = LayerRunner(self.model, batches, progress=self.progress)
        return self._runner


def _by_layer(found) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for name, (i, mod) in found.items():
        out.setdefault(i, {})[name] = mod
    return out


@torch.no_grad()
def _curves(config, method, found, calib, metrics, keep) -> tuple[dict, dict]:
    """One pass over the dense model: every error curve, and the statistics worth keeping."""
    by_layer, curves, kept, used = _by_layer(found), {}, {}, 0
    weighting = config.token_weighting
    runner = calib.runner
    hidden = runner.hidden
    for i in tqdm(range(max(by_layer) + 1), desc="spectra", disable=not calib.progress, leave=False):
        mods = by_layer.get(i, {})
        with onloaded_block(runner.model, f"{runner.prefix}.{i}"):  # an offloaded layer is read once here
            stats, out = record_layer(runner, i, hidden, mods, weighting=weighting)
            for name in mods:
                # Relative errors: absolute ones follow the activation scale, which grows with
                # depth, and would strip the early layers (measured: perplexity 5e4 at -8.8%).
                with onloaded(calib.model, name) as lin:
                    curves[name] = method.curve(config, lin.weight, stats[name], metrics)
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
    return curves, kept


@torch.no_grad()
def _curing_pass(config, found, calib) -> tuple[list, dict]:
    by_layer, kept, ang = _by_layer(found), {}, []
    runner = calib.runner
    hidden = runner.hidden
    for i in tqdm(range(len(runner.layers)), desc="curing: calibration", disable=not calib.progress, leave=False):
        stats, out = record_layer(runner, i, hidden, by_layer.get(i, {}), gram=False)
        ang.append(float(torch.cat([angular_distance(h[:, -1], y[:, -1]) for h, y in zip(hidden, out)]).mean()))
        kept.update(stats)
        hidden = out
    return ang, kept


def build_plan(model, config, /, *, calib: Calibration, metrics: Metrics, filter_fn=None, keep=False,
               placing=False, offload_folder=None) -> Plan:
    """:func:`plan`'s work; with ``keep`` the dense statistics stay in ``plan._kept`` for the fit.

    With ``placing`` (:func:`adapters.compress`) the targets are also checked for a place to put
    their replacements (:func:`adapters.offload.check_readable`), before any calibration runs.
    """
    method = method_for(config)
    found = find_targets(model, targets=config.targets, layers=config.layers, exclude=config.exclude,
                         filter_fn=filter_fn)
    check_readable(model, names=found if placing else (), offload_folder=offload_folder)
    params_before = count_parameters(model)
    fixed = {n: r for n, (_, mod) in found.items()
             if (r := _fixed_rank(config, method, n, tuple(mod.weight.shape))) is not None}
    target = _check_feasible(config, method, found, fixed, params_before)
    ranks, errors, ang, kept = dict(fixed), {}, None, {}
    if isinstance(config, CURingConfig):
        ang, kept = _curing_pass(config, found, calib)
        layers = config.layers or sorted(sorted(_by_layer(found), key=lambda i: ang[i])[: config.n_layers])
        for name, (i, mod) in found.items():
            m, n = mod.weight.shape
            ranks[name] = 0 if i not in layers else (config.rank or min(method.max_rank(m, n), config.max_rank))
    elif target is not None:
        curves, kept = _curves(config, method, found, calib, metrics, keep)
        free = [n for n in found if n not in fixed]
        shapes = {n: tuple(mod.weight.shape) for n, (_, mod) in found.items()}
        need = params_before - target - sum(
            shapes[n][0] * shapes[n][1] - method.params(*shapes[n], r) for n, r in fixed.items()
        )
        chosen = allocate_ranks([shapes[n] for n in free], [curves[n] for n in free], need=need,
                                cost=method.params)[0] if need > 0 else [0] * len(free)
        ranks.update(zip(free, chosen))
        errors = {n: math.sqrt(max(float(curves[n][r - 1]), 0.0)) for n, r in ranks.items() if r > 0}
    modules = [
        ModulePlan(name, i, tuple(mod.weight.shape), ranks.get(name, 0),
                   mod.weight.numel() + (0 if mod.bias is None else mod.bias.numel()), errors.get(name))
        for name, (i, mod) in found.items()
    ]
    return Plan(config, modules, params_before, target, ang, kept if keep else {})


def plan(
    model: nn.Module,
    config: CompressionConfig | None = None,
    /,
    *,
    calibration=None,
    tokenizer=None,
    filter_fn=None,
    progress: bool = True,
) -> Plan:
    """Decide ranks and sizes without touching the model: a dry run of :func:`adapters.compress`.

    Parameters
    ----------
    model : transformers PreTrainedModel
        A decoder model; read, never modified (the calibration forward passes run in eval mode
        and the mode is restored).
    config : CompressionConfig, default InterpolativeConfig()
    calibration, tokenizer
        As :func:`adapters.compress` (only used when ranks are allocated, or for CURing's
        layer choice; None: the bundled WikiText-2 calibration split).
    filter_fn : callable, optional
        ``filter_fn(module, fqn) -> bool``, a further target condition.
    progress : bool, default True

    Returns
    -------
    Plan
        Ranks, parameter counts and predicted errors; edit ``plan.modules[i].rank`` and pass the
        plan to :func:`adapters.compress` to apply it.

    Raises
    ------
    ValueError
        No matching layers; infeasible budget or ranks (before any calibration runs).
    adapters.offload.OffloadError
        A weight on the meta device that no accelerate offload hook holds (before any
        calibration runs).

    Examples
    --------
    >>> p = adapters.plan(model, InterpolativeConfig(reduction=0.2), calibration=ids)  # doctest: +SKIP
    >>> model, report = adapters.compress(model, p, calibration=ids)                  # doctest: +SKIP
    """
    config = InterpolativeConfig() if config is None else config
    was_training = model.training
    model.eval()
    try:
        calib = Calibration(model, config, calibration, tokenizer, progress)
        return build_plan(model, config, calib=calib, metrics=Metrics(getattr(config, "ridge", 0.0)),
                          filter_fn=filter_fn)
    finally:
        model.train(was_training)
