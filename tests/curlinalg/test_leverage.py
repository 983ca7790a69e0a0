import numpy as np
import pytest
from scipy.stats import binom

from curlinalg import leverage_sample, leverage_scores, selection_constant
from curlinalg.leverage import sampling_failure_probability
from curlinalg.testing import exponential_spectrum, known_spectrum


def test_scores_sum_to_rank(xp):
    A = known_spectrum(40, 30, exponential_spectrum(30, decay=0.2), rng=0)
    s = leverage_scores(xp.asarray(A), rank=4)
    assert float(s.rows.sum()) == pytest.approx(4.0)
    assert float(s.cols.sum()) == pytest.approx(4.0)
    U, _, Vt = np.linalg.svd(A)
    np.testing.assert_allclose(xp.to_numpy(s.rows), np.sum(U[:, :4] ** 2, axis=1), atol=1e-10)


def test_sampler_counts_and_support(xp):
    scores = xp.asarray(np.array([0.0, 1.0, 0.0, 3.0, 0.0]))
    out = leverage_sample(scores, samples=500, rng=3)
    idx = xp.to_numpy(out.indices)
    assert set(idx.tolist()) <= {1, 3}
    assert int(xp.to_numpy(out.counts).sum()) == 500
    np.testing.assert_allclose(xp.to_numpy(out.probabilities), [0.25, 0.75][: len(idx)])
    again = leverage_sample(scores, samples=500, rng=3)
    np.testing.assert_array_equal(xp.to_numpy(again.counts), xp.to_numpy(out.counts))


def test_sampler_frequencies():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    out = leverage_sample(p, samples=20_000, rng=0)
    freq = out.counts / 20_000
    np.testing.assert_allclose(freq, p, atol=0.02)


@pytest.mark.parametrize(
    "scores, samples, err, match",
    [
        (np.array([1.0, -1.0]), 3, ValueError, ">= 0"),
        (np.array([0.0, 0.0]), 3, ValueError, "all zero"),
        (np.array([np.nan, 1.0]), 3, ValueError, "finite"),
        (np.ones((2, 2)), 3, ValueError, "1-D"),
        (np.array([1, 2]), 3, TypeError, "float32 or float64"),
        (np.array([1.0, 2.0]), 0, ValueError, "samples must be"),
    ],
)
def test_bad_input(scores, samples, err, match):
    with pytest.raises(err, match=match):
        leverage_sample(scores, samples=samples)


def test_failure_probability_formula():
    assert sampling_failure_probability(5, 10, 0.5) == 1.0
    assert sampling_failure_probability(5, 1000, 0.5) < 1e-12
    with pytest.raises(ValueError, match="epsilon"):
        sampling_failure_probability(5, 10, 1.0)


@pytest.mark.slow
def test_matrix_chernoff_guarantee_over_many_seeds():
    """sigma_min(W_S)^2 >= (1 - eps) / max_j count_j/(c p_j), failing no more than stated."""
    n, k, c, eps, trials = 200, 5, 200, 0.5, 400
    W = np.linalg.qr(np.random.default_rng(0).standard_normal((n, k)))[0]
    W[:, 0] *= np.linspace(0.2, 2.0, n)  # non-uniform leverage
    W = np.linalg.qr(W)[0]
    scores = np.sum(W * W, axis=1)
    failures = 0
    for seed in range(trials):
        out = leverage_sample(scores, samples=c, rng=seed)
        worst = np.max(out.counts / (c * out.probabilities))
        eta = selection_constant(W, out.indices)
        failures += eta**2 > worst / (1 - eps)
    p_fail = sampling_failure_probability(k, c, eps)
    assert failures <= binom.isf(1e-6, trials, p_fail)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_scores_are_real_and_sum_to_rank(xp, dtype):
    """Leverage scores of a complex matrix are the squared moduli of its singular vectors' rows:
    real (float32 for complex64), summing to k."""
    A = known_spectrum(40, 30, exponential_spectrum(30, decay=0.2), rng=0, dtype=np.complex128)
    s = leverage_scores(xp.asarray(A.astype(dtype)), rank=4)
    assert str(s.rows.dtype).endswith("float32" if dtype == np.complex64 else "float64")
    assert float(s.rows.sum()) == pytest.approx(4.0, rel=1e-5)
    U, _, Vh = np.linalg.svd(A)
    np.testing.assert_allclose(xp.to_numpy(s.rows), np.sum(np.abs(U[:, :4]) ** 2, axis=1), atol=1e-5)
    np.testing.assert_allclose(xp.to_numpy(s.cols), np.sum(np.abs(Vh[:4]) ** 2, axis=0), atol=1e-5)
    sample = leverage_sample(s.rows, samples=20, rng=0)  # the sampler takes them as they are
    assert int(xp.to_numpy(sample.counts).sum()) == 20


def test_complex_scores_are_refused_by_the_sampler():
    with pytest.raises(TypeError, match="float32 or float64 scores"):
        leverage_sample(np.ones(3, dtype=np.complex128), samples=2)
