import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
import scipy.linalg as sla
import scipy.sparse as sp

from curlinalg import deim, deim_bound, qdeim, qdeim_bound, selection_constant
from curlinalg._backend import _lu_row_order_torch, _lu_row_order_xp, _pivoted_rows_xp


def naive_deim(V):
    """DEIM straight from its definition (Chaturantabut & Sorensen 2010, Alg. 1)."""
    rows = [int(np.argmax(np.abs(V[:, 0])))]
    for j in range(1, V.shape[1]):
        c = np.linalg.solve(V[rows, :j], V[rows, j])
        r = V[:, j] - V[:, :j] @ c
        rows.append(int(np.argmax(np.abs(r))))
    return np.array(rows)


def orthonormal(n, k, seed):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0]


shapes = st.tuples(st.integers(2, 80), st.integers(1, 12), st.integers(0, 2**32 - 1)).filter(
    lambda t: t[0] >= t[1]
)


@given(shapes)
def test_deim_matches_its_definition(shape):
    n, k, seed = shape
    V = orthonormal(n, k, seed)
    np.testing.assert_array_equal(deim(V), naive_deim(V))


@given(shapes)
def test_array_api_fallbacks_match_lapack(shape):
    n, k, seed = shape
    V = orthonormal(n, k, seed)
    np.testing.assert_array_equal(_lu_row_order_xp(V), deim(V))
    # Pivoted Gram-Schmidt and geqp3 agree up to ties; compare the selection constants.
    assert selection_constant(V, _pivoted_rows_xp(V, k)) == pytest.approx(
        selection_constant(V, qdeim(V)), rel=1e-6
    )


@given(shapes)
def test_device_paths_match_lapack_on_torch_cpu(shape):
    """The code paths CUDA tensors take, exercised on CPU tensors."""
    torch = pytest.importorskip("torch")
    n, k, seed = shape
    V = orthonormal(n, k, seed)
    Vt = torch.from_numpy(V)
    np.testing.assert_array_equal(_lu_row_order_torch(Vt).numpy(), deim(V))
    np.testing.assert_array_equal(_lu_row_order_xp(Vt).numpy(), deim(V))
    assert selection_constant(V, _pivoted_rows_xp(Vt, k).numpy()) == pytest.approx(
        selection_constant(V, qdeim(V)), rel=1e-6
    )


@given(shapes)
def test_a_priori_constants(shape):
    n, k, seed = shape
    V = orthonormal(n, k, seed)
    slack = 1 + 1e-10
    assert selection_constant(V, deim(V)) <= deim_bound(n, k) * slack
    assert selection_constant(V, qdeim(V)) <= qdeim_bound(n, k) * slack


@pytest.mark.parametrize("select", [deim, qdeim])
def test_indices_distinct_and_on_the_input_backend(xp, select):
    V = xp.asarray(orthonormal(50, 6, 0))
    rows = select(V)
    assert type(rows) is type(V)
    assert str(rows.dtype).endswith("int64")
    assert len(set(xp.to_numpy(rows).tolist())) == 6
    if hasattr(V, "device"):
        assert rows.device == V.device


@pytest.mark.parametrize("select", [deim, qdeim])
@pytest.mark.parametrize(
    "bad, err, match",
    [
        (np.ones((3, 5)), ValueError, "tall basis"),
        (np.ones(5), ValueError, "expected a matrix"),
        (np.full((5, 2), np.nan), ValueError, "NaN or Inf"),
        (np.ones((5, 2), dtype=np.int64), TypeError, "float32 or float64"),
        (np.ones((0, 2)), ValueError, "non-empty"),
        ([[1.0], [2.0]], TypeError, "numpy, torch or cupy"),
    ],
)
def test_bad_input(select, bad, err, match):
    with pytest.raises(err, match=match):
        select(bad)


# The DEIM reference examples (issue 25, item 5).
def deim_reference_snapshots(n=100, snapshots=51):
    """Chaturantabut & Sorensen (2010), the DEIM paper's first numerical example:
    s(x; mu) = (1 - x) cos(3 pi mu (x + 1)) exp(-(1 + x) mu) on n points of [-1, 1], snapshots
    at equally spaced mu in [1, pi]."""
    x = np.linspace(-1.0, 1.0, n)

    def s(mu):
        return (1 - x) * np.cos(3 * np.pi * mu * (x + 1)) * np.exp(-(1 + x) * mu)

    return s, np.stack([s(mu) for mu in np.linspace(1.0, np.pi, snapshots)], axis=1)


def qdeim_reference(U):
    """Drmac & Gugercin (2016), Q-DEIM in one line of MATLAB, [~, ~, P] = qr(U', 'vector');
    p = P(1:k): the column-pivoted QR (LAPACK geqp3) of U^T."""
    return sla.qr(U.T, mode="r", pivoting=True)[1][: U.shape[1]]


@pytest.mark.parametrize("k", [4, 10, 20])
def test_deim_reference_example_of_chaturantabut_and_sorensen(k):
    """DEIM and Q-DEIM pick the reference codes' points on the POD basis of the snapshots, and
    the interpolation error at a parameter outside the snapshots obeys
    ||f - U (P^T U)^{-1} P^T f|| <= ||(P^T U)^{-1}|| ||(I - U U^T) f|| (C&S 2010, Lemma 3.2)."""
    s, snaps = deim_reference_snapshots()
    U = np.linalg.svd(snaps, full_matrices=False)[0][:, :k]
    np.testing.assert_array_equal(deim(U), naive_deim(U))
    np.testing.assert_array_equal(qdeim(U), qdeim_reference(U))
    f = s(1.17)
    for rows, a_priori in ((deim(U), deim_bound(100, k)), (qdeim(U), qdeim_bound(100, k))):
        eta = selection_constant(U, rows)
        assert eta <= a_priori * (1 + 1e-10)
        approx = U @ np.linalg.solve(U[rows], f[rows])
        tail = np.linalg.norm(f - U @ (U.T @ f))
        assert np.linalg.norm(f - approx) <= eta * tail * (1 + 1e-8) + 1e-13


def stewart_sparse_matrix(m, n, density=0.025, seed=0):
    """Sorensen & Embree (2016), the first example of their numerical section (after Stewart
    1999): the sparse nonnegative A = sum_{j<=10} (2/j) x_j y_j^T + sum_{10<j<=50} (1/j) x_j y_j^T
    with sparse random nonnegative x_j, y_j (MATLAB sprand, density 0.025); m = 300000 there,
    smaller here."""
    rng = np.random.default_rng(seed)
    A = sp.csr_matrix((m, n))
    for j in range(1, 51):
        x = sp.random(m, 1, density=density, random_state=rng)
        y = sp.random(n, 1, density=density, random_state=rng)
        A = A + (2.0 / j if j <= 10 else 1.0 / j) * (x @ y.T)
    return A.tocsr()


@pytest.mark.parametrize("k", [10, 20, 30])
def test_deim_cur_reference_example_of_sorensen_and_embree(k):
    """DEIM-CUR on S&E's sparse example: the rows and columns are Algorithm 1's (the paper's
    DEIM point selection) on the singular vectors, C and R stay sparse cuts, and
    ||A - CUR||_2 <= (eta_p + eta_q) sigma_{k+1} (S&E 2016, Theorem 4.1)."""
    from curlinalg import cur

    A = stewart_sparse_matrix(3000, 300)
    dense = A.toarray()
    U, sig, Vt = np.linalg.svd(dense, full_matrices=False)
    res = cur(A, rank=k, method="deim", rng=0)
    np.testing.assert_array_equal(res.rows, naive_deim(U[:, :k]))
    np.testing.assert_array_equal(res.cols, naive_deim(Vt[:k].T))
    assert sp.issparse(res.C) and sp.issparse(res.R)
    err = np.linalg.norm(dense - res.to_dense(), 2)
    assert err <= (res.eta_rows + res.eta_cols) * (sig[k] + res.rounding)


# Complex bases: pivots by modulus, conjugate inner products in pivoted Gram-Schmidt; the a
# priori constants hold as for real bases (their proofs use moduli and norms only).
def unitary(n, k, seed, dtype=np.complex128):
    g = np.random.default_rng(seed)
    return np.linalg.qr(g.standard_normal((n, k)) + 1j * g.standard_normal((n, k)))[0].astype(dtype)


@given(shapes)
def test_complex_deim_matches_its_definition_and_the_constants(shape):
    n, k, seed = shape
    V = unitary(n, k, seed)
    rows = deim(V)
    np.testing.assert_array_equal(rows, naive_deim(V))
    slack = 1 + 1e-10
    assert selection_constant(V, rows) <= deim_bound(n, k) * slack
    assert selection_constant(V, qdeim(V)) <= qdeim_bound(n, k) * slack


@given(shapes)
def test_complex_fallbacks_and_device_paths_match_lapack(shape):
    """Complex DEIM is the array-API elimination on every backend (pivots by modulus: complex
    getrf would pivot on |Re| + |Im|); Q-DEIM's zgeqp3 against pivoted Gram-Schmidt, on the host
    and on the torch path CUDA tensors take."""
    torch = pytest.importorskip("torch")
    n, k, seed = shape
    V = unitary(n, k, seed)
    Vt = torch.from_numpy(V)
    np.testing.assert_array_equal(deim(Vt).numpy(), deim(V))
    np.testing.assert_array_equal(_lu_row_order_xp(Vt).numpy(), deim(V))
    eta = selection_constant(V, qdeim(V))
    assert selection_constant(V, _pivoted_rows_xp(V, k)) == pytest.approx(eta, rel=1e-6)
    assert selection_constant(V, _pivoted_rows_xp(Vt, k).numpy()) == pytest.approx(eta, rel=1e-6)


@pytest.mark.parametrize("select", [deim, qdeim])
@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_indices_on_the_input_backend(xp, select, dtype):
    V = unitary(40, 6, 0, dtype)
    rows = select(xp.asarray(V))
    assert type(rows) is type(xp.asarray(V))
    np.testing.assert_array_equal(np.sort(xp.to_numpy(rows)), np.sort(select(V)))
