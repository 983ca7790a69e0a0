"""curlinalg: CUR decompositions with error bounds, on numpy, torch and cupy.

The driver :func:`cur` selects rows and columns (DEIM, Q-DEIM, maxvol, leverage scores,
randomized sketches), forms the core, and reports the constants that bound the error;
:func:`certify` gives a certified a posteriori bound. The selectors are usable on their own.
Every function takes its namespace from its input (through ``array-api-compat``) and keeps the
result on the input's device.
"""

from ._errors import ConvergenceWarning, CURWarning, RankDeficiencyWarning
from .bounds import (
    Certificate, certify, deim_bound, maxvol_bound, qdeim_bound, selection_constant, spectral_norm,
)
from .cores import CoreFactors, cross_core, cross_core_factors, optimal_core, optimal_core_factors
from .cur import CURBatch, CURResult, cur
from .deim import deim, qdeim
from .interpolative import IDResult, id_to_svd, interpolative
from .leverage import LeverageSample, LeverageScores, leverage_sample, leverage_scores
from .maxvol import maxvol, rect_maxvol
from .output_id import OutputID, OutputIDCurve, output_id, output_id_curve
from .score_cr import ScoreCR, score_cr
from .metric import WeightedCUR, Whitening, weighted_cur, weighted_norm, whitening
from .allocation import Allocation, allocate_ranks, cur_error_curve, svd_error_curve
from .sketch import TruncatedSVD, range_finder, truncated_svd

__version__ = "0.1.0"

__all__ = [
    "CURBatch",
    "CURResult",
    "Allocation",
    "CURWarning",
    "CoreFactors",
    "Certificate",
    "ConvergenceWarning",
    "IDResult",
    "LeverageSample",
    "OutputID",
    "OutputIDCurve",
    "LeverageScores",
    "RankDeficiencyWarning",
    "ScoreCR",
    "TruncatedSVD",
    "WeightedCUR",
    "Whitening",
    "allocate_ranks",
    "certify",
    "cross_core",
    "cross_core_factors",
    "cur",
    "cur_error_curve",
    "deim",
    "deim_bound",
    "id_to_svd",
    "interpolative",
    "leverage_sample",
    "leverage_scores",
    "maxvol",
    "maxvol_bound",
    "optimal_core",
    "optimal_core_factors",
    "output_id",
    "output_id_curve",
    "qdeim",
    "qdeim_bound",
    "range_finder",
    "rect_maxvol",
    "score_cr",
    "selection_constant",
    "spectral_norm",
    "svd_error_curve",
    "truncated_svd",
    "weighted_cur",
    "weighted_norm",
    "whitening",
]
