r"""Column interpolative decomposition of activations under the next projection's output metric.

A layer pair ``y = W f(x)`` whose inner activations ``Z = f(X)`` (tokens x ``n``) feed a
projection ``W`` (``m x n``) can keep ``k`` of its ``n`` inner units (an MLP's neurons, a head's
dimensions): keep columns ``S`` of ``Z`` and refit ``W`` on them,

.. math::

    \min_{|S| = k}\ \min_{W'}\ \|ZW^T - Z_SW'^T\|_F^2,

which is a column subset selection of ``Z`` judged by what ``W`` makes of it. Everything is
computed from the Gram :math:`G = Z^TZ` (``n x n``) and ``W``, never from the tokens.

:func:`output_id_curve` orders the columns (column-pivoted QR of the whitened activations,
each column weighted by the norm of the ``W`` column that reads it) and gives the exact relative
output error of the refit at every width along that order, with the lower bound no
``k``-dimensional refit can beat; :func:`output_id` refits ``W`` on a prefix of the order, in
ridge least squares (a ridge Nyström interpolation of the dropped columns), optionally against
the mixed target of a sequential refit, and reports the optimal error it is measured against and
the a posteriori selection constant (:func:`selection_ratio`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np

from . import _backend, _errors, _validation
from .bounds import ROUNDING_FACTOR
from .metric import _plus_diagonal, solve_psd, whitening

__all__ = ["OutputIDCurve", "OutputID", "output_id_curve", "output_id", "selection_ratio"]

_ERR_GRAM = "gram must be a square (n, n) float matrix, got shape {shape} and dtype {dtype}; pass Z^T Z of the inner activations"
_ERR_WEIGHT = (
    "weight must be an (m, n) float matrix whose n columns read the gram's n inner units, got shape "
    "{shape} for a gram of shape {g}; pass the next projection's weight (out_features x in_features)"
)
_ERR_RANK = "rank must be an int in [1, {n}] (columns kept of the {n} inner units), got {rank!r}"
_ERR_ORDER = "order must be a permutation of range({n}) (as output_id_curve returns), got {got}"
_ERR_MIX = "mix must be a real number in [0, 1] (the weight of the target W Z_c^T), got {mix!r}"
_ERR_RATIO = (
    "selection_ratio takes errors and a rounding level that are non-negative real numbers, got error={error!r}, "
    "optimal={optimal!r}, rounding={rounding!r}; pass relative errors (e.g. OutputID.rel_error and optimal_error)"
)


@dataclass
class OutputIDCurve:
    """Result of :func:`output_id_curve`.

    Attributes
    ----------
    order : array of int, shape (n,)
        The columns in pivot order: width ``k`` keeps ``order[:k]``.
    errors : numpy.ndarray, shape (n,)
        ``errors[k - 1]``: relative squared output error of the least-squares refit on
        ``order[:k]``, :math:`\\|ZW^T - Z_SW'^T\\|_F^2 / \\|ZW^T\\|_F^2` (in the shifted Gram
        :math:`G + \\delta I` that the factor was built on).
    lower : numpy.ndarray, shape (n,)
        ``lower[k - 1]``: the relative squared tail of the singular values of the whitened
        output :math:`R W^T` past ``k``, which no refit through ``k`` inner units can beat
        (``errors >= lower``).
    shift : float
        The absolute shift :math:`\\delta` of the factor.
    widths : numpy.ndarray
        ``widths[t - 1]``: columns kept at step ``t`` (``t`` itself without ``groups``; the
        columns of the first ``t`` items with them). ``errors`` and ``lower`` are per step.
    """

    order: Any
    errors: np.ndarray
    lower: np.ndarray
    shift: float
    widths: np.ndarray


@dataclass
class OutputID:
    """Result of :func:`output_id`.

    Attributes
    ----------
    indices : array of int, shape (k,)
        The kept columns (inner units).
    weight : array, shape (m, k)
        The refitted projection: ``Z[:, indices] @ weight.T`` approximates ``Z @ W.T``.
    rel_error : float
        :math:`\\|(W - \\hat W)L\\|_F / \\|WL\\|_F` with :math:`LL^T = G` and :math:`\\hat W` the
        refit placed in the kept columns (zeros elsewhere): the relative output error on the
        inputs whose Gram was passed.
    optimal_error : float
        :math:`\\sqrt{\\sum_{i > k}\\sigma_i^2 / \\sum_i \\sigma_i^2}`, :math:`\\sigma_i` the singular
        values of the whitened output :math:`WL` (the same :math:`L`, unshifted, as
        ``rel_error``): the error of its best rank-``k`` approximation, which no refit through
        ``k`` inner units beats (Eckart-Young), whichever units, ridge or target. 0 when ``k``
        is at least the rank of :math:`WL` (at most ``m``): the bound is then vacuous.
    rounding : float
        :math:`\\rho = 4\\sqrt{\\max(m, n)\\,u}`: the accuracy of ``optimal_error`` (computed from
        the eigenvalues of a Gram matrix, as ``basis="gram"`` of
        :func:`curlinalg.interpolative`), relative to :math:`\\|WL\\|_F`.

    Notes
    -----
    :attr:`optimality_ratio` is the a posteriori constant of the selection,
    ``selection_ratio(rel_error, optimal_error, rounding=rounding)``: how many times the optimum
    this refit's error is (at least 1, up to rounding; ``inf`` where the optimum is 0 and the
    refit is not).
    """

    indices: Any
    weight: Any
    rel_error: float
    optimal_error: float
    rounding: float

    @property
    def optimality_ratio(self) -> float:
        r"""``rel_error / optimal_error`` (:func:`selection_ratio` with ``rounding``): the factor
        by which the kept units miss the optimum, measured; ``inf`` when the optimum is 0 (``k``
        at least the rank of the output) and the refit is not. Not
        :func:`curlinalg.selection_constant`, the a priori :math:`\eta` of a row selection in
        the spectral norm."""
        return selection_ratio(self.rel_error, self.optimal_error, rounding=self.rounding)


def selection_ratio(error: float, optimal: float, /, *, rounding: float = 0.0) -> float:
    r"""The a posteriori selection constant :math:`e / e_*`, with the optimum at rounding level.

    Parameters
    ----------
    error : float
        :math:`e`, the relative error of a selection (e.g. :attr:`OutputID.rel_error`).
    optimal : float
        :math:`e_*`, the optimal relative error it is compared to (e.g.
        :attr:`OutputID.optimal_error`), :math:`e_* \le e` in exact arithmetic.
    rounding : float, default 0
        :math:`\rho`, the accuracy of :math:`e_*` (:attr:`OutputID.rounding`).

    Returns
    -------
    float
        :math:`e / e_*` when :math:`e_* > \rho` (at least 1 up to rounding). When
        :math:`e_* \le \rho`, the optimum is exact to working accuracy: 1 if :math:`e \le \rho`
        too (e.g. an output of rank ``k`` refitted exactly through ``k`` units), ``inf``
        otherwise (no finite constant: e.g. ``k`` at least the rank of the output, where every
        ``k``-dimensional map could be exact but ``k`` units are not).

    Raises
    ------
    ValueError
        A negative or NaN argument, or an infinite ``optimal`` or ``rounding``.

    Notes
    -----
    For a matrix, the a priori constants (:func:`curlinalg.selection_constant`,
    :func:`curlinalg.qdeim_bound`) bound :math:`\|A - A'\|_2 / \sigma_{k+1}` before the
    approximation is formed; this is the constant a selection actually reached, in the norm its
    error is measured in. The floor :math:`\rho` keeps the ratio of two rounding-level numbers
    out of it.

    Examples
    --------
    >>> from curlinalg.output_id import selection_ratio
    >>> selection_ratio(0.5, 0.25), selection_ratio(1e-14, 1e-9, rounding=1e-7)
    (2.0, 1.0)
    >>> selection_ratio(0.1, 0.0, rounding=1e-7)
    inf
    """
    vals = (error, optimal, rounding)
    if (any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in vals)
            or any(math.isnan(float(v)) or float(v) < 0 for v in vals)
            or not (math.isfinite(float(optimal)) and math.isfinite(float(rounding)))):
        raise ValueError(_ERR_RATIO.format(error=error, optimal=optimal, rounding=rounding))
    if float(optimal) > float(rounding):
        return float(error) / float(optimal)
    return 1.0 if float(error) <= float(rounding) else math.inf


def _host(x: Any) -> np.ndarray:
    """A small array (a curve, an index order) as numpy, wherever it lives."""
    if aac.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "get"):  # cupy
        return x.get()
    return np.asarray(x)


def _check(gram: Any, weight: Any) -> Any:
    xp = _backend.namespace(gram, weight)
    for name, x in (("gram", gram), ("weight", weight)):  # complex: the metric's own refusal, by name
        if xp.isdtype(x.dtype, "complex floating"):
            _validation.check_dtype(x.dtype, xp, real_only=("output_id", _errors.METRIC_REAL_ONLY), name=name)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0 or not xp.isdtype(gram.dtype, "real floating"):
        raise ValueError(_ERR_GRAM.format(shape=tuple(gram.shape), dtype=gram.dtype))
    if weight.ndim != 2 or weight.shape[1] != gram.shape[0] or not xp.isdtype(weight.dtype, "real floating"):
        raise ValueError(_ERR_WEIGHT.format(shape=tuple(weight.shape), g=tuple(gram.shape)))
    if not (_validation.all_finite(gram, xp) and _validation.all_finite(weight, xp)):
        raise ValueError("gram and weight must be finite (no NaN or Inf); check the calibration activations")
    return xp


def output_id_curve(gram: Any, weight: Any, /, *, ridge: float = 1e-6, groups: Any = None,
                    order: Any = None) -> OutputIDCurve:
    r"""Column order and refit error at every width, for keeping inner units of ``Z`` read by ``W``.

    Parameters
    ----------
    gram : array, shape (n, n)
        :math:`G = Z^TZ` (or :math:`Z^TDZ` with token weights), symmetric positive semi-definite.
    weight : array, shape (m, n)
        The projection ``W`` that reads the ``n`` inner units.
    ridge : float, default 1e-6
        Relative shift of the factor :math:`LL^T = G + \delta I` (:func:`curlinalg.whitening`).
    groups : array of int, shape (n,), optional
        Column labels: the columns of one label are kept or dropped together, as one *item*
        (a value dimension that the query heads of one KV group share). Items are ordered by
        block-pivoted Gram-Schmidt (the item whose columns keep the most weighted residual
        energy first); ``errors`` is then per item, and ``order`` lists the columns item by item.
    order : array of int, shape (n,), optional
        A column order to evaluate instead of choosing one (with ``groups``, each item's
        columns must be consecutive in it).

    Returns
    -------
    OutputIDCurve

    Raises
    ------
    ValueError
        Shapes that do not pair up, non-float or non-finite input, a negative ``ridge``;
        ``groups`` or ``order`` of the wrong length, an ``order`` that is not a permutation or
        splits an item.
    TypeError
        A complex ``gram`` or ``weight`` (the activation metric is real).

    Notes
    -----
    With :math:`R = L^T` (so :math:`\|Zv\| = \|Rv\|` for every ``v``, up to the shift) the
    columns are ordered by column-pivoted QR of :math:`RD`, :math:`D = \mathrm{diag}(\|W_{:,j}\|_2)`
    (Businger-Golub pivoting, as Q-DEIM): a column is worth what its activation's new direction
    weighs times how strongly ``W`` reads it. Scaling columns does not change their span, so
    the first ``k`` columns of the orthonormal factor :math:`Q` of :math:`R_{:,\pi}` span
    :math:`R_S`, and the least-squares refit leaves the output error

    .. math::

        e(k) = \|B\|_F^2 - \sum_{i \le k}\|q_i^TB\|_2^2, \qquad B = RW^T,

    exactly (one QR and one product for every width). Any refit through ``k`` inner units has
    rank at most ``k``, so :math:`e(k) \ge \sum_{i > k}\sigma_i(B)^2` (Eckart-Young): ``lower``.
    Pivoted QR guarantees :math:`\|R - Q_kQ_k^TR\|_2 \le \sqrt{n - k}\,2^k\sigma_{k+1}(R)` in
    the worst case and is close to :math:`\sigma_{k+1}` in practice (Gu & Eisenstat 1996);
    ``errors / lower`` reports the actual ratio for the output.

    References
    ----------
    .. [1] J. Chee, M. Renz, A. Damle, C. De Sa, "Model preserving compression for neural
       networks", NeurIPS 2022 (pruning neurons by an interpolative decomposition).
    .. [2] C.-C. Lin et al., "MoDeGPT: modular decomposition for large language model
       compression", ICLR 2025, arXiv 2408.09632 (Nystrom selection of MLP neurons).
    .. [3] M. Gu and S. C. Eisenstat, "Efficient algorithms for computing a strong
       rank-revealing QR factorization", SIAM J. Sci. Comput. 17(4), 1996.
    .. [4] Z. Drmac and S. Gugercin, "A new selection operator for the discrete empirical
       interpolation method", SIAM J. Sci. Comput. 38(2), 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.output_id import output_id_curve
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 8))   # 8 units, rank 3
    >>> W = rng.standard_normal((5, 8))
    >>> c = output_id_curve(Z.T @ Z, W, ridge=0.0)
    >>> bool(c.errors[2] < 1e-10), bool(c.errors[1] > 1e-3)      # 3 units carry all of it
    (True, True)
    """
    xp = _check(gram, weight)
    n = gram.shape[0]
    labels = None if groups is None else _host(groups).ravel()
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"groups must hold one label per column ({n}), got {labels.shape[0]}")
    if order is None:
        R, W, order, shift = _order(gram, weight, ridge, xp, labels)
    else:
        R, W, _, shift = _order(gram, weight, ridge, xp, labels, pivot=False)
        perm = _host(order).astype(np.int64).ravel()
        if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
            raise ValueError(_ERR_ORDER.format(n=n, got=perm[:10].tolist()))
        order = xp.asarray(perm, device=aac.device(R))
    perm = _host(order).astype(np.int64).ravel()
    if labels is None:
        ends = np.arange(n)
    else:
        seq = labels[perm]
        ends = np.flatnonzero(np.append(seq[1:] != seq[:-1], True))
        if np.unique(seq[ends]).size != ends.size:
            raise ValueError("order splits an item: the columns of each label of groups must be consecutive in it")
    Q, _ = xp.linalg.qr(xp.take(R, order, axis=1))
    B = R @ W.T
    captured = _host(xp.sum((Q.T @ B) ** 2, axis=1))
    s2 = _host(xp.linalg.svdvals(B)) ** 2
    total = float(s2.sum())
    scale = total if total > 0 else 1.0
    errors = np.maximum(total - np.cumsum(captured), 0.0)[ends] / scale
    tail = np.concatenate([total - np.cumsum(s2), np.zeros(n - s2.size)])
    lower = np.minimum(np.maximum(tail[ends], 0.0) / scale, errors)
    return OutputIDCurve(order, errors, lower, shift, ends + 1)


def _order(gram: Any, weight: Any, ridge: float, xp: Any, labels=None, pivot: bool = True) -> tuple:
    """``(R, W, order, shift)``: the factor ``R^T R = G + shift I``, ``W`` in float64, and the
    pivot order of the columns of ``R diag(||W_{:,j}||)`` (by items when ``labels``; None
    unless ``pivot``)."""
    w = whitening(gram, ridge=ridge)
    R = w.L.T
    W = xp.astype(weight, xp.float64)
    if not pivot:
        return R, W, None, w.shift
    M = R * xp.sqrt(xp.sum(W * W, axis=0))[None, :]
    if labels is None:
        return R, W, _backend.pivoted_rows(M.T, gram.shape[0]), w.shift
    return R, W, _grouped_order(M, labels, xp), w.shift


def _grouped_order(M: Any, labels: np.ndarray, xp: Any) -> Any:
    """Columns of ``M`` item by item: block-pivoted Gram-Schmidt over the items of ``labels``.

    Step ``t`` takes the item whose columns have the largest summed squared residual norm and
    projects every column onto the complement of their span (a QR of the block; directions
    below rounding level are dropped).
    """
    n = M.shape[1]
    dev = aac.device(M)
    items, index = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(index == i) for i in range(items.size)]
    member = np.zeros((n, items.size))
    member[np.arange(n), index] = 1.0
    member = xp.asarray(member, device=dev)
    work = xp.asarray(M, copy=True)
    tol = float(np.finfo(np.float64).eps) * n * max(_backend.to_float(xp.max(xp.abs(M))), 1e-300)
    taken = np.zeros(items.size, dtype=bool)
    cols: list[int] = []
    for _ in range(items.size):
        score = _host(xp.sum(work * work, axis=0) @ member)
        score[taken] = -np.inf
        p = int(np.argmax(score))
        taken[p] = True
        cols.extend(members[p].tolist())
        Q, Rb = xp.linalg.qr(xp.take(work, xp.asarray(members[p], device=dev), axis=1))
        live = _host(xp.abs(xp.linalg.diagonal(Rb))) > tol
        if live.any():
            Q = xp.take(Q, xp.asarray(np.flatnonzero(live), device=dev), axis=1)
            work = work - Q @ (Q.T @ work)
    return xp.asarray(np.asarray(cols, dtype=np.int64), device=dev)


def output_id(
    gram: Any, weight: Any, /, *, rank: int, order: Any = None, cross: Any = None, mix: float = 0.0,
    ridge: float = 0.0, shift: float = 1e-6,
) -> OutputID:
    r"""Keep ``rank`` inner units and refit the projection that reads them, in ridge least squares.

    Parameters
    ----------
    gram : array, shape (n, n)
        :math:`G = Z_c^TZ_c`, the Gram of the activations the kept units will see.
    weight : array, shape (m, n)
        The projection ``W``.
    rank : int
        Units kept, ``1 <= rank <= n``.
    order : array of int, optional
        A column order (:attr:`OutputIDCurve.order`); default: the order
        :func:`output_id_curve` gives for ``gram`` and ``weight`` with ``ridge=shift``. The kept
        units are ``order[:rank]``.
    cross : array, shape (n, n), optional
        :math:`K = Z_c^TZ_d` against reference activations :math:`Z_d` (the dense model's in a
        sequential refit); the target becomes :math:`\alpha Z_cW^T + (1 - \alpha)Z_dW^T`.
    mix : float, default 0
        :math:`\alpha` (used with ``cross``).
    ridge : float, default 0
        :math:`\lambda = \mathrm{ridge}\cdot\mathrm{mean}(\mathrm{diag}\,G)`: a Tikhonov term
        :math:`\lambda\|W' - W_{:,S}\|_F^2` pulling the refit toward the kept columns of ``W``.
    shift : float, default 1e-6
        Relative numerical shift added to :math:`G_{SS}` with the ridge (a pull toward zero).

    Returns
    -------
    OutputID

    Raises
    ------
    ValueError
        Shapes that do not pair up, ``rank`` out of range, an ``order`` that is not a
        permutation, ``mix`` outside [0, 1], negative ``ridge`` or ``shift``.
    TypeError
        A complex ``gram`` or ``weight`` (the activation metric is real).

    Notes
    -----
    With :math:`K' = \alpha G + (1 - \alpha)K` (:math:`K' = G` without ``cross``) the normal
    equations of :math:`\|Z_{c,S}W'^T - T\|_F^2 + \lambda\|W' - W_{:,S}\|_F^2 + \delta\|W'\|_F^2`,
    :math:`T` the target, are

    .. math::

        (G_{SS} + (\lambda + \delta)I)\,W'^T = K'_{S,:}W^T + \lambda W_{:,S}^T.

    Without ``cross`` and ridge this is the interpolative decomposition
    :math:`Z \approx Z_S[I\ \ T]` with the least-squares coefficients
    :math:`T = G_{SS}^{-1}G_{S\bar S}` folded into ``W``: :math:`W' = W_{:,S} + W_{:,\bar S}T^T`
    (a Nystrom approximation of :math:`G` from the columns ``S``); the ridge makes it the ridge
    Nystrom one, :math:`T_\lambda = (G_{SS} + \lambda I)^{-1}G_{S\bar S}`.

    Whatever ``S``, target or ridge, :math:`\hat W L` has rank at most ``k``, so
    :math:`\|(W - \hat W)L\|_F^2 \ge \sum_{i > k}\sigma_i(WL)^2` (Eckart-Young): the
    ``optimal_error``. The :math:`\sigma_i^2` are the eigenvalues of the smaller Gram,
    :math:`WGW^T` (``m <= n``) or :math:`R_WGR_W^T` with :math:`W = Q_WR_W` (one ``eigvalsh``
    of order :math:`\min(m, n)`, the product :math:`WG` being formed for ``rel_error``
    anyway), so their small values are resolved to about :math:`\sqrt{u}\,\sigma_1` only:
    ``rounding``. :attr:`OutputID.optimality_ratio` is the ratio of the two errors
    (:func:`selection_ratio`), measured: the worst-case constant of the pivoted QR behind the
    order of :func:`output_id_curve` (Gu & Eisenstat 1996) bounds the residual of the weighted
    activations, not of the output, so no a priori constant is claimed for the output. The
    bound is vacuous once ``k`` reaches the rank of :math:`WL` (at most ``m``: an MLP keeping at
    least as many neurons as its output width): every rank-``k`` map is then exact, and the
    best subset of ``k`` units, a column subset selection problem, has no cheap lower bound;
    ``optimal_error`` is 0 and the constant ``inf`` there.

    References
    ----------
    .. [1] C. Eckart and G. Young, "The approximation of one matrix by another of lower rank",
       Psychometrika 1(3), 1936.
    .. [2] M. Gu and S. C. Eisenstat, "Efficient algorithms for computing a strong
       rank-revealing QR factorization", SIAM J. Sci. Comput. 17(4), 1996.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.output_id import output_id
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 8))
    >>> W = rng.standard_normal((5, 8))
    >>> res = output_id(Z.T @ Z, W, rank=3, shift=0.0)
    >>> bool(np.allclose(Z[:, res.indices] @ res.weight.T, Z @ W.T))
    True
    """
    xp = _check(gram, weight)
    n = gram.shape[0]
    if not isinstance(rank, numbers.Integral) or isinstance(rank, bool) or not 1 <= rank <= n:
        raise ValueError(_ERR_RANK.format(n=n, rank=rank))
    if isinstance(mix, bool) or not isinstance(mix, numbers.Real) or not 0.0 <= float(mix) <= 1.0:
        raise ValueError(_ERR_MIX.format(mix=mix))
    ridge = _validation.check_tol(ridge, "ridge")
    shift = _validation.check_tol(shift, "shift")
    G = xp.astype(gram, xp.float64)
    W = xp.astype(weight, xp.float64)
    if order is None:
        order = _order(G, W, shift, xp)[2]
    perm = _host(order).astype(np.int64).ravel()
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError(_ERR_ORDER.format(n=n, got=perm[:10].tolist()))
    P = xp.asarray(perm, device=aac.device(G))
    S = P[:rank]
    if cross is not None:
        if tuple(cross.shape) != (n, n):
            raise ValueError(f"cross must have the gram's shape {(n, n)}, got {tuple(cross.shape)}; pass Z_c^T Z_d")
        K = float(mix) * G + (1.0 - float(mix)) * xp.astype(cross, xp.float64)
    else:
        K = G
    scale = _backend.to_float(xp.mean(xp.linalg.diagonal(G))) or 1.0
    lam, delta = ridge * scale, shift * scale
    G_SS = _plus_diagonal(xp.take(xp.take(G, S, axis=0), S, axis=1), lam + delta)
    W_S = xp.take(W, S, axis=1)
    Y = xp.take(K, S, axis=0) @ W.T + lam * W_S.T
    Wt = solve_psd((G_SS + G_SS.T) / 2, Y, xp)
    new = Wt.T
    # The error of W' placed in the kept columns, in the permuted basis (no scatter needed).
    zeros = xp.zeros((W.shape[0], n - rank), dtype=W.dtype, device=aac.device(W))
    E = xp.take(W, P, axis=1) - xp.concat([new, zeros], axis=1)
    err = _backend.to_float(xp.sum((E @ xp.take(xp.take(G, P, axis=0), P, axis=1)) * E))
    WG = W @ G
    ref = _backend.to_float(xp.sum(WG * W))
    rel = (max(err, 0.0) / ref) ** 0.5 if ref > 0 else 0.0
    opt = (_output_tail(G, W, WG, rank, xp) / ref) ** 0.5 if ref > 0 else 0.0
    rho = ROUNDING_FACTOR * math.sqrt(max(W.shape) * float(np.finfo(np.float64).eps))
    return OutputID(S, new, rel, opt, rho)


def _output_tail(G: Any, W: Any, WG: Any, k: int, xp: Any) -> float:
    """:math:`\\sum_{i > k}\\sigma_i(WL)^2` (:math:`LL^T = G`) from the eigenvalues of the smaller
    Gram: :math:`WGW^T` (``WG`` given), or :math:`R_WGR_W^T` with :math:`W = Q_WR_W` when ``W`` is
    tall (the same nonzero eigenvalues)."""
    m, n = W.shape
    if m <= n:
        M = WG @ W.T
    else:
        _, R = xp.linalg.qr(W)
        M = R @ G @ R.T
    lam = np.sort(_host(xp.linalg.eigvalsh((M + M.T) / 2)))
    return float(np.maximum(lam[: max(lam.size - k, 0)], 0.0).sum())
