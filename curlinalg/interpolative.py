r"""The interpolative decomposition: :math:`A \approx X\,A[I,:]` (rows) or :math:`A[:,J]\,Z` (columns)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat as aac

from . import _backend, _errors, _validation
from .bounds import Certificate, selection_constant
from .results import ROUNDING_FACTOR, rounding_term
from .metric import SELECTORS, Whitening, gram_svd, select, whitening
from .operands import Operand, as_operand
from .sketch import RESIDUAL_FAILURE_PROBABILITY, TruncatedSVD, _truncated_svd
from .tolerance import ADVICE, ToleranceSearch

__all__ = ["IDResult", "id_to_svd", "interpolative", "SKELETONS", "AXES"]

#: Where the skeleton comes from: rows of ``A`` itself, or rows of its rank-``k`` truncation.
SKELETONS = ("rows", "truncation")
AXES = ("rows", "columns")
BASES = ("auto", "svd", "gram", "randomized")
#: The unreachable-tolerance advice with ``basis="gram"``, whose singular values (hence ranks)
#: resolve only down to about :math:`\sqrt{\max(m, n)\,u}\,\sigma_1`.
GRAM_ADVICE = (
    "basis='gram' resolves singular values only down to about sqrt(max(m, n) eps) ||A||_2: "
    "use basis='svd' for a smaller tolerance"
)
#: Oversampling and power iterations of ``basis="randomized"``.
OVERSAMPLE, POWER_ITERS = 10, 2


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
        Set when the rank was chosen by a tolerance: the certified bound that met it (of the
        whitened problem with a metric, i.e. the error in the metric).
    failure_probability : float
        Probability that :attr:`bound` fails: 0 for an exact basis; for ``basis="randomized"``
        that of the sketch's certified residual (``sigma_next`` is then the sketch's
        :math:`\hat\sigma_{k+1}` plus that residual).
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
    failure_probability: float = 0.0

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
    return U[:, :k], _backend.ctranspose(Vt[:k, :]), s


def _row_id(
    B: Any, k: int, method: str, kind: str, basis: str, xp: Any,
    dec: tuple[Any, Any, Any] | None = None,
) -> IDResult:
    """Row ID of ``B`` at rank ``k`` (the whitened matrix with a metric: see
    :func:`_unwhitened`); ``dec`` is its decomposition with at least ``k`` vectors, when the
    caller (tolerance mode, trying several ranks) has it already."""
    left, right, s = _svd(B, k, basis, xp) if dec is None else dec
    left, right = left[:, :k], right[:, :k]
    rows = select(left, method)
    rest, coef = _interpolation(left, rows, xp)
    S = xp.take(B, rows, axis=0)
    if kind == "truncation":
        S = (S @ right) @ _backend.ctranspose(right)
    sigma_next = _backend.to_float(s[k]) if s.shape[0] > k else 0.0
    return IDResult(
        rows, rest, coef, S, k, "rows", method, kind, selection_constant(left, rows), sigma_next,
        _rounding(B, _backend.to_float(s[0]), basis, xp),
    )


def _unwhitened(res: IDResult, A: Any, metric: Whitening, cross: Any, xp: Any) -> IDResult:
    """The ID of the whitened matrix as an ID of ``A``: the same rows and coefficients, the
    skeleton mapped back (rows of ``A`` itself when they are its rows)."""
    if res.kind == "rows" and cross is None:
        return replace(res, skeleton=xp.take(A, res.indices, axis=0))
    return replace(res, skeleton=metric.unwhiten(res.skeleton))


def _interpolation(left: Any, rows: Any, xp: Any) -> tuple[Any, Any]:
    r"""The rows not chosen, and their coefficients :math:`X = U_k[\mathrm{rest}]\,U_k[I]^{-1}`."""
    rest = _complement(rows, left.shape[0], xp)
    coef = xp.linalg.solve(xp.take(left, rows, axis=0).T, xp.take(left, rest, axis=0).T).T
    return rest, coef


def _rounding(B: Any, norm: float, basis: str, xp: Any) -> float:
    """The rounding term of :attr:`IDResult.bound` (see there); ``B`` gives shape and dtype."""
    eps = _backend.rounding_eps(B.dtype, xp)
    if basis == "gram":  # singular values from a Gram matrix: about sqrt(max(m, n) u) accurate
        return ROUNDING_FACTOR * max(max(B.shape) * eps, math.sqrt(max(B.shape) * eps)) * norm
    return rounding_term(B.shape, eps, norm)


def _transposed(res: IDResult) -> IDResult:
    return replace(res, skeleton=res.skeleton.T, axis="columns")


class _Adjoint(Operand):
    r""":math:`A^T` of an operand, for the column ID: products and cuts swap sides.

    The plain transpose, also for complex ``A`` (:math:`A^TX = \overline{A^H\bar X}`), as the
    dense path's ``A.T``: the column ID :math:`A \approx A[:,J]\,Z` is the row ID of
    :math:`A^T` with :math:`Z = X^T`.
    """

    def __init__(self, op: Operand):
        self.op, self.xp, self.kind, self.like = op, op.xp, op.kind, op.like
        self.shape, self.dtype = op.shape[::-1], op.dtype

    @property
    def densifiable(self) -> bool:
        return self.op.densifiable

    def matmat(self, X: Any) -> Any:
        return _backend.conj(self.op.rmatmat(_backend.conj(X)))

    def rmatmat(self, Y: Any) -> Any:
        return _backend.conj(self.op.matmat(_backend.conj(Y)))

    def dense_rows(self, I: Any) -> Any:
        return self.op.dense_columns(I).T

    def dense_columns(self, J: Any) -> Any:
        return self.op.dense_rows(J).T

    def dense(self) -> Any:
        return self.op.dense().T


def _operand_row_id(op: Operand, svd: TruncatedSVD, k: int, method: str, kind: str) -> IDResult:
    """Row ID of an operand from (the first ``k`` vectors of) a truncated SVD of it."""
    xp = op.xp
    left, right = svd.U[:, :k], svd.V[:, :k]
    rows = select(left, method)
    rest, coef = _interpolation(left, rows, xp)
    S = op.dense_rows(rows)
    if kind == "truncation":
        S = (S @ right) @ _backend.ctranspose(right)
    norm = _backend.to_float(svd.s[0]) + svd.residual
    randomized = svd.kind == "randomized"
    return IDResult(
        rows, rest, coef, S, k, "rows", method, kind, selection_constant(left, rows), svd.tail(k),
        _rounding(op, norm, "svd", xp),
        failure_probability=RESIDUAL_FAILURE_PROBABILITY if randomized else 0.0,
    )


def _operand_search(
    op: Operand, axis: str, method: str, kind: str, basis: str, rng: Any,
) -> tuple[Any, Any]:
    """``(svd_at, build)`` for a sparse, matrix-free or dask input (or a dense one with
    ``basis="randomized"``): truncated SVDs of it (exact when it densifies cheaply), and the ID
    at rank ``k`` from one."""
    work = op if axis == "rows" else _Adjoint(op)
    svd_kind = "exact" if basis != "randomized" and op.densifiable else "randomized"

    def svd_at(size: int) -> TruncatedSVD:
        return _truncated_svd(work, size, svd_kind, OVERSAMPLE, POWER_ITERS, rng, work.xp)

    def build(svd: TruncatedSVD, k: int, **_: Any) -> IDResult:
        res = _operand_row_id(work, svd, k, method, kind)
        return res if axis == "rows" else _transposed(res)

    return svd_at, build


def _dense_search(B: Any, axis: str, method: str, kind: str, basis: str, xp: Any) -> tuple[Any, Any]:
    r"""``(svd_at, build)`` for a dense ``B`` (``A``, ``A^T`` for columns, or the whitened
    matrix): one decomposition, whose singular values are lowered by the Gram route's accuracy
    :math:`\rho` (:math:`\sqrt{s^2 - \rho^2}`) so that they stay lower bounds of the true ones."""
    raw: list[Any] = []

    def svd_at(size: int) -> TruncatedSVD:
        left, right, s = _svd(B, size, basis, xp)
        raw.append(s)
        if basis == "gram":
            rho = _rounding(B, _backend.to_float(s[0]), basis, xp)
            s = xp.sqrt(xp.clip(s * s - rho * rho, min=0.0))
        return TruncatedSVD(left, s, right, "exact")

    def build(svd: TruncatedSVD, k: int, **_: Any) -> IDResult:
        res = _row_id(B, k, method, kind, basis, xp, (svd.U, svd.V, raw[-1]))
        return res if axis == "rows" else _transposed(res)

    return svd_at, build


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
    basis: str = "auto",
    rng: Any = None,
) -> IDResult:
    r"""Interpolative decomposition :math:`A \approx X\,A[I,:]` (rows) or :math:`A[:,J]\,Z` (columns).

    Parameters
    ----------
    A : array, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        float32, float64, complex64 or complex128 matrix. numpy, torch or cupy arrays: the
        result follows them. Sparse, matrix-free and dask input (no ``metric``): only products
        with ``A`` and :math:`A^H` and the ``k`` skeleton rows (:math:`(A^HE_I)^H` for an
        operator) are asked of it; the result is dense numpy.
    rank : int, optional
        ``1 <= rank <= min(m, n)``. With a tolerance too, it caps the rank.
    rtol, atol : float, optional
        Find the smallest rank whose certified bound on :math:`\|A - A'\|_2` (the result's
        ``certificate``, from :func:`curlinalg.certify`; with a metric, that of the whitened
        problem) is at most :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\|A\|_2)`, within
        :data:`curlinalg.tolerance.TOLERANCE_RANK_FACTOR`: the search of :func:`curlinalg.cur`,
        on every basis and input kind. The a priori :attr:`IDResult.bound` carries a worst-case
        rounding term and the factor :math:`\eta`, so it may exceed the target. Whichever of
        ``rank`` and the tolerance is met first wins.
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
    basis : {"auto", "svd", "gram", "randomized"}, default "auto"
        How :math:`U_k, V_k` are computed: a full SVD; the eigendecomposition of the smaller
        Gram matrix (:func:`curlinalg.metric.gram_svd`; several times faster for tall or wide
        matrices, the leading vectors accurate in float64, but ``sigma_next`` only to about
        :math:`\sqrt{\epsilon}\,\sigma_1`); or a randomized SVD (10 extra columns, 2 power
        iterations, :func:`curlinalg.sketch.truncated_svd`) whose certified residual is part of
        ``sigma_next``, so the bound holds with probability ``1 - failure_probability``.
        ``"auto"`` is ``"svd"`` for dense arrays and for other inputs that densify cheaply
        (at most :data:`curlinalg.operands.DENSIFY_MAX_ENTRIES` entries), ``"randomized"``
        otherwise.
    rng : None, int or Generator
        Seed of the randomized basis and of the certificate's probes.

    Returns
    -------
    IDResult

    Raises
    ------
    TypeError
        Not an array; integer, bool or half-precision dtype; a complex ``A``, ``metric`` or
        ``cross`` with ``metric=`` (the activation metric is real-only).
    ValueError
        Not 2-D, empty, NaN/Inf; rank out of range; no stopping rule; unknown option;
        ``metric`` with ``axis="columns"``.

    Warns
    -----
    CURWarning
        The tolerance cannot be reached below the numerical rank (or, with ``basis="gram"``,
        the rank that basis resolves): the result is the rank with the smallest certified
        error, which the message gives; full rank is never returned silently.

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

    Tolerance mode reads the rank off the singular values (no rank ``k`` with
    :math:`\sigma_{k+1}` above the target can meet it), certifies the ID there and moves the
    rank by the observed ratio of certified error to :math:`\sigma_{k+1}`, then bisects: the
    returned rank is at most :data:`~curlinalg.tolerance.TOLERANCE_RANK_FACTOR` times one more
    than a rank known to fail (:func:`curlinalg.cur`, Notes). A randomized basis is grown until
    its singular values fall below the target. With ``basis="gram"`` the singular values are
    only known to :math:`\rho = 4\sqrt{\max(m,n)\,u}\,\sigma_1`; the search reads
    :math:`\sqrt{s^2 - \rho^2}`, lower bounds of the true ones, and stops at the last rank
    they resolve.

    Complex input: the column ID is the row ID of the plain transpose :math:`A^T` (so
    :math:`Z = X^T`), the truncation skeleton is :math:`A[I,:]V_kV_k^H`, the Gram basis
    eigendecomposes :math:`AA^H` or :math:`A^HA`, and the rounding term :math:`\rho` uses
    :math:`\sqrt2\,u` (docs/index.md, "Complex input"); the bound is otherwise as stated.

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
    op = as_operand(A)
    _validation.check_choice(axis, "axis", AXES)
    _validation.check_choice(method, "method", SELECTORS)
    _validation.check_choice(skeleton, "skeleton", SKELETONS)
    _validation.check_choice(basis, "basis", BASES)
    kmax = min(op.shape)
    rank, rtol, atol = _validation.check_stopping(rank, rtol, atol, kmax)
    _validation.check_rng(rng, op.like)
    if metric is not None or cross is not None:  # real-only options: refused before any work
        real_only = ("interpolative's metric=/cross=", _errors.METRIC_REAL_ONLY)
        _validation.check_dtype(op.dtype, op.xp, real_only=real_only, name="A")
        for name, value in (("metric", metric), ("cross", cross)):
            dtype = getattr(getattr(value, "L", value), "dtype", None)
            if dtype is not None:
                _validation.check_dtype(dtype, _backend.namespace(getattr(value, "L", value)),
                                        real_only=real_only, name=name)
    tolerance = rtol is not None or atol is not None
    # the certificate's probes get a stream of their own: never the sketch's draws
    cert_seed = _backend.streams(rng, 1)[0] if tolerance else None
    if op.kind != "dense" or basis == "randomized":
        if metric is not None or cross is not None or basis == "gram":
            what = "metric=/cross=" if basis != "gram" else "basis='gram'"
            raise ValueError(_errors.ID_OPERAND.format(what=what, kind=op.kind, basis=basis))
        svd_at, build = _operand_search(op, axis, method, skeleton, basis, rng)
        if not tolerance:
            return build(svd_at(rank), rank)
        exact = basis != "randomized" and op.densifiable
        return ToleranceSearch(op, svd_at, build, rank, cert_seed, exact=exact).run(rtol, atol)
    A, xp = op.A, op.xp
    basis = "svd" if basis == "auto" else basis
    if metric is not None:
        if axis != "rows":
            raise ValueError("metric= weighs the columns of A (its inputs); use axis='rows' with a metric")
        if not isinstance(metric, Whitening):
            metric = whitening(metric)
        A = xp.astype(A, xp.float64)
    elif cross is not None:
        raise ValueError("cross= only applies with metric=; pass the Gram of the inputs as metric=")
    work = A if axis == "rows" else A.T
    B = work if metric is None else metric.whiten(work, cross=cross)
    if not tolerance:
        res = _row_id(B, rank, method, skeleton, basis, xp)
        res = res if metric is None else _unwhitened(res, A, metric, cross, xp)
        return res if axis == "rows" else _transposed(res)
    svd_at, build = _dense_search(B, axis, method, skeleton, basis, xp)
    # with a metric the certificate is that of the whitened problem: the error in the metric
    search = ToleranceSearch(
        op if metric is None else as_operand(B), svd_at, build, rank, cert_seed, exact=True,
        advice=GRAM_ADVICE if basis == "gram" else ADVICE,
    )
    res = search.run(rtol, atol)
    return res if metric is None else _unwhitened(res, A, metric, cross, xp)


def id_to_svd(result: Any, /) -> TruncatedSVD:
    r"""The SVD of an interpolative decomposition: :math:`XA[I,:] = U\,\mathrm{diag}(s)\,V^H`.

    Parameters
    ----------
    result : IDResult
        From :func:`interpolative` (any axis, skeleton or basis); any result with ``shape``,
        the stable ``factors`` ``(left, right)`` and ``bound`` is accepted, e.g. a
        :class:`curlinalg.CURResult`.

    Returns
    -------
    TruncatedSVD
        ``rank`` triplets of the approximation, in the factors' namespace and device; ``kind``
        is ``"randomized"`` when the result's bound holds only with a probability.
        ``residual`` is the result's bound on :math:`\|A - A'\|_2` (its ``certificate``'s
        when it has one, else :attr:`IDResult.bound`), so :attr:`TruncatedSVD.bound` bounds
        :math:`\|A - U\,\mathrm{diag}(s)\,V^T\|_2` and :attr:`TruncatedSVD.tail` the
        residuals of the leading subspaces, as for any truncated SVD.

    Raises
    ------
    TypeError
        ``result`` has no ``factors``, ``shape`` or ``bound``.

    Notes
    -----
    With :math:`L = Q_LR_L` and :math:`R^H = Q_RR_R` (thin QRs of the ``(m, k)`` and
    ``(k, n)`` factors; :math:`^H` is the transpose for real input) and
    :math:`R_LR_R^H = \hat U\,\mathrm{diag}(s)\,\hat V^H`, :math:`U = Q_L\hat U`,
    :math:`V = Q_R\hat V`: :math:`O((m + n)k^2)` work, exact in exact
    arithmetic. Since :math:`\mathrm{range}(U) = \mathrm{range}(LR)`,
    :math:`\|(I - U_jU_j^T)A\|_2 \le \|(I - U_jU_j^T)LR\|_2 + \|A - LR\|_2 = s_{j+1} +
    \mathrm{residual}` for every :math:`j \le k`, and likewise for :math:`V`. This is scipy's
    ``id_to_svd(B, idx, proj)``: ``id_to_svd(interpolative(A, rank=k, axis="columns"))``.

    References
    ----------
    .. [1] H. Cheng, Z. Gimbutas, P.-G. Martinsson and V. Rokhlin, "On the compression of low
       rank matrices", SIAM J. Sci. Comput. 26(4), 2005.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import id_to_svd, interpolative
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 20))
    >>> svd = id_to_svd(interpolative(A, rank=5, axis="columns"))
    >>> svd.rank, bool(np.allclose((svd.U * svd.s) @ svd.V.T, A))
    (5, True)
    """
    if not all(hasattr(result, a) for a in ("factors", "shape", "bound")):
        raise TypeError(_errors.NOT_A_RESULT.format(kind=type(result).__name__))
    left, right = result.factors
    xp = _backend.namespace(left, right)
    H = _backend.ctranspose
    Ql, Rl = xp.linalg.qr(left)
    Qr, Rr = xp.linalg.qr(H(right))
    Us, s, Vts = xp.linalg.svd(Rl @ H(Rr), full_matrices=False)
    certificate = getattr(result, "certificate", None)
    if certificate is not None:
        residual, failure = certificate.bound, certificate.failure_probability
    else:
        residual, failure = float(result.bound), float(getattr(result, "failure_probability", 0.0))
    kind = "randomized" if failure > 0 else "exact"
    return TruncatedSVD(Ql @ Us, s, Qr @ H(Vts), kind, residual)
