"""Test helpers users can reuse: matrices with a known spectrum, and hypothesis strategies.

``curlinalg.testing.strategies`` needs the optional ``hypothesis`` package; the matrix builders
need only numpy.
"""

from .matrices import (
    clustered_spectrum,
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
