r"""Matrices with a known spectrum (numpy, float64 or complex128), for testing bounds that depend on
it. The complex versions have the same singular values: :math:`U\,\mathrm{diag}(s)\,V^H` with
Haar-random unitary factors, or a real structured matrix mixed by unitary factors
(:func:`complexified`)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "clustered_spectrum",
    "complexified",
    "duplicated_columns",
    "hilbert_like",
    "exponential_spectrum",
    "polynomial_spectrum",
    "step_spectrum",
    "rank_deficient_spectrum",
    "known_spectrum",
    "kahan",
    "graded",
]


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of singular values must be an int >= 1, got {n!r}")


def exponential_spectrum(n: int, /, *, decay: float) -> np.ndarray:
    """Singular values :math:`\\sigma_j = e^{-\\mathrm{decay}\\cdot j}`, ``j = 0..n-1``.

    Examples
    --------
    >>> exponential_spectrum(3, decay=1.0).round(3).tolist()
    [1.0, 0.368, 0.135]
    """
    _check_count(n)
    return np.exp(-float(decay) * np.arange(n))


def polynomial_spectrum(n: int, /, *, power: float) -> np.ndarray:
    """Singular values :math:`\\sigma_j = (j + 1)^{-\\mathrm{power}}`.

    Examples
    --------
    >>> polynomial_spectrum(3, power=1.0).round(3).tolist()
    [1.0, 0.5, 0.333]
    """
    _check_count(n)
    return (np.arange(n) + 1.0) ** (-float(power))


def step_spectrum(n: int, /, *, rank: int, gap: float) -> np.ndarray:
    """``rank`` values equal to 1, then values equal to ``gap`` (``0 <= gap < 1``).

    Examples
    --------
    >>> step_spectrum(4, rank=2, gap=0.1).tolist()
    [1.0, 1.0, 0.1, 0.1]
    """
    _check_count(n)
    if not 0 <= gap < 1:
        raise ValueError(f"gap must be in [0, 1), got {gap}")
    return np.where(np.arange(n) < rank, 1.0, float(gap))


def rank_deficient_spectrum(n: int, /, *, rank: int, decay: float = 0.0) -> np.ndarray:
    """``rank`` nonzero values :math:`e^{-\\mathrm{decay}\\cdot j}`, then exact zeros.

    Examples
    --------
    >>> rank_deficient_spectrum(4, rank=2).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    _check_count(n)
    s = exponential_spectrum(n, decay=decay)
    s[rank:] = 0.0
    return s


def _check_field(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.complex128):
        raise ValueError(f"dtype must be float64 or complex128 (cast the result), got {dtype}")
    return dtype


def _orthonormal(rows: int, cols: int, rng: np.random.Generator, dtype: Any = np.float64) -> np.ndarray:
    if np.dtype(dtype).kind == "c":
        Q, R = np.linalg.qr(rng.standard_normal((rows, cols)) + 1j * rng.standard_normal((rows, cols)))
        d = np.diag(R)
        return Q * (d / np.abs(d))  # Haar-distributed (unitary)
    Q, R = np.linalg.qr(rng.standard_normal((rows, cols)))
    return Q * np.sign(np.diag(R))  # Haar-distributed


def known_spectrum(m: int, n: int, s: Any, /, *, rng: Any = None, dtype: Any = np.float64) -> np.ndarray:
    """The ``(m, n)`` matrix :math:`U\\,\\mathrm{diag}(s)\\,V^H` with Haar-random orthonormal
    (for complex, unitary) factors.

    Parameters
    ----------
    m, n : int
    s : array_like, shape (min(m, n),)
        Nonnegative singular values (any order; the matrix has exactly these).
    rng : None, int or numpy Generator
    dtype : {float64, complex128}, default float64
        complex128: complex Haar factors, so every entry is genuinely complex.

    Returns
    -------
    numpy.ndarray, float64 or complex128

    Examples
    --------
    >>> import numpy as np
    >>> A = known_spectrum(5, 4, [4.0, 3.0, 2.0, 1.0], rng=0)
    >>> np.linalg.svd(A, compute_uv=False).round(10).tolist()
    [4.0, 3.0, 2.0, 1.0]
    >>> Z = known_spectrum(5, 4, [4.0, 3.0, 2.0, 1.0], rng=0, dtype=np.complex128)
    >>> Z.dtype, np.linalg.svd(Z, compute_uv=False).round(10).tolist()
    (dtype('complex128'), [4.0, 3.0, 2.0, 1.0])
    """
    s = np.asarray(s, dtype=np.float64)
    dtype = _check_field(dtype)
    k = min(m, n)
    if s.shape != (k,) or np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"s must hold min(m, n) = {k} finite values >= 0, got shape {s.shape}")
    gen = np.random.default_rng(rng)
    return (_orthonormal(m, k, gen, dtype) * s) @ _orthonormal(n, k, gen, dtype).conj().T


def complexified(A: Any, /, *, rng: Any = None, diagonal: bool = False) -> np.ndarray:
    """A complex128 matrix with the singular values of the real ``A``: :math:`Q_1AQ_2^H` with
    Haar-random unitary :math:`Q_1, Q_2`.

    Parameters
    ----------
    A : array_like, shape (m, n)
    rng : None, int or numpy Generator
    diagonal : bool, default False
        Random phases :math:`D_1AD_2` (diagonal unitary factors) instead: every entry keeps
        its modulus, so structure that pivoting sees (a Kahan matrix's column norms) is kept.

    Returns
    -------
    numpy.ndarray, complex128

    Examples
    --------
    >>> import numpy as np
    >>> H = hilbert_like(4, 3)
    >>> Z = complexified(H, rng=0)
    >>> bool(np.allclose(np.linalg.svd(Z, compute_uv=False), np.linalg.svd(H, compute_uv=False)))
    True
    >>> bool(np.allclose(np.abs(complexified(H, rng=0, diagonal=True)), H))
    True
    """
    A = np.asarray(A, dtype=np.float64)
    m, n = A.shape
    gen = np.random.default_rng(rng)
    if diagonal:
        left, right = (np.exp(2j * np.pi * gen.random(d)) for d in (m, n))
        return left[:, None] * A * right[None, :]
    return _orthonormal(m, m, gen, np.complex128) @ A @ _orthonormal(n, n, gen, np.complex128).conj().T


def kahan(n: int, /, *, theta: float = 1.2, perturb: float = 25.0) -> np.ndarray:
    """The Kahan matrix, the classic failure case of column-pivoted QR.

    :math:`K = \\mathrm{diag}(1, s, \\dots, s^{n-1})\\,(I - c\\,N)` with :math:`s=\\sin\\theta`,
    :math:`c=\\cos\\theta` and ``N`` strictly upper triangular ones; the diagonal is perturbed by
    ``perturb * eps`` (decreasingly) so that pivoting does not reorder it.

    Examples
    --------
    >>> kahan(3).shape
    (3, 3)
    """
    _check_count(n)
    s, c = np.sin(theta), np.cos(theta)
    K = np.eye(n) - c * np.triu(np.ones((n, n)), 1)
    K = np.diag(s ** np.arange(n)) @ K
    return K + np.diag(perturb * np.finfo(float).eps * np.arange(n, 0, -1))


def graded(m: int, n: int, /, *, ratio: float = 1e-8, rng: Any = None, dtype: Any = np.float64) -> np.ndarray:
    """A Gaussian matrix whose rows are scaled geometrically from 1 down to ``ratio``
    (``dtype=complex128``: standard complex Gaussian entries).

    Examples
    --------
    >>> A = graded(4, 3, ratio=1e-3, rng=0)
    >>> A.shape
    (4, 3)
    """
    dtype = _check_field(dtype)
    gen = np.random.default_rng(rng)
    scale = np.geomspace(1.0, float(ratio), m)
    if dtype.kind == "c":
        g = gen.standard_normal((2, m, n)) * np.sqrt(0.5)
        return scale[:, None] * (g[0] + 1j * g[1])
    return scale[:, None] * gen.standard_normal((m, n))


def clustered_spectrum(n: int, /, *, clusters: int = 3, spread: float = 1e-3) -> np.ndarray:
    """``n`` values in ``clusters`` groups at :math:`10^{-4c}`, each spread by a relative ``spread``.

    Examples
    --------
    >>> clustered_spectrum(4, clusters=2, spread=0.0).tolist()
    [1.0, 1.0, 0.0001, 0.0001]
    """
    _check_count(n)
    group = np.arange(n) * clusters // n
    within = np.arange(n) - np.searchsorted(group, group)
    return 10.0 ** (-4.0 * group) * (1.0 - spread * within / max(n, 1))


def hilbert_like(m: int, n: int, /, *, shift: float = 1.0) -> np.ndarray:
    """The ``(m, n)`` Cauchy matrix :math:`1/(i + j + \\mathrm{shift})` (Hilbert for shift 1):
    singular values that fall geometrically to the rounding level.

    Examples
    --------
    >>> hilbert_like(2, 2).tolist()
    [[1.0, 0.5], [0.5, 0.3333333333333333]]
    """
    return 1.0 / (np.arange(m)[:, None] + np.arange(n)[None, :] + float(shift))


def duplicated_columns(A: Any, /, *, copies: int = 2, rng: Any = None) -> np.ndarray:
    """``A`` with ``copies - 1`` extra copies of each of its columns, in a random order.

    Examples
    --------
    >>> duplicated_columns(np.eye(2), copies=2, rng=0).shape
    (2, 4)
    """
    A = np.asarray(A)
    A = A.astype(np.complex128 if A.dtype.kind == "c" else np.float64)
    gen = np.random.default_rng(rng)
    return np.tile(A, (1, int(copies)))[:, gen.permutation(A.shape[1] * int(copies))]
