import importlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import warnings

import scipy.linalg as sla
import scipy.linalg.interpolative as sli
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from curlinalg import (
    CURWarning, IDResult, certify, cur, id_to_svd, interpolative, spectral_norm, truncated_svd,
    whitening,
)
from curlinalg.bounds import SPECTRAL_OVERESTIMATE, evaluation_rounding
from curlinalg.tolerance import TOLERANCE_RANK_FACTOR
from curlinalg.testing import exponential_spectrum, known_spectrum
from curlinalg.testing.strategies import COMPLEX_DTYPES, hard_problems, problems

SELECTORS = ["deim", "qdeim", "maxvol"]


def _slack(A, res, eps):
    """Rounding allowance: a few ulps of ||A||_2, amplified by the coefficient size eta."""
    return 50 * eps * max(A.shape) * (1.0 + res.eta) * np.linalg.norm(A, 2)


@pytest.mark.parametrize("method", SELECTORS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=problems(max_dim=40))
def test_row_id_bound_holds_at_every_rank(problem, method, dtype):
    A = problem.A.astype(dtype)
    res = interpolative(A, rank=problem.rank, method=method)
    err = np.linalg.norm(A.astype(np.float64) - res.to_dense().astype(np.float64), 2)
    sigma_next = problem.s[problem.rank] if problem.rank < len(problem.s) else 0.0
    eps = np.finfo(dtype).eps
    assert err <= res.eta * sigma_next + _slack(A, res, eps)
    assert err <= res.bound  # the reported bound carries its own rounding term
    np.testing.assert_array_equal(res.skeleton, A[res.indices])
    assert sorted(np.concatenate([res.indices, res.rest]).tolist()) == list(range(A.shape[0]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(problem=problems(max_dim=40))
def test_truncation_skeleton_reproduces_the_truncated_svd(problem, dtype):
    A = problem.A.astype(dtype)
    k = problem.rank
    res = interpolative(A, rank=k, skeleton="truncation")
    m, n = A.shape
    assert res.parameters == k * (m + n) - k * k
    err = np.linalg.norm(A.astype(np.float64) - res.to_dense().astype(np.float64), 2)
    sigma_next = problem.s[k] if k < len(problem.s) else 0.0
    assert err <= sigma_next + _slack(A, res, np.finfo(dtype).eps)
    assert err <= res.bound


@given(problem=problems(max_dim=30, kinds=("exponential", "polynomial")))
def test_exact_at_full_rank(problem):
    A = problem.A
    res = interpolative(A, rank=min(A.shape))
    assert res.sigma_next == 0.0
    np.testing.assert_allclose(res.to_dense(), A, atol=_slack(A, res, np.finfo(float).eps))


@given(problem=problems(max_dim=30))
def test_columns_are_the_row_id_of_the_transpose(problem):
    A = problem.A
    cols = interpolative(A, rank=problem.rank, axis="columns")
    rows = interpolative(A.T, rank=problem.rank)
    np.testing.assert_array_equal(cols.indices, rows.indices)
    np.testing.assert_allclose(cols.to_dense(), rows.to_dense().T, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cols.skeleton, A[:, cols.indices])
    assert cols.shape == A.shape


@given(problem=problems(max_dim=30))
def test_gram_basis_picks_the_same_subspace(problem):
    A = problem.A
    res = interpolative(A, rank=problem.rank, skeleton="truncation", basis="gram")
    err = np.linalg.norm(A - res.to_dense(), 2)
    sigma_next = problem.s[problem.rank] if problem.rank < len(problem.s) else 0.0
    # The Gram route resolves singular values only to sqrt(eps) sigma_1.
    assert err <= sigma_next + 1e-6 * (1 + res.eta) * problem.s[0]


def assert_minimal_within_factor(A, res, target, **options):
    """The tolerance contract of ``cur`` (issue 25): the certificate meets the target and bounds
    the error, and a rank the contract says failed (the smallest ``f`` with
    ``res.rank <= TOLERANCE_RANK_FACTOR * (f + 1)``) misses it, by
    the spectrum (no rank-k approximation beats sigma_{k+1}) or by its own exact certificate;
    when the search certified by power iterations (an operator: ``bound = 1.5 estimate`` with
    ``estimate <= error``), by 1.5 times it, the most that certificate can report."""
    assert res.certificate.bound <= target
    assert_certified(A, res)
    # the smallest failed rank the search may have stopped on: r <= factor * (failed + 1), in
    # the search's own floating point (11 <= 1.1 * 10 holds, so rank 10 need not fail for r = 11)
    lower = max(0, int(res.rank / TOLERANCE_RANK_FACTOR) - 2)
    while not res.rank <= TOLERANCE_RANK_FACTOR * (lower + 1):
        lower += 1
    if lower >= 1:
        s = np.linalg.svd(_wide(np.asarray(A)), compute_uv=False)
        below = interpolative(A, rank=lower, **options)
        factor = 1.0 if res.certificate.exact else SPECTRAL_OVERESTIMATE
        assert s[lower] > target or factor * certify(A, below, rng=0).bound > target


def assert_certified(A, res):
    """The certificate bounds the error: exactly when it is exact (its rounding term included);
    a probabilistic one bounds the residual as evaluated in the input's precision, which differs
    from the float64 / complex128 residual measured here by at most evaluation_rounding."""
    slack = 0.0
    if not res.certificate.exact:
        left, right = res.factors
        norm = np.linalg.norm
        slack = evaluation_rounding(left.shape[1], float(np.finfo(left.dtype).eps), norm(_wide(A)),
                                    norm(_wide(left)), norm(_wide(right)),
                                    complex=np.iscomplexobj(left))
    assert spectral_error(A, res) <= res.certificate.bound + slack


def _wide(X):
    """``X`` in float64, or complex128 when it is complex."""
    X = np.asarray(X)
    return X.astype(np.promote_types(X.dtype, np.float64))


def spectral_error(A, res):
    return np.linalg.norm(_wide(A) - _wide(res.to_dense()), 2)


@pytest.mark.parametrize("rtol", [1e-1, 1e-4, 1e-10])
def test_tolerance_meets_the_certificate(rtol):
    s = exponential_spectrum(30, decay=0.5)
    A = known_spectrum(40, 30, s, rng=3)
    res = interpolative(A, rtol=rtol, rng=0)
    assert_minimal_within_factor(A, res, rtol * s[0])
    capped = interpolative(A, rtol=1e-14, rank=3)
    assert capped.rank == 3 and capped.certificate.bound > 1e-14


def test_metric_error_is_the_whitened_problems_error():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((24, 16))
    X = rng.standard_normal((200, 16)) * np.logspace(0, -2, 16)
    w = whitening(X.T @ X, ridge=0.0)
    B = A @ w.L
    for k in (1, 5, 12):
        res = interpolative(A, rank=k, metric=w, skeleton="truncation")
        weighted = np.linalg.norm((A - res.to_dense()) @ w.L)
        tail = np.sqrt(np.sum(np.linalg.svd(B, compute_uv=False)[k:] ** 2))
        assert weighted == pytest.approx(tail, rel=1e-9)
        plain = interpolative(B, rank=k, skeleton="truncation")
        np.testing.assert_array_equal(res.indices, plain.indices)
        rows = interpolative(A, rank=k, metric=X.T @ X)
        np.testing.assert_array_equal(rows.skeleton, A[rows.indices])
        assert np.linalg.norm((A - rows.to_dense()) @ w.L, 2) <= rows.bound * (1 + 1e-6)


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    A = torch.randn(20, 12, dtype=torch.float64) @ torch.randn(12, 15, dtype=torch.float64)
    res = interpolative(A, rank=6, skeleton="truncation")
    assert isinstance(res.skeleton, torch.Tensor) and isinstance(res.indices, torch.Tensor)
    assert res.indices.dtype == torch.int64 and res.coefficients.device == A.device
    ref = interpolative(A.numpy(), rank=6, skeleton="truncation")
    np.testing.assert_array_equal(res.indices.numpy(), ref.indices)
    np.testing.assert_allclose(res.to_dense().numpy(), ref.to_dense(), rtol=1e-10, atol=1e-10)


def test_certify_reads_an_id():
    A = np.random.default_rng(1).standard_normal((30, 20))
    res = interpolative(A, rank=8)
    assert isinstance(res, IDResult)
    c = certify(A, res, ord="fro")
    assert c.bound == pytest.approx(np.linalg.norm(A - res.to_dense()), rel=1e-10)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(), ValueError, "rank=, rtol= or atol="),
        (dict(rank=3, axis="diag"), ValueError, "axis must be one of"),
        (dict(rank=3, method="random"), ValueError, "method must be one of"),
        (dict(rank=3, skeleton="svd"), ValueError, "skeleton must be one of"),
        (dict(rank=3, axis="columns", metric=np.eye(6)), ValueError, "axis='rows'"),
        (dict(rank=3, cross=np.eye(6)), ValueError, "only applies with metric"),
        (dict(rank=0), ValueError, "rank must satisfy"),
    ],
)
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        interpolative(np.ones((8, 6)), **kwargs)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(
    hard_problems(max_dim=50), st.sampled_from(["rows", "truncation"]),
    st.sampled_from(["rows", "columns"]), st.sampled_from(["svd", "gram"]),
)
def test_reported_bound_holds_in_floating_point(problem, skeleton, axis, basis):
    """Every rank (past the numerical rank too), float32 and float64, the hard structures of
    issue 10; no slack beyond the documented rounding term."""
    res = interpolative(problem.A, rank=problem.rank, skeleton=skeleton, axis=axis, basis=basis)
    A = problem.A.astype(np.float64)
    assert np.linalg.norm(A - np.asarray(res.to_dense(), dtype=np.float64), 2) <= res.bound


def _as_kind(A, kind):
    if kind == "sparse":
        return sp.csr_matrix(A)
    if kind == "operator":
        return aslinearoperator(A)
    return A


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(
    hard_problems(max_dim=50), st.sampled_from(["sparse", "operator", "dense"]),
    st.sampled_from(["rows", "truncation"]), st.sampled_from(["rows", "columns"]),
    st.sampled_from(["auto", "randomized"]),
)
def test_bound_holds_on_every_input_kind(problem, kind, skeleton, axis, basis):
    """Sparse, matrix-free and (with basis="randomized") dense input: the bound of the computed
    result holds, with the sketch's certified residual in sigma_next when randomized."""
    res = interpolative(_as_kind(problem.A, kind), rank=problem.rank, skeleton=skeleton,
                        axis=axis, basis=basis, rng=problem.seed)
    A = problem.A.astype(np.float64)
    assert np.linalg.norm(A - np.asarray(res.to_dense(), dtype=np.float64), 2) <= res.bound
    assert (res.failure_probability > 0) == (basis == "randomized")  # small: "auto" is exact


def test_large_operator_takes_a_randomized_basis_and_only_products():
    """Past DENSIFY_MAX_ENTRIES an operator is never densified: a sketch, then the k skeleton
    rows as one adjoint product."""
    A = known_spectrum(1100, 1000, exponential_spectrum(1000, decay=0.1), rng=0)
    calls = {"matmat": 0, "rmatmat": 0}

    def count(name, f):
        def g(X):
            calls[name] += 1
            return f(X)
        return g

    op = LinearOperator(A.shape, matvec=lambda x: A @ x, rmatvec=lambda y: A.T @ y,
                        matmat=count("matmat", lambda X: A @ X),
                        rmatmat=count("rmatmat", lambda Y: A.T @ Y), dtype=np.float64)
    res = interpolative(op, rank=15, rng=0)
    # range finder 1 + 2 q = 5 (q = 2: 3 forward, 2 adjoint); A^T Q with probes 1; skeleton rows 1
    assert calls == {"matmat": 3, "rmatmat": 4}
    assert res.failure_probability > 0
    np.testing.assert_allclose(res.skeleton, A[res.indices])
    assert np.linalg.norm(A - res.to_dense(), 2) <= res.bound
    cols = interpolative(op, rank=15, axis="columns", rng=0)
    np.testing.assert_allclose(cols.skeleton, A[:, cols.indices])
    assert np.linalg.norm(A - cols.to_dense(), 2) <= cols.bound


@pytest.mark.parametrize("kind", ["sparse", "operator"])
def test_tolerance_on_operands_meets_the_certificate(kind):
    A = known_spectrum(300, 200, exponential_spectrum(200, decay=0.2), rng=1)
    s = np.linalg.svd(A, compute_uv=False)
    res = interpolative(_as_kind(A, kind), rtol=1e-6, basis="randomized", rng=0)
    assert res.failure_probability > 0
    assert_minimal_within_factor(A, res, 1e-6 * s[0])


def test_tolerance_tries_few_ranks(monkeypatch):
    """One SVD, then a few certified ranks (the search of cur)."""
    mod = importlib.import_module("curlinalg.interpolative")

    A = known_spectrum(300, 250, exponential_spectrum(250, decay=0.1), rng=2)
    seen = []
    real = mod._row_id
    monkeypatch.setattr(mod, "_row_id", lambda *a, **k: seen.append(a[1]) or real(*a, **k))
    res = interpolative(A, rtol=1e-9, rng=0)
    assert len(seen) <= 4
    monkeypatch.undo()
    assert_minimal_within_factor(A, res, 1e-9 * np.linalg.norm(A, 2))


@pytest.mark.parametrize("options", [dict(metric=np.eye(6)), dict(basis="gram")])
def test_dense_only_options_refused_for_operands(options):
    with pytest.raises(ValueError, match="needs a dense array, got a sparse input"):
        interpolative(sp.csr_matrix(np.ones((8, 6))), rank=2, **options)


# Issue 25, item 2: the ID's tolerance mode keeps cur's contract on every basis and input kind.
HILBERT_300 = sla.hilbert(300)


@pytest.mark.parametrize("basis", ["svd", "randomized"])
def test_hilbert_tolerance_is_not_full_rank(basis):
    """Issue 25: rank 300 (svd basis, no warning) and rank 32 with a bound above the target
    (randomized); scipy's ``interp_decomp(A, 1e-12)`` finds 19, ``cur`` 20."""
    A = HILBERT_300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = interpolative(A, rtol=1e-12, axis="columns", basis=basis, rng=0)
    assert_minimal_within_factor(A, res, 1e-12 * np.linalg.norm(A, 2), axis="columns")
    k_scipy = sli.interp_decomp(A, 1e-12)[0]
    assert res.rank <= TOLERANCE_RANK_FACTOR * (k_scipy + 1)
    assert abs(res.rank - cur(A, rtol=1e-12, rng=0).rank) <= 2


def test_hilbert_operator_tolerance_grows_its_sketch():
    """Issue 25: a 2000 x 1000 Hilbert LinearOperator stopped at rank 32, bound 1.15e-10 against
    a target of 2.47e-12: the search stopped at its first sketch size."""
    A = sla.hilbert(2000)[:, :1000]
    target = 1e-12 * np.linalg.norm(A, 2)
    res = interpolative(aslinearoperator(A), rtol=1e-12, rng=0)
    assert res.failure_probability > 0  # too large to densify: a sketch
    assert res.certificate.bound <= target
    assert spectral_error(A, res) <= res.certificate.bound
    s = np.linalg.svd(A, compute_uv=False)
    assert s[int(res.rank / TOLERANCE_RANK_FACTOR)] > target / 10  # the rank is not inflated


@pytest.mark.parametrize("solver", ["interpolative", "cur"])
def test_float32_tolerance_past_its_precision_warns(solver):
    """Issue 25: float32 hilbert(5) at rtol=1e-6 gave rank 5, bound 7.47e-6 above the target
    1.57e-6 and no warning (cur warned): one search, one answer."""
    A = sla.hilbert(5).astype(np.float32)
    call = interpolative if solver == "interpolative" else cur
    with pytest.warns(CURWarning, match="not reached") as caught:
        res = call(A, rtol=1e-6, rng=0)
    assert all(w.filename == __file__ for w in caught)
    assert f"at rank {res.rank}" in str(caught[0].message)
    assert f"{res.certificate.bound:.3g}" in str(caught[0].message)
    assert res.certificate.bound > 1e-6 * np.linalg.norm(A.astype(np.float64), 2)
    assert spectral_error(A, res) <= res.certificate.bound


def test_gram_tolerance_below_its_accuracy_warns_and_stays_low():
    """The Gram route resolves singular values to sqrt(eps) sigma_1 only: a tolerance below that
    is answered with a warning naming basis='svd', at a rank that basis resolves."""
    with pytest.warns(CURWarning, match="basis='svd'"):
        res = interpolative(HILBERT_300, rtol=1e-12, basis="gram", rng=0)
    assert res.rank < 30
    assert spectral_error(HILBERT_300, res) <= res.certificate.bound
    reachable = interpolative(HILBERT_300, rtol=1e-4, basis="gram", rng=0)
    assert_minimal_within_factor(HILBERT_300, reachable, 1e-4 * np.linalg.norm(HILBERT_300, 2),
                                 basis="gram")


def test_metric_tolerance_certifies_the_error_in_the_metric():
    rng = np.random.default_rng(0)
    A = known_spectrum(40, 30, exponential_spectrum(30, decay=0.3), rng=1)
    X = rng.standard_normal((200, 30)) * np.logspace(0, -2, 30)
    w = whitening(X.T @ X, ridge=0.0)
    B = A @ w.L
    target = 1e-5 * np.linalg.norm(B, 2)
    res = interpolative(A, rtol=1e-5, metric=w, rng=0)
    np.testing.assert_array_equal(res.skeleton, A[res.indices])
    assert np.linalg.norm((A - res.to_dense()) @ w.L, 2) <= res.certificate.bound <= target
    lower = interpolative(A, rank=int(res.rank / TOLERANCE_RANK_FACTOR), metric=w)
    assert np.linalg.norm((A - lower.to_dense()) @ w.L, 2) > target


def _check_tolerance_contract(problem, rtol, basis, axis, kind):
    """Either the certificate meets the target at a rank within the stated factor of the
    smallest, or a CURWarning gives the best rank and its certified error: never full rank
    silently."""
    if kind == "operator" and basis == "gram":
        basis = "auto"
    A = problem.A
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = interpolative(_as_kind(A, kind), rtol=rtol, basis=basis, axis=axis, rng=problem.seed)
    unreached = [w for w in caught if "not reached" in str(w.message)]
    assert_certified(A, res)
    target = rtol * problem.s[0]
    if unreached:
        assert res.certificate.bound > target * (1 - 1e-6)
        assert f"at rank {res.rank}" in str(unreached[0].message)
    else:
        assert_minimal_within_factor(A, res, target, axis=axis, basis="svd")


@pytest.mark.filterwarnings("ignore::curlinalg.RankDeficiencyWarning")
@given(
    hard_problems(max_dim=30), st.sampled_from([1e-2, 1e-5, 1e-9, 1e-13]),
    st.sampled_from(["svd", "gram", "randomized"]), st.sampled_from(["rows", "columns"]),
    st.sampled_from(["dense", "operator"]),
)
def test_tolerance_contract_on_every_basis_and_kind(problem, rtol, basis, axis, kind):
    _check_tolerance_contract(problem, rtol, basis, axis, kind)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(max_dim=30), st.sampled_from(["rows", "columns"]),
       st.sampled_from(["rows", "truncation"]))
def test_id_to_svd_is_the_svd_of_the_id(problem, axis, skeleton):
    """Issue 25, item 4: orthonormal factors, the ID's approximation, and a TruncatedSVD whose
    bound and tails hold for A (the ID's bound carried as the residual)."""
    A = problem.A
    res = interpolative(A, rank=problem.rank, axis=axis, skeleton=skeleton)
    t = id_to_svd(res)
    k = res.rank
    eps = np.finfo(A.dtype).eps
    assert t.rank == k and t.kind == "exact" and t.residual == res.bound
    np.testing.assert_allclose(t.U.T @ t.U, np.eye(k), atol=100 * k * eps)
    np.testing.assert_allclose(t.V.T @ t.V, np.eye(k), atol=100 * k * eps)
    A64 = A.astype(np.float64)
    USV = (t.U.astype(np.float64) * t.s) @ t.V.T.astype(np.float64)
    ID = np.asarray(res.to_dense(), dtype=np.float64)
    assert np.linalg.norm(USV - ID, 2) <= 50 * max(A.shape) * eps * (1 + res.eta) * problem.s[0]
    assert np.linalg.norm(A64 - USV, 2) <= t.bound
    for j in (1, k):
        U_j = t.U[:, :j].astype(np.float64)
        assert np.linalg.norm(A64 - U_j @ (U_j.T @ A64), 2) <= t.tail(j) + t.rounding


def test_id_to_svd_of_a_tolerance_id_carries_its_certificate():
    A = known_spectrum(60, 40, exponential_spectrum(40, decay=0.4), rng=0)
    res = interpolative(aslinearoperator(A), rtol=1e-6, basis="randomized", rng=0)
    t = id_to_svd(res)
    assert t.residual == res.certificate.bound and t.kind == "randomized"
    assert np.linalg.norm(A - (t.U * t.s) @ t.V.T, 2) <= t.bound


def test_id_to_svd_follows_the_backend(xp):
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.5), rng=1)
    t = id_to_svd(interpolative(xp.asarray(A), rank=6))
    assert type(t.U) is type(xp.asarray(A))
    np.testing.assert_allclose(xp.to_numpy(t.s), id_to_svd(interpolative(A, rank=6)).s, rtol=1e-10)


def test_id_to_svd_refuses_other_values():
    with pytest.raises(TypeError, match="pass the value returned by cur"):
        id_to_svd(np.ones((3, 3)))


# scipy's own suite, translated, real and complex as scipy runs it.
# Source: scipy/linalg/tests/test_interpolative.py (Kenneth L. Ho, 2013),
# TestInterpolativeDecomposition: its fixture A is hilbert(300) in float64 and in complex128
# (hilbert(n).astype(dtype)); check_id on it at eps = 1e-12, test_badcall, test_rank_too_large,
# test_full_rank, test_bug_9793 (float64 and complex128). scipy asserts np.allclose(A, B, eps)
# (rtol=eps, atol=1e-8) and reconstructs with V.T.conj(); each test keeps that assertion and adds
# the bound curlinalg reports.
SCIPY_EPS = 1e-12
SCIPY_DTYPES = [np.float64, np.complex128]
SCIPY_RANK = int(np.nonzero(np.linalg.svd(HILBERT_300, compute_uv=False) < SCIPY_EPS)[0][0])
SCIPY_KINDS = {  # scipy's rand=False, rand=True and LinearOperator calls
    "exact": (lambda A: A, "svd"), "randomized": (lambda A: A, "randomized"),
    "operator": (aslinearoperator, "auto"),
}


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("kind", list(SCIPY_KINDS))
def test_scipy_fixed_precision_id(kind, dtype):
    """iddp_id / iddp_aid / iddp_rid (idzp_* for complex): interp_decomp(A, eps) and
    reconstruct_matrix_from_id."""
    wrap, basis = SCIPY_KINDS[kind]
    A = HILBERT_300.astype(dtype)
    res = interpolative(wrap(A), rtol=SCIPY_EPS, axis="columns", basis=basis, rng=0)
    B = res.skeleton @ res.interpolation_matrix()
    assert np.allclose(A, B, SCIPY_EPS)
    assert np.linalg.norm(A - B, 2) <= res.certificate.bound <= SCIPY_EPS * np.linalg.norm(A, 2)


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("kind", list(SCIPY_KINDS))
def test_scipy_fixed_rank_id(kind, dtype):
    """iddr_id / iddr_aid / iddr_rid (idzr_*) at the rank where sigma falls below eps, and the
    skeleton and interpolation matrices (reconstruct_skel_matrix, reconstruct_interp_matrix)."""
    wrap, basis = SCIPY_KINDS[kind]
    A = HILBERT_300.astype(dtype)
    res = interpolative(wrap(A), rank=SCIPY_RANK, axis="columns", basis=basis, rng=0)
    np.testing.assert_array_equal(res.skeleton, A[:, res.indices])
    B = res.skeleton @ res.interpolation_matrix()
    assert np.allclose(A, B, SCIPY_EPS)
    assert np.linalg.norm(A - B, 2) <= res.bound


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("kind", list(SCIPY_KINDS))
@pytest.mark.parametrize("mode", ["precision", "rank"])
def test_scipy_svd(kind, mode, dtype):
    """iddp_svd / iddp_asvd / iddp_rsvd and the fixed-rank iddr_* SVDs (idz* for complex):
    scipy's svd(A, eps_or_k) is truncated_svd(A, rtol=eps) or truncated_svd(A, rank=k)."""
    wrap, basis = SCIPY_KINDS[kind]
    A = HILBERT_300.astype(dtype)
    svd_kind = {"svd": "exact", "auto": "auto"}.get(basis, basis)
    stop = {"rtol": SCIPY_EPS} if mode == "precision" else {"rank": SCIPY_RANK}
    t = truncated_svd(wrap(A), kind=svd_kind, rng=0, **stop)
    assert t.U.dtype == dtype and t.s.dtype == np.float64
    B = (t.U * t.s[: t.rank]) @ t.V.T.conj()
    assert np.allclose(A, B, SCIPY_EPS)
    assert np.linalg.norm(A - B, 2) <= t.bound
    if mode == "precision":
        assert t.bound <= SCIPY_EPS * np.linalg.norm(A, 2)


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
def test_scipy_id_to_svd(dtype):
    """id_to_svd(A[:, idx[:k]], idx, proj) after interp_decomp(A, k, rand=False)."""
    A = HILBERT_300.astype(dtype)
    t = id_to_svd(interpolative(A, rank=SCIPY_RANK, axis="columns"))
    B = (t.U * t.s) @ t.V.T.conj()
    assert np.allclose(A, B, SCIPY_EPS)
    assert np.linalg.norm(A - B, 2) <= t.bound


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("wrap", [lambda A: A, aslinearoperator], ids=["dense", "operator"])
def test_scipy_norm_estimates(wrap, dtype):
    """estimate_spectral_norm(A) and estimate_spectral_norm_diff(A, B) with B = A, column 0
    scaled by 1.2: within rtol 1e-6 of svdvals, and bracketing it."""
    A = HILBERT_300.astype(dtype)
    B = A.copy()
    B[:, 0] *= 1.2
    for M, diff in ((wrap(A), A), (wrap(A) - wrap(B), A - B)):
        s1 = sla.svdvals(diff)[0]
        c = spectral_norm(M, rng=0)
        assert np.allclose(c.estimate, s1, 1e-6)
        assert c.estimate <= s1 * (1 + 1e-12) and s1 <= c.bound


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("wrap", [lambda A: A, aslinearoperator], ids=["dense", "operator"])
def test_scipy_rank_estimates(wrap, dtype):
    """estimate_rank(M, 1e-9) on hilbert(300) and [[1, 1, 0], [0, 0, 1], [0, 0, 1]]: scipy
    accepts rank_np <= estimate <= rank_np + 10 (dense) or +-4 (operator); curlinalg's estimate
    truncated_svd(M, rtol=tol).rank is never below rank_np and exceeds it only by the singular
    values within r + rho of the target."""
    B = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=dtype)
    for M in (HILBERT_300.astype(dtype), B):
        rank_tol = 1e-9
        rank_np = np.linalg.matrix_rank(M, np.linalg.norm(M, 2) * rank_tol)
        t = truncated_svd(wrap(M), rtol=rank_tol, rng=0)
        assert rank_np <= t.rank <= rank_np + 4
        s = np.linalg.svd(M, compute_uv=False)
        target = rank_tol * s[0]
        assert t.rank == rank_np or s[t.rank - 1] > target - t.residual - t.rounding


def test_scipy_badcall_is_a_warning_here():
    """test_badcall: scipy refuses float32 hilbert(5) at 1e-6 (ValueError); curlinalg takes
    float32 and answers the out-of-reach tolerance with a CURWarning and the best rank (see
    test_float32_tolerance_past_its_precision_warns)."""
    with pytest.warns(CURWarning, match="not reached"):
        interpolative(sla.hilbert(5).astype(np.float32), rtol=1e-6, rng=0)


def test_scipy_rank_too_large():
    with pytest.raises(ValueError, match="rank must satisfy"):
        truncated_svd(np.ones((4, 3)), rank=4)
    with pytest.raises(ValueError, match="rank must satisfy"):
        interpolative(np.ones((4, 3)), rank=4)


def test_scipy_full_rank():
    """test_full_rank: a 16 x 8 uniform random matrix at eps = 1e-12 needs every column."""
    A = np.random.default_rng(0).random((16, 8))
    res = interpolative(A, rtol=1e-12, axis="columns", rng=0)
    assert res.rank == A.shape[1]
    np.testing.assert_allclose(A, res.skeleton @ res.interpolation_matrix())
    fixed = interpolative(A, rank=res.rank, axis="columns")
    np.testing.assert_allclose(A, fixed.skeleton @ fixed.interpolation_matrix())


@pytest.mark.parametrize("dtype", SCIPY_DTYPES)
@pytest.mark.parametrize("basis", ["svd", "randomized"])  # scipy's rand=False, rand=True
@pytest.mark.parametrize("stop", [{"rank": 1}, {"rtol": 1.0}, {"rtol": 0.1}])  # scipy's eps 1, 0.1
def test_scipy_bug_9793_input_not_modified(dtype, basis, stop):
    A = np.array([[-1, -1, -1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0],
                  [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]], dtype=dtype, order="C")
    B = A.copy()
    interpolative(A.T, axis="columns", basis=basis, rng=0, **stop)
    np.testing.assert_array_equal(A, B)


def _check_skeleton_and_bound(A, res, skeleton, axis):
    """A ``"rows"`` skeleton is the selected rows (columns) of ``A`` exactly, and the reported
    bound is above the computed spectral error."""
    if skeleton == "rows":
        cut = A[res.indices] if axis == "rows" else A[:, res.indices]
        np.testing.assert_array_equal(res.skeleton, cut)
    assert spectral_error(A, res) <= res.bound


# Complex input: every basis and input kind, conjugate transposes in the truncation skeleton
# (A_k = A V_k V_k^H) and in id_to_svd, complex sketches for basis="randomized".
@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(
    hard_problems(max_dim=50, dtypes=COMPLEX_DTYPES), st.sampled_from(["rows", "truncation"]),
    st.sampled_from(["rows", "columns"]), st.sampled_from(["svd", "gram"]),
)
def test_complex_reported_bound_holds_in_floating_point(problem, skeleton, axis, basis):
    res = interpolative(problem.A, rank=problem.rank, skeleton=skeleton, axis=axis, basis=basis)
    assert res.skeleton.dtype == problem.A.dtype and res.coefficients.dtype == problem.A.dtype
    _check_skeleton_and_bound(problem.A, res, skeleton, axis)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(
    hard_problems(max_dim=50, dtypes=COMPLEX_DTYPES), st.sampled_from(["sparse", "operator", "dense"]),
    st.sampled_from(["rows", "truncation"]), st.sampled_from(["rows", "columns"]),
    st.sampled_from(["auto", "randomized"]),
)
def test_complex_bound_holds_on_every_input_kind(problem, kind, skeleton, axis, basis):
    """Complex sparse matrices and LinearOperators (rmatmat the adjoint A^H Y): the column ID
    goes through the plain transpose A^T X = conj(A^H conj(X))."""
    res = interpolative(_as_kind(problem.A, kind), rank=problem.rank, skeleton=skeleton,
                        axis=axis, basis=basis, rng=problem.seed)
    _check_skeleton_and_bound(problem.A, res, skeleton, axis)


@pytest.mark.filterwarnings("ignore::curlinalg.RankDeficiencyWarning")
@given(
    hard_problems(max_dim=30, dtypes=COMPLEX_DTYPES), st.sampled_from([1e-2, 1e-5, 1e-9]),
    st.sampled_from(["svd", "gram", "randomized"]), st.sampled_from(["rows", "columns"]),
    st.sampled_from(["dense", "operator"]),
)
def test_complex_tolerance_contract_on_every_basis_and_kind(problem, rtol, basis, axis, kind):
    """The same contract on complex matrices."""
    _check_tolerance_contract(problem, rtol, basis, axis, kind)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(max_dim=30, dtypes=COMPLEX_DTYPES), st.sampled_from(["rows", "columns"]),
       st.sampled_from(["rows", "truncation"]))
def test_complex_id_to_svd_is_the_svd_of_the_id(problem, axis, skeleton):
    A = problem.A
    res = interpolative(A, rank=problem.rank, axis=axis, skeleton=skeleton)
    t = id_to_svd(res)
    k = res.rank
    eps = np.finfo(A.dtype).eps
    np.testing.assert_allclose(t.U.conj().T @ t.U, np.eye(k), atol=100 * k * eps)
    np.testing.assert_allclose(t.V.conj().T @ t.V, np.eye(k), atol=100 * k * eps)
    A64 = _wide(A)
    USV = (_wide(t.U) * t.s) @ _wide(t.V).conj().T
    assert np.linalg.norm(USV - _wide(res.to_dense()), 2) <= (
        50 * max(A.shape) * eps * (1 + res.eta) * problem.s[0])
    assert np.linalg.norm(A64 - USV, 2) <= t.bound
    for j in (1, k):
        U_j = _wide(t.U[:, :j])
        assert np.linalg.norm(A64 - U_j @ (U_j.conj().T @ A64), 2) <= t.tail(j) + t.rounding


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_id_follows_the_backend(xp, dtype):
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.5), rng=1,
                       dtype=np.complex128).astype(dtype)
    res = interpolative(xp.asarray(A), rank=6, axis="columns")
    assert type(res.skeleton) is type(xp.asarray(A)) and str(res.skeleton.dtype).endswith(dtype)
    t = id_to_svd(res)
    ref = id_to_svd(interpolative(A, rank=6, axis="columns"))
    np.testing.assert_allclose(xp.to_numpy(t.s), ref.s, rtol=1e-4 if dtype == "complex64" else 1e-10)


def test_scipy_tolerance_on_a_genuinely_complex_hilbert():
    """scipy's complex fixture is hilbert(300) cast to complex128; the same spectrum mixed by
    random unitary factors has no real structure left: the tolerance contract holds on it too."""
    from curlinalg.testing import complexified

    A = complexified(HILBERT_300, rng=0)
    for basis in ("svd", "randomized"):
        res = interpolative(A, rtol=SCIPY_EPS, axis="columns", basis=basis, rng=0)
        B = res.skeleton @ res.interpolation_matrix()
        assert np.allclose(A, B, SCIPY_EPS)
        assert_minimal_within_factor(A, res, SCIPY_EPS * np.linalg.norm(A, 2), axis="columns")


@pytest.mark.parametrize("options", [
    dict(metric=np.eye(6)), dict(metric=np.eye(6), cross=np.eye(6)),
])
def test_metric_is_real_only(options):
    """The activation metric is real: a complex A with metric= (or a complex metric or cross with
    a real A) is refused before any work, naming the operand."""
    Z = np.ones((8, 6), dtype=np.complex128)
    with pytest.raises(TypeError, match=r"metric=/cross= supports real matrices only.*A of dtype complex128"):
        interpolative(Z, rank=2, **options)
    bad = {k: v.astype(np.complex128) for k, v in options.items()}
    name = "cross" if "cross" in options else "metric"
    with pytest.raises(TypeError, match=rf"real matrices only.*{name} of dtype complex128"):
        interpolative(np.ones((8, 6)), rank=2, **{**options, name: bad[name]})
