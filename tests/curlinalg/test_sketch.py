import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binom

from curlinalg import CURWarning, cur, range_finder, truncated_svd
from curlinalg.sketch import randomized_failure_factor
from curlinalg.testing import (
    exponential_spectrum, known_spectrum, polynomial_spectrum, rank_deficient_spectrum,
)
from curlinalg.testing.strategies import COMPLEX_DTYPES, hard_problems, problems


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


def _svd_error(A, t):
    """``||A - U S V^H||_2`` in float64 (complex128 for complex input)."""
    wide = np.complex128 if np.iscomplexobj(A) else np.float64
    USV = (t.U.astype(wide) * t.s[: t.rank]) @ t.V.astype(wide).conj().T
    return np.linalg.norm(A.astype(wide) - USV, 2)


def _check_tolerance_is_the_numerical_rank(problem, rtol, kind):
    """The bound meets the target, and the rank is the numerical rank at the target up to the
    slack r + rho: sigma_{k+1} <= target < sigma_k + r + rho."""
    A, s = problem.A, problem.s
    t = truncated_svd(A, rtol=rtol, kind=kind, rng=problem.seed)
    target = rtol * s[0]
    k = t.rank
    assert _svd_error(A, t) <= t.bound <= target
    assert s[k] <= target if k < len(s) else True
    assert k == 1 or s[k - 1] > target - t.residual - t.rounding


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(max_dim=40), st.sampled_from(["exact", "randomized"]))
def test_truncated_svd_bound_holds_at_every_rank(problem, kind):
    """Issue 25, item 4: TruncatedSVD.bound, s[k] + residual + rho, bounds the computed
    truncation's error in float32 and float64, past the numerical rank too."""
    t = truncated_svd(problem.A, rank=problem.rank, kind=kind, oversample=2, power_iters=1,
                      rng=problem.seed)
    assert t.rank == problem.rank
    assert _svd_error(problem.A, t) <= t.bound


@given(problems(max_dim=40), st.sampled_from([1e-1, 1e-4, 1e-9]),
       st.sampled_from(["exact", "randomized"]))
def test_truncated_svd_tolerance_is_the_numerical_rank(problem, rtol, kind):
    """Tolerance mode (:func:`_check_tolerance_is_the_numerical_rank`)."""
    _check_tolerance_is_the_numerical_rank(problem, rtol, kind)


def test_truncated_svd_tolerance_grows_its_sketch_and_honours_a_cap():
    A = known_spectrum(700, 600, exponential_spectrum(600, decay=0.1), rng=0)
    s = np.linalg.svd(A, compute_uv=False)
    t = truncated_svd(A, rtol=1e-8, kind="randomized", rng=0)
    assert t.kind == "randomized" and t.rank > 32  # past the first sketch
    assert _svd_error(A, t) <= t.bound <= 1e-8 * s[0]
    capped = truncated_svd(A, rank=10, rtol=1e-8, rng=0)
    assert capped.rank == 10 and capped.bound > 1e-8 * s[0]


def test_truncated_svd_tolerance_below_the_rounding_floor_warns():
    A = known_spectrum(60, 50, exponential_spectrum(50, decay=1.0), rng=0)
    with pytest.warns(CURWarning, match="below what the SVD resolves") as caught:
        t = truncated_svd(A, rtol=1e-20)
    assert caught[0].filename == __file__
    assert f"numerical rank {t.rank}" in str(caught[0].message)
    assert t.rank < 50 and _svd_error(A, t) <= t.bound


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({}, ValueError, "rank=, rtol= or atol="),
        ({"rtol": -1.0}, ValueError, "rtol must be"),
        ({"rank": 6}, ValueError, "rank must satisfy"),
    ],
)
def test_truncated_svd_bad_stopping_rules(kwargs, err, match):
    with pytest.raises(err, match=match):
        truncated_svd(np.ones((8, 5)), **kwargs)


# Complex input: complex Gaussian test matrices, A^H in the power iterations and in B = Q^H A,
# V = Vh^H, and the complex probe factor of the residual certificate.
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_range_finder_orthonormal_and_exact_on_low_rank(xp, dtype):
    A = known_spectrum(60, 50, rank_deficient_spectrum(50, rank=6), rng=0, dtype=np.complex128)
    Q = range_finder(xp.asarray(A.astype(dtype)), size=8, rng=1)
    assert str(Q.dtype).endswith(dtype)
    Q = xp.to_numpy(Q).astype(np.complex128)
    tol = 1e-4 if dtype == "complex64" else 1e-10
    np.testing.assert_allclose(Q.conj().T @ Q, np.eye(8), atol=tol)
    np.testing.assert_allclose(Q @ (Q.conj().T @ A), A, atol=tol)


def test_complex_sketches_are_standard_complex_normal():
    """The test matrices of complex input are standard complex Gaussian: E|z|^2 = 1 with the
    variance split evenly between the real and imaginary parts, which the probe factor uses."""
    from curlinalg._backend import Random

    for like in (np.zeros((1, 1), dtype=np.complex128), pytest.importorskip("torch").zeros(
            (1, 1), dtype=pytest.importorskip("torch").complex128)):
        z = np.asarray(Random(0, like).normal((200_000,)))
        assert z.dtype == np.complex128
        assert np.mean(np.abs(z) ** 2) == pytest.approx(1.0, abs=0.01)
        assert np.var(z.real) == pytest.approx(0.5, abs=0.01) and abs(np.mean(z.real * z.imag)) < 0.01


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(max_dim=40, dtypes=COMPLEX_DTYPES), st.sampled_from(["exact", "randomized"]))
def test_complex_truncated_svd_bound_holds_at_every_rank(problem, kind):
    t = truncated_svd(problem.A, rank=problem.rank, kind=kind, oversample=2, power_iters=1,
                      rng=problem.seed)
    assert t.U.dtype == problem.A.dtype and t.s.dtype.kind == "f"
    assert _svd_error(problem.A, t) <= t.bound


@given(problems(max_dim=40, dtypes=COMPLEX_DTYPES), st.sampled_from([1e-1, 1e-4]),
       st.sampled_from(["exact", "randomized"]))
def test_complex_truncated_svd_tolerance_is_the_numerical_rank(problem, rtol, kind):
    _check_tolerance_is_the_numerical_rank(problem, rtol, kind)


def test_complex_randomized_residual_bounds_the_basis_error():
    A = known_spectrum(400, 300, exponential_spectrum(300, decay=0.05), rng=0, dtype=np.complex128)
    t = truncated_svd(A, rank=20, kind="randomized", rng=0)
    U, V = t.U, t.V
    for j in (5, 20):
        assert np.linalg.norm(A - U[:, :j] @ (U[:, :j].conj().T @ A), 2) <= t.tail(j)
        assert np.linalg.norm(A - (A @ V[:, :j]) @ V[:, :j].conj().T, 2) <= t.tail(j)
    assert t.residual > 0
