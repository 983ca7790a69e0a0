"""Statistical leverage scores, and Mahoney-Drineas sampling by them."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _backend, _validation
from .sketch import truncated_svd

__all__ = [
    "LeverageScores",
    "LeverageSample",
    "leverage_scores",
    "leverage_sample",
    "sampling_failure_probability",
]


class LeverageScores(NamedTuple):
    """Rank-``k`` leverage scores of the rows and of the columns of a matrix (each sums to ``k``)."""

    rows: Any
    cols: Any


class LeverageSample(NamedTuple):
    """Result of :func:`leverage_sample`.

    Attributes
    ----------
    indices : int64 array
        Distinct sampled indices, ascending.
    counts : int64 array
        How often each index was drawn.
    probabilities : float64 array
        Sampling probability :math:`p_j` of each index.
    """

    indices: Any
    counts: Any
    probabilities: Any


def leverage_scores(
    A: Any, /, *, rank: int, kind: str = "auto", oversample: int = 10, power_iters: int = 2,
    rng: Any = None,
) -> LeverageScores:
    r"""Rank-``k`` statistical leverage scores of the rows and columns of ``A``.

    Parameters
    ----------
    A : array, shape (m, n)
    rank : int
        ``k``, with ``1 <= k <= min(m, n)``.
    kind, oversample, power_iters, rng
        How the leading singular vectors are computed (see :func:`curlinalg.sketch.truncated_svd`).

    Returns
    -------
    LeverageScores
        ``rows`` (shape ``(m,)``) and ``cols`` (shape ``(n,)``), in ``A``'s namespace and device.

    Notes
    -----
    With :math:`A_k = U_k\Sigma_kV_k^H`, the row scores are :math:`\ell_i = \|U_k(i,:)\|_2^2` and
    the column scores :math:`\|V_k(j,:)\|_2^2`; each set sums to ``k``. For complex ``A`` they
    are real (the squared moduli summed; float32 for complex64), as :func:`leverage_sample`
    takes them.

    References
    ----------
    .. [1] M. W. Mahoney and P. Drineas, "CUR matrix decompositions for improved data analysis",
       PNAS 106(3), 2009.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import leverage_scores
    >>> s = leverage_scores(np.random.default_rng(0).standard_normal((20, 10)), rank=3)
    >>> round(float(s.rows.sum()), 6), round(float(s.cols.sum()), 6)
    (3.0, 3.0)
    """
    t = truncated_svd(  # validates A and the options
        A, rank=rank, kind=kind, oversample=oversample, power_iters=power_iters, rng=rng
    )
    xp = _backend.namespace(A)
    return LeverageScores(xp.sum(_backend.abs2(t.U), axis=1), xp.sum(_backend.abs2(t.V), axis=1))


def leverage_sample(scores: Any, /, *, samples: int, rng: Any = None) -> LeverageSample:
    r"""Draw ``samples`` indices i.i.d. with probability proportional to ``scores``.

    Parameters
    ----------
    scores : array, shape (n,)
        Nonnegative, finite, not all zero (e.g. one field of :func:`leverage_scores`).
    samples : int
        Number of draws ``c >= 1`` (with replacement; duplicates are merged).
    rng : None, int or Generator
        Seed, for reproducibility.

    Returns
    -------
    LeverageSample

    Raises
    ------
    ValueError
        Negative, non-finite or all-zero scores; ``samples < 1``.

    Notes
    -----
    Draws :math:`j` with :math:`p_j = \ell_j / \sum_i \ell_i` by inverting the cumulative
    distribution at uniform variates, on the scores' device. For exact rank-``k`` leverage scores
    of an orthonormal ``W`` (:math:`p_j = \|W_{j,:}\|^2/k`), the matrix Chernoff bound (Tropp 2015,
    Thm. 5.1.1) on :math:`X = \sum_t w_{j_t}w_{j_t}^T/(c\,p_{j_t})`, :math:`\mathbb{E}X = I_k`,
    :math:`\|X_t\| \le k/c`, gives

    .. math:: \sigma_{\min}(W_S)^2 \ge \frac{1-\varepsilon}{\max_{j\in S} \mathrm{count}_j/(c\,p_j)}

    except with probability :func:`sampling_failure_probability` ``(k, c, eps)``, and hence the
    selection constant :math:`\|W_S^+\|_2` of the sampled rows is at most the square root of the
    inverse.

    References
    ----------
    .. [1] P. Drineas, M. W. Mahoney and S. Muthukrishnan, "Relative-error CUR matrix
       decompositions", SIAM J. Matrix Anal. Appl. 30(2), 2008.
    .. [2] J. A. Tropp, "An introduction to matrix concentration inequalities", Found. Trends
       Mach. Learn. 8(1-2), 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg import leverage_sample
    >>> s = leverage_sample(np.array([0.5, 0.5, 0.0, 1.0]), samples=10, rng=0)
    >>> 2 in s.indices.tolist(), int(s.counts.sum())
    (False, 10)
    """
    xp = _backend.namespace(scores)
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D array of scores, got shape {tuple(scores.shape)}")
    if scores.dtype not in (xp.float32, xp.float64):
        raise TypeError(f"expected float32 or float64 scores, got {scores.dtype}")
    samples = _validation.check_int(samples, "samples", minimum=1)
    if not bool(xp.all(xp.isfinite(scores))) or bool(xp.any(scores < 0)):
        raise ValueError("scores must be finite and >= 0")
    p = xp.astype(scores, xp.float64)
    total = xp.sum(p)
    if not _backend.to_float(total) > 0:
        raise ValueError("scores are all zero: there is nothing to sample")
    p = p / total
    cdf = xp.cumulative_sum(p)
    u = _backend.Random(rng, p).uniform((samples,)) * cdf[-1]
    draws = xp.searchsorted(cdf, u, side="right")
    draws = xp.clip(draws, 0, p.shape[0] - 1)
    # A zero-probability index can only be hit through rounding at the cdf's flat end: map it
    # back onto the last index with positive probability.
    positive = xp.nonzero(p > 0)[0]
    last = positive[-1]
    draws = xp.where(draws > last, last, draws)
    indices, counts = xp.unique_counts(xp.astype(draws, xp.int64))
    return LeverageSample(indices, xp.astype(counts, xp.int64), xp.take(p, indices))


def sampling_failure_probability(rank: int, samples: int, epsilon: float) -> float:
    r"""Matrix Chernoff failure probability :math:`k\,[e^{-\varepsilon}/(1-\varepsilon)^{1-\varepsilon}]^{c/k}`.

    Upper bound on the probability that the guarantee in :func:`leverage_sample` fails for
    ``c = samples`` draws by exact rank-``k`` leverage scores, ``0 < epsilon < 1``.
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    log_base = -epsilon - (1 - epsilon) * math.log1p(-epsilon)
    return min(1.0, rank * math.exp(log_base * samples / rank))
