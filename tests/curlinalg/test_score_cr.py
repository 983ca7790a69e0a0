"""curlinalg.score_cr: the CR approximation of attention scores over query-key dimensions."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg.score_cr import score_cr
from curlinalg.testing import known_spectrum

EPS = np.finfo(np.float64).eps


def _problem(seed, tokens, n, g, d, decay):
    rng = np.random.default_rng(seed)
    X = known_spectrum(tokens, n, np.exp(-decay * np.arange(min(tokens, n))), rng=rng)
    return X, rng.standard_normal((g * d, n)), rng.standard_normal((d, n))


def _direct(X, Wq, Wk, kept):
    """The relative squared error of the score matrices, from the tokens: dimensions not in
    ``kept`` zeroed in every head's queries and in the keys."""
    d = Wk.shape[0]
    B = X @ Wk.T
    num = den = 0.0
    for h in range(Wq.shape[0] // d):
        A = X @ Wq[h * d:(h + 1) * d].T
        S = A @ B.T
        num += np.linalg.norm(S - A[:, kept] @ B[:, kept].T) ** 2
        den += np.linalg.norm(S) ** 2
    return num / den


@given(seed=st.integers(0, 2**32 - 1), half=st.integers(1, 6), g=st.integers(1, 3), n=st.integers(2, 12),
       decay=st.floats(0.0, 1.0), rotary=st.booleans())
def test_curve_is_the_exact_error_of_each_kept_set(seed, half, g, n, decay, rotary):
    d = 2 * half
    X, Wq, Wk = _problem(seed, 3 * n + 5, n, g, d, decay)
    c = score_cr(X.T @ X, Wq, Wk, rotary=rotary)
    m = half if rotary else d
    assert c.items.shape == ((half, 2) if rotary else (d, 1))
    assert sorted(c.order.tolist()) == list(range(m)) and c.errors[-1] == 0.0
    assert np.all(np.diff(c.scores[c.order]) <= 0)  # kept by decreasing score
    for r in range(1, m + 1):
        kept = np.sort(c.items[c.order[:r]].ravel())
        assert abs(c.errors[r - 1] - _direct(X, Wq, Wk, kept)) <= 1e4 * n * d * EPS * (1 + c.errors[r - 1])


@given(seed=st.integers(0, 2**32 - 1), half=st.integers(1, 6), g=st.integers(1, 3))
def test_rotary_items_are_the_pairs_of_rotate_half(seed, half, g):
    d = 2 * half
    X, Wq, Wk = _problem(seed, 40, 8, g, d, 0.2)
    c = score_cr(X.T @ X, Wq, Wk)
    assert c.items.tolist() == [[i, i + half] for i in range(half)]
    A, B = X @ Wq.T, X @ Wk.T  # the score: both dimensions' terms, summed over the query heads
    per_dim = sum(np.linalg.norm(A[:, h * d:(h + 1) * d], axis=0) for h in range(g)) * np.linalg.norm(B, axis=0)
    np.testing.assert_allclose(c.scores, per_dim[:half] + per_dim[half:], rtol=1e-10)


@given(seed=st.integers(0, 2**32 - 1), half=st.integers(1, 6), g=st.integers(1, 3), n=st.integers(2, 12),
       decay=st.floats(0.0, 1.5), rotary=st.booleans(), dead=st.booleans())
def test_lower_is_the_svd_tail_of_the_scores_and_below_every_kept_set(seed, half, g, n, decay, rotary, dead):
    """``lower[r - 1]``: the tail past ``r s`` of each head's score matrix, from an SVD of the
    scores built from the tokens; the curve of the kept items is never below it (a key row of
    zeros, ``dead``, makes ``G_b`` singular)."""
    d = 2 * half
    X, Wq, Wk = _problem(seed, 3 * n + 5, n, g, d, decay)
    if dead:
        Wk[0] = 0.0
    c = score_cr(X.T @ X, Wq, Wk, rotary=rotary)
    s = c.items.shape[1]
    B = X @ Wk.T
    sv = [np.linalg.svd((X @ Wq[h * d:(h + 1) * d].T) @ B.T, compute_uv=False) for h in range(g)]
    total = sum(float((v**2).sum()) for v in sv)
    slack = 64 * max(n, d) * EPS
    for r in range(1, c.items.shape[0] + 1):
        tail = sum(float((v[r * s:] ** 2).sum()) for v in sv) / total
        assert abs(c.lower[r - 1] - tail) <= slack
        assert c.lower[r - 1] <= c.errors[r - 1] + slack
    assert c.lower[-1] == 0.0 and c.rounding == pytest.approx(4 * np.sqrt(max(n, d) * EPS))


def test_a_dimension_no_head_reads_is_dropped_first_at_no_cost():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    Wq, Wk = rng.standard_normal((8, 5)), rng.standard_normal((4, 5))
    Wk[[1, 3]] = 0.0  # the pair (1, 3) adds nothing to any score
    c = score_cr(X.T @ X, Wq, Wk)
    assert c.order.tolist() == [0, 1] and c.scores[1] == 0.0 and c.errors[0] < 1e-15


def test_backends_agree(xp):
    X, Wq, Wk = _problem(4, 30, 6, 2, 4, 0.3)
    ref = score_cr(X.T @ X, Wq, Wk)
    got = score_cr(xp.asarray(X.T @ X), xp.asarray(Wq), xp.asarray(Wk))
    assert got.order.tolist() == ref.order.tolist()
    np.testing.assert_allclose(got.errors, ref.errors, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.lower, ref.lower, rtol=1e-10, atol=1e-14)


def test_bad_shapes_are_refused_with_what_was_expected():
    G, Wq, Wk = np.eye(4), np.ones((6, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"d must be even, got d = 3; pass rotary=False"):
        score_cr(G, Wq, Wk)
    with pytest.raises(ValueError, match=r"queries must be a \(g \* d, n\) float matrix .* "
                                         r"d = 2 and n = 4, got shape \(5, 4\)"):
        score_cr(G, np.ones((5, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"key must be a \(d, n\) float matrix .* n = 4 columns, got shape \(2, 3\)"):
        score_cr(G, Wq, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"gram must be a square"):
        score_cr(np.ones((4, 3)), Wq, Wk)
