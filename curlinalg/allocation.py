r"""Error curves at every rank from one factorisation, and ranks for an exact budget.

Compressing many matrices to one total size asks, per matrix, for the error at *every* rank
(:func:`svd_error_curve`, :func:`cur_error_curve`: one factorisation each), then for the ranks
that minimise the summed error at the budget (:func:`allocate_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import array_api_compat as aac
import numpy as np

from . import _backend, _validation
from .metric import gram_svd, select

__all__ = ["Allocation", "allocate_ranks", "cur_error_curve", "svd_error_curve"]

_ERR_NEED = "cannot remove {need:,} parameters; at most {most:,} at rank 1 everywhere"
_ERR_EXCLUSIVE = (
    "exclusive must be a sequence of groups, each a sequence of at least two options, each a "
    "non-empty sequence of curve indices in [0, {count}), every index in at most one option of one "
    "group; got {got}"
)
_ERR_LENGTHS = (
    "errors and savings must pair up (one curve per matrix, equal lengths), got {a} curves and "
    "{b} savings; build savings[j][r - 1] for the same ranks as errors[j][r - 1]"
)


def _host(x: Any) -> np.ndarray:
    if aac.is_torch_array(x):
        return x.detach().cpu().numpy()
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def svd_error_curve(A: Any, /, *, max_rank: int | None = None, relative: bool = True) -> np.ndarray:
    r"""Squared error of the best rank-``r`` approximation of ``A``, for ``r = 1..max_rank``.

    Parameters
    ----------
    A : array, shape (m, n)
        Real or complex float matrix (float64 or complex128 recommended: the curve comes from a
        Gram matrix, :math:`AA^H` or :math:`A^HA`).
    max_rank : int, optional
        Last rank; default ``min(m, n) - 1``. May be 0 (empty curve).
    relative : bool, default True
        Divide by :math:`\|A\|_F^2`.

    Returns
    -------
    numpy.ndarray, shape (max_rank,)
        ``curve[r - 1]`` :math:`= \sum_{i > r}\sigma_i^2` (relative), non-increasing.

    Notes
    -----
    One symmetric eigendecomposition of the smaller Gram matrix :math:`AA^T` or :math:`A^TA`
    gives every :math:`\sigma_i^2` (clamped at 0); the tail sums are cumulative sums. By
    Eckart-Young-Mirsky this is the error of every rank at once. Applied to :math:`B = WL`
    (:mod:`curlinalg.metric`) it is the activation-weighted error, which the interpolative
    decomposition with ``skeleton="truncation"`` attains.

    References
    ----------
    .. [1] C. Eckart and G. Young, "The approximation of one matrix by another of lower
       rank", Psychometrika 1(3), 1936.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import svd_error_curve
    >>> svd_error_curve(np.diag([3.0, 2.0, 1.0]), relative=False)
    array([5., 1.])
    """
    xp = _validation.check_matrix(A)
    m, n = A.shape
    max_rank = min(m, n) - 1 if max_rank is None else _validation.check_int(max_rank, "max_rank", minimum=0)
    Ah = _backend.ctranspose(A)
    G = A @ Ah if m <= n else Ah @ A
    vals = xp.linalg.eigvalsh(G)
    sq = _host(xp.clip(xp.flip(vals, axis=-1), min=0.0))
    tail = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    curve = tail[1 : max_rank + 1]
    return curve / max(float(sq.sum()), 1e-300) if relative else curve


def cur_error_curve(A: Any, /, *, max_rank: int, relative: bool = True) -> np.ndarray:
    r"""Squared Frobenius error of the DEIM-CUR with the optimal core, at every rank ``1..max_rank``.

    Parameters
    ----------
    A : array, shape (m, n)
        Real or complex float matrix (float64 or complex128 recommended).
    max_rank : int
        Last rank, ``<= min(m, n)``; 0 gives an empty curve.
    relative : bool, default True
        Divide by :math:`\|A\|_F^2`.

    Returns
    -------
    numpy.ndarray, shape (max_rank,)

    Notes
    -----
    DEIM selections are nested: the first ``r`` picks on :math:`U_{r^*}` are the rank-``r``
    picks. With orthonormal bases :math:`Q_C` of :math:`A[:,J]` and :math:`Q_R` of
    :math:`A[I,:]^T` (one QR each, in selection order), the rank-``r`` CUR with
    :math:`U = C^+AR^+` has error
    :math:`\|A\|_F^2 - \|(Q_C^TAQ_R)_{:r,:r}\|_F^2`: every rank from one pass.

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import cur_error_curve
    >>> A = np.random.default_rng(0).standard_normal((8, 6))
    >>> curve = cur_error_curve(A, max_rank=6)
    >>> bool(abs(curve[-1]) < 1e-12)
    True
    """
    xp = _validation.check_matrix(A)
    max_rank = _validation.check_int(max_rank, "max_rank", minimum=0)
    if max_rank < 1:
        return np.zeros(0)
    _validation.check_rank(max_rank, min(A.shape))
    P, Q, _ = gram_svd(A, max_rank)
    rows = select(P, "deim")
    Qc = xp.linalg.qr(xp.take(A, select(Q, "deim"), axis=1)).Q
    Qr = xp.linalg.qr(_backend.ctranspose(xp.take(A, rows, axis=0))).Q
    B2 = _backend.abs2(_backend.ctranspose(Qc) @ A @ Qr)
    kept = xp.linalg.diagonal(xp.cumulative_sum(xp.cumulative_sum(B2, axis=0), axis=1))
    total = float(xp.sum(_backend.abs2(A)))
    err = _host(xp.clip(total - kept, min=0.0))
    return err / max(total, 1e-300) if relative else err


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate_ranks`.

    Attributes
    ----------
    ranks : list of int
        Per matrix; 0 means "keep it as it is".
    slack : int
        Savings beyond ``need`` (``>= 0``), less than the cheapest rank step left.
    error : float
        Sum of the chosen errors (0 for matrices kept).
    """

    ranks: list
    slack: int
    error: float


def allocate_ranks(errors: Sequence[Any], savings: Sequence[Any], /, *, need: int,
                   exclusive: Sequence[Sequence[Sequence[int]]] = ()) -> Allocation:
    r"""Per-matrix ranks saving at least ``need`` at the least total error.

    Parameters
    ----------
    errors : sequence of 1-D arrays
        ``errors[j][r - 1]``: error of matrix ``j`` at rank ``r`` (e.g. from
        :func:`svd_error_curve`); keeping the matrix has error 0.
    savings : sequence of 1-D int arrays
        ``savings[j][r - 1]``: what rank ``r`` saves (parameters, bytes, flops), decreasing
        in ``r``.
    need : int
        Total saving required, ``> 0``.
    exclusive : sequence of groups, optional
        Alternative ways of compressing one thing: ``exclusive[g]`` is a sequence of options,
        each a sequence of curve indices (e.g. an MLP kept as a structured unit, one curve,
        or factored matrix by matrix, three curves). In each group the curves of at most one
        option get ranks; the others stay whole. An index may appear in one option of one
        group; curves in no group are free as before.

    Returns
    -------
    Allocation

    Raises
    ------
    ValueError
        Curves and savings do not pair up, ``exclusive`` is malformed, or even rank 1
        everywhere (the most saving option of each group) cannot save ``need``.

    Notes
    -----
    Lagrangian relaxation: for a multiplier :math:`\mu` each matrix independently takes the
    option minimising :math:`e_j(r) - \mu\,s_j(r)` (or stays whole); :math:`\mu` is bisected to
    the smallest value whose total saving reaches ``need``. The overshoot is then given back
    greedily, one rank step (or a return to whole) at a time, best error decrease per unit of
    saving first, while the saving stays ``>= need``: the budget is met to within one step.

    With ``exclusive``, a group's term of the Lagrangian is the least over its options of the
    options' summed terms (each curve of an option at its own best rank, or whole), so each
    group takes the option that costs least error per unit of saving at the multiplier; the
    saving at the minimiser still grows with :math:`\mu`, so the bisection is unchanged. The
    give-back only moves curves that already have a rank (up one step, or to whole), so it
    never starts a second option of a group. The relaxation has a duality gap between the
    breakpoints of :math:`\mu` that a choice among options widens (a group may overshoot by
    a whole option), so each group then tries its other options in turn, each allocated
    alone (this function, without groups) to what the group must save with the rest held,
    and keeps one that lowers the total error.

    References
    ----------
    .. [1] H. Everett, "Generalized Lagrange multiplier method for solving problems of optimum
       allocation of resources", Operations Research 11(3), 1963.
    .. [2] Y. Shoham and A. Gersho, "Efficient bit allocation for an arbitrary set of
       quantizers", IEEE Trans. ASSP 36(9), 1988.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import allocate_ranks
    >>> errs = [np.array([4.0, 1.0, 0.0]), np.array([1.0, 0.5, 0.0])]
    >>> saves = [np.array([30, 20, 10]), np.array([30, 20, 10])]
    >>> allocate_ranks(errs, saves, need=40).ranks   # saves 10 + 30 at error 0 + 1
    [3, 1]

    One thing compressed either as curve 0 or as curves 1 and 2, not both:

    >>> errs = [np.array([2.0, 0.3]), np.array([1.0, 0.2]), np.array([1.0, 0.3])]
    >>> saves = [np.array([40, 20]), np.array([20, 10]), np.array([20, 10])]
    >>> allocate_ranks(errs, saves, need=30).ranks     # curve 0 with curve 1: error 0.5
    [2, 2, 0]
    >>> allocate_ranks(errs, saves, need=30, exclusive=[[[0], [1, 2]]]).ranks   # error 1.2
    [0, 2, 1]
    """
    errors = [np.asarray(e, dtype=np.float64) for e in errors]
    saved = [np.asarray(s, dtype=np.int64) for s in savings]
    if len(errors) != len(saved) or any(len(e) != len(s) for e, s in zip(errors, saved)):
        raise ValueError(_ERR_LENGTHS.format(a=len(errors), b=len(saved)))
    need = _validation.check_int(int(need), "need", minimum=1)
    groups = _check_exclusive(exclusive, len(errors))
    floor, most = _most(saved, groups)
    if most < need:
        raise ValueError(_ERR_NEED.format(need=need, most=most))
    ranks, total = _bisect(errors, saved, need, floor, most, groups)
    ranks, total = _give_back(errors, saved, ranks, total, need)
    if groups:
        ranks, total = _switch(errors, saved, ranks, total, need, groups)
    err = sum(float(e[r - 1]) for e, r in zip(errors, ranks) if r)
    return Allocation(ranks, total - need, err)


def _check_exclusive(exclusive, count: int) -> list:
    """``exclusive`` as a list of groups of lists of ints, checked (``_ERR_EXCLUSIVE``)."""
    try:
        groups = [[[int(j) for j in option] for option in group] for group in exclusive]
    except TypeError:
        raise ValueError(_ERR_EXCLUSIVE.format(count=count, got=repr(exclusive))) from None
    flat = [j for group in groups for option in group for j in option]
    if (any(len(group) < 2 or not all(group) for group in groups) or len(set(flat)) != len(flat)
            or any(not 0 <= j < count for j in flat)):
        raise ValueError(_ERR_EXCLUSIVE.format(count=count, got=repr(exclusive)))
    return groups


def _most(saved, groups):
    """``(ranks, total)``: rank 1 on every free curve and on the most saving option of each group."""
    ranks = [1 if len(s) else 0 for s in saved]
    for group in groups:
        best = max(group, key=lambda option: sum(int(saved[j][0]) for j in option if len(saved[j])))
        for option in group:
            if option is not best:
                for j in option:
                    ranks[j] = 0
    return ranks, sum(int(s[r - 1]) for s, r in zip(saved, ranks) if r)


def _best(e, s, mu):
    """``(rank, term)``: the rank minimising ``e - mu s`` when that is negative, else ``(0, 0)``."""
    if not len(e):
        return 0, 0.0
    obj = e - mu * s
    k = int(np.argmin(obj))
    return (k + 1, float(obj[k])) if obj[k] < 0.0 else (0, 0.0)


def _choose(errors, saved, mu, groups=()):
    ranks = []
    terms = []
    for e, s in zip(errors, saved):
        r, term = _best(e, s, mu)
        ranks.append(r)
        terms.append(term)
    for group in groups:  # the option of least summed term keeps its ranks, the others stay whole
        values = [sum(terms[j] for j in option) for option in group]
        keep = int(np.argmin(values))
        for o, option in enumerate(group):
            if o != keep:
                for j in option:
                    ranks[j] = 0
    return ranks, sum(int(s[r - 1]) for s, r in zip(saved, ranks) if r)


def _bisect(errors, saved, need, floor, most, groups):
    lo, hi = 0.0, 1.0
    while _choose(errors, saved, hi, groups)[1] < need:
        hi *= 2.0
        if hi > 1e300:
            break
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _choose(errors, saved, mid, groups)[1] >= need:
            hi = mid
        else:
            lo = mid
    ranks, total = _choose(errors, saved, hi, groups)
    if total < need:
        return floor, most
    return ranks, total


def _switch(errors, saved, ranks, total, need, groups):
    """Each group in turn tries its other options, allocated alone to what the group must save
    with every other curve held; the first one of lower error is kept."""
    ranks = list(ranks)
    for group in groups:
        members = [j for option in group for j in option]
        g_saved = sum(int(saved[j][ranks[j] - 1]) for j in members if ranks[j])
        g_error = sum(float(errors[j][ranks[j] - 1]) for j in members if ranks[j])
        required = need - (total - g_saved)
        if required <= 0:
            continue
        for option in group:
            if any(ranks[j] for j in option) or sum(int(saved[j][0]) for j in option if len(saved[j])) < required:
                continue
            sub = allocate_ranks([errors[j] for j in option], [saved[j] for j in option], need=required)
            if sub.error < g_error:
                for j in members:
                    ranks[j] = 0
                for j, r in zip(option, sub.ranks):
                    ranks[j] = r
                total += required + sub.slack - g_saved
                g_saved, g_error = required + sub.slack, sub.error
    return ranks, total


def _give_back(errors, saved, ranks, total, need):
    ranks = list(ranks)
    while True:
        best = None
        for j, (e, s) in enumerate(zip(errors, saved)):
            r = ranks[j]
            if r == 0:
                continue
            options = [(r + 1, e[r - 1] - e[r], int(s[r - 1] - s[r]))] if r < len(e) else []
            options.append((0, e[r - 1], int(s[r - 1])))
            for new_r, gain, price in options:
                if price <= 0 or total - price < need:
                    continue
                ratio = gain / price
                if best is None or ratio > best[0]:
                    best = (ratio, j, new_r, price)
        if best is None:
            return ranks, total
        _, j, new_r, price = best
        ranks[j] = new_r
        total -= price
