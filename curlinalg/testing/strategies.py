r"""Hypothesis strategies that draw the *structure* of a low-rank problem.

A drawn :class:`Problem` carries a float64 numpy matrix built with
:func:`curlinalg.testing.known_spectrum`, its exact singular values, and a target rank; tests then
assert a bound computed from what the code under test returned, so they cannot flake. With
``dtypes=`` including complex64 or complex128 the strategies draw complex problems with the same
structures (:math:`U\,\mathrm{diag}(s)\,V^H` with random unitary factors; the Hilbert and Kahan
matrices through :func:`curlinalg.testing.complexified`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from .matrices import (
    clustered_spectrum,
    complexified,
    duplicated_columns,
    exponential_spectrum,
    graded,
    hilbert_like,
    kahan,
    known_spectrum,
    polynomial_spectrum,
    rank_deficient_spectrum,
    step_spectrum,
)

__all__ = [
    "COMPLEX_DTYPES", "HARD_KINDS", "HardProblem", "Problem", "hard_problems", "problems", "spectra",
]

#: The complex dtypes the strategies draw when asked (``dtypes=COMPLEX_DTYPES``).
COMPLEX_DTYPES = ("complex128", "complex64")


@dataclass(frozen=True)
class Problem:
    """A test matrix ``A`` with known singular values ``s`` and a target ``rank`` (``A`` is float64
    unless complex dtypes were asked for)."""

    A: np.ndarray
    s: np.ndarray
    rank: int
    kind: str
    seed: int


@st.composite
def spectra(draw, n: int, rank: int, kinds=("exponential", "polynomial", "step", "deficient")):
    """Draw ``(kind, s)``: a spectrum of ``n`` values with structure around ``rank``."""
    kind = draw(st.sampled_from(kinds))
    if kind == "exponential":
        s = exponential_spectrum(n, decay=draw(st.floats(0.05, 2.0)))
    elif kind == "polynomial":
        s = polynomial_spectrum(n, power=draw(st.floats(0.5, 3.0)))
    elif kind == "step":
        s = step_spectrum(n, rank=rank, gap=draw(st.sampled_from([1e-1, 1e-3, 1e-6])))
    else:
        s = rank_deficient_spectrum(n, rank=draw(st.integers(1, rank)), decay=0.1)
    return kind, s


@st.composite
def problems(
    draw, *, min_dim: int = 4, max_dim: int = 60, kinds=("exponential", "polynomial", "step",
                                                           "deficient"), dtypes=("float64",),
):
    r"""Draw a :class:`Problem`: shape, rank, spectrum kind and decay or gap, and a seed; and the
    dtype when ``dtypes`` offers several (complex ones: :math:`U\,\mathrm{diag}(s)\,V^H` with
    Haar unitary factors, the singular values ``s`` exactly, up to the cast)."""
    m = draw(st.integers(min_dim, max_dim))
    n = draw(st.integers(min_dim, max_dim))
    kmax = min(m, n)
    rank = draw(st.integers(1, max(1, kmax - 1)))
    kind, s = draw(spectra(kmax, rank, kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = np.dtype(draw(st.sampled_from(dtypes)) if len(dtypes) > 1 else dtypes[0])
    field = np.complex128 if dtype.kind == "c" else np.float64
    A = known_spectrum(m, n, s, rng=seed, dtype=field).astype(dtype, copy=False)
    return Problem(A, np.sort(s)[::-1], rank, kind, seed)


#: Every structure :func:`hard_problems` draws.
HARD_KINDS = (
    "exponential", "polynomial", "step", "deficient", "clustered", "graded", "hilbert", "kahan",
    "duplicated",
)


@dataclass(frozen=True)
class HardProblem:
    """A test matrix in a chosen precision, its singular values (of that matrix, in float64), and
    a rank anywhere in ``[1, min(m, n)]``, past the numerical rank included."""

    A: np.ndarray
    s: np.ndarray
    rank: int
    kind: str
    dtype: str
    seed: int


def _hard_matrix(kind: str, m: int, n: int, params: dict, seed: int, field: type) -> np.ndarray:
    """The matrix of one :func:`hard_problems` draw, real (``field=np.float64``) or complex
    (``np.complex128``: the same singular values, or the same structure, see there)."""
    if "s" in params:
        return known_spectrum(m, n, params["s"], rng=seed, dtype=field)
    if kind == "graded":
        return graded(m, n, ratio=params["ratio"], rng=seed, dtype=field)
    if kind == "hilbert":
        A = hilbert_like(m, n, shift=params["shift"])
        return A if field is np.float64 else complexified(A, rng=seed)
    if kind == "kahan":
        kmax = min(m, n)
        A = np.pad(kahan(kmax, theta=params["theta"]), ((0, m - kmax), (0, n - kmax)))
        return A if field is np.float64 else complexified(A, rng=seed, diagonal=True)
    half = max(1, n // 2)
    base = known_spectrum(m, half, exponential_spectrum(min(m, half), decay=0.3), rng=seed,
                          dtype=field)
    A = duplicated_columns(base, copies=2, rng=seed)[:, :n]
    if A.shape[1] < n:
        A = np.concatenate([A, base[:, : n - A.shape[1]]], axis=1)
    return A


@st.composite
def hard_problems(draw, *, min_dim: int = 4, max_dim: int = 48, kinds=HARD_KINDS,
                  dtypes=("float64", "float32")):
    r"""Draw a :class:`HardProblem` where CUR bounds are easy to get wrong: fast-decaying spectra
    whose tail is below the rounding level (Hilbert-like, graded rows, Kahan), clustered and step
    spectra, exactly repeated columns, in float32 and float64, at every rank.

    With complex ``dtypes`` (:data:`COMPLEX_DTYPES`) the same structures come complex: the
    spectral kinds as :math:`U\,\mathrm{diag}(s)\,V^H` with Haar unitary factors, graded rows of
    complex Gaussians, the Hilbert matrix mixed by unitary factors (:math:`Q_1HQ_2^H`, the same
    singular values), the Kahan matrix with random phases (:math:`D_1KD_2`, the same moduli, so
    the same trap for pivoted QR), duplicated complex columns."""
    m = draw(st.integers(min_dim, max_dim))
    n = draw(st.integers(min_dim, max_dim))
    kmax = min(m, n)
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**32 - 1))
    params: dict = {}
    if kind in ("exponential", "polynomial", "step", "deficient"):
        _, params["s"] = draw(spectra(kmax, draw(st.integers(1, kmax)), (kind,)))
    elif kind == "clustered":
        params["s"] = clustered_spectrum(kmax, clusters=draw(st.integers(2, 4)), spread=draw(
            st.sampled_from([0.0, 1e-8, 1e-3])))
    elif kind == "graded":
        params["ratio"] = draw(st.sampled_from([1e-4, 1e-8, 1e-14]))
    elif kind == "hilbert":
        params["shift"] = draw(st.sampled_from([1.0, 0.5, 3.0]))
    elif kind == "kahan":
        params["theta"] = draw(st.sampled_from([1.2, 0.5]))
    dtype = draw(st.sampled_from(dtypes))
    field = np.complex128 if np.dtype(dtype).kind == "c" else np.float64
    A = np.ascontiguousarray(_hard_matrix(kind, m, n, params, seed, field), dtype=dtype)
    s = np.linalg.svd(A.astype(field), compute_uv=False)
    return HardProblem(A, s, draw(st.integers(1, kmax)), kind, dtype, seed)
