"""The CUR driver: choose rows and columns, form the core, report the error constants."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import _backend, _errors, _validation
from .bounds import Certificate, certify, selection_constant
from .cores import cross_core, optimal_core
from .deim import deim, qdeim
from .leverage import leverage_sample
from .maxvol import maxvol
from .sketch import EXACT_SVD_MAX_DIM, TruncatedSVD, _truncated_svd

__all__ = ["CURResult", "cur", "METHODS", "CORES"]

METHODS = ("deim", "qdeim", "maxvol", "leverage", "leverage_sampling", "randomized")
CORES = ("optimal", "cross")


@dataclass(frozen=True)
class CURResult:
    r"""A CUR approximation :math:`A \approx C\,U\,R` and the constants that bound its error.

    Attributes
    ----------
    C : array, shape (m, c)
        Columns ``cols`` of ``A``.
    U : array, shape (c, r)
        The core.
    R : array, shape (r, n)
        Rows ``rows`` of ``A``.
    rows, cols : int64 arrays
        Selected indices, in the input's namespace and device.
    rank : int
        Target rank ``k`` of the selection (``c = r = k`` except for ``"leverage_sampling"``,
        which keeps the distinct sampled indices).
    method, core : str
        How rows/columns and the core were chosen.
    basis : {"exact", "randomized"}
        Which truncated SVD supplied the bases :math:`U_k, V_k` the selection was made on.
    eta_rows, eta_cols : float
        Selection constants :math:`\eta_p = \|(P^TU_k)^+\|_2` and :math:`\eta_q = \|(Q^TV_k)^+\|_2`
        for the bases used.
    sigma_next : float
        :math:`\sigma_{k+1}` of the basis computation (exact when ``basis == "exact"``, the
        sketch's estimate otherwise; 0 when ``k = min(m, n)``).
    certificate : Certificate or None
        The certified a posteriori bound, when the rank was chosen by a tolerance.
    """

    C: Any
    U: Any
    R: Any
    rows: Any
    cols: Any
    rank: int
    method: str
    core: str
    basis: str
    eta_rows: float
    eta_cols: float
    sigma_next: float
    certificate: Certificate | None = None

    # Let numpy defer ``X @ result`` to ``__rmatmul__`` instead of treating the result as an array.
    __array_ufunc__ = None

    @property
    def bound(self) -> float:
        r"""A priori bound :math:`(\eta_p + \eta_q)\,\sigma_{k+1}` on :math:`\|A - CUR\|_2`.

        Rigorous for ``core="optimal"`` with ``basis="exact"`` (Sorensen & Embree 2016,
        Theorem 4.1); with a randomized basis :math:`\sigma_{k+1}` is only estimated, and
        :func:`curlinalg.certify` gives a certified bound instead.
        """
        return (self.eta_rows + self.eta_cols) * self.sigma_next

    @property
    def shape(self) -> tuple[int, int]:
        return (self.C.shape[0], self.R.shape[1])

    def to_dense(self) -> Any:
        """Form :math:`CUR` as a dense ``(m, n)`` array."""
        return self.C @ (self.U @ self.R)

    def __matmul__(self, X: Any) -> Any:
        """:math:`C(U(RX))`, without forming :math:`CUR`."""
        return self.C @ (self.U @ (self.R @ X))

    def __rmatmul__(self, X: Any) -> Any:
        """:math:`((XC)U)R`, without forming :math:`CUR`."""
        return ((X @ self.C) @ self.U) @ self.R


def _streams(rng: Any, count: int) -> list[Any]:
    """Independent seeds for the random steps of one call (a native generator is shared)."""
    if type(rng).__module__.split(".")[0] in ("torch", "cupy"):
        return [rng] * count
    gen = np.random.default_rng(_backend.seed_of(rng))
    return [int(s) for s in gen.integers(0, 2**62, size=count)]


def _numerical_rank(s: Any, shape: tuple[int, int], xp: Any) -> int:
    top = _backend.to_float(s[0])
    cutoff = top * max(shape) * float(xp.finfo(s.dtype).eps)
    return int(_backend.to_float(xp.sum(xp.astype(s > cutoff, xp.int64)))) if top > 0 else 0


def _top_k(scores: Any, k: int, xp: Any) -> Any:
    return xp.astype(xp.argsort(scores, descending=True, stable=True)[:k], xp.int64)


def _select(basis: Any, method: str, k: int, oversample: int, rng: Any, xp: Any) -> Any:
    if method == "deim":
        return deim(basis)
    if method in ("qdeim", "randomized"):
        return qdeim(basis)
    if method == "maxvol":
        return maxvol(basis)[0]
    scores = xp.sum(basis * basis, axis=1)
    if method == "leverage":
        return _top_k(scores, k, xp)
    return leverage_sample(scores, samples=k + oversample, rng=rng).indices


def _cur_at_rank(
    A: Any, svd: TruncatedSVD, k: int, *, method: str, core: str, oversample: int,
    seeds: list[Any], xp: Any,
) -> CURResult:
    Uk, Vk = svd.U[:, :k], svd.V[:, :k]
    rows = _select(Uk, method, k, oversample, seeds[0], xp)
    cols = _select(Vk, method, k, oversample, seeds[1], xp)
    C = xp.take(A, cols, axis=1)
    R = xp.take(A, rows, axis=0)
    U = optimal_core(A, C, R) if core == "optimal" else cross_core(A, rows, cols)
    sigma_next = _backend.to_float(svd.s[k]) if svd.s.shape[0] > k else 0.0
    return CURResult(
        C, U, R, rows, cols, k, method, core, svd.kind,
        selection_constant(Uk, rows), selection_constant(Vk, cols), sigma_next,
    )


def cur(
    A: Any,
    /,
    *,
    rank: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    method: str = "deim",
    core: str = "optimal",
    oversample: int = 10,
    power_iters: int = 2,
    basis: str = "auto",
    rng: Any = None,
) -> CURResult:
    r"""CUR decomposition :math:`A \approx C\,U\,R` with ``C`` columns and ``R`` rows of ``A``.

    Parameters
    ----------
    A : array, shape (m, n)
        Real float32 or float64 matrix; numpy, torch (CPU or CUDA) or cupy. The result keeps
        its namespace, device and dtype.
    rank : int, optional
        Target rank ``k``, ``1 <= k <= min(m, n)``. With a tolerance too, it caps the rank.
    rtol, atol : float, optional
        Grow the rank until the certified bound on :math:`\|A-CUR\|_2` is at most
        :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\|A\|_2)`; whichever of ``rank`` and the
        tolerance is met first wins. The result's ``certificate`` holds the bound reached.
    method : {"deim", "qdeim", "maxvol", "leverage", "leverage_sampling", "randomized"}
        How rows and columns are selected from the leading singular vectors :math:`U_k, V_k`:
        DEIM (LU pivoting), Q-DEIM (pivoted QR), maxvol, top-``k`` leverage scores,
        Mahoney-Drineas sampling of ``k + oversample`` draws, or ``"randomized"``: Q-DEIM on
        a randomized (sketched) SVD whatever the size.
    core : {"optimal", "cross"}
        :math:`U = C^+AR^+` (:func:`curlinalg.cores.optimal_core`) or the
        :math:`\epsilon`-pseudo-inverse of :math:`A[\mathrm{rows},\mathrm{cols}]`
        (:func:`curlinalg.cores.cross_core`).
    oversample, power_iters : int
        Randomized SVD parameters (:func:`curlinalg.sketch.range_finder`).
    basis : {"auto", "exact", "randomized"}
        How :math:`U_k, V_k` are computed (``"auto"``: exact for small matrices); ignored by
        ``method="randomized"``, which always sketches.
    rng : None, int or Generator
        Seed for every random step; the same seed gives the same result.

    Returns
    -------
    CURResult

    Raises
    ------
    TypeError
        Not an array; integer, bool, complex or half-precision dtype; rank not an int.
    ValueError
        Not 2-D, empty, NaN/Inf; rank out of range; no stopping rule; negative tolerance;
        unknown ``method``/``core``/``basis``.

    Warns
    -----
    RankDeficiencyWarning
        ``rank`` exceeds the numerical rank: the numerical rank is used instead.

    Notes
    -----
    For any unitarily invariant norm and ``core="optimal"``,

    .. math:: \|A - CUR\| \le \eta_p\,\|(I - U_kU_k^T)A\| + \eta_q\,\|A(I - V_kV_k^T)\|,

    which for an exact basis is :math:`(\eta_p + \eta_q)\,\sigma_{k+1}` in the 2-norm
    (Sorensen & Embree 2016, Theorem 4.1; the proof holds verbatim with pseudo-inverses when more
    than ``k`` indices are kept). A priori, :math:`\eta \le \sqrt{n-k+1}\sqrt{4^k+6k-1}/3` for
    Q-DEIM, :math:`\sqrt{k + 1.05^2k(n-k)}` for maxvol, and for randomized bases
    :math:`\|(I-QQ^T)A\|_2 \le [1+11\sqrt{(k+p)\min(m,n)}]^{1/(2q+1)}\sigma_{k+1}` with
    probability :math:`\ge 1 - 6p^{-p}` (Halko et al. 2011).

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.
    .. [2] Z. Drmac and S. Gugercin, SIAM J. Sci. Comput. 38(2), 2016.
    .. [3] S. A. Goreinov et al., "How to find a good submatrix", 2010.
    .. [4] M. W. Mahoney and P. Drineas, "CUR matrix decompositions for improved data
       analysis", PNAS 106(3), 2009.
    .. [5] N. Halko, P.-G. Martinsson and J. A. Tropp, SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import cur
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((100, 8)) @ rng.standard_normal((8, 80))
    >>> res = cur(A, rank=8)
    >>> res.C.shape, res.U.shape, res.R.shape
    ((100, 8), (8, 8), (8, 80))
    >>> bool(np.allclose(res.to_dense(), A))
    True
    """
    xp = _validation.check_matrix(A)
    m, n = A.shape
    kmax = min(m, n)
    _validation.check_choice(method, "method", METHODS)
    _validation.check_choice(core, "core", CORES)
    _validation.check_choice(basis, "basis", ("auto", "exact", "randomized"))
    oversample = _validation.check_int(oversample, "oversample", minimum=0)
    power_iters = _validation.check_int(power_iters, "power_iters", minimum=0)
    if rank is not None:
        rank = _validation.check_rank(rank, kmax)
    rtol = _validation.check_tol(rtol, "rtol")
    atol = _validation.check_tol(atol, "atol")
    if rank is None and rtol is None and atol is None:
        raise ValueError(_errors.NO_STOP)
    kind = "randomized" if method == "randomized" else basis
    seeds = _streams(rng, 4)

    def svd_at(k: int) -> TruncatedSVD:
        return _truncated_svd(A, k, kind, oversample, power_iters, seeds[0], xp)

    def build(svd: TruncatedSVD, k: int, stacklevel: int = 3) -> CURResult:
        # stacklevel: the caller of cur() is 3 frames up from here, 4 via _cur_to_tolerance.
        numerical = _numerical_rank(svd.s, (m, n), xp)
        if k > max(numerical, 1):
            warnings.warn(
                f"rank {k} exceeds the numerical rank {numerical} of the {m} x {n} input; "
                f"using rank {max(numerical, 1)}",
                _errors.RankDeficiencyWarning,
                stacklevel=stacklevel,
            )
            k = max(numerical, 1)
        return _cur_at_rank(
            A, svd, k, method=method, core=core, oversample=oversample, seeds=seeds[1:3], xp=xp
        )

    if rtol is None and atol is None:
        return build(svd_at(rank), rank)
    return _cur_to_tolerance(A, kind, svd_at, build, rank or kmax, rtol, atol, seeds[3], xp)


def _cur_to_tolerance(
    A: Any, kind: str, svd_at: Any, build: Any, kcap: int, rtol: float | None, atol: float | None,
    seed: Any, xp: Any,
) -> CURResult:
    """Grow the rank until the certificate meets the tolerance or the cap is reached.

    With an exact SVD the first rank tried is the smallest with sigma_{k+1} <= tolerance (no
    CUR does better than the truncated SVD), then the rank grows by a quarter at a time; with
    sketches it starts at 16 and doubles.
    """
    kmax = min(A.shape)
    if kind == "exact" or (kind == "auto" and kmax <= EXACT_SVD_MAX_DIM):
        full = _truncated_svd(A, kmax, "exact", 0, 0, None, xp)
        svd_at = lambda k: full  # noqa: E731
        k = kmax
    else:
        k = min(kcap, 16)
    first = svd_at(k)
    norm2 = _backend.to_float(first.s[0])  # exact, or a sketch's lower estimate: conservative
    target = max(atol or 0.0, (rtol or 0.0) * norm2)
    above = int(_backend.to_float(xp.sum(xp.astype(first.s > target, xp.int64))))
    k = max(1, min(kcap, above if first.kind == "exact" else k))
    best = None
    while True:
        svd = svd_at(k)
        res = build(svd, k, stacklevel=4)
        res = replace(res, certificate=certify(A, res, ord=2, rng=seed))
        if best is not None and res.certificate.bound >= best.certificate.bound:
            warnings.warn(
                f"tolerance {target:.3g} not reached: the certified error stopped improving at "
                f"rank {best.rank} ({best.certificate.bound:.3g}), the rounding floor of a CUR "
                "of this matrix in this precision; returning that rank",
                _errors.CURWarning,
                stacklevel=3,
            )
            return best
        best = res
        if res.certificate.bound <= target or res.rank >= kcap or res.rank < k:
            return res
        above = int(_backend.to_float(xp.sum(xp.astype(svd.s > target, xp.int64))))
        growth = 1.25 if svd.kind == "exact" else 2.0
        k = min(kcap, max(k + 1, int(math.ceil(growth * k)), min(above, kcap)))
