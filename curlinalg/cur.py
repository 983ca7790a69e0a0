"""The CUR driver: choose rows and columns, form the core, report the error constants."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from . import _backend, _errors, _validation, batched
from .bounds import selection_constant
from .cores import CoreFactors, _cross_factors, _optimal_factors
from .leverage import leverage_sample
from .maxvol import maxvol
from .operands import Operand, as_operand
from .sketch import RESIDUAL_FAILURE_PROBABILITY, TruncatedSVD, _truncated_svd
from .results import ROUNDING_FACTOR, CURBatch, CURResult, rounding_term
from .tolerance import TOLERANCE_RANK_FACTOR, ToleranceSearch, exact_spectrum, numerical_rank

__all__ = [
    "CURBatch", "CURResult", "cur", "METHODS", "CORES", "ROUNDING_FACTOR", "TOLERANCE_RANK_FACTOR",
]

METHODS = ("deim", "qdeim", "maxvol", "leverage", "leverage_sampling", "randomized")
CORES = ("optimal", "cross", "sketch")
#: Leverage selections whose constant exceeds Q-DEIM's on the same basis by this factor warn.
LEVERAGE_WARN_RATIO = 10.0


def _top_k(scores: Any, k: int, xp: Any) -> Any:
    return xp.astype(xp.argsort(scores, descending=True, stable=True)[:k], xp.int64)


def _select(basis: Any, method: str, k: int, oversample: int, rng: Any, xp: Any) -> tuple[Any, str]:
    """Indices of ``basis`` chosen by ``method``, and a warning message ('' when none)."""
    # The bases come from the validated input: the selectors' own checks are skipped.
    if method == "deim":
        return _backend.lu_row_order(basis), ""
    if method in ("qdeim", "randomized"):
        return _backend.pivoted_rows(basis), ""
    if method == "maxvol":
        return _maxvol_rows(basis), ""
    scores = xp.sum(_backend.abs2(basis), axis=1)
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
    reference = _backend.pivoted_rows(basis)
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


def _cur_at_rank(op: Operand, svd: TruncatedSVD, k: int, opts: _Options) -> tuple[CURResult, list[str]]:
    xp = op.xp
    Uk, Vk = svd.U[:, :k], svd.V[:, :k]
    rows, note_rows = _select(Uk, opts.method, k, opts.oversample, opts.seeds[0], xp)
    cols, note_cols = _select(Vk, opts.method, k, opts.oversample, opts.seeds[1], xp)
    norm_est = _backend.to_float(svd.s[0]) + svd.residual
    sketched = opts.core == "sketch" and svd.sketch is not None
    if opts.core == "cross":
        rtol = opts.core_rtol
        if rtol is None:  # cut the cross matrix at the noise level sigma_{k+1} / sigma_1
            rtol = max(svd.tail(k) / norm_est if norm_est > 0 else 0.0,
                       max(rows.shape[0], cols.shape[0]) * float(xp.finfo(op.dtype).eps))
        f: CoreFactors = _cross_factors(op, rows, cols, rtol)
    else:  # "optimal", and "sketch" (the optimal core of QQ^T A; of A itself on an exact basis)
        project = None
        if sketched:  # Q_C^T (QQ^T A) Q_R = (Q_C^T U_l) diag(s) (V_l^T Q_R): no pass over A
            U_l, V_l = svd.sketch
            s_l = svd.s[None, : U_l.shape[1]]
            H = _backend.ctranspose
            project = lambda Qc, Qr: ((H(Qc) @ U_l) * s_l) @ (H(V_l) @ Qr)  # noqa: E731
        C, R = op.dense_columns(cols), op.dense_rows(rows)
        f = _optimal_factors(op, C, R, None, project)
    rounding = rounding_term(op.shape, _backend.rounding_eps(op.dtype, xp), norm_est)
    if opts.core == "cross" or op.kind != "dense":  # the result's cuts in the input's own kind
        C, R = op.columns(cols), op.rows(rows)
    res = CURResult(
        C, f.U, R, rows, cols, k, opts.method, opts.core, svd.kind,
        selection_constant(Uk, rows), selection_constant(Vk, cols), svd.tail(k), rounding,
        RESIDUAL_FAILURE_PROBABILITY if svd.kind == "randomized" else 0.0, (f.left, f.right),
        sketch_residual=svd.residual if sketched else 0.0,
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
) -> CURResult | CURBatch:
    r"""CUR decomposition :math:`A \approx C\,U\,R` with ``C`` columns and ``R`` rows of ``A``.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n); or a stack (b, m, n)
        float32, float64, complex64 or complex128 matrix: numpy, torch (CPU or CUDA) or cupy
        arrays (the result keeps their namespace, device and dtype); ``scipy.sparse`` matrices
        (``C`` and ``R`` are sparse cuts, every product costs ``O(nnz)``);
        ``scipy.sparse.linalg.LinearOperator`` (matrix-free: columns :math:`AE_J`, rows
        :math:`(A^HE_I)^H` through its adjoint ``rmatmat``). A stack of dense matrices
        gives a :class:`CURBatch`, one :class:`CURResult` per matrix.
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
    core : {"optimal", "cross", "sketch"}
        :math:`U = C^+AR^+` (:func:`curlinalg.cores.optimal_core`); the truncated
        pseudo-inverse of :math:`A[\mathrm{rows},\mathrm{cols}]`
        (:func:`curlinalg.cores.cross_core`); or, on a randomized basis,
        :math:`U = C^+(QQ^TA)R^+` from the sketch :math:`QQ^TA` already computed: one pass over
        ``A`` fewer than ``"optimal"``, at the price of the sketch's certified residual
        :math:`\|(I-QQ^T)A\|_2` added to the bound (:attr:`CURResult.sketch_residual`). On an
        exact basis ``"sketch"`` is ``"optimal"``.
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
    CURResult, or CURBatch for a stack

    Raises
    ------
    TypeError
        Not a supported kind of input; integer, bool or half-precision dtype; an option
        of the wrong type (``rank``, ``oversample``, ``power_iters`` integers, tolerances real
        numbers); an ``rng`` of another backend than the input's.
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

    Complex input: every transpose above is the conjugate transpose (:math:`U_k^H`,
    :math:`Q_C^HAQ_R`), the pivots are chosen by modulus, the sketches are standard complex
    Gaussian, and the rounding term uses :math:`\sqrt2\,u` with :math:`u` the unit roundoff of
    the real counterpart (float64 for complex128): docs/index.md, "Complex input".

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
    if aac.is_array_api_obj(A) and getattr(A, "ndim", 2) == 3:
        return _cur_batch(
            A, rank=rank, rtol=rtol, atol=atol, method=method, core=core, core_rtol=core_rtol,
            oversample=oversample, power_iters=power_iters, basis=basis, rng=rng,
        )
    op = as_operand(A)
    xp = op.xp
    m, n = op.shape
    kmax = min(m, n)
    checked = _check_options(kmax, dict(
        rank=rank, rtol=rtol, atol=atol, method=method, core=core, core_rtol=core_rtol,
        oversample=oversample, power_iters=power_iters, basis=basis,
    ))
    rank, rtol, atol, core_rtol, oversample, power_iters = (checked[k] for k in (
        "rank", "rtol", "atol", "core_rtol", "oversample", "power_iters"))
    _validation.check_rng(rng, op.like)
    kind = "randomized" if method == "randomized" else basis
    seeds = _backend.streams(rng, 4)
    opts = _Options(method, core, core_rtol, oversample, seeds[1:3])

    def svd_at(k: int) -> TruncatedSVD:
        return _truncated_svd(op, k, kind, oversample, power_iters, seeds[0], xp)

    def build(svd: TruncatedSVD, k: int, stacklevel: int = 3) -> CURResult:
        # stacklevel: the caller of cur() is 3 frames up from here, 4 via _cur_to_tolerance.
        numerical = numerical_rank(svd.s, (m, n), xp)
        if k > max(numerical, 1):
            warnings.warn(
                f"rank {k} exceeds the numerical rank {numerical} of the {m} x {n} input; "
                f"using rank {max(numerical, 1)}",
                _errors.RankDeficiencyWarning,
                stacklevel=stacklevel,
            )
            k = max(numerical, 1)
        res, notes = _cur_at_rank(op, svd, k, opts)
        for note in notes:
            warnings.warn(note, _errors.CURWarning, stacklevel=stacklevel)
        return res

    if rtol is None and atol is None:
        return build(svd_at(rank), rank)
    search = ToleranceSearch(op, svd_at, build, rank, seeds[3], exact=exact_spectrum(op, kind))
    return search.run(rtol, atol)


def _check_options(kmax: int, o: dict[str, Any]) -> dict[str, Any]:
    """:func:`cur`'s options checked (types, ranges, combinations) and normalised."""
    _validation.check_choice(o["method"], "method", METHODS)
    _validation.check_choice(o["core"], "core", CORES)
    _validation.check_choice(o["basis"], "basis", ("auto", "exact", "randomized"))
    o = dict(o)
    o["oversample"] = _validation.check_int(o["oversample"], "oversample", minimum=0)
    o["power_iters"] = _validation.check_int(o["power_iters"], "power_iters", minimum=0)
    o["rank"], o["rtol"], o["atol"] = _validation.check_stopping(o["rank"], o["rtol"], o["atol"], kmax)
    o["core_rtol"] = _validation.check_tol(o["core_rtol"], "core_rtol")
    if o["core_rtol"] is not None and o["core"] != "cross":
        raise ValueError(_errors.CORE_RTOL.format(core=o["core"]))
    return o


def _cur_batch(A: Any, /, *, rng: Any, **options: Any) -> CURBatch:
    """Batched kernels for a torch stack that allows them (:mod:`curlinalg.batched`), else one
    :func:`cur` per matrix, each with its own seed from ``rng``."""
    if A.shape[0] == 0:
        raise ValueError(_errors.EMPTY.format(shape=tuple(A.shape)))
    _validation.check_matrix(A[0])  # the first matrix's checks, before any work on the others
    _validation.check_rng(rng, A)
    o = _check_options(min(A.shape[-2:]), options)
    if batched.supports(A, **{k: o[k] for k in (
            "rank", "rtol", "atol", "method", "core", "basis", "oversample")}):
        if not _validation.all_finite(A, _backend.namespace(A)):
            raise ValueError(_errors.NOT_FINITE.format(name="stack"))
        out = batched.batched_cur(A, rank=o["rank"], method=o["method"], core=o["core"])
        if out is not None:
            return out
    seeds = _backend.streams(rng, A.shape[0])
    return CURBatch(tuple(cur(A[i], rng=seeds[i], **options) for i in range(A.shape[0])))
