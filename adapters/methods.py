"""The map of each config type onto curlinalg: cost, break-even rank, error curve and fit.

Nothing numerical lives here: every factorisation, metric and error curve is a curlinalg
routine; a method only says which one, on which matrix, and which layer stores the result.
:func:`method_for` is the one dispatch, by config type.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import curlinalg
from curlinalg.metric import Whitening, mixed_cross, weighted_norm, whitening
from curlinalg.output_id import selection_ratio

from ._parallel import map_modules
from .configs import CompressionConfig, CURConfig, CURingConfig, InterpolativeConfig, StructuredConfig, SVDConfig
from .layer import (
    CURLinear,
    GatheredLinear,
    ScatteredLinear,
    InterpolativeLinear,
    LowRankLinear,
    break_even_rank,
    cur_params,
    interpolative_break_even_rank,
    interpolative_params,
    svd_break_even_rank,
    svd_params,
)
from .layouts import mlp_layout
from .offload import onloaded
from .pruned import cut_heads, cut_neurons
from .targets import as_linear

__all__ = ["Fit", "Method", "METHODS", "method_for"]


@dataclass
class Fit:
    """One fitted layer (or unit): the module, its kept indices and its relative weighted error.

    A unit's fit replaces several children of its module: ``replaces`` maps each child's
    attribute name to its new module (``module`` is then None). A unit's fit also carries the
    optimum its error is compared to, ``optimal_error`` (:attr:`curlinalg.OutputID.optimal_error`;
    for ``"qk"`` that of :attr:`curlinalg.ScoreCR.lower`), and ``optimality_ratio``, the
    ratio of the two (:func:`curlinalg.output_id.selection_ratio`); both None for a matrix, the
    constant None where it is infinite (an optimum of 0 that the fit does not reach).
    """

    module: nn.Module | None
    rows: list
    cols: list
    rel_error: float
    replaces: dict | None = None
    optimal_error: float | None = None
    optimality_ratio: float | None = None


def _rel(E: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """``||E L||_F / ||W L||_F`` with ``L L^T = H``: the relative output error on the calibration."""
    return weighted_norm(E, gram=H) / max(weighted_norm(W, gram=H), 1e-150)


def _cross(config, stats, metric: Whitening):
    """The cross-Gram of the fit: the sequential refit's mixed target and ridge
    (:func:`curlinalg.metric.mixed_cross`), or None where the inputs of both paths coincide."""
    if stats.cross is None:
        return None
    return mixed_cross(metric, stats.cross, mix=getattr(config, "mix", 0.0), ridge=getattr(config, "refit_ridge", 0.0))


class Metrics:
    """One :class:`~curlinalg.metric.Whitening` per shared input (q/k/v share one factor).

    ``ridge`` is the relative shift asked of each factor: the config's ``ridge``, plus its
    ``refit_ridge`` for the statistics of a sequential refit (:mod:`adapters.compression`).
    """

    def __init__(self, ridge: float):
        self.ridge = ridge
        self._cache: dict[int, tuple[object, Whitening]] = {}

    def of(self, stats) -> Whitening:
        hit = self._cache.get(id(stats))
        if hit is None or hit[0] is not stats:
            hit = (stats, whitening(stats.gram, ridge=self.ridge))
            self._cache[id(stats)] = hit
        return hit[1]

    def fallback(self, stats) -> str | None:
        """How the factor of ``stats`` fell back from the requested ridge, or None if it did not."""
        hit = self._cache.get(id(stats))
        if hit is None or hit[0] is not stats or not hit[1].fell_back:
            return None
        return hit[1].describe()

    def prepare(self, stats, /, *, workers: int = 1) -> None:
        """Factor each distinct statistics object of ``stats`` once, ``workers`` side by side
        (:func:`adapters._parallel.map_modules`), before the modules that share it use it."""
        map_modules(self.of, {id(s): s for s in stats}.values(), workers=workers)

    def drop(self, stats) -> None:
        """Forget the factor of ``stats`` (its layer will be recorded again)."""
        self._cache.pop(id(stats), None)


class Method:
    """How one config type maps onto curlinalg and a layer class.

    Attributes
    ----------
    form : str
        The layer form built (recorded in checkpoints).
    needs_gram : bool
        Whether the fit needs the input Gram (CURing needs only column norms).
    """

    form = ""
    needs_gram = True
    #: The kind of unit this method fits: ``"linear"`` (one matrix), ``"mlp"`` (an MLP's
    #: neurons), ``"vo"`` (an attention's value dimensions), ``"heads"`` (its whole KV groups)
    #: or ``"qk"`` (its query-key dimensions).
    unit = "linear"

    def for_unit(self, unit: str, /) -> "Method":
        """The method that fits units of kind ``unit`` under this config (itself by default)."""
        if unit != self.unit:
            raise ValueError(f"the {self.form or type(self).__name__} method fits {self.unit!r} units, not {unit!r}")
        return self

    def anchor(self, model: nn.Module, name: str, /) -> str:
        """The module of ``model`` whose inputs the unit ``name`` is calibrated on and whose weight
        its curve reads."""
        return name

    def members(self, model: nn.Module, name: str, /) -> list:
        """The modules of ``model`` whose parameters the unit ``name`` holds (what it replaces)."""
        return [model.get_submodule(name)]

    def shape(self, module: nn.Module, /) -> tuple:
        """``(m, n)`` of the unit: ``params(m, n, r)`` counts it at rank ``r`` and ``m * n`` dense."""
        return tuple(as_linear(module).weight.shape)

    def unit_curve(self, config, model, name, stats, metrics, *, outputs=None) -> np.ndarray:
        """:meth:`curve` of the unit ``name`` of ``model``, reading its anchor's weight.

        ``outputs`` (a structured unit's: the anchor's output-row weights ``D^{1/2}`` of
        :mod:`adapters.sensitivity`) makes the curve that of the two-sided metric; a matrix's
        curve takes none.
        """
        if outputs is not None:
            raise ValueError(f"the {self.form} method fits matrices in the input metric alone; pass outputs=None")
        with onloaded(model, self.anchor(model, name)) as lin:
            return self.curve(config, as_linear(lin).weight, stats, metrics)

    def params(self, m: int, n: int, r: int, /) -> int:
        raise NotImplementedError

    def max_rank(self, m: int, n: int, /) -> int:
        raise NotImplementedError

    def curve(self, config, weight, stats, metrics: Metrics) -> np.ndarray:
        """Relative squared error at every rank ``1..max_rank`` (the allocator's input)."""
        raise NotImplementedError(f"{type(config).__name__} has no error curve; it fixes its ranks")

    def fit(self, config, linear, stats, metrics: Metrics, rank: int) -> Fit:
        raise NotImplementedError


class _Interpolative(Method):
    form = "interpolative"

    def params(self, m, n, r, /):
        return interpolative_params(m, n, r)

    def max_rank(self, m, n, /):
        return interpolative_break_even_rank(m, n)

    def curve(self, config, weight, stats, metrics):
        W = weight.detach().to(torch.float64)
        return curlinalg.svd_error_curve(metrics.of(stats).whiten(W), max_rank=self.max_rank(*W.shape))

    def fit(self, config, linear, stats, metrics, rank):
        W = linear.weight.detach().to(torch.float64)
        metric = metrics.of(stats)
        res = curlinalg.interpolative(
            W, rank=rank, metric=metric, cross=_cross(config, stats, metric), skeleton="truncation",
            basis="gram", method=config.selector,
        )
        E = W.clone()
        E[res.indices, :] -= res.skeleton
        E[res.rest, :] -= res.coefficients @ res.skeleton
        new = InterpolativeLinear.from_linear(linear, rows=res.indices, P=res.coefficients, R=res.skeleton)
        return Fit(new, res.indices.tolist(), [], _rel(E, W, stats.gram))


class _CUR(Method):
    form = "cur"

    def params(self, m, n, r, /):
        return cur_params(m, n, r)

    def max_rank(self, m, n, /):
        return break_even_rank(m, n)

    def curve(self, config, weight, stats, metrics):
        W = weight.detach().to(torch.float64)
        B = metrics.of(stats).whiten(W)
        if config.allocation == "cur":
            return curlinalg.cur_error_curve(B, max_rank=self.max_rank(*W.shape))
        return curlinalg.svd_error_curve(B, max_rank=self.max_rank(*W.shape))

    def fit(self, config, linear, stats, metrics, rank):
        W = linear.weight.detach().to(torch.float64)
        metric = metrics.of(stats)
        res = curlinalg.weighted_cur(W, metric, rank=rank, method=config.selector, cross=_cross(config, stats, metric))
        E = W - res.to_dense()
        new = CURLinear.from_linear(linear, rows=res.rows, cols=res.cols, U=res.U, C=res.C)
        return Fit(new, res.rows.tolist(), res.cols.tolist(), _rel(E, W, stats.gram))


class _CURing(Method):
    form = "cur"
    needs_gram = False

    def params(self, m, n, r, /):
        return cur_params(m, n, r)

    def max_rank(self, m, n, /):
        return break_even_rank(m, n)

    def fit(self, config, linear, stats, metrics, rank):
        W = linear.weight.detach().to(torch.float64)
        d = stats.sq_sum.to(torch.float64)
        S = W.abs() * torch.sqrt(d)  # the WANDA score |W| ||x||_2
        # Only the top `rank` singular vectors are used: a randomized SVD (exact when the matrix
        # is small) instead of CURing's full one, the cost that dominated its 8B-shape time.
        svd = curlinalg.truncated_svd(S, rank=rank, kind="auto", rng=config.seed)
        rows, cols = curlinalg.deim(svd.U[:, :rank].contiguous()), curlinalg.deim(svd.V[:, :rank].contiguous())
        C, R = W[:, cols], W[rows, :]
        U = curlinalg.optimal_core(W, C, R)
        new = CURLinear.from_linear(linear, rows=rows, cols=cols, U=U)
        E = W - C @ (U @ R)  # the diagonal metric: ||E D^{1/2}||_F / ||W D^{1/2}||_F without an n x n Gram
        rel = float(torch.sqrt((E * E * d).sum()) / torch.sqrt((W * W * d).sum()).clamp_min(1e-150))
        return Fit(new, rows.tolist(), cols.tolist(), rel)


class _SVD(Method):
    form = "svd"

    def params(self, m, n, r, /):
        return svd_params(m, n, r)

    def max_rank(self, m, n, /):
        return svd_break_even_rank(m, n)

    def _source(self, config, W, stats, metrics):
        """``(M, unmap)``: the matrix whose truncated SVD is taken, and how to map ``B`` back."""
        if config.kind == "plain":
            return W, lambda B: B
        if config.kind == "scaled":
            d = torch.sqrt(torch.diagonal(metrics.of(stats).shifted_gram()) / max(stats.tokens, 1))
            return W * d, lambda B: B / d
        w = metrics.of(stats)
        return w.whiten(W), w.unwhiten

    def curve(self, config, weight, stats, metrics):
        W = weight.detach().to(torch.float64)
        M, _ = self._source(config, W, stats, metrics)
        return curlinalg.svd_error_curve(M, max_rank=self.max_rank(*W.shape))

    def fit(self, config, linear, stats, metrics, rank):
        W = linear.weight.detach().to(torch.float64)
        M, unmap = self._source(config, W, stats, metrics)
        left, right, _ = curlinalg.metric.gram_svd(M, rank)
        A, B = M @ right, unmap(right.T)
        err = _rel(W - A @ B, W, stats.gram) if stats.gram is not None else float(
            torch.linalg.norm(W - A @ B) / torch.linalg.norm(W)
        )
        new = LowRankLinear(A.to(linear.weight), B.to(linear.weight), bias=linear.bias)
        return Fit(new, [], [], err)


class _Neurons(Method):
    """An MLP ``out(act(in(x)))`` keeping ``r`` of its ``m`` neurons, in any layout of
    :data:`adapters.layouts.MLP_LAYOUTS` (read from the unit's module).

    Its shape is ``(m, n)``: ``m`` neurons of ``n`` parameters each
    (:meth:`adapters.layouts.MLPLayout.per_neuron`: the rows and bias entries of the input
    projections, a column of the output projection).
    """

    form = "neurons"
    unit = "mlp"

    def anchor(self, model, name, /):
        return f"{name}.{mlp_layout(model.get_submodule(name)).output}"

    def members(self, model, name, /):
        mlp = model.get_submodule(name)
        return [mlp.get_submodule(p) for p in mlp_layout(mlp).projections]

    def shape(self, module, /):
        layout = mlp_layout(module)
        return (layout.width(module), layout.per_neuron(module))

    def params(self, m, n, r, /):
        return r * n

    def max_rank(self, m, n, /):
        return m - 1

    def unit_curve(self, config, model, name, stats, metrics, *, outputs=None):
        with onloaded(model, self.anchor(model, name)) as lin:
            W, _ = _weighted(as_linear(lin).weight, outputs)
            return curlinalg.output_id_curve(stats.gram, W, ridge=config.ridge).errors[: W.shape[1] - 1]

    def fit_unit(self, config, model, name, stats, metrics, rank, *, outputs=None) -> Fit:
        """Keep ``rank`` neurons of the MLP ``name`` and refit its output projection
        (:func:`curlinalg.output_id`); ``outputs`` as :meth:`unit_curve`."""
        layout = mlp_layout(model.get_submodule(name))
        with ExitStack() as stack:
            held = {p: stack.enter_context(onloaded(model, f"{name}.{p}")) for p in layout.projections}
            W, s = _weighted(as_linear(held[layout.output]).weight, outputs)
            sequential = stats.cross is not None
            res = curlinalg.output_id(  # the order of output_id_curve on these statistics
                stats.gram, W, rank=rank, cross=stats.cross, mix=config.mix if sequential else 0.0,
                ridge=config.refit_ridge if sequential else 0.0, shift=config.ridge,
            )
            keep, where = torch.sort(torch.as_tensor(res.indices, device=W.device))
            replaces = cut_neurons(layout, held, keep, _unweighted(res.weight[:, where], s))
            replaces[layout.output].refitted = True  # what adapters.heal trains in a structured model
        return Fit(None, keep.tolist(), [], res.rel_error, replaces, res.optimal_error, _finite(res.optimality_ratio))


def _finite(ratio: float, /) -> float | None:
    """An optimality ratio for a report: None where it is infinite (not JSON)."""
    return ratio if math.isfinite(ratio) else None


def _weighted(weight: torch.Tensor, outputs, /) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(diag(s) W, s)`` in float64: the weight in the two-sided metric of :mod:`adapters.sensitivity`
    (``s`` the output-row weights, floored at ``1e-6`` of their largest so that no row is lost),
    or ``(W, None)`` without ``outputs``."""
    W = weight.detach().to(torch.float64)
    if outputs is None:
        return W, None
    s = outputs.to(device=W.device, dtype=torch.float64)
    s = s.clamp_min(1e-6 * float(s.max()))
    return W * s[:, None], s


def _unweighted(fitted: torch.Tensor, s, /) -> torch.Tensor:
    """A refit made in the two-sided metric, back in the weight's own rows: the refit is one least
    squares problem per output row, linear in that row, so dividing by ``s`` gives the same
    refit of ``W``."""
    return fitted if s is None else fitted / s[:, None]


def heads_of(attention: nn.Module, /) -> tuple[int, int, int]:
    """``(kv_heads, query_heads, head_dim)`` of an attention module with ``v_proj``/``o_proj``."""
    d = int(attention.head_dim)
    return attention.v_proj.out_features // d, attention.o_proj.in_features // d, d


def _value_order(G, W, heads, ridge):
    """Per KV group, its value dimensions in pivot order (items: one dimension of every query
    head of the group, :func:`curlinalg.output_id_curve` with ``groups=``); and the column order
    of ``o_proj``'s input that keeps the ``t``-th dimension of every group at step ``t``."""
    kv, q, d = heads
    g = q // kv
    dims = []
    for j in range(kv):
        cols = torch.arange(j * g * d, (j + 1) * g * d, device=W.device)
        sub = curlinalg.output_id_curve(G[cols][:, cols], W[:, cols], ridge=ridge,
                                        groups=torch.arange(g * d) % d)
        dims.append((sub.order[::g] % d).tolist())  # each item's first column: its dimension
    full = [h * d + dims[h // g][t] for t in range(d) for h in range(q)]
    return dims, torch.as_tensor(full, device=W.device)


class _ValueOutput(Method):
    """An attention's value-output pair keeping ``r`` of the ``m`` value dimensions of each head.

    KV-group aware: the query heads that share a KV head keep the same dimensions (those of
    the shared ``v_proj`` rows). Its shape is ``(head_dim, n)``: ``n`` parameters per kept
    dimension (a ``v_proj`` row per KV head, an ``o_proj`` column per query head).
    """

    form = "value-output"
    unit = "vo"

    def anchor(self, model, name, /):
        return f"{name}.o_proj"

    def shape(self, module, /):
        kv, q, d = heads_of(module)
        return (d, kv * module.v_proj.in_features + q * module.o_proj.out_features)

    def params(self, m, n, r, /):
        return r * n

    def max_rank(self, m, n, /):
        return m - 1

    def unit_curve(self, config, model, name, stats, metrics, *, outputs=None):
        heads = heads_of(model.get_submodule(name))
        with onloaded(model, self.anchor(model, name)) as o:
            W, _ = _weighted(o.weight, outputs)
        _, full = _value_order(stats.gram, W, heads, config.ridge)
        labels = torch.arange(W.shape[1], device=W.device)
        labels = (labels // (heads[1] // heads[0] * heads[2])) * heads[2] + labels % heads[2]  # (group, dim)
        c = curlinalg.output_id_curve(stats.gram, W, ridge=config.ridge, groups=labels, order=full)
        return c.errors[heads[0] - 1 :: heads[0]][: heads[2] - 1]  # t dimensions in every group

    def fit_unit(self, config, model, name, stats, metrics, rank, *, outputs=None) -> Fit:
        """Keep ``rank`` value dimensions per head of the attention ``name``; refit its ``o_proj``
        (``outputs`` as :meth:`_Neurons.unit_curve`)."""
        heads = heads_of(model.get_submodule(name))
        kv, q, d = heads
        with onloaded(model, f"{name}.v_proj") as v, onloaded(model, f"{name}.o_proj") as o:
            W, s = _weighted(o.weight, outputs)
            dims, full = _value_order(stats.gram, W, heads, config.ridge)
            sequential = stats.cross is not None
            res = curlinalg.output_id(
                stats.gram, W, rank=rank * q, order=full, cross=stats.cross, mix=config.mix if sequential else 0.0,
                ridge=config.refit_ridge if sequential else 0.0, shift=config.ridge,
            )
            cols, where = torch.sort(torch.as_tensor(res.indices, device=W.device))
            rows = torch.sort(torch.as_tensor([j * d + i for j in range(kv) for i in dims[j][:rank]],
                                              device=W.device)).values
            replaces = {
                "v_proj": ScatteredLinear(v.weight[rows], rows=rows, out_features=v.out_features, bias=v.bias),
                "o_proj": GatheredLinear(_unweighted(res.weight[:, where], s).to(o.weight), cols=cols, in_features=o.in_features,
                                         bias=o.bias),
            }
        return Fit(None, cols.tolist(), [], res.rel_error, replaces, res.optimal_error, _finite(res.optimality_ratio))


def _group_labels(heads, device) -> torch.Tensor:
    """The KV group of each input column of ``o_proj`` (query head ``h`` reads KV head ``h // g``)."""
    kv, q, d = heads
    return torch.arange(q * d, device=device) // (q // kv * d)


class _Heads(Method):
    """An attention keeping ``r`` of its ``m`` KV heads whole: each kept KV head's rows of
    ``k_proj`` and ``v_proj``, its ``g`` query heads' rows of ``q_proj`` and their input columns
    of ``o_proj``, refitted (:func:`curlinalg.output_id` with the columns of a KV group as one
    item).

    Its shape is ``(kv_heads, n)``: ``n`` parameters per KV group (the rows and bias entries of
    ``q``, ``k``, ``v``, the columns of ``o``).
    """

    form = "heads"
    unit = "heads"

    def anchor(self, model, name, /):
        return f"{name}.o_proj"

    def members(self, model, name, /):
        attention = model.get_submodule(name)
        return [getattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]

    def shape(self, module, /):
        kv, q, d = heads_of(module)
        rows = sum(getattr(module, p).in_features + (getattr(module, p).bias is not None) for p in ("k_proj", "v_proj"))
        qrow = module.q_proj.in_features + (module.q_proj.bias is not None)
        return (kv, d * (rows + q // kv * (qrow + module.o_proj.out_features)))

    def params(self, m, n, r, /):
        return r * n

    def max_rank(self, m, n, /):
        return m - 1

    def _order(self, config, gram, W, heads):
        return curlinalg.output_id_curve(gram, W, ridge=config.ridge, groups=_group_labels(heads, W.device))

    def unit_curve(self, config, model, name, stats, metrics, *, outputs=None):
        heads = heads_of(model.get_submodule(name))
        with onloaded(model, self.anchor(model, name)) as o:
            W, _ = _weighted(o.weight, outputs)
        return self._order(config, stats.gram, W, heads).errors[: heads[0] - 1]

    def fit_unit(self, config, model, name, stats, metrics, rank, *, outputs=None) -> Fit:
        """Keep ``rank`` KV heads (with their query heads) of the attention ``name``; refit its
        ``o_proj`` (``outputs`` as :meth:`_Neurons.unit_curve`)."""
        attention = model.get_submodule(name)
        heads = heads_of(attention)
        kv, q, d = heads
        with ExitStack() as stack:
            held = {p: stack.enter_context(onloaded(model, f"{name}.{p}"))
                    for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
            W, s = _weighted(held["o_proj"].weight, outputs)
            order = self._order(config, stats.gram, W, heads).order
            sequential = stats.cross is not None
            res = curlinalg.output_id(
                stats.gram, W, rank=rank * (q // kv) * d, order=order, cross=stats.cross,
                mix=config.mix if sequential else 0.0, ridge=config.refit_ridge if sequential else 0.0,
                shift=config.ridge,
            )
            cols, where = torch.sort(torch.as_tensor(res.indices, device=W.device))
            groups = torch.unique(_group_labels(heads, W.device)[cols])
            replaces = cut_heads(held, d, groups, _unweighted(res.weight[:, where], s))
        return Fit(None, groups.tolist(), cols.tolist(), res.rel_error, replaces, res.optimal_error,
                   _finite(res.optimality_ratio))


class _QueryKey(Method):
    """An attention's query-key pair keeping ``r`` of the ``d / 2`` rotary pairs of dimensions of
    each KV group (:func:`curlinalg.score_cr`: the CR approximation of the score matrices).

    The query heads that share a KV head keep the same pairs (those of the shared ``k_proj``
    rows); the other rows of ``q_proj`` and ``k_proj`` become zero outputs
    (:class:`adapters.layer.ScatteredLinear`, their bias entries zeroed), so the attention is
    unchanged and still computes dot products over ``head_dim``. No refit: the kept rows are
    the dense ones. Its shape is ``(head_dim // 2, n)``: ``n`` parameters per kept pair (two
    rows of ``k_proj`` per KV head, two of ``q_proj`` per query head).
    """

    form = "query-key"
    unit = "qk"

    def anchor(self, model, name, /):
        return f"{name}.q_proj"

    def members(self, model, name, /):
        attention = model.get_submodule(name)
        return [attention.q_proj, attention.k_proj]

    def shape(self, module, /):
        kv, q, d = heads_of(module)
        return (d // 2, 2 * (kv * module.k_proj.in_features + q * module.q_proj.in_features))

    def params(self, m, n, r, /):
        return r * n

    def max_rank(self, m, n, /):
        return m - 1

    @staticmethod
    def _groups(gram, Wq, Wk, heads):
        """:func:`curlinalg.score_cr` of every KV group."""
        kv, q, d = heads
        g = q // kv
        return [curlinalg.score_cr(gram, Wq[j * g * d:(j + 1) * g * d], Wk[j * d:(j + 1) * d]) for j in range(kv)]

    @staticmethod
    def _errors(crs, curve: str = "errors") -> np.ndarray:
        """The relative squared error of all the attention's score matrices at every ``r``
        (``curve="lower"``: its Eckart-Young lower bound, :attr:`curlinalg.ScoreCR.lower`)."""
        total = sum(c.total for c in crs)
        return sum(getattr(c, curve) * c.total for c in crs) / (total if total > 0 else 1.0)

    def unit_curve(self, config, model, name, stats, metrics, *, outputs=None):
        heads = heads_of(model.get_submodule(name))
        with onloaded(model, f"{name}.q_proj") as q, onloaded(model, f"{name}.k_proj") as k:
            Wq, _ = _weighted(q.weight, outputs)
            Wk = k.weight.detach().to(torch.float64)
            return self._errors(self._groups(stats.gram, Wq, Wk, heads))[: heads[2] // 2 - 1]

    def fit_unit(self, config, model, name, stats, metrics, rank, *, outputs=None) -> Fit:
        """Keep ``rank`` rotary pairs of each KV group of the attention ``name`` (``outputs`` as
        :meth:`_Neurons.unit_curve`: the query rows' weights)."""
        kv, q, d = heads = heads_of(model.get_submodule(name))
        g = q // kv
        with onloaded(model, f"{name}.q_proj") as qp, onloaded(model, f"{name}.k_proj") as kp:
            Wq, _ = _weighted(qp.weight, outputs)
            crs = self._groups(stats.gram, Wq, kp.weight.detach().to(torch.float64), heads)
            dims = [np.sort(c.items[c.order[:rank]].ravel()) for c in crs]
            device = kp.weight.device
            k_rows = torch.as_tensor(np.concatenate([j * d + dims[j] for j in range(kv)]), device=device)
            q_rows = torch.as_tensor(np.concatenate([h * d + dims[h // g] for h in range(q)]), device=device)
            replaces = {"q_proj": _kept_rows(qp, q_rows), "k_proj": _kept_rows(kp, k_rows)}
        rel = float(np.sqrt(max(float(self._errors(crs)[rank - 1]), 0.0)))
        opt = float(np.sqrt(max(float(self._errors(crs, "lower")[rank - 1]), 0.0)))
        ratio = selection_ratio(rel, opt, rounding=max(c.rounding for c in crs))
        return Fit(None, k_rows.tolist(), [], rel, replaces, opt, _finite(ratio))


def _kept_rows(linear: nn.Linear, rows: torch.Tensor, /) -> ScatteredLinear:
    """``linear``'s ``rows`` in place, every other output zero (its bias entry too)."""
    bias = None
    if linear.bias is not None:
        bias = torch.zeros_like(linear.bias.detach())
        bias[rows] = linear.bias.detach()[rows]
    return ScatteredLinear(linear.weight[rows], rows=rows, out_features=linear.out_features, bias=bias)


class _Structured(Method):
    """:class:`StructuredConfig`: MLPs as neuron units, attention value-output pairs, query-key
    pairs and whole KV groups as units (``units=``), other targets interpolative (or dense)."""

    form = "structured"
    _units = {"mlp": _Neurons(), "vo": _ValueOutput(), "heads": _Heads(), "qk": _QueryKey(),
              "linear": _Interpolative()}

    def for_unit(self, unit, /):
        if unit not in self._units:
            raise ValueError(f"the structured method fits units {sorted(self._units)}, not {unit!r}")
        return self._units[unit]

    def params(self, m, n, r, /):
        return self._units["linear"].params(m, n, r)

    def max_rank(self, m, n, /):
        return self._units["linear"].max_rank(m, n)


#: Config type -> its method (the one dispatch by type; subclasses find their base's entry).
METHODS: dict[type, Method] = {
    InterpolativeConfig: _Interpolative(),
    CURConfig: _CUR(),
    CURingConfig: _CURing(),
    SVDConfig: _SVD(),
    StructuredConfig: _Structured(),
}


def method_for(config: CompressionConfig, /) -> Method:
    """The :class:`Method` registered for ``type(config)`` (or its nearest registered base).

    Raises
    ------
    TypeError
        If ``config`` is not a registered config; the message names them.
    """
    for cls in type(config).__mro__:
        if cls in METHODS:
            return METHODS[cls]
    raise TypeError(
        f"no compression method is registered for {type(config).__name__}; pass one of "
        f"{[c.__name__ for c in METHODS]} (or register yours in adapters.methods.METHODS)"
    )


def rank_for_fraction(method: Method, m: int, n: int, fraction: float, /) -> int:
    """Largest rank whose layer keeps at most ``fraction`` of the ``m x n`` parameters (at least 1)."""
    r = 1
    while r < method.max_rank(m, n) and method.params(m, n, r + 1) <= fraction * m * n:
        r += 1
    return r
