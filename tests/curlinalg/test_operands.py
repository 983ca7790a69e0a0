"""Every input kind (dense, np.matrix, scipy.sparse, LinearOperator, stacks), validated up front."""

import importlib

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from curlinalg import CURBatch, certify, cur, truncated_svd
from curlinalg.operands import as_operand
from curlinalg.testing import exponential_spectrum, known_spectrum
from curlinalg.testing.strategies import hard_problems

operands = importlib.import_module("curlinalg.operands")
cur_module = importlib.import_module("curlinalg.cur")


def spectral_error(A, res):
    A = A.toarray() if sp.issparse(A) else np.asarray(A)
    wide = np.promote_types(A.dtype, np.float64)  # complex128 for complex input
    return np.linalg.norm(A.astype(wide) - res.to_dense().astype(wide), 2)


def large_sparse(m=1500, n=800, density=4e-3):
    """Past the densifying limit (2**20 entries), with a decaying column scale."""
    scale = sp.diags(np.exp(-np.arange(n) / 40.0))
    return (sp.random(m, n, density=density, random_state=0, format="csr") @ scale).tocsr()


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_keeps_sparse_cuts_and_matches_dense(fmt):
    A = sp.random(200, 150, density=0.05, random_state=1, format=fmt)
    res = cur(A, rank=12, rng=0)
    dense = cur(A.toarray(), rank=12, rng=0)
    assert sp.issparse(res.C) and sp.issparse(res.R)
    np.testing.assert_array_equal(res.C.toarray(), A.toarray()[:, res.cols])
    np.testing.assert_array_equal(res.R.toarray(), A.toarray()[res.rows])
    np.testing.assert_array_equal(res.rows, dense.rows)
    np.testing.assert_allclose(res.to_dense(), dense.to_dense(), atol=1e-12)
    assert spectral_error(A, res) <= res.bound


def test_large_sparse_input_is_never_densified(monkeypatch):
    """Only sparse products: the randomized basis, the core and the certificate."""
    A = large_sparse()

    def refuse(self):
        raise AssertionError("densified")

    monkeypatch.setattr(operands._Sparse, "dense", refuse)
    res = cur(A, rank=20, rng=0)
    assert res.basis == "randomized"
    assert sp.issparse(res.C) and res.C.shape == (1500, 20)
    cert = certify(A, res, rng=1)
    tol = cur(A, rtol=0.1, rng=0)
    assert tol.certificate.bound <= 0.1 * np.linalg.norm(A.toarray(), 2)
    assert spectral_error(A, res) <= cert.bound


def test_linear_operator_input_matches_dense():
    A = known_spectrum(120, 90, exponential_spectrum(90, decay=0.2), rng=0)
    res = cur(aslinearoperator(A), rank=10, rng=0)
    dense = cur(A, rank=10, rng=0)
    np.testing.assert_array_equal(res.rows, dense.rows)
    np.testing.assert_array_equal(res.cols, dense.cols)
    np.testing.assert_allclose(res.C, A[:, res.cols], atol=1e-14)
    np.testing.assert_allclose(res.R, A[res.rows], atol=1e-14)
    assert spectral_error(A, res) <= res.bound


def test_large_linear_operator_uses_products_only(monkeypatch):
    A = known_spectrum(1200, 900, exponential_spectrum(900, decay=0.1), rng=0)
    monkeypatch.setattr(operands._Operator, "dense", lambda self: pytest.fail("densified"))
    op = aslinearoperator(A)
    res = cur(op, rank=15, rng=0)
    assert res.basis == "randomized"
    assert spectral_error(A, res) <= res.bound
    assert spectral_error(A, res) <= certify(op, res, rng=0).bound


def test_linear_operator_without_adjoint_is_refused():
    op = LinearOperator((30, 20), matvec=lambda x: np.ones(30), dtype=np.float64)
    with pytest.raises(TypeError, match="rmatvec"):
        cur(op, rank=2)


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")
@given(hard_problems(max_dim=40, dtypes=("float64",)), st.sampled_from(["sparse", "operator"]))
def test_bound_holds_for_sparse_and_operator_input(problem, kind):
    A = sp.csr_matrix(problem.A) if kind == "sparse" else aslinearoperator(problem.A)
    res = cur(A, rank=problem.rank, rng=problem.seed)
    assert spectral_error(problem.A, res) <= res.bound


def test_stack_gives_per_matrix_results():
    A = np.stack([known_spectrum(40, 30, exponential_spectrum(30, decay=d), rng=i)
                  for i, d in enumerate((0.1, 0.3, 0.6))])
    batch = cur(A, rank=6, rng=0)
    assert isinstance(batch, CURBatch) and len(batch) == 3 and batch.shape == (3, 40, 30)
    for i, res in enumerate(batch):
        assert res == cur(A[i], rank=6)
        assert spectral_error(A[i], res) <= res.bound
    np.testing.assert_allclose(batch.to_dense(), np.stack([r.to_dense() for r in batch]))
    X = np.ones((3, 30, 2))
    np.testing.assert_allclose(batch @ X, np.stack([r @ X[i] for i, r in enumerate(batch)]))
    assert "CURBatch(shape=(3, 40, 30)" in repr(batch)


def test_stack_seeds_differ_per_matrix_and_reproduce():
    A = np.stack([known_spectrum(60, 50, exponential_spectrum(50, decay=0.05), rng=0)] * 2)
    a = cur(A, rank=8, method="leverage_sampling", rng=3)
    assert a == cur(A, rank=8, method="leverage_sampling", rng=3)
    assert a != cur(A, rank=8, method="leverage_sampling", rng=4)


def test_torch_stack_stays_torch():
    torch = pytest.importorskip("torch")
    A = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 20, 15)))
    batch = cur(A, rank=3)
    assert all(isinstance(r.C, torch.Tensor) for r in batch)
    assert isinstance(batch.to_dense(), torch.Tensor)


def test_np_matrix_is_converted():
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.3), rng=0)
    res = cur(np.asmatrix(A), rank=4)
    assert type(res.C) is np.ndarray
    assert res == cur(A, rank=4)
    assert certify(np.asmatrix(A), res).exact


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_complex_sparse_and_operator_give_the_dense_result(dtype):
    """A complex matrix as scipy.sparse and as a LinearOperator (whose rmatmat is the adjoint
    A^H Y) selects what the dense matrix selects, with the same bound."""
    rng = np.random.default_rng(0)
    A = (known_spectrum(40, 30, exponential_spectrum(30, decay=0.3), rng=0)
         * np.exp(1j * rng.uniform(0, 2 * np.pi, (40, 30)))).astype(dtype)
    dense = cur(A, rank=6, rng=0)
    op = LinearOperator(A.shape, matvec=lambda x: A @ x, rmatvec=lambda y: A.conj().T @ y,
                        dtype=dtype)
    for B in (sp.csr_matrix(A), op):
        res = cur(B, rank=6, rng=0)
        np.testing.assert_array_equal(res.rows, dense.rows)
        np.testing.assert_array_equal(res.cols, dense.cols)
        R = res.R.toarray() if sp.issparse(res.R) else res.R
        np.testing.assert_allclose(R, A[res.rows], rtol=0, atol=0)  # through the adjoint, conjugated back
        assert res.to_dense().dtype == dtype
        assert spectral_error(A, res) <= res.bound


def test_integer_like_options_are_accepted_consistently():
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.3), rng=0)
    a = cur(A, rank=np.int32(3), oversample=np.int64(5), power_iters=np.int16(1), rng=0)
    assert a == cur(A, rank=3, oversample=5, power_iters=1, rng=0)
    with pytest.raises(TypeError, match="rtol must be"):
        cur(A, rtol="1e-3")
    with pytest.raises(TypeError, match="power_iters must be an int"):
        cur(A, rank=2, power_iters=1.0)


def test_rng_of_another_backend_is_refused_before_any_work(monkeypatch):
    torch = pytest.importorskip("torch")
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.3), rng=0)
    monkeypatch.setattr(cur_module, "_truncated_svd", lambda *a, **k: pytest.fail("worked first"))
    for kwargs in ({"rank": 3}, {"rtol": 1e-3}, {"rank": 3, "method": "randomized"}):
        with pytest.raises(TypeError, match="rng must be"):
            cur(A, rng=torch.Generator(), **kwargs)
    with pytest.raises(TypeError, match="rng must be"):
        truncated_svd(A, rank=2, rng=torch.Generator())


def test_torch_generator_with_torch_input_is_used():
    torch = pytest.importorskip("torch")
    A = torch.from_numpy(known_spectrum(700, 600, exponential_spectrum(600, decay=0.05), rng=0))
    a = cur(A, rank=5, method="randomized", rng=torch.Generator().manual_seed(1))
    b = cur(A, rank=5, method="randomized", rng=torch.Generator().manual_seed(1))
    assert a == b


def test_certify_refuses_what_is_not_a_result():
    A = np.ones((4, 3))
    with pytest.raises(TypeError, match="result must be a CURResult"):
        certify(A, (1, 2, 3))


@pytest.mark.parametrize(
    "A, match",
    [
        (sp.csr_matrix(np.full((3, 3), np.nan)), "NaN or Inf"),
        (sp.csr_matrix((0, 3)), "non-empty"),
        (sp.csr_matrix(np.ones((3, 3), dtype=np.int64)), "float32 or float64"),
        (sp.csr_matrix(np.full((3, 3), complex(0.0, np.inf))), "NaN or Inf"),
        ({"not": "a matrix"}, "scipy.sparse"),
    ],
)
def test_bad_sparse_and_other_inputs(A, match):
    with pytest.raises((TypeError, ValueError), match=match):
        as_operand(A)
    with pytest.raises((TypeError, ValueError), match=match):
        cur(A, rank=1)


def test_linear_operator_cuts_cost_one_product_each():
    A = known_spectrum(80, 60, exponential_spectrum(60, decay=0.2), rng=0)
    calls = {"matmat": 0, "rmatmat": 0}

    def matmat(X):
        calls["matmat"] += 1
        return A @ X

    def rmatmat(Y):
        calls["rmatmat"] += 1
        return A.T @ Y

    op = LinearOperator(A.shape, matvec=lambda x: A @ x, rmatvec=lambda y: A.T @ y,
                        matmat=matmat, rmatmat=rmatmat, dtype=np.float64)
    res = cur(op, rank=5, basis="randomized", power_iters=0, rng=0)
    # range finder 1 + columns 1 = 2 forward; sketch B with the residual probes 1 + core 1 +
    # rows 1 = 3 adjoint
    assert calls == {"matmat": 2, "rmatmat": 3}
    assert spectral_error(A, res) <= res.bound
    calls.update(matmat=0, rmatmat=0)
    res = cur(op, rank=5, basis="randomized", power_iters=0, core="sketch", rng=0)
    assert calls == {"matmat": 2, "rmatmat": 2}  # the core comes from the sketch
    assert spectral_error(A, res) <= res.bound
