r"""The interpolative decomposition: :math:`A \approx X\,A[I,:]` (rows) or :math:`A[:,J]\,Z` (columns)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat as aac

from . import _backend, _errors, _validation
from .bounds import Certificate, certify, selection_constant
from .cur import ROUNDING_FACTOR
from .metric import SELECTORS, Whitening, gram_svd, select, whitening

__all__ = ["IDResult", "interpolative", "SKELETONS", "AXES"]

#: Where the skeleton comes from: rows of ``A`` itself, or rows of its rank-``k`` truncation.
SKELETONS = ("rows", "truncation")
AXES = ("rows", "columns")


@dataclass(frozen=True)
class IDResult:
    r"""A row interpolative decomposition :math:`A \approx X S` (or its transpose for columns).

    Attributes
    ----------
    indices : int64 array, shape (k,)
        The skeleton rows ``I`` (columns ``J`` for ``axis="columns"``), in selection order.
    rest : int64 array, shape (m - k,)
        The other rows (columns), increasing.
    coefficients : array, shape (m - k, k)
        Interpolation coefficients of the ``rest`` rows: :math:`X[\mathrm{rest},:]`;
        :math:`X[I,:] = I_k` is not stored. For columns, those of the ``rest`` columns.
    skeleton : array, shape (k, n)
        ``A[I, :]`` (``skeleton="rows"``) or :math:`A_k[I,:]` (``"truncation"``); for
        ``axis="columns"`` the ``(m, k)`` skeleton columns. With ``metric`` it is the skeleton
        of the approximation of ``A`` (mapped back from the whitened problem).
    rank : int
    axis : {"rows", "columns"}
    method : str
        The selector.
    kind : {"rows", "truncation"}
        The skeleton's origin.
    eta : float
        :math:`\eta = \|U_k[I,:]^{-1}\|_2` of the basis the selection was made on.
    sigma_next : float
        :math:`\sigma_{k+1}` of ``A`` (of the whitened matrix with ``metric``); 0 at full rank.
    certificate : Certificate or None
        Set when the rank was chosen by a tolerance.
    """

    indices: Any
    rest: Any
    coefficients: Any
    skeleton: Any
    rank: int
    axis: str
    method: str
    kind: str
    eta: float
    sigma_next: float
    rounding: float = 0.0
    certificate: Certificate | None = None

    __array_ufunc__ = None

    @property
    def bound(self) -> float:
        r"""A priori bound on :math:`\|A - A'\|_2` (in the metric, when one was given).

        :math:`\eta\,(\sigma_{k+1} + \rho) + \eta\rho` for ``kind="rows"``;
        :math:`\sigma_{k+1} + \rho + \eta\rho`, the error of the truncation itself plus
        rounding, for ``kind="truncation"``. :math:`\rho` is :attr:`rounding`: the
        :attr:`curlinalg.CURResult.rounding` term :math:`4\max(m,n)\,u\,\sigma_1` (with
        ``basis="gram"``, at least :math:`4\sqrt{\max(m,n)\,u}\,\sigma_1`, the accuracy of
        singular values from a Gram matrix); the second :math:`\eta\rho` is the rounding of
        the coefficients, whose size is :math:`\eta`. The bound holds for the computed result
        at every rank, in float32 and float64.
        """
        base = self.sigma_next + self.rounding
        return (base if self.kind == "truncation" else self.eta * base) + self.eta * self.rounding

    @property
    def shape(self) -> tuple[int, int]:
        k, n = self.skeleton.shape if self.axis == "rows" else self.skeleton.shape[::-1]
        m = k + self.coefficients.shape[0]
        return (m, n) if self.axis == "rows" else (n, m)

    @property
    def parameters(self) -> int:
        """Numbers stored: ``k (m + n) - k^2`` (skeleton plus coefficients)."""
        return int(self.skeleton.shape[0] * self.skeleton.shape[1] + self.coefficients.shape[0] * self.rank)

    def interpolation_matrix(self) -> Any:
        """The full :math:`X` (``(m, k)`` for rows), with :math:`X[I,:] = I_k`."""
        xp = aac.array_namespace(self.coefficients)
        m = self.rank + self.coefficients.shape[0]
        X = xp.zeros((m, self.rank), dtype=self.coefficients.dtype, device=aac.device(self.coefficients))
        X[self.indices, :] = xp.eye(self.rank, dtype=X.dtype, device=aac.device(X))
        X[self.rest, :] = self.coefficients
        return X if self.axis == "rows" else X.T

    @property
    def C(self) -> Any:
        return self.interpolation_matrix() if self.axis == "rows" else self.skeleton

    @property
    def U(self) -> Any:
        xp = aac.array_namespace(self.skeleton)
        return xp.eye(self.rank, dtype=self.skeleton.dtype, device=aac.device(self.skeleton))

    @property
    def R(self) -> Any:
        return self.skeleton if self.axis == "rows" else self.interpolation_matrix()

    @property
    def factors(self) -> tuple[Any, Any]:
        """``(left, right)`` with the approximation ``left @ right`` (what :func:`certify` reads)."""
        return self.C, self.R

    def to_dense(self) -> Any:
        """The approximation as a dense array."""
        return self.C @ self.R


def _complement(idx: Any, size: int, xp: Any) -> Any:
    keep = xp.ones((size,), dtype=xp.bool, device=aac.device(idx))
    keep[idx] = False
    return xp.astype(xp.nonzero(keep)[0], xp.int64)


def _svd(B: Any, k: int, basis: str, xp: Any) -> tuple[Any, Any, Any]:
    if basis == "gram":
        return gram_svd(B, k)
    U, s, Vt = xp.linalg.svd(B, full_matrices=False)
    return U[:, :k], Vt[:k, :].T, s


def _row_id(
    A: Any, k: int, method: str, kind: str, basis: str, metric: Whitening | None, cross: Any, xp: Any
) -> IDResult:
    B = A if metric is None else metric.whiten(A, cross=cross)
    left, right, s = _svd(B, k, basis, xp)
    rows = select(left, method)
    rest = _complement(rows, B.shape[0], xp)
    if kind == "truncation":
        S = (xp.take(B, rows, axis=0) @ right) @ right.T
    else:
        S = xp.take(B, rows, axis=0)
    if metric is not None:
        S = xp.take(A, rows, axis=0) if kind == "rows" and cross is None else metric.unwhiten(S)
    coef = xp.linalg.solve(xp.take(left, rows, axis=0).T, xp.take(left, rest, axis=0).T).T
    sigma_next = _backend.to_float(s[k]) if s.shape[0] > k else 0.0
    return IDResult(
        rows, rest, coef, S, k, "rows", method, kind, selection_constant(left, rows), sigma_next,
        _rounding(B, _backend.to_float(s[0]), basis, xp),
    )


def _rounding(B: Any, norm: float, basis: str, xp: Any) -> float:
    """The rounding term of :attr:`IDResult.bound` (see there)."""
    scaled = max(B.shape) * float(xp.finfo(B.dtype).eps)
    if basis == "gram":
        scaled = max(scaled, math.sqrt(scaled))
    return ROUNDING_FACTOR * scaled * norm


def _transposed(res: IDResult) -> IDResult:
    return replace(res, skeleton=res.skeleton.T, axis="columns")


def interpolative(
    A: Any,
    /,
    *,
    rank: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    axis: str = "rows",
    method: str = "deim",
    skeleton: str = "rows",
    metric: Any = None,
    cross: Any = None,
    basis: str = "svd",
    rng: Any = None,
) -> IDResult:
    r"""Interpolative decomposition :math:`A \approx X\,A[I,:]` (rows) or :math:`A[:,J]\,Z` (columns).

    Parameters
    ----------
    A : array, shape (m, n)
        Real float32 or float64 matrix; numpy, torch or cupy (the result follows it).
    rank : int, optional
        ``1 <= rank <= min(m, n)``. With a tolerance too, it caps the rank.
    rtol, atol : float, optional
        Smallest rank whose a priori bound :attr:`IDResult.bound` (in the metric, when given)
        is at most :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\sigma_1)`; the result carries the
        certificate of :func:`curlinalg.certify` (without a metric). Whichever of ``rank`` and
        the tolerance is met first wins.
    axis : {"rows", "columns"}, default "rows"
        Row ID :math:`A \approx XA[I,:]`, or column ID of :math:`A^T`'s rows.
    method : {"deim", "qdeim", "maxvol"}, default "deim"
        Selector applied to the leading ``k`` left singular vectors :math:`U_k`.
    skeleton : {"rows", "truncation"}, default "rows"
        ``"rows"``: the skeleton is :math:`A[I,:]`. ``"truncation"``: the skeleton is
        :math:`A_k[I,:]` of the rank-``k`` truncated SVD, and the decomposition reproduces
        :math:`A_k` exactly in :math:`k(m + n) - k^2` numbers.
    metric : Whitening or array, optional
        Approximate in :math:`\|(A - A')L\|_F` (:mod:`curlinalg.metric`): a :class:`Whitening`
        or a Gram matrix :math:`H = LL^T` (factored by :func:`curlinalg.metric.whitening`).
        Rows only.
    cross : array, optional
        With ``metric``: the cross-Gram :math:`K = X_c^TX_d`, giving the reduced-rank
        regression of :meth:`Whitening.whiten`.
    basis : {"svd", "gram"}, default "svd"
        How :math:`U_k, V_k` are computed: a full SVD, or the eigendecomposition of the smaller
        Gram matrix (:func:`curlinalg.metric.gram_svd`; several times faster for tall or wide
        matrices, the leading vectors accurate in float64, but ``sigma_next`` only to about
        :math:`\sqrt{\epsilon}\,\sigma_1`).
    rng : None, int or Generator
        Seed of the certificate's probes (tolerances only).

    Returns
    -------
    IDResult

    Raises
    ------
    TypeError
        Not an array; integer, bool or complex dtype.
    ValueError
        Not 2-D, empty, NaN/Inf; rank out of range; no stopping rule; unknown option;
        ``metric`` with ``axis="columns"``.

    Notes
    -----
    With :math:`A = U\Sigma V^T` and :math:`I` chosen on :math:`U_k`,
    :math:`X = U_k U_k[I,:]^{-1}` makes :math:`XP^T` an oblique projector onto
    :math:`\mathrm{range}(U_k)`, so

    .. math:: \|A - XA[I,:]\|_2 = \|(I - XP^T)(I - U_kU_k^T)A\|_2 \le \eta\,\sigma_{k+1},
              \qquad \eta = \|U_k[I,:]^{-1}\|_2,

    (Sorensen & Embree 2016, Lemma 3.2), with :math:`\eta \le \sqrt{k(m-k)+1}`-type a
    priori bounds per selector (:func:`curlinalg.deim_bound` etc.). With
    ``skeleton="truncation"``, :math:`XA_k[I,:] = U_kU_k[I,:]^{-1}U_k[I,:]\Sigma_kV_k^T = A_k`:
    the error is that of the truncation, :math:`\sigma_{k+1}`, and the coefficient sizes are
    still bounded by :math:`\eta` (Cheng et al. 2005; the storage of Zhao et al. 2025).

    References
    ----------
    .. [1] H. Cheng, Z. Gimbutas, P.-G. Martinsson and V. Rokhlin, "On the compression of low
       rank matrices", SIAM J. Sci. Comput. 26(4), 2005.
    .. [2] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.
    .. [3] Z. Drmac and S. Gugercin, SIAM J. Sci. Comput. 38(2), 2016.
    .. [4] J. Zhao et al., "Pivoting Factorization", arXiv 2501.19090, 2025.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import interpolative
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 20))
    >>> res = interpolative(A, rank=5)
    >>> res.skeleton.shape, res.coefficients.shape, res.parameters
    ((5, 20), (25, 5), 225)
    >>> bool(np.allclose(res.to_dense(), A))
    True
    """
    xp = _validation.check_matrix(A)
    _validation.check_choice(axis, "axis", AXES)
    _validation.check_choice(method, "method", SELECTORS)
    _validation.check_choice(skeleton, "skeleton", SKELETONS)
    _validation.check_choice(basis, "basis", ("svd", "gram"))
    kmax = min(A.shape)
    if rank is not None:
        rank = _validation.check_rank(rank, kmax)
    rtol = _validation.check_tol(rtol, "rtol")
    atol = _validation.check_tol(atol, "atol")
    if rank is None and rtol is None and atol is None:
        raise ValueError(_errors.NO_STOP)
    if metric is not None:
        if axis != "rows":
            raise ValueError("metric= weighs the columns of A (its inputs); use axis='rows' with a metric")
        if not isinstance(metric, Whitening):
            metric = whitening(metric)
        A = xp.astype(A, xp.float64)
    elif cross is not None:
        raise ValueError("cross= only applies with metric=; pass the Gram of the inputs as metric=")
    work = A if axis == "rows" else A.T

    def at(k: int) -> IDResult:
        res = _row_id(work, k, method, skeleton, basis, metric, cross, xp)
        return res if axis == "rows" else _transposed(res)

    if rtol is None and atol is None:
        return at(rank)
    B = work if metric is None else metric.whiten(work, cross=cross)
    s = xp.linalg.svdvals(B)
    target = max(atol or 0.0, (rtol or 0.0) * _backend.to_float(s[0]))
    kcap = rank or kmax
    # No rank-k approximation beats sigma_{k+1}: start at the first rank the SVD allows.
    k = max(1, min(kcap, _backend.count_above(s, target)))
    res = at(k)
    while res.bound > target and k < kcap:
        k += 1
        res = at(k)
    if metric is None:
        res = replace(res, certificate=certify(A, res, ord=2, rng=rng))
    return res
