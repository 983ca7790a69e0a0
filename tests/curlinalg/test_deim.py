import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
