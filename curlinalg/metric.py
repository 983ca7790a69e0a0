r"""The activation metric :math:`\|(A - A')L\|_F` with :math:`LL^T = H`, and CUR in it.

A linear layer ``y = W x`` fed calibration inputs ``X`` (tokens x features) makes an output
error :math:`\|(W - W')X^T\|_F^2 = \mathrm{tr}((W - W')H(W - W')^T)` with the Gram
:math:`H = X^TX`. With any factor :math:`LL^T = H` this is :math:`\|(W - W')L\|_F^2`: the
problem becomes an ordinary low-rank problem for the *whitened* matrix :math:`B = WL`, and an
approximation :math:`B'` of it maps back to :math:`W' = B'L^{-1}`.

:func:`whitening` computes the factor robustly (``H`` from few tokens or dead features is
singular); :class:`Whitening` maps matrices in and out of the metric; :func:`weighted_norm`
measures it; :func:`weighted_cur` is a CUR selected in it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from . import _backend, _errors, _validation
from .bounds import selection_constant

__all__ = ["WeightedCUR", "Whitening", "gram_matrix", "whitening", "weighted_norm", "weighted_cur", "mixed_cross", "SELECTORS"]

#: Selectors accepted by :func:`weighted_cur` and :func:`curlinalg.interpolative.interpolative`.
SELECTORS = ("deim", "qdeim", "maxvol")

_ERR_GRAM = (
    "expected a square symmetric Gram matrix H = X^T X of shape (n, n), got shape {shape}; "
    "pass the input covariance of the layer (features x features)"
)
_ERR_SHAPES = "A has {n} columns but the metric is {k} x {k}; pass the Gram of A's inputs"
def _real_only(what: str) -> tuple[str, str]:
    """``real_only`` of :func:`curlinalg._validation.check_dtype` for the routines here."""
    return (what, _errors.METRIC_REAL_ONLY)


#: Column blocks of :func:`gram_matrix` hold at most this many columns.
GRAM_BLOCK = 512
#: The shift grows tenfold per failed Cholesky from ``ridge`` up to this relative size.
MAX_RELATIVE_SHIFT = 1e-2


def _plus_diagonal(H: Any, shift: float, /) -> Any:
    """``H + shift * I`` as one copy of ``H`` with its diagonal shifted in place (no identity
    and no scaled identity: two ``n x n`` temporaries fewer, 2 x 6.1 GiB for a 28672-wide Gram)."""
    out = H.clone() if aac.is_torch_array(H) else H.copy()
    if aac.is_torch_array(out):
        out.diagonal().add_(shift)
    else:  # numpy, cupy: the diagonal of a contiguous copy is every (n + 1)-th element
        out.reshape(-1)[:: out.shape[0] + 1] += shift
    return out


def _cholesky(H: Any, xp: Any) -> Any | None:
    """The Cholesky factor, or None when ``H`` is not numerically positive definite."""
    try:
        L = xp.linalg.cholesky(H)
    except Exception as exc:  # numpy.linalg.LinAlgError, torch.linalg.LinAlgError, cupy
        if "LinAlgError" in type(exc).__name__ or "positive" in str(exc).lower():
            return None
        raise
    return L if _validation.all_finite(L, xp) else None


def solve_right(B: Any, T: Any, /, *, lower: bool) -> Any:
    """``B T^{-1}`` for a triangular ``T`` (``X T = B``), on ``B``'s backend and device."""
    if aac.is_torch_array(B):
        import torch

        return torch.linalg.solve_triangular(T, B, upper=not lower, left=False)
    if _backend.is_host(B):
        import scipy.linalg as sla

        return sla.solve_triangular(T.T, B.T, lower=not lower).T
    xp = aac.array_namespace(B)
    return xp.linalg.solve(T.T, B.T).T


@dataclass(frozen=True)
class Whitening:
    r"""A factor :math:`LL^T = H + \delta I` of a Gram matrix: the metric :math:`\|\cdot\,L\|_F`.

    Attributes
    ----------
    gram : array, shape (n, n)
        The Gram matrix ``H`` (the input itself when it is float64, not a copy).
    L : array, shape (n, n)
        Lower triangular, :math:`LL^T = H + \delta I` (float64).
    shift : float
        :math:`\delta`, the absolute shift added to the diagonal.
    route : {"cholesky", "eigh"}
        ``"eigh"`` when even the largest shift failed and the eigenvalues of ``H`` were
        clamped at :math:`\delta` before the factorisation.
    requested_shift : float
        :math:`\delta_0 = \mathrm{ridge}\cdot\mathrm{mean}(\mathrm{diag}\,H)`, the shift
        asked for; ``shift`` exceeds it, or ``route`` is ``"eigh"``, only when the factorisation
        had to fall back (:attr:`fell_back`).
    """

    gram: Any
    L: Any
    shift: float
    route: str
    requested_shift: float = 0.0

    @property
    def fell_back(self) -> bool:
        """Whether the requested shift failed: a larger one, or the eigendecomposition, was used."""
        return self.route != "cholesky" or self.shift > self.requested_shift

    def describe(self) -> str:
        r"""The factorisation in words, shifts relative to :math:`\mathrm{mean}(\mathrm{diag}\,H)`.

        Examples
        --------
        >>> import numpy as np
        >>> from curlinalg.metric import whitening
        >>> whitening(np.ones((3, 3)), ridge=0.0).describe()
        'shifted Cholesky in float64, shift 1e-15 x mean(diag H) (asked 0)'
        """
        xp = aac.array_namespace(self.gram)
        scale = _backend.to_float(xp.mean(xp.linalg.diagonal(self.gram))) or 1.0
        rel, asked = self.shift / scale, self.requested_shift / scale
        if self.route == "eigh":
            return f"eigendecomposition, eigenvalues clamped at {rel:.3g} x mean(diag H) (asked shift {asked:.3g})"
        return f"shifted Cholesky in float64, shift {rel:.3g} x mean(diag H) (asked {asked:.3g})"

    def shifted_gram(self) -> Any:
        """:math:`H + \\delta I`, formed as the factor's input was."""
        return _plus_diagonal(self.gram, self.shift)

    def whiten(self, A: Any, /, *, cross: Any = None) -> Any:
        r"""The whitened matrix :math:`B = AL`, or :math:`B = A\,K^T L^{-T}` with ``cross=K``.

        With ``cross`` :math:`K = X_c^T X_d` (inputs of a compressed path against the dense
        inputs ``X_d``), :math:`\min_{\mathrm{rank}\,M\le r}\|MX_c^T - AX_d^T\|_F` is solved
        by :math:`M = B_rL^{-1}`: reduced-rank regression (Izenman 1975).
        """
        if A.shape[1] != self.L.shape[0]:
            raise ValueError(_ERR_SHAPES.format(n=A.shape[1], k=self.L.shape[0]))
        real_only = _real_only("Whitening.whiten")
        _validation.check_dtype(A.dtype, aac.array_namespace(A), real_only=real_only)
        if cross is not None:
            _validation.check_dtype(cross.dtype, aac.array_namespace(cross), real_only=real_only,
                                    name="cross")
        if cross is None:
            return A @ self.L
        return solve_right(A @ cross.T, self.L.T, lower=False)

    def unwhiten(self, B: Any, /) -> Any:
        """Map a whitened matrix back: :math:`BL^{-1}`."""
        return solve_right(B, self.L, lower=True)


def whitening(H: Any, /, *, ridge: float = 1e-6) -> Whitening:
    r"""Factor a Gram matrix :math:`H = X^TX` for the activation metric, robustly.

    Parameters
    ----------
    H : array, shape (n, n)
        Symmetric positive semi-definite; cast to float64.
    ridge : float, default 1e-6
        First relative shift: :math:`\delta = \mathrm{ridge}\cdot\mathrm{mean}(\mathrm{diag}\,H)`
        (the mean diagonal is taken as 1 when it is 0).

    Returns
    -------
    Whitening

    Raises
    ------
    ValueError
        ``H`` is not square, or holds NaN or Inf; ``ridge`` is negative.
    TypeError
        ``H`` is complex (the activation metric is real-only).

    Notes
    -----
    Shifted Cholesky with an adaptive ridge: :math:`L = \mathrm{chol}(H + \delta I)`; when the
    factorisation fails (``H`` singular and ``ridge`` too small for the rounding errors),
    :math:`\delta` grows tenfold per try up to ``1e-2`` times the mean diagonal. If that fails
    too, the eigendecomposition route: :math:`H = Q\Lambda Q^T`, eigenvalues clamped at
    :math:`\delta`, and the Cholesky factor of :math:`Q\max(\Lambda, \delta)Q^T`. Never a raw
    ``LinAlgError``. The error :math:`\|EL\|_F^2 = \mathrm{tr}(E(H + \delta I)E^T)` then
    differs from the unshifted metric by :math:`\delta\|E\|_F^2`. The result keeps the shift
    asked for, :math:`\delta_0` (``requested_shift``), so that callers can report where the
    factorisation fell back (:attr:`Whitening.fell_back`, :meth:`Whitening.describe`): ``H``
    from fewer tokens than features is singular, and with ``ridge=0`` it then usually falls back.

    References
    ----------
    .. [1] X. Wang et al., "SVD-LLM: truncation-aware singular value decomposition for large
       language model compression", arXiv 2403.07378, 2024 (whitening by a Cholesky factor).
    .. [2] N. J. Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., SIAM 2002,
       ch. 10 (Cholesky of semi-definite matrices).

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.metric import whitening
    >>> X = np.random.default_rng(0).standard_normal((50, 4))
    >>> w = whitening(X.T @ X, ridge=0.0)
    >>> bool(np.allclose(w.L @ w.L.T, X.T @ X)), w.route
    (True, 'cholesky')
    """
    xp = _backend.namespace(H)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] == 0:
        raise ValueError(_ERR_GRAM.format(shape=tuple(H.shape)))
    if _backend.is_complex_dtype(H.dtype):
        _validation.check_dtype(H.dtype, xp, real_only=_real_only("whitening"), name="H")
    ridge = _validation.check_tol(ridge, "ridge")
    if H.dtype != xp.float64:  # astype copies by default; a float64 Gram is used as it is
        H = xp.astype(H, xp.float64)
    if not _validation.all_finite(H, xp):
        raise ValueError("the Gram matrix contains NaN or Inf; check the calibration inputs")
    n = H.shape[0]
    scale = _backend.to_float(xp.mean(xp.linalg.diagonal(H))) or 1.0
    shift = requested = ridge * scale
    cap = max(MAX_RELATIVE_SHIFT * scale, requested)
    while True:
        L = _cholesky(_plus_diagonal(H, shift), xp)
        if L is not None:
            return Whitening(H, L, shift, "cholesky", requested)
        if shift >= cap:
            break
        shift = min(max(10.0 * shift, 1e-15 * scale), cap)  # min: 1e-6 * 10**4 rounds below 1e-2
    vals, vecs = xp.linalg.eigh(H)
    floor = max(shift, float(xp.finfo(H.dtype).eps) * n * abs(scale))
    clamped = (vecs * xp.where(vals > floor, vals, floor)) @ vecs.T
    L = _cholesky((clamped + clamped.T) / 2, xp)
    if L is None:  # pragma: no cover - a clamped spectrum is positive definite
        raise ValueError("could not factor the Gram matrix even after clamping its spectrum")
    return Whitening(H, L, floor, "eigh", requested)


_ERR_MIX = "mix must be a real number in [0, 1] (the weight of the target A X_c^T), got {mix!r}"
_ERR_MIX_RIDGE = (
    "ridge={ridge!r} asks for a shift lambda = {shift:.3g} larger than the metric's own shift "
    "{have:.3g}; factor the Gram with at least that shift: whitening(H, ridge=ridge_of_the_metric + {ridge!r})"
)


def mixed_cross(metric: Whitening, cross: Any, /, *, mix: float, ridge: float = 0.0) -> Any:
    r"""The cross-Gram of a refit against a mixed target, with a ridge toward ``A``.

    :meth:`Whitening.whiten` with ``cross=K`` fits outputs :math:`AX_d^T` from inputs
    :math:`X_c`. This returns the ``cross`` for which the same reduced-rank regression fits
    the mixed target :math:`\alpha AX_c^T + (1 - \alpha)AX_d^T`, pulled toward ``A`` by a
    Tikhonov term (PIFA's "M" refit, Zhao et al. 2025).

    Parameters
    ----------
    metric : Whitening
        :math:`LL^T = S = H + \delta I` of the compressed inputs' Gram :math:`H = X_c^TX_c`;
        its shift :math:`\delta` must be at least :math:`\lambda` below (build it with
        ``whitening(H, ridge=r0 + ridge)``).
    cross : array, shape (n, n)
        :math:`K = X_c^TX_d`.
    mix : float
        :math:`\alpha \in [0, 1]`, the weight of the target :math:`AX_c^T`.
    ridge : float, default 0
        :math:`\lambda = \mathrm{ridge}\cdot\mathrm{mean}(\mathrm{diag}\,H)` (as the shift of
        :func:`whitening`; the mean diagonal is taken as 1 when it is 0).

    Returns
    -------
    array, shape (n, n)
        :math:`K' = \alpha S + (1 - \alpha)(K + \lambda I)`; ``cross`` itself when
        :math:`\alpha = \lambda = 0`.

    Raises
    ------
    ValueError
        ``mix`` outside [0, 1], a negative ``ridge``, or :math:`\lambda > \delta`.

    Notes
    -----
    With :math:`K'` the reduced-rank regression :math:`M = [AK'^TL^{-T}]_rL^{-1}` minimises,
    over :math:`\mathrm{rank}\,M \le r`,

    .. math::

        \alpha\|(M - A)X_c^T\|_F^2 + (1 - \alpha)\|MX_c^T - AX_d^T\|_F^2
        + \mu_A\|M - A\|_F^2 + \mu_0\|M\|_F^2,

    :math:`\mu_A = \alpha\delta + (1 - \alpha)\lambda` and :math:`\mu_0 = (1 - \alpha)(\delta - \lambda)`
    (expand both sides: the quadratic term is :math:`\mathrm{tr}(MSM^T)`, the linear one
    :math:`-2\,\mathrm{tr}(AK'^TM^T)`). Each part of the target keeps the shift its own fit
    has: :math:`\alpha = 1` gives :math:`K' = S` and :math:`AK'^TL^{-T} = AL`, the plain fit in
    the metric (``cross=None``); :math:`\alpha = 0` the regression of :meth:`Whitening.whiten`
    with a ridge :math:`\lambda` toward ``A`` (the numerical shift :math:`\delta - \lambda`
    pulls toward 0, as without it). As :math:`\lambda \to \infty` the fit tends to the plain
    rank-``r`` truncation of ``A``: the ridge trades the calibration's information for the
    weights' own.

    References
    ----------
    .. [1] Y. Zhao et al., "Pivoting Factorization: a compact meta low-rank representation of
       sparsity for efficient inference in large language models", arXiv 2501.19090, 2025.
    .. [2] A. J. Izenman, "Reduced-rank regression for the multivariate linear model",
       J. Multivariate Anal. 5, 1975.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.metric import mixed_cross, whitening
    >>> X = np.random.default_rng(0).standard_normal((50, 4))
    >>> w = whitening(X.T @ X, ridge=0.0)
    >>> K = X.T @ (X + 0.1)
    >>> mixed_cross(w, K, mix=0.0) is K, bool(np.allclose(mixed_cross(w, K, mix=1.0), X.T @ X))
    (True, True)
    """
    if isinstance(mix, bool) or not isinstance(mix, numbers.Real):
        raise TypeError(_ERR_MIX.format(mix=mix))
    if not 0.0 <= mix <= 1.0:
        raise ValueError(_ERR_MIX.format(mix=mix))
    ridge = _validation.check_tol(ridge, "ridge") or 0.0
    if mix == 0 and ridge == 0:
        return cross
    xp = aac.array_namespace(cross)
    scale = _backend.to_float(xp.mean(xp.linalg.diagonal(metric.gram))) or 1.0
    shift = ridge * scale
    if shift > metric.shift * (1.0 + 1e-12):
        raise ValueError(_ERR_MIX_RIDGE.format(ridge=ridge, shift=shift, have=metric.shift))
    K = xp.astype(cross, xp.float64)
    if mix == 0:
        return _plus_diagonal(K, shift)
    return mix * metric.shifted_gram() + (1.0 - mix) * _plus_diagonal(K, shift)


def gram_matrix(X: Any, /) -> Any:
    r"""The Gram matrix :math:`X^TX` of a ``(tokens, n)`` array, its symmetry used.

    The columns are cut into ``p = ceil(n / GRAM_BLOCK)`` blocks of nearly equal width and only
    the blocks :math:`X_i^TX_j` with :math:`i \le j` are multiplied (:math:`(p + 1) / (2p)` of
    the multiply-adds of :math:`X^TX`); the others are their transposes, and the diagonal
    blocks are mirrored from their upper triangles, so the result is exactly symmetric (a BLAS
    ``X.T @ X`` is symmetric only to rounding, which a Cholesky factor reading one triangle
    turns into differences of the order of the condition number).

    Parameters
    ----------
    X : array, shape (tokens, n)
        Any namespace of the array API (numpy, torch, cupy); the result has its dtype and device.

    Returns
    -------
    array, shape (n, n)

    Raises
    ------
    ValueError
        If ``X`` is not 2-D (zero rows are allowed: the Gram is then zero).
    TypeError
        If ``X`` is not real float32 or float64.

    Notes
    -----
    Finiteness is not checked (a NaN or Inf in ``X`` propagates to the Gram): the calibration
    that calls this on every batch checks each input once itself. BLAS's symmetric rank-k update (``syrk``) halves the work of one product, but array
    namespaces do not expose it. Measured on 2 AVX2 cores (torch, float32, 4096 tokens, medians
    of 15): n = 1536 takes 0.116 s against 0.186 s for ``X.T @ X`` with 2 threads (0.198 against
    0.286 s with one); n = 576 (2 blocks) is even (about 0.019 s); blocks of 256 to 768 columns
    were within 15% of 512. The block products go through the namespace's ``matmul``, so the
    float rounding differs from ``X.T @ X`` in the last bits.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(12.0).reshape(4, 3)
    >>> bool(np.allclose(gram_matrix(X), X.T @ X))
    True
    """
    xp = _backend.namespace(X)
    if len(X.shape) != 2:  # no tokens is allowed: their Gram is zero (an expert no token reached)
        raise ValueError(_errors.NOT_2D.format(shape=tuple(X.shape)))
    _validation.check_dtype(X.dtype, xp, real_only=_real_only("gram_matrix"), name="X")
    n = X.shape[1]
    parts = max(1, -(-n // GRAM_BLOCK))
    edges = [n * i // parts for i in range(parts + 1)]
    blocks = [X[:, edges[i]:edges[i + 1]] for i in range(parts)]
    upper = {(i, j): blocks[i].T @ blocks[j] for i in range(parts) for j in range(i, parts)}
    for i in range(parts):  # a BLAS product X_i^T X_i is symmetric only to rounding: mirror its upper half
        D = upper[(i, i)]
        upper[(i, i)] = xp.triu(D) + xp.triu(D, k=1).T
    if parts == 1:
        return upper[(0, 0)]
    rows = [xp.concat([upper[(i, j)] if j >= i else upper[(j, i)].T for j in range(parts)], axis=1)
            for i in range(parts)]
    return xp.concat(rows, axis=0)


def weighted_norm(E: Any, /, *, gram: Any) -> float:
    r""":math:`\|EL\|_F = \sqrt{\mathrm{tr}(EHE^T)}` for :math:`LL^T = H`, without a factor.

    Parameters
    ----------
    E : array, shape (m, n)
    gram : array, shape (n, n)
        Symmetric positive semi-definite ``H``.

    Returns
    -------
    float
        The weighted Frobenius norm (rounding below 0 is clamped to 0).

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.metric import weighted_norm
    >>> weighted_norm(np.ones((2, 3)), gram=np.eye(3))
    2.449489742783178
    """
    xp = _backend.namespace(E, gram)
    for name, x in (("E", E), ("gram", gram)):
        _validation.check_dtype(x.dtype, xp, real_only=_real_only("weighted_norm"), name=name)
    return math.sqrt(max(_backend.to_float(xp.sum((E @ gram) * E)), 0.0))


def gram_svd(A: Any, rank: int, /) -> tuple[Any, Any, Any]:
    r"""Leading ``rank`` singular triplets of ``A`` from the eigendecomposition of its smaller Gram.

    Returns ``(U_k, V_k, s)`` with ``s`` every singular value (descending). One ``eigh`` of
    :math:`AA^H` or :math:`A^HA` (the Hermitian Grams; :math:`AA^T`, :math:`A^TA` for real ``A``)
    gives one side; the other is :math:`A^HU_k/s_k` (or
    :math:`AV_k/s_k`), re-orthonormalised by a QR so that directions with :math:`s` at rounding
    level still give an orthonormal basis. Cheaper than an SVD for the tall or wide matrices of
    neural networks; in float64 the squared condition number is harmless for the leading
    vectors.
    """
    xp = aac.array_namespace(A)
    m, n = A.shape
    left_first = m <= n
    Ah = _backend.ctranspose(A)
    G = A @ Ah if left_first else Ah @ A
    vals, vecs = xp.linalg.eigh(G)
    top = xp.flip(vecs[:, vecs.shape[1] - rank :], axis=-1)
    top = xp.asarray(top, copy=True)
    s_all = xp.sqrt(xp.clip(xp.flip(vals, axis=-1), min=float(xp.finfo(A.dtype).tiny)))
    s = s_all[:rank]
    other = (Ah @ top) / s if left_first else (A @ top) / s
    other = xp.linalg.qr(other).Q
    return ((top, other) if left_first else (other, top)) + (s_all,)


def select(V: Any, method: str, /) -> Any:
    """Row indices of the tall orthonormal ``V`` chosen by ``method`` (one of :data:`SELECTORS`)."""
    from .deim import deim, qdeim
    from .maxvol import maxvol

    _validation.check_choice(method, "method", SELECTORS)
    if method == "maxvol":
        return maxvol(V)[0]
    return deim(V) if method == "deim" else qdeim(V)


@dataclass(frozen=True)
class WeightedCUR:
    r"""A CUR :math:`A \approx CUR` chosen and fitted in the metric :math:`\|\cdot\,L\|_F`.

    Attributes
    ----------
    C : array, shape (m, k)
        Columns ``cols`` of the whitened matrix :math:`B = AL`.
    U : array, shape (k, k)
        The core fitted in the metric.
    R : array, shape (k, n)
        Rows ``rows`` of ``A``.
    rows, cols : int64 arrays
    rank : int
    method : str
    eta_rows, eta_cols : float
        Selection constants on the singular vectors of :math:`B`.
    sigma_next : float
        :math:`\sigma_{k+1}(B)` (from the Gram eigendecomposition: accurate to about
        :math:`\sqrt{\epsilon}\,\sigma_1`).
    """

    C: Any
    U: Any
    R: Any
    rows: Any
    cols: Any
    rank: int
    method: str
    eta_rows: float
    eta_cols: float
    sigma_next: float

    __array_ufunc__ = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.C.shape[0], self.R.shape[1])

    @property
    def factors(self) -> tuple[Any, Any]:
        """``(C U, R)``: the approximation is their product."""
        return self.C @ self.U, self.R

    def to_dense(self) -> Any:
        """:math:`CUR` as a dense array."""
        return self.C @ (self.U @ self.R)


def weighted_cur(
    A: Any, metric: Whitening, /, *, rank: int, method: str = "deim", cross: Any = None
) -> WeightedCUR:
    r"""CUR of ``A`` selected and fitted in the metric :math:`\|(A - A')L\|_F`.

    Parameters
    ----------
    A : array, shape (m, n)
        Real float32 or float64 matrix (computed in float64); the activation metric is
        real-only, complex ``A`` raises ``TypeError``.
    metric : Whitening
        From :func:`whitening` of the Gram ``H`` of ``A``'s inputs.
    rank : int
        ``1 <= rank <= min(m, n)``.
    method : {"deim", "qdeim", "maxvol"}, default "deim"
        Selector applied to the leading singular vectors of :math:`B = AL`.
    cross : array, shape (n, n), optional
        :math:`K = X_c^TX_d`: fit the core to the outputs :math:`AX_d^T` from inputs
        :math:`X_c` (layer-wise sequential calibration) instead of :math:`X_d = X_c`.

    Returns
    -------
    WeightedCUR
        ``R = A[rows, :]`` (actual rows of ``A``), ``C = B[:, cols]`` (columns of the whitened
        matrix), the fitted core ``U``; ``eta_rows``, ``eta_cols`` and ``sigma_next`` refer to
        ``B``.

    Raises
    ------
    TypeError
        ``A`` or ``cross`` is complex (the activation metric is real-only), or not floating.

    Notes
    -----
    Rows of :math:`B` are rows of :math:`A` times :math:`L`, so the rows picked on :math:`B`'s
    left singular vectors are rows of :math:`A` itself. The core minimises
    :math:`\|X_cR^TU^TC^T - X_dA^T\|_F`: :math:`CU = AK^TR^T(R(H + \delta I)R^T)^{-1}` with
    :math:`K = H` when ``cross`` is None, then :math:`U = C^+(CU)`. In the metric, with the
    exact core of :math:`B` the DEIM-CUR bound of Sorensen & Embree applies to :math:`B`:
    :math:`\|B - CU_BR_B\|_2 \le (\eta_p + \eta_q)\sigma_{k+1}(B)`.

    References
    ----------
    .. [1] D. C. Sorensen and M. Embree, "A DEIM induced CUR factorization", SIAM J. Sci.
       Comput. 38(3), 2016.
    .. [2] X. Wang et al., "SVD-LLM", arXiv 2403.07378, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.metric import weighted_cur, whitening
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 12))
    >>> X = rng.standard_normal((100, 12))
    >>> res = weighted_cur(A, whitening(X.T @ X, ridge=0.0), rank=3)
    >>> bool(np.allclose(res.to_dense(), A))
    True
    """
    xp = _validation.check_matrix(A, real_only=_real_only("weighted_cur"), name="A")
    if cross is not None:
        _validation.check_dtype(cross.dtype, xp, real_only=_real_only("weighted_cur"), name="cross")
    rank = _validation.check_rank(rank, min(A.shape))
    _validation.check_choice(method, "method", SELECTORS)
    A = xp.astype(A, xp.float64)
    B = metric.whiten(A)
    P, Q, s = gram_svd(B, rank)
    rows, cols = select(P, method), select(Q, method)
    C = xp.take(B, cols, axis=1)
    R = xp.take(A, rows, axis=0)
    K = metric.gram if cross is None else cross
    T = A @ (K.T @ R.T)
    N = R @ metric.shifted_gram() @ R.T
    CU = solve_psd(N, T.T, xp).T
    U = _lstsq(C, CU)
    sigma_next = _backend.to_float(s[rank]) if s.shape[0] > rank else 0.0
    return WeightedCUR(
        C, U, R, rows, cols, rank, method,
        selection_constant(P, rows), selection_constant(Q, cols), sigma_next,
    )


def solve_psd(N: Any, Y: Any, xp: Any, /) -> Any:
    r"""A solution of :math:`NZ = Y` for a symmetric positive semi-definite ``N``, never a raw error.

    ``xp.linalg.solve`` when ``N`` is numerically non-singular; otherwise (it raised, or gave
    NaN/Inf) the minimum-norm least-squares solution :math:`Z = N^+Y` from the
    eigendecomposition :math:`N = Q\Lambda Q^T`, eigenvalues below :math:`n\epsilon\lambda_{\max}`
    treated as zero. In :func:`weighted_cur`, ``N`` :math:`= R(H + \delta I)R^T` is singular
    when the selected rows ``R`` are linearly dependent (a rank-deficient ``A`` asked for a
    larger rank); every solution of the normal equations gives the same product
    :math:`CUR`, so the pseudo-inverse loses nothing.
    """
    try:
        Z = xp.linalg.solve(N, Y)
    except Exception as exc:  # numpy.linalg.LinAlgError, torch.linalg.LinAlgError, cupy
        if "LinAlgError" not in type(exc).__name__ and "singular" not in str(exc).lower():
            raise
        Z = None
    if Z is not None and _validation.all_finite(Z, xp):
        return Z
    vals, vecs = xp.linalg.eigh(N)
    cut = float(xp.finfo(N.dtype).eps) * N.shape[0] * max(_backend.to_float(xp.max(vals)), 0.0)
    inv = xp.where(vals > cut, 1.0 / xp.where(vals > cut, vals, 1.0), 0.0)
    return vecs @ ((vecs.T @ Y) * inv[:, None])


def _lstsq(C: Any, Y: Any) -> Any:
    """Minimum-norm least-squares solution :math:`C^+Y` of ``C Z = Y``.

    The pseudo-inverse (an SVD), not ``torch.linalg.lstsq``: its default CPU driver returned
    different, wrong solutions from one call to the next for a rank-deficient ``C`` (the
    columns of a rank-deficient ``A`` asked for a larger rank), and the CUDA driver assumes full
    rank.
    """
    xp = aac.array_namespace(C)
    return xp.linalg.pinv(C) @ Y
