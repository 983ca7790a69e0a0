"""dask input on a LocalCluster of worker processes, its chunks spread over both workers.

The bound properties, lazy ``C``/``R``, the passes over ``A`` that docs/index.md states, tolerance
mode, ``certify``, stacks, and bad input refused before any work.
"""

import collections
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from curlinalg import CURBatch, certify, cur, interpolative, truncated_svd  # noqa: E402
from curlinalg import _dask, _errors  # noqa: E402
from curlinalg.bounds import POWER_STARTS, power_iterations_needed  # noqa: E402
from curlinalg.operands import as_operand  # noqa: E402
from curlinalg.testing import exponential_spectrum, known_spectrum, step_spectrum  # noqa: E402

M, N, ROW_BLOCK, COL_BLOCK = 600, 400, 150, 200


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def spread(client, A, row_block=ROW_BLOCK, col_block=COL_BLOCK):
    """``A`` as a dask array whose blocks are scattered alternately onto the two workers.

    Returns the array and ``{worker: number of blocks it holds}``.
    """
    workers = sorted(client.scheduler_info()["workers"])
    futures, blocks = [], []
    for bi, i in enumerate(range(0, A.shape[0], row_block)):
        row = []
        for bj, j in enumerate(range(0, A.shape[1], col_block)):
            block = A[i : i + row_block, j : j + col_block]
            fut = client.scatter(block, workers=[workers[(bi + bj) % len(workers)]])
            futures.append(fut)
            row.append(da.from_delayed(fut, shape=block.shape, dtype=A.dtype))
        blocks.append(row)
    holders = collections.Counter(w for ws in client.who_has(futures).values() for w in ws)
    return da.block(blocks), dict(holders)


@pytest.fixture(scope="module")
def matrix():
    return known_spectrum(M, N, exponential_spectrum(N, decay=0.1), rng=0)


@pytest.fixture(scope="module")
def distributed_matrix(client, matrix):
    A, holders = spread(client, matrix)
    return A, holders


@pytest.fixture
def passes(monkeypatch):
    """Counts of the operand's calls that each read ``A`` once (products, cuts, gathers)."""
    count = collections.Counter()
    for name in ("matmat", "rmatmat", "dense_columns", "dense_rows", "dense"):
        original = getattr(_dask._Dask, name)

        def counted(self, *args, _original=original, _name=name):
            count[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(_dask._Dask, name, counted)
    return count


def spectral_error(A, res):
    return np.linalg.norm(A - res.to_dense(), 2)


def test_chunks_are_spread_over_both_workers(client, distributed_matrix):
    A, holders = distributed_matrix
    assert len(client.scheduler_info()["workers"]) == 2
    assert len(holders) == 2 and all(v == 4 for v in holders.values())
    assert A.chunks == ((ROW_BLOCK,) * 4, (COL_BLOCK,) * 2)


@pytest.mark.parametrize("core, core_passes", [("optimal", 1), ("sketch", 0)])
def test_randomized_cur_matches_numpy_stays_lazy_and_costs_the_documented_passes(
    distributed_matrix, matrix, passes, core, core_passes
):
    A, _ = distributed_matrix
    q = 2
    res = cur(A, rank=12, basis="randomized", power_iters=q, core=core, rng=0)
    ref = cur(matrix, rank=12, basis="randomized", power_iters=q, core=core, rng=0)
    # (2q + 1) range finder + 1 for Q^T A with the residual probes + the core's, then the cuts
    assert passes["matmat"] == q + 1 and passes["rmatmat"] == q + 1 + core_passes
    assert passes["dense_columns"] == 1 and passes["dense_rows"] == 1 and passes["dense"] == 0
    assert res.basis == "randomized" and res.failure_probability > 0
    np.testing.assert_array_equal(res.rows, ref.rows)
    np.testing.assert_array_equal(res.cols, ref.cols)
    assert isinstance(res.C, da.Array) and isinstance(res.R, da.Array)
    assert isinstance(res.U, np.ndarray) and isinstance(res.factors[0], np.ndarray)
    np.testing.assert_array_equal(res.C.compute(), matrix[:, res.cols])
    np.testing.assert_array_equal(res.R.compute(), matrix[res.rows])
    np.testing.assert_allclose(res.to_dense(), ref.to_dense(), atol=1e-10)
    assert spectral_error(matrix, res) <= res.bound


@pytest.mark.filterwarnings("ignore::curlinalg.CURWarning")  # leverage's conditioning note
@pytest.mark.parametrize(
    "method, rank, power_iters",
    [("qdeim", 5, 1), ("maxvol", 20, 0), ("leverage_sampling", 8, 1), ("randomized", 30, 2)],
)
def test_bound_holds_on_distributed_input(distributed_matrix, matrix, method, rank, power_iters):
    A, _ = distributed_matrix
    res = cur(A, rank=rank, method=method, basis="randomized", power_iters=power_iters, rng=1)
    c = res.cols.shape[0]  # leverage_sampling may keep more than rank indices
    assert res.rank == rank and c >= rank and res.C.shape == (M, c) and res.R.shape[1] == N
    assert spectral_error(matrix, res) <= res.bound


def test_certify_on_dask_input_costs_2t_plus_1_thin_passes(distributed_matrix, matrix, passes):
    A, _ = distributed_matrix
    res = cur(matrix, rank=10, core="cross", rng=0)  # no a priori bound: certify it
    passes.clear()
    cert = certify(A, res, rng=0)
    t = power_iterations_needed(N, POWER_STARTS, 1e-6)
    assert passes["matmat"] == t + 1 and passes["rmatmat"] == t
    err = spectral_error(matrix, res)
    assert cert.estimate <= err * (1 + 1e-10) and err <= cert.bound
    assert certify(A, res, ord="fro", rng=0).bound >= np.linalg.norm(matrix - res.to_dense())


def test_interpolative_on_dask_input(distributed_matrix, matrix):
    A, _ = distributed_matrix
    for axis in ("rows", "columns"):
        res = interpolative(A, rank=10, axis=axis, basis="randomized", rng=0)
        skeleton = matrix[res.indices] if axis == "rows" else matrix[:, res.indices]
        np.testing.assert_allclose(res.skeleton, skeleton)
        assert spectral_error(matrix, res) <= res.bound and res.failure_probability > 0


def test_tolerance_mode_on_dask_input(client):
    s = step_spectrum(N, rank=20, gap=1e-6)
    B = known_spectrum(M, N, s, rng=3)
    Bd, _ = spread(client, B)
    rtol = 1e-4
    res = cur(Bd, rtol=rtol, basis="randomized", power_iters=1, rng=0)
    assert isinstance(res.C, da.Array)
    assert res.certificate.bound <= rtol * np.linalg.norm(B, 2)
    assert spectral_error(B, res) <= res.certificate.bound
    assert res.rank <= 22


def test_tiny_input_is_gathered_once_and_matches_numpy(matrix, passes):
    small = matrix[:120, :90]
    A = da.from_array(small, chunks=(60, 45))
    res = cur(A, rank=8, rng=0)
    ref = cur(small, rank=8, rng=0)
    assert res.basis == "exact" and passes["dense"] == 1
    np.testing.assert_array_equal(res.rows, ref.rows)
    np.testing.assert_array_equal(res.cols, ref.cols)
    assert isinstance(res.C, da.Array)
    assert spectral_error(small, res) <= res.bound
    tol = cur(A, rtol=1e-2, rng=0)
    assert passes["dense"] == 2  # one gather per call; the products then use the local copy
    assert spectral_error(small, tol) <= tol.certificate.bound <= 1e-2 * np.linalg.norm(small, 2)


def test_stack_gives_one_dask_result_per_matrix(matrix):
    stack = np.stack([matrix[:50, :40], matrix[50:100, :40]])
    batch = cur(da.from_array(stack, chunks=(1, 25, 20)), rank=5, rng=0)
    assert isinstance(batch, CURBatch) and len(batch) == 2
    for res, A in zip(batch, stack):
        assert isinstance(res.C, da.Array)
        assert spectral_error(A, res) <= res.bound


def _boom(block):
    raise RuntimeError("the data was read")


def tripwire(shape=(60, 40), chunks=(30, 20), dtype=np.float64):
    """A dask array whose every chunk raises when computed: checks must read no data."""
    return da.zeros(shape, chunks=chunks, dtype=dtype).map_blocks(_boom, dtype=dtype)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda A: A[A[:, 0] > 0], ValueError, "compute_chunk_sizes"),
        (lambda A: A.astype(np.int64), TypeError, "float32 or float64"),
        (lambda A: A.astype(np.float16), TypeError, "float32 or float64"),
        (lambda A: A[:0], ValueError, "non-empty"),
        (lambda A: A[None], ValueError, r"got shape \(1, 60, 40\)"),
        (lambda A: A[:, 0], ValueError, r"got shape \(60,\)"),
    ],
)
def test_bad_input_is_refused_without_reading_data(make, error, match):
    bad = make(tripwire())
    with pytest.raises(error, match=match):
        as_operand(bad)
    with pytest.raises(error, match=match):
        truncated_svd(bad, rank=2)
    res = cur(np.ones((60, 40)), rank=1)
    with pytest.raises(error, match=match):
        certify(bad, res)


def test_not_finite_is_refused_before_any_product(monkeypatch, matrix):
    small = matrix[:100, :80]
    A = da.from_array(small, chunks=(50, 40))
    A = da.where(da.arange(100)[:, None] == 57, np.inf, A)

    def no_work(self, *args):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(_dask._Dask, "__init__", no_work)
    for call in (lambda: cur(A, rank=3, basis="randomized"), lambda: certify(A, cur(small, rank=2))):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value) == _errors.DASK_NOT_FINITE


def test_curlinalg_imports_without_dask():
    code = "import sys, curlinalg; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_core_takes_the_lazy_cuts(distributed_matrix, matrix):
    from curlinalg import optimal_core_factors

    A, _ = distributed_matrix
    res = cur(A, rank=8, rng=0)
    f = optimal_core_factors(A, res.C, res.R)
    np.testing.assert_allclose(f.left @ f.right, res.to_dense(), atol=1e-10)


@pytest.fixture(scope="module")
def complex_matrix():
    return known_spectrum(M, N, exponential_spectrum(N, decay=0.1), rng=0, dtype=np.complex128)


def test_complex_dask_input_matches_numpy_and_costs_the_documented_passes(client, complex_matrix, passes):
    """A complex dask array spread over both workers: A^H Y as a lazy conjugate-transpose
    product, the same rows and columns as numpy, lazy cuts, the bound, an ID and certify."""
    A, _ = spread(client, complex_matrix)
    q = 1
    res = cur(A, rank=12, basis="randomized", power_iters=q, rng=0)
    ref = cur(complex_matrix, rank=12, basis="randomized", power_iters=q, rng=0)
    assert passes["matmat"] == q + 1 and passes["rmatmat"] == q + 2
    np.testing.assert_array_equal(res.rows, ref.rows)
    np.testing.assert_array_equal(res.cols, ref.cols)
    np.testing.assert_array_equal(res.R.compute(), complex_matrix[res.rows])
    assert res.U.dtype == np.complex128
    assert spectral_error(complex_matrix, res) <= res.bound
    cert = certify(A, res, rng=0)
    assert spectral_error(complex_matrix, res) <= cert.bound
    rid = interpolative(A, rank=10, axis="columns", basis="randomized", rng=0)
    np.testing.assert_allclose(rid.skeleton, complex_matrix[:, rid.indices])  # through A^T
    assert spectral_error(complex_matrix, rid) <= rid.bound
