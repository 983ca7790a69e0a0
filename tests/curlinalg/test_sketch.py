import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom

from curlinalg import cur, range_finder, truncated_svd
from curlinalg.sketch import randomized_failure_factor
from curlinalg.testing import known_spectrum, polynomial_spectrum, rank_deficient_spectrum


def test_range_finder_orthonormal_and_exact_on_low_rank(xp):
    A = known_spectrum(60, 50, rank_deficient_spectrum(50, rank=6), rng=0)
    Q = xp.to_numpy(range_finder(xp.asarray(A), size=8, rng=1))
    np.testing.assert_allclose(Q.T @ Q, np.eye(8), atol=1e-10)
    np.testing.assert_allclose(Q @ (Q.T @ A), A, atol=1e-10)


@given(st.integers(0, 2**32 - 1))
def test_truncated_svd_matches_lapack(seed):
    A = known_spectrum(80, 60, polynomial_spectrum(60, power=2.0), rng=seed)
    s_ref = np.linalg.svd(A, compute_uv=False)
    for kind in ("exact", "randomized"):
        t = truncated_svd(A, rank=5, kind=kind, power_iters=4, rng=seed)
        np.testing.assert_allclose(t.s[:5], s_ref[:5], rtol=1e-3)
        np.testing.assert_allclose(t.U.T @ t.U, np.eye(5), atol=1e-10)
        assert t.kind == kind


def test_bad_options():
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="size must be"):
        range_finder(A, size=5)
    with pytest.raises(ValueError, match="kind must be one of"):
        truncated_svd(A, rank=2, kind="lanczos")
    with pytest.raises(ValueError, match="power_iters must be"):
        range_finder(A, size=2, power_iters=-1)


@pytest.mark.slow
@pytest.mark.parametrize("power_iters", [0, 1])
def test_randomized_cur_probabilistic_bound_over_many_seeds(power_iters):
    """||A - CUR||_2 <= (eta_p + eta_q)(1 + F) sigma_{k+1} except w.p. <= 6 p^-p (Halko 1.9)."""
    m, n, k, p, trials = 300, 250, 10, 6, 200
    s = polynomial_spectrum(n, power=0.7)
    A = known_spectrum(m, n, s, rng=0)
    F = randomized_failure_factor(k, p, power_iters, min(m, n))
    failures = 0
    for seed in range(trials):
        res = cur(A, rank=k, method="randomized", oversample=p, power_iters=power_iters, rng=seed)
        err = np.linalg.norm(A - res.to_dense(), 2)
        failures += err > (res.eta_rows + res.eta_cols) * (1 + F) * s[k]
    assert failures <= binom.isf(1e-6, trials, 6 * p**-p)


def test_randomized_residual_bounds_the_basis_error():
    from curlinalg.sketch import truncated_svd
    from curlinalg.testing import exponential_spectrum, known_spectrum

    A = known_spectrum(900, 700, exponential_spectrum(700, decay=0.02), rng=0)
    t = truncated_svd(A, rank=20, kind="randomized", rng=0)
    U, V = t.U, t.V
    for j in (5, 20):
        assert np.linalg.norm(A - U[:, :j] @ (U[:, :j].T @ A), 2) <= t.tail(j)
        assert np.linalg.norm(A - (A @ V[:, :j]) @ V[:, :j].T, 2) <= t.tail(j)
    assert t.residual > 0
    assert truncated_svd(A[:100, :80], rank=5, kind="exact").residual == 0.0
