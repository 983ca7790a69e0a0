"""Randomized range finder and truncated SVD (exact or randomized) in any array-API namespace."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import warnings

from . import _backend, _errors, _validation
from .bounds import probe_factor, rounding_term
from .operands import Operand, as_operand

__all__ = ["range_finder", "TruncatedSVD", "truncated_svd", "randomized_failure_factor"]

#: Below this ``min(m, n)`` (or when ``k + oversample`` is a large share of it) an exact SVD is
#: cheaper than sketching and gives exact bounds.
EXACT_SVD_MAX_DIM = 512
#: Gaussian probes behind the a posteriori bound on a sketch's residual ``||(I - QQ^T)A||_2``.
RESIDUAL_PROBES = 10
#: Probability that the sketch's residual bound fails (over its probes).
RESIDUAL_FAILURE_PROBABILITY = 1e-6
#: The dimension factor of :attr:`TruncatedSVD.rounding` is at least this. LAPACK's SVD leaves
#: :math:`\|A - U\,\mathrm{diag}(s)\,V^H\|_2` up to about :math:`70\,\epsilon\,\|A\|_2` on the
#: hard problems of :mod:`curlinalg.testing` with 4 to 48 rows or columns (measured over 8000
#: draws, float64 and complex128 alike), above :math:`4\max(m, n)\,\epsilon\,\|A\|_2` when
#: :math:`\max(m, n) < 18`.
SVD_DIMENSION_FLOOR = 32
#: Columns of the first sketch in tolerance mode (then doubled until the tolerance is resolved).
TOLERANCE_FIRST_SKETCH = 32


def range_finder(
    A: Any, /, *, size: int, power_iters: int = 2, rng: Any = None
) -> Any:
    r"""Orthonormal ``Q`` of ``size`` columns with :math:`QQ^HA \approx A` (Halko et al. Alg. 4.4).

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    size : int
        Number of columns of the sketch, ``1 <= size <= min(m, n)`` (rank plus oversampling).
    power_iters : int, default 2
        Subspace iterations; each costs two products with ``A`` and sharpens the spectrum
        decay seen by the sketch from :math:`\sigma_j` to :math:`\sigma_j^{2q+1}`.
    rng : None, int or Generator
        Seed of the Gaussian test matrix (see :class:`curlinalg._backend.Random`); standard
        complex Gaussian for complex ``A``.

    Returns
    -------
    Q : array, shape (m, size)
        Orthonormal columns, in ``A``'s namespace, device and dtype.

    Notes
    -----
    :math:`Y = A\Omega`, then ``power_iters`` times :math:`Y \leftarrow A\,\mathrm{lu}(A^H
    \mathrm{lu}(Y))` and finally :math:`Q = \mathrm{qr}(Y)` (:math:`A^H = A^T` for real ``A``): subspace iteration (Halko et al.
    2011, Alg. 4.4) with the intermediate steps normalised by the permuted unit-lower factor of
    an LU factorisation (:func:`curlinalg._backend.lu_normalize`; Li et al. 2017), which keeps
    the small singular directions from being lost to rounding at about half the cost of a
    Householder QR. Only the last step needs orthonormal columns.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with randomness:
       probabilistic algorithms for constructing approximate matrix decompositions",
       SIAM Review 53(2), 2011.
    .. [2] H. Li, G. C. Linderman, A. Szlam, K. P. Stanton, Y. Kluger and M. Tygert,
       "Algorithm 971", ACM Trans. Math. Softw. 43(3), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.sketch import range_finder
    >>> A = np.random.default_rng(0).standard_normal((30, 5)) @ np.ones((5, 20))
    >>> Q = range_finder(A, size=6, rng=0)
    >>> bool(np.allclose(Q @ (Q.T @ A), A))
    True
    """
    op = as_operand(A)
    m, n = op.shape
    size = _validation.check_int(size, "size", minimum=1)
    if size > min(m, n):
        raise ValueError(f"size must be <= min(m, n) = {min(m, n)}, got {size}")
    power_iters = _validation.check_int(power_iters, "power_iters", minimum=0)
    _validation.check_rng(rng, op.like)
    return _range_finder(op, size, power_iters, rng, op.xp)


def _range_finder(op: Operand, size: int, power_iters: int, rng: Any, xp: Any) -> Any:
    """:func:`range_finder` on input already validated (``rng`` may be a ``Random`` already)."""
    gen = rng if isinstance(rng, _backend.Random) else _backend.Random(rng, op.like)
    Y = op.matmat(gen.normal((op.shape[1], size)))
    for _ in range(power_iters):
        Y = op.matmat(_backend.lu_normalize(op.rmatmat(_backend.lu_normalize(Y))))
    Q, _ = xp.linalg.qr(Y)
    return Q


@dataclass(frozen=True)
class TruncatedSVD:
    """Leading singular triplets :math:`A \\approx U\\,\\mathrm{diag}(s)\\,V^H` (:math:`V^T` for
    real ``A``).

    Attributes
    ----------
    U : array, shape (m, k)
    s : array, shape (l,)
        Singular values, ``l >= k`` where available (all of them when exact, ``k + oversample``
        from the sketch when randomized), so ``s[k]`` estimates :math:`\\sigma_{k+1}`.
    V : array, shape (n, k)
    kind : {"exact", "randomized"}
        How the triplets were computed.
    residual : float
        Upper bound on :math:`\\|(I - QQ^T)A\\|_2` for the sketch's basis ``Q`` (0 when exact),
        failing with probability at most :data:`RESIDUAL_FAILURE_PROBABILITY`. For every
        ``j <= k``, :math:`\\|(I - U_jU_j^T)A\\|_2` and :math:`\\|A(I - V_jV_j^T)\\|_2` are at
        most ``s[j] + residual``.
    sketch : tuple of arrays or None
        Randomized only: ``(U_l, V_l)``, all ``l = k + oversample`` left and right vectors of
        the sketch, with :math:`QQ^TA = U_l\\,\\mathrm{diag}(s)\\,V_l^T` exactly (``U`` and
        ``V`` are their first ``k`` columns); what ``core="sketch"`` projects onto.
    """

    U: Any
    s: Any
    V: Any
    kind: str
    residual: float = 0.0
    sketch: tuple[Any, Any] | None = None

    def tail(self, k: int, /) -> float:
        """Upper bound on the rank-``k`` basis residuals (``s[k] + residual``; exact when exact)."""
        s_next = _backend.to_float(self.s[k]) if self.s.shape[0] > k else 0.0
        return s_next + self.residual

    @property
    def rank(self) -> int:
        """``k``, the number of triplets kept."""
        return int(self.U.shape[1])

    @property
    def bound(self) -> float:
        r"""Upper bound on :math:`\|A - U\,\mathrm{diag}(s_{1:k})\,V^T\|_2` for the computed
        factors: ``s[k] + residual`` plus the rounding term
        :math:`\rho = 4\max(m, n, 32)\,u\,(s_1 + \mathrm{residual})`
        (:func:`curlinalg.bounds.rounding_term`; the floor :data:`SVD_DIMENSION_FLOOR` covers
        the SVD's own backward error on small matrices; :math:`\sqrt2\,u` for complex input).

        Exact: :math:`\sigma_{k+1} + \rho`, certain. Randomized: with :math:`QQ^TA =
        U_l\,\mathrm{diag}(s)\,V_l^T`, :math:`\|A - U_kS_kV_k^T\|_2 \le \|(I-QQ^T)A\|_2 +
        s_{k+1}`, and ``residual`` bounds the first term except with probability
        :data:`RESIDUAL_FAILURE_PROBABILITY`.
        """
        return self.tail(self.rank) + self.rounding

    @property
    def rounding(self) -> float:
        r""":math:`\rho` of :attr:`bound`."""
        m, n = self.U.shape[0], self.V.shape[0]
        eps = _backend.rounding_eps(self.U.dtype, _backend.namespace(self.U))
        return rounding_term((m, n, SVD_DIMENSION_FLOOR), eps,
                             _backend.to_float(self.s[0]) + self.residual)


def truncated_svd(
    A: Any,
    /,
    *,
    rank: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    kind: str = "auto",
    oversample: int = 10,
    power_iters: int = 2,
    rng: Any = None,
) -> TruncatedSVD:
    r"""Leading singular triplets of ``A``, exactly or by randomized SVD; a rank or a tolerance.

    Parameters
    ----------
    A : array, scipy.sparse matrix or LinearOperator, shape (m, n)
    rank : int, optional
        Number of triplets, ``1 <= rank <= min(m, n)``. With a tolerance too, it caps the rank.
    rtol, atol : float, optional
        Keep the smallest rank ``k`` whose :attr:`TruncatedSVD.bound` on
        :math:`\|A - U_kS_kV_k^T\|_2` is at most
        :math:`\max(\mathrm{atol}, \mathrm{rtol}\,\|A\|_2)` (:math:`\|A\|_2` estimated from
        below by :math:`s_1`, so the target errs on the safe side); whichever of ``rank`` and
        the tolerance is met first wins.
    kind : {"auto", "exact", "randomized"}
        ``"auto"`` is exact when ``min(m, n) <= 512`` or when ``rank + oversample`` exceeds
        a quarter of ``min(m, n)``, randomized otherwise; sparse and matrix-free input is
        densified for an exact SVD only when it has at most
        :data:`curlinalg.operands.DENSIFY_MAX_ENTRIES` entries.
    oversample, power_iters, rng
        Randomized SVD parameters (see :func:`range_finder`).

    Returns
    -------
    TruncatedSVD
        ``rank`` (:attr:`TruncatedSVD.rank`) triplets; ``bound`` holds the error bound.

    Raises
    ------
    TypeError, ValueError
        As :func:`curlinalg.cur`: bad input, rank out of range, no stopping rule, negative
        tolerance, unknown ``kind``.

    Warns
    -----
    CURWarning
        The tolerance is below the rounding floor (or the rank cap's bound): the result stops at
        the numerical rank, and the message gives its bound.

    Notes
    -----
    Randomized: :math:`Q` from :func:`range_finder` with :math:`\ell = k + p` columns,
    :math:`B = Q^HA = \hat U \Sigma V^H`, :math:`U = Q\hat U` (for real ``A``, :math:`^H`
    is :math:`^T`). With probability at least
    :math:`1 - 6p^{-p}` (``p >= 4``) the basis error obeys
    :math:`\|(I-QQ^T)A\|_2 \le [1 + 11\sqrt{(k+p)\min(m,n)}]^{1/(2q+1)}\sigma_{k+1}`
    (Halko et al. 2011, eq. (1.9) applied to :math:`(AA^T)^qA` through Theorem 9.2); see
    :func:`randomized_failure_factor`. The reported ``residual`` is a certified a posteriori
    bound on it instead, from 10 Gaussian probes (:func:`curlinalg.bounds.probe_factor`;
    complex input: standard complex Gaussian probes, factor :math:`\delta^{-1/20}`). Halko et
    al. state eq. (1.9) for real Gaussian test matrices; for complex input only the a
    posteriori ``residual`` enters the bound.

    Tolerance mode: one exact SVD, or sketches of 32, 64, ... columns (each with its certified
    residual :math:`r`), until some :math:`k` has :math:`s_{k+1} + r + \rho \le` target. The
    sketch's values are lower bounds of the true ones (:math:`s_j \le \sigma_j`), so the
    returned ``k`` is the numerical rank at the target, up to the slack :math:`r + \rho`:

    .. math:: \sigma_{k+1} \le \mathrm{target}, \qquad \sigma_k > \mathrm{target} - r - \rho.

    This is the rank estimator scipy has as ``estimate_rank(A, eps)``
    (``truncated_svd(A, rtol=eps).rank``) and its SVD in tolerance mode
    (``svd(A, eps_or_k=eps)``), with the bound stated.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.sketch import truncated_svd
    >>> A = np.random.default_rng(0).standard_normal((40, 30))
    >>> t = truncated_svd(A, rank=3)
    >>> t.kind, t.U.shape, t.V.shape
    ('exact', (40, 3), (30, 3))
    >>> B = A[:, :5] @ np.random.default_rng(1).standard_normal((5, 30))
    >>> t = truncated_svd(B, rtol=1e-10)
    >>> t.rank, bool(t.bound <= 1e-10 * np.linalg.norm(B, 2))
    (5, True)
    """
    op = as_operand(A)
    kmax = min(op.shape)
    rank, rtol, atol = _validation.check_stopping(rank, rtol, atol, kmax)
    _validation.check_choice(kind, "kind", ("auto", "exact", "randomized"))
    oversample = _validation.check_int(oversample, "oversample", minimum=0)
    power_iters = _validation.check_int(power_iters, "power_iters", minimum=0)
    _validation.check_rng(rng, op.like)
    if rtol is None and atol is None:
        return _truncated_svd(op, rank, kind, oversample, power_iters, rng, op.xp)
    kcap = kmax if rank is None else rank
    exact = kind == "exact" or (kind == "auto" and kmax <= EXACT_SVD_MAX_DIM and op.densifiable)
    size = kcap if exact else min(kcap, TOLERANCE_FIRST_SKETCH)
    while True:
        svd = _truncated_svd(op, size, kind, oversample, power_iters, rng, op.xp)
        target = max(atol or 0.0, (rtol or 0.0) * _backend.to_float(svd.s[0]))
        # bound(k) = s[k] + residual + rho: the first k with s[k] at or below the rest
        level = target - svd.rounding - svd.residual
        k = max(1, _backend.count_above(svd.s, level)) if level >= 0 else size + 1
        if k <= size:
            return _cut(svd, k)
        if size >= kcap:
            break
        size = min(kcap, 2 * size)
    if rank is not None:
        return svd  # the rank cap was met first
    eps = float(op.xp.finfo(svd.s.dtype).eps)
    numerical = _backend.count_above(svd.s, eps * max(op.shape) * _backend.to_float(svd.s[0]))
    k = max(1, min(svd.rank, numerical))
    cut = _cut(svd, k)
    warnings.warn(
        _errors.SVD_UNREACHABLE.format(target=target, rank=k, error=cut.bound,
                                       floor=cut.rounding),
        _errors.CURWarning,
        stacklevel=2,
    )
    return cut


def _cut(svd: TruncatedSVD, k: int) -> TruncatedSVD:
    """The first ``k`` triplets (every singular value kept, for ``s[k]``)."""
    return replace(svd, U=svd.U[:, :k], V=svd.V[:, :k])


def _truncated_svd(
    op: Operand, rank: int, kind: str, oversample: int, power_iters: int, rng: Any, xp: Any
) -> TruncatedSVD:
    """:func:`truncated_svd` on input already validated (the driver scans ``A`` once)."""
    m, n = op.shape
    size = min(rank + oversample, min(m, n))
    if kind == "auto":
        small = min(m, n) <= EXACT_SVD_MAX_DIM or 4 * size > min(m, n)
        kind = "exact" if small and op.densifiable else "randomized"
    if kind == "exact":
        U, s, Vt = xp.linalg.svd(op.dense(), full_matrices=False)
        return TruncatedSVD(U[:, :rank], s, _backend.ctranspose(Vt[:rank, :]), "exact")
    gen = _backend.Random(rng, op.like)
    Q = _range_finder(op, size, power_iters, gen, xp)
    Bt, residual = _project(op, Q, gen, xp, probes=size < min(m, n))
    Ub, s, Vt = xp.linalg.svd(_backend.ctranspose(Bt), full_matrices=False)
    U_l, V_l = Q @ Ub, _backend.ctranspose(Vt)
    return TruncatedSVD(U_l[:, :rank], s, V_l[:, :rank], "randomized", residual, (U_l, V_l))


def _project(op: Operand, Q: Any, gen: Any, xp: Any, *, probes: bool) -> tuple[Any, float]:
    r""":math:`A^HQ`, and a bound on :math:`\|(I-QQ^H)A\|_2` from the same pass over ``A``.

    The bound is :func:`curlinalg.bounds.probe_factor` times
    :math:`\max_i\|A^H(I-QQ^H)\omega_i\|` over ``RESIDUAL_PROBES`` Gaussian :math:`\omega_i`
    drawn after ``Q``, failing with probability :math:`\delta` (Halko et al. 2011, Lemma 4.1,
    applied to :math:`A^H(I-QQ^H)`, whose norm is that of :math:`(I-QQ^H)A`; complex
    :math:`\omega_i` for complex input). The probes ride along with
    ``Q`` in one product, so the certificate costs no pass of its own.
    """
    if not probes:
        return op.rmatmat(Q), 0.0
    l = Q.shape[1]
    G = gen.normal((op.shape[0], RESIDUAL_PROBES))
    G = G - Q @ (_backend.ctranspose(Q) @ G)
    W = op.rmatmat(xp.concat([Q, G], axis=1))
    Y = W[:, l:]
    top = math.sqrt(_backend.to_float(xp.max(xp.sum(_backend.abs2(Y), axis=0))))
    factor = probe_factor(RESIDUAL_PROBES, RESIDUAL_FAILURE_PROBABILITY,
                          complex=_backend.is_complex_dtype(G.dtype))
    return W[:, :l], factor * top


def randomized_failure_factor(k: int, p: int, q: int, min_dim: int) -> float:
    r"""Factor :math:`[1 + 11\sqrt{(k+p)\min(m,n)}]^{1/(2q+1)}` of Halko et al. eq. (1.9).

    With probability at least :math:`1 - 6p^{-p}` the randomized range finder with ``p`` extra
    columns and ``q`` power iterations has :math:`\|(I-QQ^T)A\|_2 \le` factor
    :math:`\cdot\,\sigma_{k+1}`.
    """
    return (1.0 + 11.0 * math.sqrt((k + p) * min_dim)) ** (1.0 / (2 * q + 1))
