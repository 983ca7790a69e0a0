import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import CURWarning, RankDeficiencyWarning, cur, selection_constant
from curlinalg.cur import METHODS
from curlinalg.testing import exponential_spectrum, known_spectrum, step_spectrum
from curlinalg.testing.strategies import problems

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
    if np.isfinite(res.eta_rows) and np.isfinite(res.eta_cols):
        assert np.linalg.norm(A - res.to_dense(), 2) <= rounding_slack(A, res) * 1e3
    if method not in ("leverage", "leverage_sampling"):
        assert np.isfinite(res.eta_rows) and np.isfinite(res.eta_cols)


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
    assert err <= (eta_p + eta_q) * s[k] * (1 + 1e-8) + rounding_slack(A, res)
    if res.basis == "exact":
        assert err <= res.bound * (1 + 1e-8) + rounding_slack(A, res)


@given(problems(min_dim=10, max_dim=50, kinds=("exponential",)), st.sampled_from(["deim", "qdeim", "maxvol"]))
def test_numpy_and_torch_agree(problem, method):
    torch = pytest.importorskip("torch")
    A = problem.A
    res_np = cur(A, rank=problem.rank, method=method)
    res_t = cur(torch.from_numpy(A), rank=problem.rank, method=method)
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
        (np.ones(5), {"rank": 1}, ValueError, "2-D"),
        (np.ones((0, 3)), {"rank": 1}, ValueError, "non-empty"),
        (np.full((3, 3), np.inf), {"rank": 1}, ValueError, "NaN or Inf"),
        (np.ones((3, 3), dtype=int), {"rank": 1}, TypeError, "float32 or float64"),
        (np.ones((3, 3), dtype=bool), {"rank": 1}, TypeError, "float32 or float64"),
        (np.ones((3, 3), dtype=np.float16), {"rank": 1}, TypeError, "float32 or float64"),
        (np.ones((3, 3), dtype=complex), {"rank": 1}, TypeError, "float32 or float64"),
        ([[1.0, 2.0]], {"rank": 1}, TypeError, "numpy, torch or cupy"),
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


@pytest.mark.parametrize("kwargs", [{"rank": 10}, {"rtol": 1e-30}])
def test_rank_warning_points_at_the_caller(kwargs):
    """Both the fixed-rank and the tolerance paths attribute the warning to the user's line."""
    A = known_spectrum(30, 20, step_spectrum(20, rank=3, gap=0.0), rng=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cur(A, rng=0, **kwargs)
    rank_warnings = [w for w in caught if issubclass(w.category, RankDeficiencyWarning)]
    assert rank_warnings
    assert all(w.filename == __file__ for w in rank_warnings)
