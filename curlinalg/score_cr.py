r"""CR approximation of attention score matrices: which query-key dimensions of a head to keep.

A head's (pre-softmax) scores on inputs ``X`` (tokens x ``n``) are
:math:`S_h = X W_{q,h}^T W_k X^T = A_h B^T`, a sum over the ``d`` query-key dimensions ``i`` of
rank-one terms :math:`a_{h,i} b_i^T` (:math:`a_{h,i} = X W_{q,h}[i, :]^T`,
:math:`b_i = X W_k[i, :]^T`). Keeping a subset of the dimensions keeps those terms: a CR
(column-row) approximation of the product :math:`A_h B^T` (Drineas, Kannan & Mahoney 2006),
which MoDeGPT uses to cut the query-key dimension of each head. The ``g`` query heads that share
one key head (grouped-query attention) keep the same dimensions, so that the key head's rows
can go; with a rotary embedding (the ``rotate_half`` convention), dimensions ``i`` and
``i + d/2`` are rotated together and are kept or dropped as one *item*.

Everything is computed from the input Gram :math:`H = X^TX` and the weights, never from the
tokens: :math:`\|a_{h,i}\| = \|L^TW_{q,h}[i,:]^T\|` with :math:`LL^T = H`, and the squared error
of dropping a set ``T`` of dimensions is exactly
:math:`\|\sum_{i \in T} a_{h,i}b_i^T\|_F^2 = 1_T^T (G_{a,h} \circ G_b) 1_T`,
:math:`G_{a,h} = W_{q,h} H W_{q,h}^T`, :math:`G_b = W_k H W_k^T`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend
from .bounds import ROUNDING_FACTOR
from .output_id import _host

__all__ = ["ScoreCR", "score_cr"]

_ERR_GRAM = "gram must be a square (n, n) float matrix, got shape {shape}; pass X^T X of the inputs of q and k"
_ERR_KEY = "key must be a (d, n) float matrix (one key head's rows) with n = {n} columns, got shape {shape}"
_ERR_QUERIES = (
    "queries must be a (g * d, n) float matrix (the rows of the g query heads that read the key head, head by "
    "head) with d = {d} and n = {n}, got shape {shape}"
)
_ERR_ROTARY = "rotary=True pairs dimension i with i + d/2, so d must be even, got d = {d}; pass rotary=False"


@dataclass
class ScoreCR:
    """Result of :func:`score_cr`.

    Attributes
    ----------
    items : numpy.ndarray of int, shape (m, s)
        The dimensions of each item: ``[[i, i + d/2] for i < d/2]`` with ``rotary``, else
        ``[[i] for i < d]``.
    order : numpy.ndarray of int, shape (m,)
        The items by decreasing score: keeping ``r`` items keeps ``items[order[:r]]``.
    scores : numpy.ndarray, shape (m,)
        Each item's CR score, :math:`\\sum_{i \\in item}\\sum_h \\|a_{h,i}\\|\\,\\|b_i\\|`.
    errors : numpy.ndarray, shape (m,)
        ``errors[r - 1]``: the relative squared error of the score matrices when the first
        ``r`` items of ``order`` are kept,
        :math:`\\sum_h\\|S_h - \\hat S_h\\|_F^2 / \\sum_h\\|S_h\\|_F^2` (0 when every item is kept).
    total : float
        :math:`\\sum_h \\|S_h\\|_F^2`, the denominator (to combine the errors of several key heads).
    lower : numpy.ndarray, shape (m,)
        ``lower[r - 1]``: :math:`\\sum_h\\sum_{i > rs}\\sigma_i(S_h)^2 / \\sum_h\\|S_h\\|_F^2`,
        ``s`` the dimensions per item: the relative squared error of the best rank-``rs``
        approximation of every score matrix, which no choice of ``r`` items beats
        (``errors >= lower``, up to ``rounding``).
    rounding : float
        :math:`\\rho = 4\\sqrt{\\max(n, d)\\,u}`: the accuracy of ``sqrt(lower)`` (singular values from
        Gram matrices), relative to :math:`(\\sum_h\\|S_h\\|_F^2)^{1/2}`.
    """

    items: np.ndarray
    order: np.ndarray
    scores: np.ndarray
    errors: np.ndarray
    total: float
    lower: np.ndarray
    rounding: float


def score_cr(gram: Any, queries: Any, key: Any, /, *, rotary: bool = True) -> ScoreCR:
    r"""Order the query-key dimensions of one key head by their CR score, with the exact error.

    Parameters
    ----------
    gram : array, shape (n, n)
        :math:`H = X^TX` (or :math:`X^TDX` with token weights), the Gram of the inputs that
        the query and key projections share.
    queries : array, shape (g * d, n)
        The rows of ``q_proj`` of the ``g`` query heads that read this key head, head by head.
    key : array, shape (d, n)
        The rows of ``k_proj`` of the key head.
    rotary : bool, default True
        Keep dimensions ``i`` and ``i + d/2`` together (a rotary embedding of the
        ``rotate_half`` convention rotates them as one pair).

    Returns
    -------
    ScoreCR

    Raises
    ------
    ValueError
        Shapes that do not pair up; an odd ``d`` with ``rotary``; non-finite input.

    Notes
    -----
    The score of dimension ``i`` is :math:`\sum_h \|a_{h,i}\|\,\|b_i\|`, the weight of the term
    :math:`a_{h,i}b_i^T` in the sampling probabilities that minimise the expected error of a
    sampled CR product (Drineas, Kannan & Mahoney 2006); the items are kept by decreasing
    score (MoDeGPT keeps the top ones, deterministically). The error curve is not the
    sampling bound but the exact error of each kept set, from the Grams:

    .. math::

        e(r) = \frac{1_T^T M 1_T}{1^T M 1}, \qquad M = \sum_h G_{a,h} \circ G_b,

    ``T`` the dimensions of the dropped items (``M`` is positive semi-definite, a sum of
    Hadamard products of Grams). With a rotary embedding the scores are
    :math:`a_i^T R(\Delta) b_i` summed over pairs, rotated by the relative position
    :math:`\Delta`: ``errors`` is exact at :math:`\Delta = 0` and, since every pair is kept or
    dropped whole, a proxy elsewhere (a kept pair's rotated term is kept exactly). The curve
    need not decrease: dropped terms may cancel.

    Keeping ``r`` items leaves :math:`\hat S_h` of rank at most ``rs``, so
    :math:`\|S_h - \hat S_h\|_F^2 \ge \sum_{i > rs}\sigma_i(S_h)^2` (Eckart-Young): ``lower``.
    The :math:`\sigma_i(S_h)^2` are the eigenvalues of :math:`F_bG_{a,h}F_b^T` with
    :math:`F_b^TF_b = G_b` (from the eigendecomposition of :math:`G_b`), ``d x d`` per head. The
    CR product keeps its terms unchanged, without a refit, so ``errors / lower`` measures what
    that costs as well as the choice of items; the best set of ``r`` items itself is a
    quadratic subset problem (minimise :math:`1_T^TM1_T`) with no closed form.

    References
    ----------
    .. [1] P. Drineas, R. Kannan and M. W. Mahoney, "Fast Monte Carlo algorithms for matrices I:
       approximating matrix multiplication", SIAM J. Comput. 36(1), 2006.
    .. [2] C.-C. Lin et al., "MoDeGPT: modular decomposition for large language model
       compression", ICLR 2025, arXiv 2408.09632 (the CR approximation of the query-key pair).

    Examples
    --------
    >>> import numpy as np
    >>> from curlinalg.score_cr import score_cr
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 6))
    >>> Wq, Wk = rng.standard_normal((8, 6)), rng.standard_normal((4, 6))   # 2 query heads, d = 4
    >>> c = score_cr(X.T @ X, Wq, Wk)
    >>> c.items.tolist(), float(c.errors[-1])                             # pairs (0, 2) and (1, 3)
    ([[0, 2], [1, 3]], 0.0)
    """
    xp = _backend.namespace(gram, queries, key)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or not xp.isdtype(gram.dtype, "real floating"):
        raise ValueError(_ERR_GRAM.format(shape=tuple(gram.shape)))
    n = gram.shape[0]
    if key.ndim != 2 or key.shape[1] != n or key.shape[0] == 0 or not xp.isdtype(key.dtype, "real floating"):
        raise ValueError(_ERR_KEY.format(n=n, shape=tuple(key.shape)))
    d = key.shape[0]
    if (queries.ndim != 2 or queries.shape[1] != n or queries.shape[0] == 0 or queries.shape[0] % d
            or not xp.isdtype(queries.dtype, "real floating")):
        raise ValueError(_ERR_QUERIES.format(d=d, n=n, shape=tuple(queries.shape)))
    if rotary and d % 2:
        raise ValueError(_ERR_ROTARY.format(d=d))
    H = xp.astype(gram, xp.float64)
    Wk = xp.astype(key, xp.float64)
    Wq = xp.astype(queries, xp.float64)
    Gb = _host(Wk @ H @ Wk.T)
    Gq = _host(Wq @ H @ Wq.T)
    if not (np.all(np.isfinite(Gb)) and np.all(np.isfinite(Gq))):
        raise ValueError("gram, queries and key must be finite (no NaN or Inf); check the calibration activations")
    g = Wq.shape[0] // d
    blocks = [Gq[h * d:(h + 1) * d, h * d:(h + 1) * d] for h in range(g)]
    M = sum(blocks) * Gb
    norm_b = np.sqrt(np.maximum(np.diagonal(Gb), 0.0))
    per_dim = sum(np.sqrt(np.maximum(np.diagonal(B), 0.0)) for B in blocks) * norm_b
    half = d // 2
    items = (np.stack([np.arange(half), np.arange(half) + half], axis=1) if rotary
             else np.arange(d)[:, None])
    scores = per_dim[items].sum(axis=1)
    order = np.argsort(-scores, kind="stable")
    total = float(M.sum())
    errors = np.empty(items.shape[0])
    for r in range(1, items.shape[0] + 1):
        dropped = items[order[r:]].ravel()
        errors[r - 1] = float(M[np.ix_(dropped, dropped)].sum()) if dropped.size else 0.0
    errors = np.maximum(errors, 0.0) / (total if total > 0 else 1.0)
    lam_b, V = np.linalg.eigh((Gb + Gb.T) / 2)
    Fb = np.sqrt(np.maximum(lam_b, 0.0))[:, None] * V.T
    kept = items.shape[1] * np.arange(1, items.shape[0] + 1)  # the rank of r kept items
    tails = np.zeros(items.shape[0])
    for B in blocks:
        C = Fb @ B @ Fb.T
        smallest = np.concatenate([[0.0], np.cumsum(np.maximum(np.linalg.eigvalsh((C + C.T) / 2), 0.0))])
        tails += smallest[d - kept]
    lower = tails / (total if total > 0 else 1.0)
    rounding = ROUNDING_FACTOR * float(np.sqrt(max(n, d) * np.finfo(np.float64).eps))
    return ScoreCR(items, order, scores, errors, total, lower, rounding)
