"""Error bounds: selection constants, a priori bounds, and certified a posteriori bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat as aac
import numpy as np

from . import _backend, _dask, _errors, _validation
from .operands import Operand, _is_operator, _is_sparse, as_operand

__all__ = [
    "Certificate",
    "probe_factor",
    "ROUNDING_FACTOR",
    "evaluation_rounding",
    "rounding_term",
    "certify",
    "selection_constant",
    "deim_bound",
    "qdeim_bound",
    "maxvol_bound",
    "power_iterations_needed",
    "spectral_norm",
    "spectral_norm_bound",
]

#: ``ord=2`` certificates are exact (an SVD of the residual) up to this many entries.
EXACT_SPECTRAL_MAX_ENTRIES = 1 << 18
#: Rows per block when the residual is formed blockwise for an exact Frobenius norm.
_BLOCK_ROWS = 1024

#: ``c`` in the rounding term :math:`\rho = c\,\max(m, n)\,u\,\|A\|_2` of :attr:`CURResult.bound`
#: (and of :attr:`curlinalg.IDResult.bound`) and of the norm in an exact :func:`certify`;
#: re-exported as ``curlinalg.cur.ROUNDING_FACTOR``.
ROUNDING_FACTOR = 4.0


def rounding_term(shape: tuple[int, ...], eps: float, norm: float, /) -> float:
    r""":math:`\rho = c\,\max(m, n)\,u\,\|A\|_2` for a matrix of ``shape``, unit roundoff
    ``eps`` and (an estimate of) ``norm`` :math:`= \|A\|_2` (``c`` = :data:`ROUNDING_FACTOR`)."""
    return ROUNDING_FACTOR * max(shape) * eps * norm


def evaluation_rounding(
    inner: int, eps: float, a_fro: float, left_fro: float, right_fro: float, /, *,
    complex: bool = False,
) -> float:
    r"""Twice the largest error of the residual :math:`A - LR` evaluated in floating point.

    Parameters
    ----------
    inner : int
        :math:`k`, the columns of :math:`L` (rows of :math:`R`).
    eps : float
        Machine epsilon of the precision the residual is evaluated in, :math:`2u`.
    a_fro, left_fro, right_fro : float
        :math:`\|A\|_F`, :math:`\|L\|_F` and :math:`\|R\|_F`.
    complex : bool, default False
        The residual is evaluated in complex arithmetic (``eps`` is then that of the real
        counterpart, e.g. float64's for complex128).

    Returns
    -------
    float
        :math:`2\gamma_{k+1}(\|A\|_F + \|L\|_F\|R\|_F)`,
        :math:`\gamma_j = ju/(1 - ju)`; for complex arithmetic
        :math:`2\sqrt2\,\gamma_{k+3}(\|A\|_F + \|L\|_F\|R\|_F)`.

    Notes
    -----
    Each entry :math:`a_{ij} - \sum_l \ell_{il} r_{lj}` is a sum of :math:`k + 1` terms, so
    in any order of summation, fused multiply-adds or not, the computed residual
    :math:`\hat E` satisfies :math:`|\hat E - E| \le \gamma_{k+1}(|A| + |L||R|)` entrywise
    (Higham 2002, Sec. 3.1 and 3.5), hence
    :math:`\|\hat E - E\|_2 \le \|\hat E - E\|_F \le \gamma_{k+1}(\|A\|_F + \|L\|_F\|R\|_F)`.
    Twice that also covers the distance between two evaluations in different orders.
    In complex arithmetic a product is accurate to :math:`\sqrt2\gamma_2` and a sum to
    :math:`u` (Higham 2002, Lemma 3.5), so a sum of :math:`j` products is accurate to
    :math:`\sqrt2\gamma_{j+2}` relative to :math:`|A| + |L||R|` (Higham 2002, Sec. 3.6); the
    moduli's Frobenius norms bound it as above.

    References
    ----------
    .. [1] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM, 2002.

    Examples
    --------
    >>> bool(evaluation_rounding(10, 2.0**-52, 1.0, 1.0, 1.0) < 1e-14)
    True
    """
    u = eps / 2
    j = inner + 1 + (2 if complex else 0)
    if j * u >= 1:
        return math.inf
    factor = math.sqrt(2.0) if complex else 1.0
    return 2 * factor * (j * u / (1 - j * u)) * (a_fro + left_fro * right_fro)


def probe_factor(probes: int, delta: float, /, *, complex: bool = False) -> float:
    r"""The factor :math:`c` in :math:`\|E\|_2 \le c\max_i\|E\omega_i\|` over ``probes``
    independent Gaussian :math:`\omega_i`, failing with probability at most ``delta``.

    Real :math:`\omega_i`: :math:`c = \alpha\sqrt{2/\pi}` with :math:`\alpha = \delta^{-1/r}`
    (Halko et al. 2011, Lemma 4.1). Standard complex Gaussian :math:`\omega_i`
    (:math:`\mathbb{E}|\omega_{ij}|^2 = 1`): :math:`c = \delta^{-1/(2r)}`. For complex
    :math:`\omega` and :math:`E = \sum_j\sigma_ju_jv_j^H`, :math:`\|E\omega\| \ge
    \sigma_1|v_1^H\omega|` and :math:`v_1^H\omega` is standard complex normal, so
    :math:`P(|v_1^H\omega| < t) = 1 - e^{-t^2} \le t^2`; with :math:`t = \delta^{1/(2r)}` all
    :math:`r` probes fall short with probability at most :math:`\delta`.

    Examples
    --------
    >>> round(probe_factor(10, 1e-6), 3), round(probe_factor(10, 1e-6, complex=True), 3)
    (3.176, 1.995)
    """
    if complex:
        return delta ** (-1.0 / (2 * probes))
    return delta ** (-1.0 / probes) * math.sqrt(2.0 / math.pi)


def selection_constant(V: Any, rows: Any, /) -> float:
    r"""The selection constant :math:`\eta = \|(P^TV)^+\|_2 = 1/\sigma_k(V[\mathrm{rows}])`.

    Parameters
    ----------
    V : array, shape (n, k)
        Orthonormal basis.
    rows : int array, shape (r,)
        Selected rows, ``r >= k`` for a finite constant.

    Returns
    -------
    float
        ``inf`` when ``V[rows]`` has rank below ``k`` (fewer rows than ``k``, or a singular
        selection).

    Notes
    -----
    For a projector :math:`\Pi = V(P^TV)^+P^T` onto :math:`\mathrm{range}(V)` with
    :math:`P^TV` of full column rank, :math:`\|f - \Pi f\| \le \eta\,\|(I - VV^T)f\|`
    (Sorensen & Embree 2016, Lemma 3.2, whose proof carries over to :math:`r \ge k` rows).

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, SIAM J. Sci. Comput. 38(3), 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import selection_constant
    >>> selection_constant(np.eye(3)[:, :2], np.array([0, 1]))
    1.0
    """
    xp = _backend.namespace(V, rows)
    k = V.shape[1]
    if rows.shape[0] < k:
        return math.inf
    s = xp.linalg.svdvals(xp.take(V, rows, axis=0))
    return constant_from_smallest(_backend.to_float(s[k - 1]), V.shape, float(xp.finfo(V.dtype).eps))


def constant_from_smallest(smin: float, shape: tuple[int, ...], eps: float, /) -> float:
    r""":math:`1/\sigma_k(V[\mathrm{rows}])`, or ``inf`` when :math:`\sigma_k` is at the rounding
    level ``eps * max(shape)`` of the ``shape`` basis (a singular selection)."""
    return math.inf if smin <= eps * max(shape) else 1.0 / smin


def deim_bound(n: int, k: int) -> float:
    r"""DEIM's a priori constant :math:`\sqrt{nk/3}\,2^k` (Sorensen & Embree 2016, Lemma 3.2).

    Examples
    --------
    >>> round(deim_bound(10, 2), 3)
    10.328
    """
    return math.sqrt(n * k / 3.0) * 2.0**k if k < 1000 else math.inf


def qdeim_bound(n: int, k: int) -> float:
    r"""Q-DEIM's a priori constant :math:`\sqrt{n-k+1}\,\sqrt{4^k+6k-1}/3` (Drmac & Gugercin 2016).

    Examples
    --------
    >>> round(qdeim_bound(10, 2), 3)
    5.196
    """
    return math.sqrt(n - k + 1) * math.sqrt(4.0**k + 6 * k - 1) / 3.0 if k < 500 else math.inf


def maxvol_bound(n: int, k: int, tol: float) -> float:
    r"""Maxvol's constant :math:`\sqrt{k + \mathrm{tol}^2\,k(n-k)}` for coefficients bounded by ``tol``.

    Examples
    --------
    >>> maxvol_bound(5, 1, 1.0)
    2.23606797749979
    """
    return math.sqrt(k + tol * tol * k * (n - k))


@dataclass(frozen=True)
class Certificate:
    """A posteriori bound on :math:`\\|A - CUR\\|`.

    Attributes
    ----------
    bound : float
        Upper bound on the error; holds with probability at least ``1 - failure_probability``
        over the probes (certainly when ``exact``, rounding included: see :func:`certify`).
    estimate : float
        When ``exact``, the computed norm of the computed residual (``bound`` adds what
        rounding may hide); for the power-iteration spectral certificate, the
        largest Rayleigh quotient, a lower bound on the error that always holds; for the one-pass
        certificates, the largest (``ord=2``) or mean-square (``"fro"``) probe residual norm.
    ord : {2, "fro"}
    failure_probability : float
        0.0 when ``exact``.
    probes : int
        Number of random probe vectors used (0 when ``exact``).
    exact : bool
    """

    bound: float
    estimate: float
    ord: Any
    failure_probability: float
    probes: int
    exact: bool


def _as_products(A: Any) -> tuple[Any, Any, Any]:
    """Split ``A`` into (forward product or None, adjoint product or None, dense array or None)."""
    if isinstance(A, np.matrix) or _is_sparse(A) or _dask.is_dask(A) or (
        _is_operator(A) and hasattr(A, "rmatvec")
    ):
        A = as_operand(A)
    if isinstance(A, Operand):
        return (None, None, A.A) if A.kind == "dense" else (A.matmat, A.rmatmat, None)
    if aac.is_array_api_obj(A):
        return None, None, A
    if hasattr(A, "matmat") or hasattr(A, "matvec"):
        forward = A.matmat if hasattr(A, "matmat") else (lambda X: _columns(A.matvec, X))
        adjoint = None
        if hasattr(A, "rmatmat"):
            adjoint = A.rmatmat
        elif hasattr(A, "rmatvec"):
            adjoint = lambda Y: _columns(A.rmatvec, Y)  # noqa: E731
        return forward, adjoint, None
    if isinstance(A, tuple) and len(A) == 2 and all(callable(f) for f in A):
        return (lambda X: _columns(A[0], X)), (lambda Y: _columns(A[1], Y)), None
    if callable(A):
        return A, None, None
    raise TypeError(
        "A must be an array, a scipy LinearOperator, a callable X -> A @ X, or a pair "
        f"(matvec, rmatvec) of callables; got {type(A).__name__}"
    )


def _dtype_of(A: Any, dense: Any) -> Any:
    """The dtype of ``A`` where it declares one (None for a bare callable or a pair)."""
    return dense.dtype if dense is not None else getattr(A, "dtype", None)


def _columns(matvec: Callable[[Any], Any], X: Any) -> Any:
    xp = aac.array_namespace(X)
    return xp.stack([matvec(X[:, j]) for j in range(X.shape[1])], axis=1)


def certify(
    A: Any,
    result: Any,
    /,
    *,
    ord: Any = 2,
    failure_probability: float = 1e-6,
    probes: int | None = None,
    rng: Any = None,
) -> Certificate:
    r"""Certified a posteriori upper bound on :math:`\|A - CUR\|`.

    Parameters
    ----------
    A : array, scipy.sparse matrix, scipy.sparse.linalg.LinearOperator, callable, or (matvec, rmatvec) pair
        The matrix, dense, sparse, or only through products. A LinearOperator with ``rmatmat`` /
        ``rmatvec``, or a pair, also gives :math:`A^TY`, which the sharp spectral certificate
        needs; a bare callable :math:`X \mapsto AX` gets the looser one-pass certificate.
    result : CURResult
        The approximation to certify (anything with ``shape`` and the stable ``factors``
        ``(left, right)``, as :class:`curlinalg.CURResult` has).
    ord : {2, "fro"}, default 2
    failure_probability : float, default 1e-6
        :math:`\delta`, in ``(0, 1)``: the bound fails with probability at most this.
    probes : int, optional
        Number of Gaussian probes. Default 4 independent power-iteration starts for ``ord=2``
        (20 one-pass probes when only :math:`AX` is available), and
        :math:`\lceil 16\ln(1/\delta)\rceil` for ``"fro"``.
    rng : None, int or Generator
        Seed of the probes.

    Returns
    -------
    Certificate

    Raises
    ------
    TypeError
        ``A`` is of an unsupported kind, or a LinearOperator without ``matvec``/``matmat``; ``A``
        and the result mix real and complex dtypes.
    ValueError
        Bad ``ord``, ``failure_probability`` or ``probes``; or shapes that do not match.

    Notes
    -----
    With :math:`E = A - CUR` (evaluated in the result's stable factored form):

    * ``ord=2``, exact: for a dense ``A`` with at most :math:`2^{18}` entries, an SVD of
      :math:`E`.
    * ``ord=2``, power iterations (when :math:`A^TY` is available): ``probes`` independent
      Gaussian starts :math:`x_0`, each iterated :math:`t` times as
      :math:`x \leftarrow E^TEx/\|E^TEx\|`; ``estimate`` is the largest Rayleigh quotient
      :math:`\sqrt{\mu} = \max\|Ex_t\|`, a lower bound on :math:`\|E\|_2` that always holds, and
      ``bound`` is :math:`\sqrt{\mu/(1-\epsilon)} = 1.5\sqrt{\mu}` (:math:`\epsilon = 5/9`), so the
      certificate is never more than 1.5 times the true error. By Kuczyński & Woźniakowski
      (1992, Theorem 4.1), one start fails (:math:`\mu < (1-\epsilon)\|E\|_2^2`) with probability
      at most :math:`0.824\sqrt{n}\,(1-\epsilon)^{t}`; the starts are independent, so :math:`t`
      is the smallest with :math:`[0.824\sqrt n\,(1-\epsilon)^t]^{\mathrm{probes}} \le \delta`.
    * ``ord=2``, one pass (only :math:`AX` available):
      :math:`\|E\|_2 \le \alpha\sqrt{2/\pi}\max_i\|E\omega_i\|` except with probability
      :math:`\alpha^{-r}` (Halko et al. 2011, Lemma 4.1); we take :math:`\alpha = \delta^{-1/r}`.
    * ``"fro"``: for a dense ``A`` the residual is formed in row blocks and the norm is exact.
      Otherwise :math:`T = \frac1r\sum_i\|E\omega_i\|^2` is a weighted sum of
      :math:`\chi^2_1` variables with mean :math:`\|E\|_F^2`, and the Laurent-Massart lower tail
      gives :math:`T \ge \|E\|_F^2(1 - 2\sqrt{\ln(1/\delta)/r})` except with probability
      :math:`\delta`, so :math:`\|E\|_F \le \sqrt{T/(1 - 2\sqrt{\ln(1/\delta)/r})}`
      (requires :math:`r > 4\ln(1/\delta)`).

    Complex input (``A`` and the result complex): the probes and starts are standard complex
    Gaussian, every :math:`E^T` is :math:`E^H`, and the constants become: the one-pass factor
    :math:`\delta^{-1/(2r)}` (:func:`probe_factor`); for power iterations the theorem applied to
    the real :math:`2n \times 2n` form of :math:`E^HE` (a complex start is a real Gaussian
    :math:`2n`-vector), so :math:`t` is that of :math:`2n` columns; ``"fro"``'s
    :math:`T` is a sum of :math:`2r` times as many :math:`\chi^2_1` terms, each of half the
    weight, for which the real factor holds a fortiori. A real result certified against a
    complex ``A`` (or the other way round) is refused: real probes can miss a complex
    residual's norm.

    An exact certificate holds in floating point: ``estimate`` is the norm :math:`\hat e` computed
    from the computed residual :math:`\hat E`, and ``bound`` is
    :math:`\hat e + 2\gamma_{k+1}(\|A\|_F + \|L\|_F\|R\|_F) + c\max(m, n)\,u\,\hat e`
    (complex: :math:`2\sqrt2\gamma_{k+3}` and :math:`\sqrt2\,u`),
    with :math:`(L, R)` the result's factors, :math:`k` their inner dimension and
    :math:`c` = :data:`ROUNDING_FACTOR`. The middle term bounds the error of evaluating
    :math:`A - LR` in any order (:func:`evaluation_rounding`), twice, so that ``bound`` is above
    both the exact residual's norm of the stored factors and that of any other evaluation of it
    in the same precision; the last bounds the error of the SVD (or of the sum of squares) with
    the dimension factor LAPACK's error bounds use. The probabilistic certificates bound the
    residual as evaluated in the input's precision.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson and J. A. Tropp, SIAM Review 53(2), 2011.
    .. [2] J. Kuczyński and H. Woźniakowski, "Estimating the largest eigenvalue by the power and
       Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13(4), 1992.
    .. [3] B. Laurent and P. Massart, "Adaptive estimation of a quadratic functional by model
       selection", Ann. Statist. 28(5), 2000, Lemma 1.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import cur, certify
    >>> A = np.random.default_rng(0).standard_normal((60, 40))
    >>> res = cur(A, rank=10, rng=0)
    >>> c = certify(A, res, ord="fro")
    >>> c.exact, bool(abs(c.bound - np.linalg.norm(A - res.to_dense())) < 1e-9)
    (True, True)
    """
    if ord not in (2, "fro"):
        raise ValueError(f"ord must be 2 or 'fro', got {ord!r}")
    delta = _validation.check_tol(failure_probability, "failure_probability")
    if not 0 < delta < 1:
        raise ValueError(f"failure_probability must be in (0, 1), got {failure_probability!r}")
    matmat, rmatmat, dense = _as_products(A)
    if not hasattr(result, "factors") or not hasattr(result, "shape"):
        raise TypeError(_errors.NOT_A_RESULT.format(kind=type(result).__name__))
    left, right = result.factors
    xp = _backend.namespace(left, right)
    m, n = result.shape
    _validation.check_same_field(**{"A": _dtype_of(A, dense), "the result's left factor": left,
                                    "the result's right factor": right})
    if dense is not None:
        _validation.check_matrix(dense)
        _backend.namespace(dense, left)
        if tuple(dense.shape) != (m, n):
            raise ValueError(f"A has shape {tuple(dense.shape)} but the CUR is {m} x {n}")
        if ord == "fro":
            return _exact_fro(dense, left, right, xp)
        if m * n <= EXACT_SPECTRAL_MAX_ENTRIES:
            err = _backend.to_float(xp.linalg.svdvals(dense - left @ right)[0])
            a_fro = math.sqrt(_backend.to_float(xp.sum(_backend.abs2(dense))))
            rho = _exact_rounding(err, dense, a_fro, left, right, xp)
            return Certificate(err + rho, err, 2, 0.0, 0, True)
        matmat = lambda X: dense @ X  # noqa: E731
        rmatmat = lambda Y: _backend.ctranspose(dense) @ Y  # noqa: E731
    log_inv = math.log(1.0 / delta)
    power = ord == 2 and rmatmat is not None
    if probes is None:
        probes = (POWER_STARTS if power else 20) if ord == 2 else int(math.ceil(16 * log_inv))
    probes = _validation.check_int(probes, "probes", minimum=1)
    if ord == "fro" and probes <= 4 * log_inv:
        raise ValueError(
            f"ord='fro' needs probes > 4 ln(1/failure_probability) = {4 * log_inv:.1f}, "
            f"got {probes}; pass more probes or a larger failure_probability"
        )

    def residual(X: Any) -> Any:
        AX = matmat(X)
        if tuple(AX.shape) != (m, X.shape[1]):
            raise ValueError(f"A @ X returned shape {tuple(AX.shape)}, expected {(m, X.shape[1])}")
        if _backend.is_complex_dtype(AX.dtype) and not _backend.is_complex_dtype(X.dtype):
            # real probes can miss a complex residual's norm: refuse rather than under-bound
            _validation.check_same_field(**{"A's products": AX, "the result's factors": left})
        return AX - left @ (right @ X)

    # probes in the factors' dtype: complex Gaussian ones for a complex result
    omega = _backend.Random(rng, left).normal((n, probes))
    cplx = _backend.is_complex_dtype(omega.dtype)
    if power:
        adjoint = lambda Y: (  # noqa: E731
            rmatmat(Y) - _backend.ctranspose(right) @ (_backend.ctranspose(left) @ Y))
        top, bound = spectral_norm_bound(residual, adjoint, omega, delta)
        return Certificate(bound, top, 2, delta, probes, False)
    col_sq = xp.sum(_backend.abs2(residual(omega)), axis=0)
    if ord == 2:
        top = math.sqrt(_backend.to_float(xp.max(col_sq)))
        factor = probe_factor(probes, delta, complex=cplx)
        return Certificate(factor * top, top, 2, delta, probes, False)
    mean_sq = _backend.to_float(xp.mean(col_sq))
    shrink = 1.0 - 2.0 * math.sqrt(log_inv / probes)
    return Certificate(math.sqrt(mean_sq / shrink), math.sqrt(mean_sq), "fro", delta, probes, False)


@dataclass(frozen=True)
class _Zero:
    r"""The zero approximation: certifying ``A`` against it bounds :math:`\|A\|`."""

    shape: tuple[int, int]
    factors: tuple[Any, Any]


def spectral_norm(
    A: Any, /, *, failure_probability: float = 1e-6, rng: Any = None
) -> Certificate:
    r"""Certified estimate of :math:`\|A\|_2`: a lower bound that always holds and an upper bound.

    Parameters
    ----------
    A : array, scipy.sparse matrix, LinearOperator or dask array, shape (m, n)
        Anything :func:`certify` takes that has a ``shape``; the norm of a difference
        :math:`\|A - B\|_2` is that of ``A - B`` (for operators,
        ``aslinearoperator(A) - aslinearoperator(B)``).
    failure_probability : float, default 1e-6
        :math:`\delta`: the upper bound fails with probability at most this (0 when exact).
    rng : None, int or Generator
        Seed of the power iterations' starts.

    Returns
    -------
    Certificate
        ``estimate`` :math:`\le \|A\|_2 \le` ``bound``.

    Raises
    ------
    TypeError
        ``A`` without a ``shape`` (a bare callable: pass a LinearOperator), or not a matrix
        :func:`certify` takes.

    Notes
    -----
    :func:`certify` of ``A`` against the zero matrix: for dense ``A`` with at most
    :math:`2^{18}` entries, the largest singular value :math:`\hat\sigma_1` with
    ``bound`` :math:`= \hat\sigma_1 + 2\gamma_1\|A\|_F + 4\max(m,n)\,u\,\hat\sigma_1`
    (certain; complex ``A``: the constants of :func:`certify`); otherwise 4 independent
    Gaussian starts (complex for complex ``A``) of :math:`t` power iterations on
    :math:`A^HA`, ``estimate`` the largest Rayleigh quotient (a lower bound that always holds)
    and ``bound`` :math:`= 1.5\,` ``estimate``, which fails with probability at most
    :math:`[0.824\sqrt n\,(4/9)^t]^4 \le \delta` (Kuczyński & Woźniakowski 1992,
    Theorem 4.1; :func:`power_iterations_needed`). This is scipy's
    ``estimate_spectral_norm`` (and, applied to a difference, ``estimate_spectral_norm_diff``)
    with both sides of the estimate stated.

    References
    ----------
    .. [1] J. Kuczyński and H. Woźniakowski, "Estimating the largest eigenvalue by the power and
       Lanczos algorithms with a random start", SIAM J. Matrix Anal. Appl. 13(4), 1992.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import spectral_norm
    >>> A = np.diag([3.0, 1.0, 0.5])
    >>> c = spectral_norm(A)
    >>> bool(c.estimate <= 3.0 <= c.bound), c.exact
    (True, True)
    """
    shape = getattr(A, "shape", None)
    if shape is None or len(shape) != 2:
        raise TypeError(
            f"spectral_norm needs a matrix with a shape (array, sparse matrix, LinearOperator), "
            f"got {type(A).__name__}; wrap products as scipy.sparse.linalg.LinearOperator(shape, "
            "matvec=..., rmatvec=...)"
        )
    m, n = (int(d) for d in shape)
    if aac.is_array_api_obj(A) and not _dask.is_dask(A):
        xp = _backend.namespace(A)
        zeros = lambda s: xp.zeros(s, dtype=A.dtype, device=aac.device(A))  # noqa: E731
    else:
        zeros = lambda s: np.zeros(s, dtype=np.dtype(A.dtype))  # noqa: E731
    return certify(A, _Zero((m, n), (zeros((m, 1)), zeros((1, n)))), ord=2,
                   failure_probability=failure_probability, rng=rng)


#: Independent starts of the power-iteration certificate.
POWER_STARTS = 4
#: The power-iteration certificate is at most this factor above the true spectral norm.
SPECTRAL_OVERESTIMATE = 1.5


def power_iterations_needed(n: int, starts: int, failure_probability: float) -> int:
    r"""Iterations :math:`t` for which ``starts`` independent power iterations on an ``n``-column
    operator all miss :math:`(1-\epsilon)\|E\|_2^2` with probability at most
    ``failure_probability``, with :math:`1/\sqrt{1-\epsilon} =` :data:`SPECTRAL_OVERESTIMATE`.

    :math:`t` is the smallest integer with
    :math:`[0.824\sqrt n\,(1-\epsilon)^t]^{\mathrm{starts}} \le \delta` (Kuczyński &
    Woźniakowski 1992, Theorem 4.1, with their exponent :math:`t + 1/2` rounded down to ``t``).

    Examples
    --------
    >>> power_iterations_needed(2000, 4, 1e-6)
    9
    """
    one_minus_eps = 1.0 / SPECTRAL_OVERESTIMATE**2
    per_start = failure_probability ** (1.0 / starts)
    need = math.log(0.824 * math.sqrt(max(n, 1)) / per_start) / -math.log(one_minus_eps)
    return max(1, int(math.ceil(need)))


def spectral_norm_bound(
    apply: Callable[[Any], Any], adjoint: Callable[[Any], Any], X: Any, delta: float, /
) -> tuple[float, float]:
    r"""Estimate and probabilistic upper bound of an operator's 2-norm by power iterations.

    Parameters
    ----------
    apply, adjoint : callable
        :math:`X \mapsto EX` and :math:`Y \mapsto E^TY` on blocks of columns.
    X : array, shape (n, s)
        Independent standard Gaussian starts, one per column.
    delta : float
        Failure probability, in ``(0, 1)``.

    Returns
    -------
    estimate : float
        :math:`\max_i \|Ex_i\|/\|x_i\|` after the iterations: a lower bound on
        :math:`\|E\|_2` that always holds.
    bound : float
        ``SPECTRAL_OVERESTIMATE * estimate``, an upper bound except with probability ``delta``
        (Kuczyński & Woźniakowski 1992, Theorem 4.1; see :func:`certify` and
        :func:`power_iterations_needed`).

    Examples
    --------
    >>> import numpy as np
    >>> E = np.diag([3.0, 1.0, 0.5])
    >>> est, bound = spectral_norm_bound(lambda X: E @ X, lambda Y: E.T @ Y,
    ...                                  np.random.default_rng(0).standard_normal((3, 4)), 1e-6)
    >>> bool(est <= 3.0 <= bound)
    True
    """
    xp = aac.array_namespace(X)
    # a complex n-vector is a real 2n-vector: the theorem applies to the real form of E^H E
    n = X.shape[0] * (2 if _backend.is_complex_dtype(X.dtype) else 1)
    iters = power_iterations_needed(n, X.shape[1], delta)
    for _ in range(iters):
        X = adjoint(apply(X))
        norms = xp.sqrt(xp.sum(_backend.abs2(X), axis=0))
        X = X / xp.where(norms > 0, norms, xp.ones_like(norms))[None, :]
    Y = apply(X)
    x_sq = xp.sum(_backend.abs2(X), axis=0)
    ratio = xp.sum(_backend.abs2(Y), axis=0) / xp.where(x_sq > 0, x_sq, xp.ones_like(x_sq))
    top = math.sqrt(_backend.to_float(xp.max(ratio)))
    return top, SPECTRAL_OVERESTIMATE * top


def _exact_rounding(err: float, A: Any, a_fro: float, left: Any, right: Any, xp: Any, /) -> float:
    """What an exact certificate adds to the computed norm ``err`` of the computed residual:
    the residual's evaluation (:func:`evaluation_rounding`) and the norm's
    (:func:`rounding_term`), in the lowest precision among ``A`` and the factors."""
    eps = max(_backend.machine_eps(t.dtype, xp) for t in (A, left, right))
    cplx = any(_backend.is_complex_dtype(t.dtype) for t in (A, left, right))
    left_fro = math.sqrt(_backend.to_float(xp.sum(_backend.abs2(left))))
    right_fro = math.sqrt(_backend.to_float(xp.sum(_backend.abs2(right))))
    shape = (left.shape[0], right.shape[1])
    norm_eps = _backend.COMPLEX_ROUNDING_FACTOR * eps if cplx else eps
    return (evaluation_rounding(left.shape[1], eps, a_fro, left_fro, right_fro, complex=cplx)
            + rounding_term(shape, norm_eps, err))


def _exact_fro(A: Any, left: Any, right: Any, xp: Any) -> Certificate:
    total = a_sq = 0.0
    for start in range(0, A.shape[0], _BLOCK_ROWS):
        rows = A[start : start + _BLOCK_ROWS, :]
        block = rows - left[start : start + _BLOCK_ROWS, :] @ right
        total += _backend.to_float(xp.sum(_backend.abs2(block)))
        a_sq += _backend.to_float(xp.sum(_backend.abs2(rows)))
    err = math.sqrt(total)
    rho = _exact_rounding(err, A, math.sqrt(a_sq), left, right, xp)
    return Certificate(err + rho, err, "fro", 0.0, 0, True)
