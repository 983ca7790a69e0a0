"""The CUR driver: choose rows and columns, form the core, report the error constants."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from . import _backend, _errors, _validation
from .bounds import Certificate, certify, selection_constant
from .cores import CoreFactors, cross_core_factors, optimal_core_factors
from .deim import deim, qdeim
from .leverage import leverage_sample
from .maxvol import maxvol
from .sketch import EXACT_SVD_MAX_DIM, RESIDUAL_FAILURE_PROBABILITY, TruncatedSVD, _truncated_svd

__all__ = ["CURResult", "cur", "METHODS", "CORES", "ROUNDING_FACTOR", "TOLERANCE_RANK_FACTOR"]

METHODS = ("deim", "qdeim", "maxvol", "leverage", "leverage_sampling", "randomized")
CORES = ("optimal", "cross")
#: ``c`` in the rounding term :math:`\rho = c\,\max(m, n)\,u\,\|A\|_2` of :attr:`CURResult.bound`.
ROUNDING_FACTOR = 4.0
#: Tolerance mode returns a rank at most this factor above the smallest rank whose certificate
#: it saw fail (plus one).
TOLERANCE_RANK_FACTOR = 1.1
#: Tolerance mode first tries the rank where this many times sigma_{k+1} meets the target (a CUR
#: of rank k is typically about twice the truncated SVD's error), capped to stay within
#: TOLERANCE_RANK_FACTOR of the SVD's rank, so that one certificate often settles the search.
INITIAL_ERROR_RATIO = 2.0
#: A sketch grown for rank k gets this many times k columns, so the ranks tried next fit in it.
SKETCH_HEADROOM = 1.3
#: Leverage selections whose constant exceeds Q-DEIM's on the same basis by this factor warn.
LEVERAGE_WARN_RATIO = 10.0


@dataclass(frozen=True, eq=False, repr=False)
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
        Target rank ``k`` of the selection (``c = r = k`` except for the leverage methods, which
        may keep more indices: the distinct sampled ones, or Q-DEIM's added where the leverage
        choice alone was rank deficient).
    method, core : str
        How rows/columns and the core were chosen.
    basis : {"exact", "randomized"}
        Which truncated SVD supplied the bases :math:`U_k, V_k` the selection was made on.
    eta_rows, eta_cols : float
        Selection constants :math:`\eta_p = \|(P^TU_k)^+\|_2` and :math:`\eta_q = \|(Q^TV_k)^+\|_2`
        for the bases used (always finite).
    sigma_next : float
        Upper bound on the basis residuals :math:`\|(I - U_kU_k^T)A\|_2` and
        :math:`\|A(I - V_kV_k^T)\|_2`: :math:`\sigma_{k+1}` when ``basis == "exact"`` (0 when
        ``k = min(m, n)``); the sketch's :math:`\hat\sigma_{k+1}` plus its certified residual
        when randomized.
    rounding : float
        :math:`\rho = c\,\max(m,n)\,u\,\|A\|_2` (``c`` = :data:`ROUNDING_FACTOR`, ``u`` the unit
        roundoff of the dtype): what truncating ``C`` and ``R`` at their numerical rank and
        rounding in the stable evaluation add to :math:`\sigma_{k+1}`.
    failure_probability : float
        Probability that :attr:`bound` fails: 0 for an exact basis, the sketch residual's
        (:data:`curlinalg.sketch.RESIDUAL_FAILURE_PROBABILITY`) for a randomized one.
    factors : tuple of arrays
        ``(left, right)`` with :math:`CUR = \mathrm{left}\cdot\mathrm{right}` in exact arithmetic,
        formed without dividing by small singular values (see
        :func:`curlinalg.cores.optimal_core_factors`); :meth:`to_dense` and ``@`` use them.
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
    rounding: float
    failure_probability: float
    factors: tuple[Any, Any]
    certificate: Certificate | None = None

    # Let numpy defer ``X @ result`` to ``__rmatmul__`` instead of treating the result as an array.
    __array_ufunc__ = None

    @property
    def bound(self) -> float | None:
        r"""Bound on :math:`\|A - CUR\|_2` for the computed result, or None for the cross core.

        :math:`(\eta_p + \eta_q)\,(\sigma_{k+1} + \rho)` for ``core="optimal"``: Sorensen & Embree
        (2016, Theorem 4.1) for the exact-arithmetic part, plus the rounding term
        :attr:`rounding`. It holds with certainty for an exact basis and with probability at least
        ``1 - failure_probability`` for a randomized one. The cross core has no bound of this
        kind; :func:`curlinalg.certify` certifies it a posteriori.
        """
        if self.core == "cross":
            return None
        return (self.eta_rows + self.eta_cols) * (self.sigma_next + self.rounding)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.C.shape[0], self.R.shape[1])

    def to_dense(self) -> Any:
        """Form :math:`CUR` as a dense ``(m, n)`` array, from the stable :attr:`factors`."""
        left, right = self.factors
        return left @ right

    def __matmul__(self, X: Any) -> Any:
        """:math:`CUR\\,X` without forming :math:`CUR`."""
        left, right = self.factors
        return left @ (right @ X)

    def __rmatmul__(self, X: Any) -> Any:
        """:math:`X\\,CUR` without forming :math:`CUR`."""
        left, right = self.factors
        return (X @ left) @ right

    def __repr__(self) -> str:
        bound = "None" if self.bound is None else f"{self.bound:.3g}"
        cert = "" if self.certificate is None else f", certified={self.certificate.bound:.3g}"
        return (
            f"CURResult(shape={self.shape}, rank={self.rank}, method={self.method!r}, "
            f"core={self.core!r}, basis={self.basis!r}, bound={bound}{cert})"
        )

    def __eq__(self, other: object) -> bool:
        """Same metadata, and equal indices and factors (element by element)."""
        if not isinstance(other, CURResult):
            return NotImplemented
        meta = ("shape", "rank", "method", "core", "basis")
        if any(getattr(self, f) != getattr(other, f) for f in meta):
            return False
        pairs = zip((self.rows, self.cols, self.C, self.U, self.R),
                    (other.rows, other.cols, other.C, other.U, other.R))
        try:
            return all(a.shape == b.shape and bool(_backend.namespace(a, b).all(a == b))
                       for a, b in pairs)
        except TypeError:  # different namespaces or devices
            return False

    __hash__ = None  # type: ignore[assignment]


def _streams(rng: Any, count: int) -> list[Any]:
    """Independent seeds for the random steps of one call (a native generator is shared)."""
    if type(rng).__module__.split(".")[0] in ("torch", "cupy"):
        return [rng] * count
    gen = np.random.default_rng(_backend.seed_of(rng))
    return [int(s) for s in gen.integers(0, 2**62, size=count)]


def _count_above(s: Any, threshold: float, xp: Any) -> int:
    return int(_backend.to_float(xp.sum(xp.astype(s > threshold, xp.int64))))


def _numerical_rank(s: Any, shape: tuple[int, int], xp: Any) -> int:
    top = _backend.to_float(s[0])
    return _count_above(s, top * max(shape) * float(xp.finfo(s.dtype).eps), xp) if top > 0 else 0


def _top_k(scores: Any, k: int, xp: Any) -> Any:
    return xp.astype(xp.argsort(scores, descending=True, stable=True)[:k], xp.int64)


def _select(basis: Any, method: str, k: int, oversample: int, rng: Any, xp: Any) -> tuple[Any, str]:
    """Indices of ``basis`` chosen by ``method``, and a warning message ('' when none)."""
    if method == "deim":
        return deim(basis), ""
    if method in ("qdeim", "randomized"):
        return qdeim(basis), ""
    if method == "maxvol":
        return _maxvol_rows(basis), ""
    scores = xp.sum(basis * basis, axis=1)
    if method == "leverage":
        chosen = _top_k(scores, k, xp)
    else:
        chosen = leverage_sample(scores, samples=k + oversample, rng=rng).indices
    return _complete_leverage(basis, chosen, method, k, xp)


def _maxvol_rows(basis: Any) -> Any:
    with warnings.catch_warnings():
        # cur() reports the selection constant; a swap budget cut short only loosens it.
        warnings.simplefilter("ignore", _errors.ConvergenceWarning)
        return maxvol(basis)[0]


def _complete_leverage(basis: Any, chosen: Any, method: str, k: int, xp: Any) -> tuple[Any, str]:
    """Add Q-DEIM's rows where a leverage choice leaves ``basis[chosen]`` rank deficient, and say
    when the constant is far above Q-DEIM's on the same basis."""
    reference = qdeim(basis)
    eta = selection_constant(basis, chosen)
    eta_ref = selection_constant(basis, reference)
    if math.isinf(eta):
        found = chosen.shape[0]
        chosen = xp.unique_values(xp.concat([chosen, reference]))
        return chosen, _errors.LEVERAGE_DEFICIENT.format(
            method=method, found=found, k=k, total=chosen.shape[0]
        )
    if eta > LEVERAGE_WARN_RATIO * eta_ref:
        return chosen, _errors.LEVERAGE_POOR.format(method=method, eta=eta, ratio=eta / eta_ref)
    return chosen, ""


@dataclass(frozen=True)
class _Options:
    method: str
    core: str
    core_rtol: float | None
    oversample: int
    seeds: list[Any]


def _cur_at_rank(A: Any, svd: TruncatedSVD, k: int, opts: _Options, xp: Any) -> tuple[CURResult, list[str]]:
    Uk, Vk = svd.U[:, :k], svd.V[:, :k]
    rows, note_rows = _select(Uk, opts.method, k, opts.oversample, opts.seeds[0], xp)
    cols, note_cols = _select(Vk, opts.method, k, opts.oversample, opts.seeds[1], xp)
    norm_est = _backend.to_float(svd.s[0]) + svd.residual
    if opts.core == "optimal":
        f: CoreFactors = optimal_core_factors(
            A, xp.take(A, cols, axis=1), xp.take(A, rows, axis=0)
        )
    else:
        rtol = opts.core_rtol
        if rtol is None:  # cut the cross matrix at the noise level sigma_{k+1} / sigma_1
            rtol = max(svd.tail(k) / norm_est if norm_est > 0 else 0.0,
                       max(rows.shape[0], cols.shape[0]) * float(xp.finfo(A.dtype).eps))
        f = cross_core_factors(A, rows, cols, rtol=rtol)
    C, R = xp.take(A, cols, axis=1), xp.take(A, rows, axis=0)
    rounding = ROUNDING_FACTOR * max(A.shape) * float(xp.finfo(A.dtype).eps) * norm_est
    res = CURResult(
        C, f.U, R, rows, cols, k, opts.method, opts.core, svd.kind,
        selection_constant(Uk, rows), selection_constant(Vk, cols), svd.tail(k), rounding,
        RESIDUAL_FAILURE_PROBABILITY if svd.kind == "randomized" else 0.0, (f.left, f.right),
    )
    return res, [n for n in (note_rows, note_cols) if n]


def cur(
    A: Any,
    /,
    *,
    rank: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    method: str = "deim",
    core: str = "optimal",
    core_rtol: float | None = None,
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
        Find the smallest rank whose certified bound on :math:`\|A-CUR\|_2` is at most
        :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\|A\|_2)`; whichever of ``rank`` and the
        tolerance is met first wins. The result's ``certificate`` holds the bound reached.
    method : {"deim", "qdeim", "maxvol", "leverage", "leverage_sampling", "randomized"}
        How rows and columns are selected from the leading singular vectors :math:`U_k, V_k`:
        DEIM (LU pivoting), Q-DEIM (pivoted QR), maxvol, top-``k`` leverage scores,
        Mahoney-Drineas sampling of ``k + oversample`` draws, or ``"randomized"``: Q-DEIM on
        a randomized (sketched) SVD whatever the size.
    core : {"optimal", "cross"}
        :math:`U = C^+AR^+` (:func:`curlinalg.cores.optimal_core`) or the truncated
        pseudo-inverse of :math:`A[\mathrm{rows},\mathrm{cols}]`
        (:func:`curlinalg.cores.cross_core`).
    core_rtol : float, optional
        ``core="cross"`` only: singular values of :math:`A[\mathrm{rows},\mathrm{cols}]` below
        ``core_rtol`` times the largest are dropped. Default: the basis' estimate of
        :math:`\sigma_{k+1}/\sigma_1` (at least ``max(r, c) * eps``), which keeps the cross core
        within a small factor of the optimal one.
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
        unknown ``method``/``core``/``basis``; ``core_rtol`` with ``core="optimal"``.

    Warns
    -----
    RankDeficiencyWarning
        ``rank`` exceeds the numerical rank: the numerical rank is used instead.
    CURWarning
        The tolerance cannot be reached (the result is the best rank found, with its certified
        error); or a leverage selection was rank deficient (Q-DEIM's indices were added) or far
        worse conditioned than Q-DEIM's.

    Notes
    -----
    For any unitarily invariant norm and ``core="optimal"``,

    .. math:: \|A - CUR\| \le \eta_p\,\|(I - U_kU_k^T)A\| + \eta_q\,\|A(I - V_kV_k^T)\|,

    which for an exact basis is :math:`(\eta_p + \eta_q)\,\sigma_{k+1}` in the 2-norm
    (Sorensen & Embree 2016, Theorem 4.1; the proof holds verbatim with pseudo-inverses when more
    than ``k`` indices are kept). The result is evaluated as :math:`Q_C(Q_C^TAQ_R)Q_R^T` with
    ``C`` and ``R`` cut at their numerical rank, so the computed error stays within
    :attr:`CURResult.bound` :math:`= (\eta_p + \eta_q)(\sigma_{k+1} + \rho)` at every rank,
    past the numerical rank too. A priori, :math:`\eta \le \sqrt{n-k+1}\sqrt{4^k+6k-1}/3` for
    Q-DEIM, :math:`\sqrt{k + 1.05^2k(n-k)}` for maxvol, and for randomized bases
    :math:`\|(I-QQ^T)A\|_2 \le [1+11\sqrt{(k+p)\min(m,n)}]^{1/(2q+1)}\sigma_{k+1}` with
    probability :math:`\ge 1 - 6p^{-p}` (Halko et al. 2011); the reported bound uses a certified
    a posteriori value of :math:`\|(I-QQ^T)A\|_2` instead.

    Tolerance mode reads the rank off the singular values (exact, or from a sketch grown until it
    resolves the tolerance), certifies the CUR at that rank with :func:`curlinalg.certify`, and
    moves the rank by the observed ratio of certified error to :math:`\sigma_{k+1}`, then bisects,
    until the returned rank is at most :data:`TOLERANCE_RANK_FACTOR` times one more than a rank
    whose certificate failed.

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.
    .. [2] Z. Drmac and S. Gugercin, SIAM J. Sci. Comput. 38(2), 2016.
    .. [3] S. A. Goreinov et al., "How to find a good submatrix", 2010.
    .. [4] M. W. Mahoney and P. Drineas, "CUR matrix decompositions for improved data
       analysis", PNAS 106(3), 2009.
    .. [5] N. Halko, P.-G. Martinsson and J. A. Tropp, SIAM Review 53(2), 2011.
    .. [6] T. Park and Y. Nakatsukasa, "Accuracy and stability of CUR decompositions with
       oversampling", arXiv:2405.06375, 2024.

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
    core_rtol = _validation.check_tol(core_rtol, "core_rtol")
    if core_rtol is not None and core != "cross":
        raise ValueError(_errors.CORE_RTOL.format(core=core))
    if rank is None and rtol is None and atol is None:
        raise ValueError(_errors.NO_STOP)
    kind = "randomized" if method == "randomized" else basis
    seeds = _streams(rng, 4)
    opts = _Options(method, core, core_rtol, oversample, seeds[1:3])

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
        res, notes = _cur_at_rank(A, svd, k, opts, xp)
        for note in notes:
            warnings.warn(note, _errors.CURWarning, stacklevel=stacklevel)
        return res

    if rtol is None and atol is None:
        return build(svd_at(rank), rank)
    search = _ToleranceSearch(A, kind, svd_at, build, rank, seeds[3], xp)
    return search.run(rtol, atol)


class _ToleranceSearch:
    """The smallest rank whose certificate meets a tolerance (see :func:`cur`, Notes)."""

    def __init__(
        self, A: Any, kind: str, svd_at: Callable[[int], TruncatedSVD],
        build: Callable[..., CURResult], rank: int | None, seed: Any, xp: Any,
    ):
        self.A, self.svd_at, self.build, self.seed, self.xp = A, svd_at, build, seed, xp
        self.kmax = min(A.shape)
        self.capped = rank is not None
        self.kcap = self.kmax if rank is None else rank
        self.exact = kind == "exact" or (kind == "auto" and self.kmax <= EXACT_SVD_MAX_DIM)
        self.svd: TruncatedSVD | None = None

    def _spectrum(self, rank: int) -> TruncatedSVD:
        """A basis of at least ``rank`` triplets (one exact SVD, or a sketch grown to ``rank``)."""
        if self.exact:
            if self.svd is None:
                self.svd = _truncated_svd(self.A, self.kmax, "exact", 0, 0, None, self.xp)
            return self.svd
        have = 0 if self.svd is None else self.svd.U.shape[1]
        if rank > have:
            grown = max(math.ceil(SKETCH_HEADROOM * rank), 2 * have) if have else rank
            self.svd = self.svd_at(min(self.kmax, grown))
        return self.svd

    def _extrapolated(self, svd: TruncatedSVD, level: float) -> int:
        """The rank where the log-linear trend of the sketch's tail reaches ``level`` (at least
        twice the sketch), for the next sketch's size."""
        size = svd.s.shape[0]
        have = svd.U.shape[1]
        first, last = _backend.to_float(svd.s[size // 2]), _backend.to_float(svd.s[-1])
        if not 0 < last < first or level <= 0:
            return 2 * have
        slope = (math.log(last) - math.log(first)) / (size - 1 - size // 2)
        reach = size - 1 + (math.log(level) - math.log(last)) / slope
        return int(min(self.kmax, max(2 * have, math.ceil(reach))))

    def _resolvable(self, svd: TruncatedSVD) -> int:
        """The numerical rank where the spectrum shows it; the largest rank otherwise."""
        numerical = _numerical_rank(svd.s, self.A.shape, self.xp)
        if numerical < svd.s.shape[0] or svd.s.shape[0] >= self.kmax:
            return max(numerical, 1)
        return self.kmax

    def _first_at_or_below(self, svd: TruncatedSVD, level: float, limit: int) -> int | None:
        """The smallest ``k`` in [1, limit] with ``s[k] <= level`` (None past the spectrum)."""
        above = _count_above(svd.s, level, self.xp)
        if above < svd.s.shape[0] or svd.s.shape[0] >= self.kmax:
            return max(1, min(above, limit))
        return None

    def _certified(self, svd: TruncatedSVD, k: int) -> CURResult:
        res = self.build(svd, k, stacklevel=5)
        return replace(res, certificate=certify(self.A, res, ord=2, rng=self.seed))

    def run(self, rtol: float | None, atol: float | None) -> CURResult:
        svd = self._spectrum(min(self.kcap, 32))
        while True:  # grow the sketch until it resolves the tolerance (or covers the cap)
            norm2 = _backend.to_float(svd.s[0]) + svd.residual
            target = max(atol or 0.0, (rtol or 0.0) * norm2)
            limit = min(self.kcap, self._resolvable(svd))
            k_svd = self._first_at_or_below(svd, target, limit)
            if k_svd is not None or svd.U.shape[1] >= self.kcap:
                break
            svd = self._spectrum(self._extrapolated(svd, target))
        k_svd = limit if k_svd is None else k_svd
        # No rank below k_svd meets the target: sigma_k > target and no CUR beats the truncated
        # SVD (a sketch's singular values are lower bounds of the true ones).
        failed, passed, best = k_svd - 1, None, None
        within = max(k_svd, int(TOLERANCE_RANK_FACTOR * k_svd))
        k = min(within, self._first_at_or_below(svd, target / INITIAL_ERROR_RATIO, limit) or within)
        while True:
            svd = self._spectrum(k)
            res = self._certified(svd, k)
            k = res.rank
            bound = res.certificate.bound
            if best is None or bound < best.certificate.bound:
                best = res
            if bound <= target:
                passed = res
            else:
                failed = max(failed, k)
            if passed is not None and passed.rank <= TOLERANCE_RANK_FACTOR * (failed + 1):
                return passed
            if passed is None and k >= limit:
                if self.capped and limit == self.kcap:
                    return res  # the rank cap was met first
                return self._unreachable(best, target, limit)
            k = self._next_rank(svd, res, target, failed, passed, limit)

    def _next_rank(
        self, svd: TruncatedSVD, res: CURResult, target: float, failed: int,
        passed: CURResult | None, limit: int,
    ) -> int:
        if passed is not None:  # bracketed: bisect
            return max(failed + 1, (failed + passed.rank) // 2)
        # the certified error over sigma_{k+1} at this rank predicts the rank that meets it
        tiny = float(self.xp.finfo(res.U.dtype).tiny)
        s_next = _backend.to_float(svd.s[res.rank]) if svd.s.shape[0] > res.rank else 0.0
        level = target * s_next / max(res.certificate.bound, tiny)
        guess = self._first_at_or_below(svd, level, limit)
        if guess is None:  # past the sketch: grow it once
            guess = self._first_at_or_below(self._spectrum(2 * svd.U.shape[1]), level, limit)
        return min(limit, max(res.rank + 1, guess if guess is not None else 2 * res.rank))

    def _unreachable(self, best: CURResult, target: float, limit: int) -> CURResult:
        warnings.warn(
            _errors.UNREACHABLE.format(
                target=target, limit=limit, error=best.certificate.bound, rank=best.rank
            ),
            _errors.CURWarning,
            stacklevel=4,
        )
        return best
