"""Test helpers users can reuse: matrices with a known spectrum, and hypothesis strategies.

``curlinalg.testing.strategies`` needs the optional ``hypothesis`` package; the matrix builders
need only numpy. Every builder has a complex version with the same singular values (``dtype=``
of :func:`known_spectrum` and :func:`graded`, :func:`complexified` for the others), and the
strategies draw complex64 and complex128 problems when asked (``dtypes=``).
"""

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
    "clustered_spectrum",
    "complexified",
    "duplicated_columns",
    "exponential_spectrum",
    "graded",
    "hilbert_like",
    "kahan",
    "known_spectrum",
    "polynomial_spectrum",
    "rank_deficient_spectrum",
    "step_spectrum",
]
