"""Cores: how the middle factor ``U`` of ``C U R`` is formed from the selected rows and columns."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _backend, _validation
from .operands import Operand, as_operand

__all__ = ["CoreFactors", "optimal_core", "cross_core", "optimal_core_factors", "cross_core_factors"]


class CoreFactors(NamedTuple):
    r"""A core :math:`U` together with a stable factorisation of :math:`CUR = \mathrm{left}\cdot\mathrm{right}`.

    Attributes
    ----------
    U : array, shape (c, r)
        The core in terms of ``C`` and ``R``.
    left : array, shape (m, t)
        Left factor of :math:`CUR`; orthonormal columns for the optimal core.
    right : array, shape (t, n)
        Right factor; :math:`CUR = \mathrm{left}\,\mathrm{right}` in exact arithmetic.
    rank : int
        ``t``, the numerical rank kept by the truncation.
    """

    U: Any
    left: Any
    right: Any
    rank: int


def _default_rtol(shape: tuple[int, ...], dtype: Any, xp: Any) -> float:
    return max(shape) * float(xp.finfo(dtype).eps)


def _truncated_range(X: Any, rtol: float, xp: Any) -> tuple[Any, Any, Any]:
    """``X ~ Q diag(s) V^H`` keeping the singular values above ``rtol * s_max`` (QR, then an SVD
    of the small triangular factor)."""
    Q, T = xp.linalg.qr(X)
    Ut, st, Vtt = xp.linalg.svd(T, full_matrices=False)
    t = _kept(st, rtol, xp)
    return Q @ Ut[:, :t], st[:t], _backend.ctranspose(Vtt[:t, :])


def _kept(s: Any, rtol: float, xp: Any) -> int:
    """How many of the descending singular values ``s`` exceed ``rtol`` times the largest."""
    top = _backend.to_float(s[0]) if s.shape[0] else 0.0
    return _backend.count_above(s, rtol * top) if top > 0 else 0


def optimal_core_factors(A: Any, C: Any, R: Any, /, *, rtol: float | None = None) -> CoreFactors:
    r"""The optimal core :math:`U = C^+AR^+` and the stable form of :math:`CUR`.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    C : array, shape (m, c)
        Selected columns of ``A``.
    R : array, shape (r, n)
        Selected rows of ``A``.
    rtol : float, optional
        Singular values of ``C`` and ``R`` below ``rtol`` times the largest are dropped (their
        numerical rank); default ``max(m, n) * eps``.

    Returns
    -------
    CoreFactors
        ``U``, and ``left = Q_C`` (orthonormal basis of the numerical range of ``C``),
        ``right = (Q_C^H A Q_R) Q_R^H`` (:math:`^H` the conjugate transpose; the transpose for
        real input).

    Raises
    ------
    TypeError
        ``A``, ``C`` and ``R`` mix real and complex dtypes (the message names each).

    Notes
    -----
    With truncated factorisations :math:`C \approx Q_C S_C V_C^H` and
    :math:`R^H \approx Q_R S_R V_R^H`,

    .. math:: U = V_CS_C^{-1}(Q_C^HAQ_R)S_R^{-1}V_R^H, \qquad CUR = Q_C(Q_C^HAQ_R)Q_R^H.

    Evaluating :math:`CUR` through ``left @ right`` costs no division by a small singular
    value, so its rounding error is :math:`O(u\|A\|)` whatever the conditioning of ``C`` and
    ``R``; the product ``C @ (U @ R)`` loses up to :math:`u\|A\|^2/\sigma_{\min}(C)` (it is what
    made earlier errors grow past the numerical rank). Dropping the singular values of ``C`` below
    :math:`\tau\|C\|` perturbs :math:`\|(I - Q_CQ_C^T)A\|` by at most :math:`\eta_q\tau\|C\|`
    (write :math:`A = CY + E` with :math:`\|Y\| \le \eta_q`), which the rounding term of
    :attr:`curlinalg.CURResult.bound` covers.
    """
    op = as_operand(A)
    if op.kind == "dense":
        _backend.namespace(A, C, R)
    _validation.check_same_field(A=op.dtype, C=C.dtype, R=R.dtype)
    if op.kind != "dense":  # sparse or lazy cuts of the input: gather them (k columns, k rows)
        C, R = (np.asarray(X.toarray() if hasattr(X, "toarray") else X) for X in (C, R))
    return _optimal_factors(op, C, R, rtol)


def _optimal_factors(
    op: Operand, C: Any, R: Any, rtol: float | None, project: Any = None
) -> CoreFactors:
    """:func:`optimal_core_factors` with dense ``C``, ``R`` and ``A`` given by its products.

    ``project(Q_C, Q_R)`` replaces :math:`Q_C^TAQ_R` (one pass over ``A``) when given: the
    sketch core projects an approximation of ``A`` instead.
    """
    xp = op.xp
    if rtol is None:
        rtol = _default_rtol(op.shape, op.dtype, xp)
    H = _backend.ctranspose
    Qc, sc, Vc = _truncated_range(C, rtol, xp)
    Qr, sr, Vr = _truncated_range(H(R), rtol, xp)
    M = H(op.rmatmat(Qc)) @ Qr if project is None else project(Qc, Qr)
    U = (Vc / sc[None, :]) @ M @ H(Vr / sr[None, :])
    return CoreFactors(U, Qc, M @ H(Qr), min(Qc.shape[1], Qr.shape[1]))


def cross_core_factors(
    A: Any, rows: Any, cols: Any, /, *, rtol: float | None = None
) -> CoreFactors:
    r"""The cross core :math:`U = W^+_\epsilon`, :math:`W = A[\mathrm{rows},\mathrm{cols}]`, and
    the factors :math:`CUR = (CV_WS_W^{-1})(U_W^HR)`.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    rows, cols : int arrays
    rtol : float, optional
        Singular values of ``W`` below ``rtol * sigma_max(W)`` are dropped; default
        ``max(r, c) * eps``.

    Returns
    -------
    CoreFactors

    Notes
    -----
    Each factor is formed before the two are multiplied, so the small singular values of ``W``
    scale one factor once instead of the whole product (the stabilised evaluation of Park &
    Nakatsukasa 2024).

    References
    ----------
    .. [1] T. Park and Y. Nakatsukasa, "Accuracy and stability of CUR decompositions with
       oversampling", arXiv:2405.06375, 2024.
    """
    op = as_operand(A)
    if op.kind == "dense":
        _backend.namespace(A, rows, cols)
    return _cross_factors(op, rows, cols, rtol)


def _cross_factors(op: Operand, rows: Any, cols: Any, rtol: float | None) -> CoreFactors:
    """:func:`cross_core_factors` for any operand."""
    xp = op.xp
    C = op.dense_columns(cols)
    R = op.dense_rows(rows)
    W = xp.take(R, cols, axis=1)
    if rtol is None:
        rtol = _default_rtol(W.shape, op.dtype, xp)
    Uw, sw, Vwt = xp.linalg.svd(W, full_matrices=False)
    t = _kept(sw, rtol, xp)
    Vw = _backend.ctranspose(Vwt[:t, :]) / sw[None, :t]
    Uh = _backend.ctranspose(Uw[:, :t])
    return CoreFactors(Vw @ Uh, C @ Vw, Uh @ R, t)


def optimal_core(A: Any, C: Any, R: Any, /) -> Any:
    r"""The Frobenius- and 2-norm optimal core :math:`U = C^+ A R^+`.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    C : array, shape (m, c)
        Selected columns of ``A``.
    R : array, shape (r, n)
        Selected rows of ``A``.

    Returns
    -------
    U : array, shape (c, r)

    Raises
    ------
    TypeError
        ``A``, ``C`` and ``R`` mix real and complex dtypes (the message names each).

    Notes
    -----
    With thin QR factorizations :math:`C = Q_CT_C` and :math:`R^H = Q_RT_R` (:math:`^H` the
    conjugate transpose; the transpose for real input),

    .. math:: U = T_C^{+}\,(Q_C^H A Q_R)\,T_R^{+H},

    which never squares a condition number (unlike normal equations). The small triangular
    factors are pseudo-inverted with singular values below :math:`\max(m,n)\,\epsilon\,\|T\|`
    dropped, so rank-deficient selections give a finite core. :math:`CUR = Q_CQ_C^TAQ_RQ_R^T` is
    the best approximation with these columns and rows, and satisfies
    :math:`\|A - CUR\| \le \eta_p\|A - U_kU_k^TA\| + \eta_q\|A - AV_kV_k^T\|` for any unitarily
    invariant norm (Sorensen & Embree 2016, Theorem 4.1).

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.
    .. [2] G. W. Stewart, "Four algorithms for the efficient computation of truncated pivoted QR
       approximations to a sparse matrix", Numer. Math. 83, 1999.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.cores import optimal_core
    >>> A = np.random.default_rng(0).standard_normal((6, 2)) @ np.ones((2, 5))
    >>> U = optimal_core(A, A[:, [0, 1]], A[[0, 1], :])
    >>> bool(np.allclose(A[:, [0, 1]] @ U @ A[[0, 1], :], A))
    True
    """
    return optimal_core_factors(A, C, R).U


def cross_core(A: Any, rows: Any, cols: Any, /, *, rtol: float | None = None) -> Any:
    r"""The cross (skeleton) core :math:`U = A[\mathrm{rows}, \mathrm{cols}]^+_\epsilon`.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    rows, cols : int arrays
        Selected row and column indices.
    rtol : float, optional
        Singular values of the intersection below ``rtol * sigma_max`` are dropped (the
        :math:`\epsilon`-pseudo-inverse); default ``max(r, c) * eps``.

    Returns
    -------
    U : array, shape (len(cols), len(rows))

    Notes
    -----
    Costs only the ``r x c`` intersection :math:`W`, never a pass over ``A``; the price is
    accuracy: :math:`\|A - CW^+R\|` can exceed the optimal core's error by a factor that grows
    with :math:`\|W^+\|`, which the truncation caps (Goreinov, Tyrtyshnikov & Zamarashkin 1997;
    for the :math:`\epsilon`-pseudo-inverse see Chiu & Demanet 2013).

    References
    ----------
    .. [1] S. A. Goreinov, E. E. Tyrtyshnikov and N. L. Zamarashkin, "A theory of pseudoskeleton
       approximations", Linear Algebra Appl. 261, 1997.
    .. [2] J. Chiu and L. Demanet, "Sublinear randomized algorithms for skeleton
       decompositions", SIAM J. Matrix Anal. Appl. 34(3), 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.cores import cross_core
    >>> A = np.random.default_rng(0).standard_normal((6, 2)) @ np.ones((2, 5))
    >>> A[:, 1] += 1.0
    >>> U = cross_core(A, np.array([0, 1]), np.array([0, 1]))
    >>> bool(np.allclose(A[:, [0, 1]] @ U @ A[[0, 1], :], A))
    True
    """
    return cross_core_factors(A, rows, cols, rtol=rtol).U
