import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import importlib

import scipy.linalg as sla

from curlinalg import CURWarning, RankDeficiencyWarning, certify, cur, selection_constant
from curlinalg.cur import METHODS, TOLERANCE_RANK_FACTOR
from curlinalg.testing import exponential_spectrum, known_spectrum, polynomial_spectrum, step_spectrum
from curlinalg.testing.strategies import COMPLEX_DTYPES, hard_problems, problems

EPS = np.finfo(np.float64).eps


def rounding_slack(A, res):
    """Rounding error of forming C @ (U @ R), in units of machine epsilon."""
    norm = np.linalg.norm
    return 10 * sum(A.shape) * EPS * (norm(A, 2) + norm(res.C, 2) * norm(res.U, 2) * norm(res.R, 2))


@pytest.mark.filterwarnings("ignore::curlinalg.RankDeficiencyWarning")
@given(problems(kinds=("deficient",)), st.sampled_from(METHODS), st.integers(0, 3))
def test_exact_recovery_when_rank_at_most_k(problem, method, extra):
    A, s = problem.A, problem.s
    true_rank = int(np.sum(s > 0))
    k = min(true_rank + extra, min(A.shape))
    res = cur(A, rank=k, method=method, rng=problem.seed)
    assert not np.isnan(res.to_dense()).any()
    assert np.isfinite(res.eta_rows) and np.isfinite(res.eta_cols)
    assert np.linalg.norm(A - res.to_dense(), 2) <= res.bound


@pytest.mark.filterwarnings("ignore::curlinalg.RankDeficiencyWarning")
@given(problems(), st.sampled_from(METHODS))
def test_deim_type_bound_from_returned_indices(problem, method):
    """||A - CUR||_2 <= (eta_p + eta_q) sigma_{k+1}, eta from exact singular vectors."""
    A, k = problem.A, problem.rank
    res = cur(A, rank=k, method=method, rng=problem.seed)
    k = res.rank
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    eta_p = selection_constant(U[:, :k], res.rows)
    eta_q = selection_constant(Vt[:k].T, res.cols)
    err = np.linalg.norm(A - res.to_dense(), 2)
    assert err <= (eta_p + eta_q) * (s[k] + res.rounding)
    assert err <= res.bound


@given(problems(min_dim=10, max_dim=50, kinds=("exponential",)), st.sampled_from(["deim", "qdeim", "maxvol"]))
def test_numpy_and_torch_agree(problem, method):
    torch = pytest.importorskip("torch")
    # within the numerical rank: near it the two backends' SVDs may see different ranks and
    # break the ties differently (the thorough profile found such draws), which no CUR can agree on
    A, k = problem.A, min(problem.rank, 8)
    res_np = cur(A, rank=k, method=method)
    res_t = cur(torch.from_numpy(A), rank=k, method=method)
    err_np = np.linalg.norm(A - res_np.to_dense(), 2)
    err_t = np.linalg.norm(A - res_t.to_dense().numpy(), 2)
    np.testing.assert_array_equal(np.sort(res_t.rows.numpy()), np.sort(res_np.rows))
    np.testing.assert_array_equal(np.sort(res_t.cols.numpy()), np.sort(res_np.cols))
    assert err_t == pytest.approx(err_np, rel=1e-6, abs=rounding_slack(A, res_np))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("core", ["optimal", "cross"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_result_keeps_namespace_device_dtype(xp, method, core, dtype):
    A = known_spectrum(40, 30, exponential_spectrum(30, decay=0.3), rng=0).astype(dtype)
    res = cur(xp.asarray(A), rank=5, method=method, core=core, rng=0)
    for arr in (res.C, res.U, res.R):
        assert type(arr) is type(xp.asarray(A))
        assert str(arr.dtype).endswith(dtype)
        if hasattr(arr, "device"):
            assert arr.device == xp.asarray(A).device
    x = xp.asarray(np.ones((30, 2), dtype=dtype))
    np.testing.assert_allclose(
        xp.to_numpy(res @ x), xp.to_numpy(res.to_dense() @ x), rtol=1e-4, atol=1e-4
    )
    if core == "optimal":
        rel = np.linalg.norm(A - xp.to_numpy(res.to_dense())) / np.linalg.norm(A)
        assert rel < 0.5


def test_reproducible_from_seed():
    A = known_spectrum(600, 550, exponential_spectrum(550, decay=0.05), rng=1)
    for method in ("randomized", "leverage_sampling"):
        a = cur(A, rank=20, method=method, rng=7)
        b = cur(A, rank=20, method=method, rng=7)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.U, b.U)


def test_large_matrix_uses_randomized_basis():
    A = known_spectrum(700, 600, exponential_spectrum(600, decay=0.2), rng=2)
    res = cur(A, rank=10, method="qdeim", rng=0)
    assert res.basis == "randomized"
    assert cur(A, rank=10, method="qdeim", basis="exact").basis == "exact"


@pytest.mark.parametrize("tols", [{"rtol": 1e-3}, {"atol": 1e-4}, {"rtol": 1e-6, "atol": 1e-3}])
def test_tolerance_is_certified(tols):
    s = exponential_spectrum(60, decay=0.3)
    A = known_spectrum(80, 60, s, rng=3)
    res = cur(A, **tols, rng=0)
    target = max(tols.get("atol", 0), tols.get("rtol", 0) * s[0])
    assert res.certificate is not None and res.certificate.bound <= target
    assert np.linalg.norm(A - res.to_dense(), 2) <= res.certificate.bound * (1 + 1e-10)
    # sigma_{k+1} <= target is necessary: no CUR beats the truncated SVD.
    assert s[res.rank] <= target


def test_tolerance_on_a_randomized_basis():
    s = exponential_spectrum(600, decay=0.1)
    A = known_spectrum(700, 600, s, rng=4)
    res = cur(A, rtol=1e-4, rng=0)
    assert res.basis == "randomized"
    assert res.certificate.bound <= 1e-4 * s[0]
    assert np.linalg.norm(A - res.to_dense(), 2) <= res.certificate.bound


def test_rank_caps_the_tolerance():
    A = known_spectrum(50, 40, exponential_spectrum(40, decay=0.1), rng=5)
    res = cur(A, rank=4, rtol=1e-12)
    assert res.rank == 4 and res.certificate.bound > 1e-12


def test_unreachable_tolerance_warns_and_returns_best():
    A = known_spectrum(60, 50, step_spectrum(50, rank=8, gap=0.0), rng=0)
    A = A + 1e-12 * np.random.default_rng(0).standard_normal(A.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cur(A, atol=1e-30)
    assert not np.isnan(res.U).any()
    assert res.certificate.bound > 1e-30
    assert any(issubclass(w.category, CURWarning) for w in caught) or res.rank == 50


@pytest.mark.parametrize("method", METHODS)
def test_rank_deficient_input_warns_and_gives_no_nan(method):
    A = known_spectrum(30, 20, step_spectrum(20, rank=3, gap=0.0), rng=0)
    with pytest.warns(RankDeficiencyWarning, match="numerical rank 3"):
        res = cur(A, rank=10, method=method, rng=0)
    assert res.rank == 3
    assert np.isfinite(res.to_dense()).all()


def test_zero_matrix():
    with pytest.warns(RankDeficiencyWarning):
        res = cur(np.zeros((5, 4)), rank=2)
    np.testing.assert_array_equal(res.to_dense(), 0.0)


def test_rmatmul():
    A = known_spectrum(20, 15, exponential_spectrum(15, decay=0.5), rng=0)
    res = cur(A, rank=5)
    x = np.ones((3, 20))
    np.testing.assert_allclose(x @ res, x @ res.to_dense())


A_OK = np.random.default_rng(0).standard_normal((6, 5))


@pytest.mark.parametrize(
    "A, kwargs, err, match",
    [
        (np.ones(5), {"rank": 1}, ValueError, "expected a matrix"),
        (np.ones((2, 3, 4, 5)), {"rank": 1}, ValueError, "stack of matrices"),
        (np.ones((0, 3)), {"rank": 1}, ValueError, "non-empty"),
        (np.full((3, 3), np.inf), {"rank": 1}, ValueError, "NaN or Inf"),
        (np.ones((3, 3), dtype=int), {"rank": 1}, TypeError, "float32 or float64"),
        (np.ones((3, 3), dtype=bool), {"rank": 1}, TypeError, "float32 or float64"),
        (np.ones((3, 3), dtype=np.float16), {"rank": 1}, TypeError, "float32 or float64"),
        (np.full((3, 3), complex(1.0, np.nan)), {"rank": 1}, ValueError, "NaN or Inf"),
        (np.full((3, 3), complex(np.inf, 0.0)), {"rank": 1}, ValueError, "NaN or Inf"),
        ([[1.0, 2.0]], {"rank": 1}, TypeError, "numpy, torch or cupy"),
        (A_OK, {"rtol": "1e-3"}, TypeError, "rtol must be"),
        (A_OK, {"rank": 2, "oversample": 2.0}, TypeError, "oversample must be an int"),
        (A_OK, {"rank": np.bool_(True)}, TypeError, "rank must be an int"),
        (A_OK, {"rank": 0}, ValueError, "1 <= rank"),
        (A_OK, {"rank": 6}, ValueError, "1 <= rank"),
        (A_OK, {"rank": 2.0}, TypeError, "rank must be an int"),
        (A_OK, {"rank": True}, TypeError, "rank must be an int"),
        (A_OK, {}, ValueError, "rank=, rtol= or atol="),
        (A_OK, {"rtol": -1.0}, ValueError, "rtol must be"),
        (A_OK, {"atol": float("nan")}, ValueError, "atol must be"),
        (A_OK, {"rank": 2, "method": "svd"}, ValueError, "method must be one of"),
        (A_OK, {"rank": 2, "core": "lu"}, ValueError, "core must be one of"),
        (A_OK, {"rank": 2, "basis": "qr"}, ValueError, "basis must be one of"),
        (A_OK, {"rank": 2, "oversample": -1}, ValueError, "oversample must be"),
        (A_OK, {"rank": 2, "rng": -3}, ValueError, "seed must be >= 0"),
        (A_OK, {"rank": 2, "rng": "seed"}, TypeError, "rng must be"),
    ],
)
def test_bad_input(A, kwargs, err, match):
    with pytest.raises(err, match=match):
        cur(A, **kwargs)


def test_rank_warning_points_at_the_caller():
    A = known_spectrum(30, 20, step_spectrum(20, rank=3, gap=0.0), rng=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cur(A, rank=10, rng=0)
    rank_warnings = [w for w in caught if issubclass(w.category, RankDeficiencyWarning)]
    assert rank_warnings
    assert all(w.filename == __file__ for w in rank_warnings)


def test_unreachable_tolerance_warning_points_at_the_caller():
    """Tolerance mode stays at or below the numerical rank: it warns that the tolerance is out of
    reach (not that the rank is), from the user's line."""
    A = known_spectrum(30, 20, step_spectrum(20, rank=3, gap=0.0), rng=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cur(A, rtol=1e-30, rng=0)
    assert res.rank == 3
    ours = [w for w in caught if issubclass(w.category, CURWarning)]
    assert ours and all(w.filename == __file__ for w in ours)
    assert any("not reached" in str(w.message) for w in ours)
    assert not any(issubclass(w.category, RankDeficiencyWarning) for w in caught)


tolerance_module = importlib.import_module("curlinalg.tolerance")


def spectral_error(A, res):
    wide = np.promote_types(A.dtype, np.float64)  # complex128 for complex input
    return np.linalg.norm(A.astype(wide) - res.to_dense().astype(wide), 2)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(), st.sampled_from(METHODS))
def test_bound_holds_in_floating_point_at_every_rank(problem, method):
    """The reported bound is at least the computed error: every rank up to min(m, n) (past the
    numerical rank too), float32 and float64, graded, Hilbert- and Kahan-like, clustered, step
    and duplicated-column matrices. No slack beyond the documented rounding term."""
    res = cur(problem.A, rank=problem.rank, method=method, rng=problem.seed)
    assert res.U.dtype == problem.A.dtype
    assert np.isfinite(res.bound)
    assert spectral_error(problem.A, res) <= res.bound


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(), st.sampled_from(METHODS))
def test_sketch_core_bound_holds_on_randomized_bases(problem, method):
    """core="sketch" projects QQ^T A instead of A: its bound adds the certified residual."""
    res = cur(problem.A, rank=problem.rank, method=method, basis="randomized", core="sketch",
              oversample=2, power_iters=1, rng=problem.seed)
    assert res.core == "sketch" and res.basis == "randomized"
    assert spectral_error(problem.A, res) <= res.bound


def test_sketch_core_skips_a_pass_and_pays_the_sketch_residual():
    A = known_spectrum(400, 300, polynomial_spectrum(300, power=0.5), rng=3)
    opt = cur(A, rank=20, method="randomized", rng=0)
    sk = cur(A, rank=20, method="randomized", core="sketch", rng=0)
    np.testing.assert_array_equal(opt.rows, sk.rows)  # same sketch, same selection
    assert opt.sketch_residual == 0.0 and sk.sketch_residual > 0.0
    assert not np.allclose(opt.U, sk.U)  # the option changes the core
    base = (sk.eta_rows + sk.eta_cols) * (sk.sigma_next + sk.rounding)
    assert sk.bound == pytest.approx(base + sk.sketch_residual)
    assert spectral_error(A, sk) <= sk.bound
    # On an exact basis there is no sketch: the same core as "optimal", and no extra term.
    ex_opt, ex_sk = cur(A, rank=20, basis="exact"), cur(A, rank=20, basis="exact", core="sketch")
    np.testing.assert_allclose(ex_sk.U, ex_opt.U)
    assert ex_sk.sketch_residual == 0.0


FINDING_A = known_spectrum(300, 250, np.exp(-np.arange(250) / 8), rng=1)


def test_error_keeps_falling_past_the_numerical_rank():
    """Finding 1: the error grew with the rank (2.5e-6 at 200, 9.9e-5 at 241) and the bound was
    below it."""
    errors = []
    for k in (157, 200, 241):
        res = cur(FINDING_A, rank=k)
        errors.append(spectral_error(FINDING_A, res))
        assert errors[-1] <= res.bound
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-11


@pytest.mark.parametrize("method", ["deim", "qdeim", "maxvol"])
def test_hilbert_bound_holds(method):
    H = sla.hilbert(200)
    errors = []
    for k in (15, 20):
        res = cur(H, rank=k, method=method)
        errors.append(spectral_error(H, res))
        assert errors[-1] <= res.bound
    assert errors[1] < errors[0]


@pytest.mark.parametrize("rtol", [1e-20, 1e-12])
def test_unreachable_or_floor_tolerance_returns_the_best_rank(rtol, monkeypatch):
    """Finding 2: rtol=1e-20 returned rank 243 with error 1.0e-4 (rank 157 gives 1.8e-8)."""
    calls = []
    monkeypatch.setattr(
        tolerance_module, "certify", lambda *a, **k: calls.append(1) or certify(*a, **k)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cur(FINDING_A, rtol=rtol, rng=0)
    err = spectral_error(FINDING_A, res)
    assert err <= res.certificate.bound * (1 + 1e-12)
    assert err < 1e-11
    assert res.rank < 250
    unreached = [w for w in caught if "not reached" in str(w.message)]
    if rtol == 1e-20:
        # one certificate: at most about twice a rank-mode call at that rank
        assert unreached and len(calls) == 1
    else:
        assert res.certificate.bound <= rtol * np.linalg.norm(FINDING_A, 2) or unreached


def test_float32_tolerance_below_its_precision_warns():
    """Finding 2: a float32 Gaussian with rtol=1e-8 returned error 5.6e-5, no warning."""
    G = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    with pytest.warns(CURWarning, match="not reached"):
        res = cur(G, rtol=1e-8, rng=0)
    assert spectral_error(G, res) <= res.certificate.bound * (1 + 1e-6)
    assert spectral_error(G, res) <= res.bound


def test_readme_tolerance_example_does_not_warn():
    """Finding 3: the README's own example warned 'rank 64 exceeds the numerical rank 60'."""
    A = np.random.default_rng(0).standard_normal((2000, 60)) @ np.random.default_rng(1).standard_normal((60, 1500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cur(A, rtol=1e-8, rng=0)
    assert res.rank <= 60
    assert res.certificate.bound <= 1e-8 * np.linalg.norm(A, 2)


def assert_minimal_within_factor(A, res, target):
    """The rank ``res.rank / TOLERANCE_RANK_FACTOR`` (rounded down) misses the target, so the
    returned rank is within the stated factor of the smallest rank that meets it."""
    assert res.certificate.bound <= target
    assert spectral_error(A, res) <= res.certificate.bound
    lower = int(res.rank / TOLERANCE_RANK_FACTOR)
    assert spectral_error(A, cur(A, rank=lower, rng=0)) > target


def noisy_exponential(m, n):
    rng = np.random.default_rng(0)
    A = known_spectrum(m, n, np.exp(-np.arange(min(m, n)) / 10), rng=1)
    return A + 1e-6 * rng.standard_normal((m, n)) / np.sqrt(max(m, n))


@pytest.mark.parametrize(
    "shape, rtol", [((300, 250), 1e-3), ((300, 250), 1e-5), ((2000, 500), 1e-2)]
)
def test_tolerance_rank_is_minimal_within_the_stated_factor(shape, rtol):
    """Finding 3: rank 138 on 2000 x 500 at rtol=1e-2 where about 88 suffice."""
    A = noisy_exponential(*shape)
    res = cur(A, rtol=rtol, rng=0)
    assert_minimal_within_factor(A, res, rtol * np.linalg.norm(A, 2))


@pytest.mark.slow
def test_tolerance_rank_is_minimal_on_the_issue_2000_square_case():
    A = noisy_exponential(2000, 2000)
    res = cur(A, rtol=1e-3, rng=0)
    assert res.basis == "randomized"
    assert_minimal_within_factor(A, res, 1e-3 * np.linalg.norm(A, 2))


CROSS_METHODS = ["deim", "qdeim", "maxvol"]


@pytest.mark.parametrize("method", CROSS_METHODS)
def test_cross_core_is_stabilised_by_default(method):
    """Finding 4: error / sigma_11 had median 38-73 and worst 1680; the bound lay below it."""
    ratios, unstable = [], []
    for seed in range(8):
        A = np.random.default_rng(seed).standard_normal((300, 200))
        s = np.linalg.svd(A, compute_uv=False)
        res = cur(A, rank=10, method=method, core="cross")
        assert res.bound is None
        ratios.append(spectral_error(A, res) / s[10])
        raw = cur(A, rank=10, method=method, core="cross", core_rtol=1e-15)
        unstable.append(spectral_error(A, raw) / s[10])
    assert np.median(ratios) < 3 and max(ratios) < 10
    assert np.median(unstable) > np.median(ratios)  # the option is used


def test_core_rtol_needs_the_cross_core():
    with pytest.raises(ValueError, match="core_rtol applies to core='cross'"):
        cur(A_OK, rank=2, core_rtol=1e-3)


@pytest.mark.parametrize("shape", [(50, 2000), (2000, 50), (60, 60)])
def test_leverage_sampling_at_full_rank_is_exact(shape):
    """Finding 5: R with 33 rows, relative error 0.92, bound nan, no warning."""
    A = np.random.default_rng(0).standard_normal(shape)
    k = min(shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = cur(A, rank=k, method="leverage_sampling", rng=0)
    assert res.rows.shape[0] >= k and res.cols.shape[0] >= k
    assert np.isfinite(res.bound)
    err = spectral_error(A, res)
    assert err <= res.bound and err <= 1e-10 * np.linalg.norm(A, 2)
    if any(x.shape[0] > k + 10 for x in (res.rows, res.cols)) or caught:
        assert any("Q-DEIM" in str(w.message) for w in caught)


def test_leverage_sampling_bound_is_always_finite():
    A = known_spectrum(400, 300, exponential_spectrum(300, decay=0.05), rng=0)
    for seed in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CURWarning)
            res = cur(A, rank=60, method="leverage_sampling", rng=seed)
        assert np.isfinite(res.bound)
        assert spectral_error(A, res) <= res.bound


def test_leverage_warns_when_far_worse_than_qdeim():
    """Finding 5: deterministic leverage 1e5 times from optimal on Hilbert-like matrices."""
    H = sla.hilbert(120)
    with pytest.warns(CURWarning, match="poorly conditioned|Q-DEIM"):
        res = cur(H, rank=14, method="leverage")
    assert np.isfinite(res.bound) and spectral_error(H, res) <= res.bound


def test_repr_is_short_and_results_compare():
    """Finding 7: repr printed 1.6k characters of arrays; == raised."""
    A = known_spectrum(60, 40, exponential_spectrum(40, decay=0.3), rng=0)
    a, b = cur(A, rank=5, rng=0), cur(A, rank=5, rng=0)
    text = repr(a)
    assert len(text) < 200 and "array" not in text and "rank=5" in text and "bound=" in text
    assert a == b
    assert a != cur(A, rank=6, rng=0)
    assert a != cur(A, rank=5, method="qdeim", rng=0)
    assert a != "not a result"


def test_results_on_different_backends_are_not_equal():
    torch = pytest.importorskip("torch")
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.3), rng=0)
    assert cur(A, rank=3) != cur(torch.from_numpy(A), rank=3)


# Complex input: the same bounds, with conjugate transposes, complex Gaussian sketches and the
# complex rounding constant (docs/index.md, "Complex input").


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(dtypes=COMPLEX_DTYPES), st.sampled_from(METHODS))
def test_complex_bound_holds_in_floating_point_at_every_rank(problem, method):
    """test_bound_holds_in_floating_point_at_every_rank on complex64 and complex128 versions of
    the hard problems (graded, Hilbert-like, Kahan, clustered, step, duplicated)."""
    res = cur(problem.A, rank=problem.rank, method=method, rng=problem.seed)
    assert res.U.dtype == problem.A.dtype and res.C.dtype == problem.A.dtype
    assert np.isfinite(res.bound)
    assert spectral_error(problem.A, res) <= res.bound


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(dtypes=COMPLEX_DTYPES), st.sampled_from(METHODS))
def test_complex_sketch_core_bound_holds_on_randomized_bases(problem, method):
    """Complex Gaussian sketches: the sketch core's bound with its certified residual."""
    res = cur(problem.A, rank=problem.rank, method=method, basis="randomized", core="sketch",
              oversample=2, power_iters=1, rng=problem.seed)
    assert res.basis == "randomized" and res.U.dtype == problem.A.dtype
    assert spectral_error(problem.A, res) <= res.bound


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(problems(dtypes=COMPLEX_DTYPES), st.sampled_from(METHODS))
def test_complex_deim_type_bound_from_returned_indices(problem, method):
    """||A - CUR||_2 <= (eta_p + eta_q)(sigma_{k+1} + rho), eta from the exact singular vectors
    (V = Vh^H) of a complex matrix."""
    A = problem.A
    res = cur(A, rank=problem.rank, method=method, rng=problem.seed)
    k = res.rank
    U, s, Vh = np.linalg.svd(A.astype(np.complex128), full_matrices=False)
    eta_p = selection_constant(U[:, :k], res.rows)
    eta_q = selection_constant(Vh[:k].conj().T, res.cols)
    err = spectral_error(A, res)
    assert err <= (eta_p + eta_q) * (s[k] + res.rounding)
    assert err <= res.bound


def test_complex_rank_is_the_complex_rank():
    """A complex rank-3 matrix is recovered exactly at rank 3 (its real embedding would need
    rank 6), with complex factors."""
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((30, 3)) + 1j * rng.standard_normal((30, 3))) @ (
        rng.standard_normal((3, 20)) + 1j * rng.standard_normal((3, 20)))
    for method in METHODS:
        res = cur(A, rank=3, method=method, rng=0)
        assert res.C.dtype == np.complex128
        assert spectral_error(A, res) <= res.bound < 1e-10 * np.linalg.norm(A, 2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_result_keeps_namespace_device_dtype(xp, method, dtype):
    A = known_spectrum(40, 30, exponential_spectrum(30, decay=0.3), rng=0,
                       dtype=np.complex128).astype(dtype)
    res = cur(xp.asarray(A), rank=5, method=method, rng=0)
    for arr in (res.C, res.U, res.R):
        assert type(arr) is type(xp.asarray(A))
        assert str(arr.dtype).endswith(dtype)
    assert spectral_error(A, _on_host(res, xp)) <= res.bound


def _on_host(res, xp):
    """The result's dense approximation, as an object spectral_error reads."""
    dense = xp.to_numpy(res.to_dense())
    return type("Dense", (), {"to_dense": lambda self: dense})()


@given(problems(min_dim=10, max_dim=50, kinds=("exponential",), dtypes=("complex128",)),
       st.sampled_from(["deim", "qdeim", "maxvol"]))
def test_complex_numpy_and_torch_agree(problem, method):
    torch = pytest.importorskip("torch")
    A, k = problem.A, min(problem.rank, 8)  # within the numerical rank: no ties to break
    res_np = cur(A, rank=k, method=method)
    res_t = cur(torch.from_numpy(A), rank=k, method=method)
    np.testing.assert_array_equal(np.sort(res_t.rows.numpy()), np.sort(res_np.rows))
    np.testing.assert_array_equal(np.sort(res_t.cols.numpy()), np.sort(res_np.cols))
    err_np, err_t = spectral_error(A, res_np), np.linalg.norm(A - res_t.to_dense().numpy(), 2)
    assert err_t == pytest.approx(err_np, rel=1e-6, abs=rounding_slack(A, res_np))


@pytest.mark.parametrize("tols", [{"rtol": 1e-3}, {"atol": 1e-4}])
def test_complex_tolerance_is_certified(tols):
    s = exponential_spectrum(60, decay=0.3)
    A = known_spectrum(80, 60, s, rng=3, dtype=np.complex128)
    res = cur(A, **tols, rng=0)
    target = max(tols.get("atol", 0), tols.get("rtol", 0) * s[0])
    assert res.certificate.bound <= target
    assert spectral_error(A, res) <= res.certificate.bound * (1 + 1e-10)
    assert s[res.rank] <= target


def test_complex_tolerance_on_a_randomized_basis():
    """700 x 600 complex: complex Gaussian sketches grown to the tolerance, and the power
    certificate with complex starts."""
    s = exponential_spectrum(600, decay=0.1)
    A = known_spectrum(700, 600, s, rng=4, dtype=np.complex128)
    res = cur(A, rtol=1e-4, rng=0)
    assert res.basis == "randomized" and not res.certificate.exact
    assert res.certificate.bound <= 1e-4 * s[0]
    assert spectral_error(A, res) <= res.certificate.bound
