"""Batched kernels for torch stacks: the same results and guarantees as one cur() per matrix."""

import importlib
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import CURBatch, RankDeficiencyWarning, certify, cur
from curlinalg.testing import exponential_spectrum, known_spectrum, rank_deficient_spectrum

torch = pytest.importorskip("torch")
batched = importlib.import_module("curlinalg.batched")

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


def _stack(b=3, m=60, n=45, dtype=np.float64, seed=0):
    return np.stack([known_spectrum(m, n, exponential_spectrum(n, decay=0.1 + 0.05 * i), rng=seed + i)
                     for i in range(b)]).astype(dtype)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the batched kernel and of the per-matrix loop's cur()."""
    calls = {"batched": 0}
    real = batched.batched_cur

    def counted(*a, **k):
        calls["batched"] += 1
        return real(*a, **k)

    monkeypatch.setattr(batched, "batched_cur", counted)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["deim", "qdeim"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_equals_per_matrix(device, method, dtype, spy):
    A = torch.as_tensor(_stack(dtype=dtype), device=device)
    out = cur(A, rank=8, method=method, rng=0)
    assert spy["batched"] == 1 and isinstance(out, CURBatch) and len(out) == 3
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for i, res in enumerate(out):
        ref = cur(A[i], rank=8, method=method, rng=0)
        assert torch.equal(res.rows, ref.rows) and torch.equal(res.cols, ref.cols)
        assert res.C.device == A.device and res.U.dtype == A.dtype
        torch.testing.assert_close(res.to_dense(), ref.to_dense(), rtol=0, atol=tol)
        torch.testing.assert_close(res.U, ref.U, rtol=tol, atol=tol)
        assert res.bound == pytest.approx(ref.bound, rel=1e-5)
        assert (res.method, res.core, res.basis, res.rank) == (ref.method, ref.core, ref.basis, 8)


@given(st.integers(1, 30), st.sampled_from(["deim", "qdeim"]), st.sampled_from([np.float64, np.float32]))
def test_batched_bound_holds_at_every_rank(rank, method, dtype):
    A = _stack(b=4, m=50, n=30, dtype=dtype, seed=rank)
    out = cur(torch.from_numpy(A), rank=rank, method=method, rng=0)
    for i, res in enumerate(out):
        err = np.linalg.norm(A[i].astype(np.float64) - res.to_dense().double().numpy(), 2)
        assert err <= res.bound


def test_rank_above_one_matrix_numerical_rank_takes_the_loop(spy):
    """The loop lowers that matrix's rank with a warning, as cur() does for one matrix."""
    A = _stack(b=2, m=40, n=30)
    A[1] = known_spectrum(40, 30, rank_deficient_spectrum(30, rank=5), rng=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cur(torch.from_numpy(A), rank=8, rng=0)
    assert spy["batched"] == 1  # tried, handed back
    assert [r.rank for r in out] == [8, 5]
    assert any(issubclass(w.category, RankDeficiencyWarning) for w in caught)


@pytest.mark.parametrize("options", [dict(method="maxvol"), dict(method="randomized"), dict(core="cross"),
                                     dict(rtol=1e-3), dict(basis="randomized")])
def test_other_options_loop_over_the_matrices(options, spy):
    A = torch.from_numpy(_stack())
    options = {"rank": 6, **options} if "rtol" not in options else options
    out = cur(A, rng=0, **options)
    assert spy["batched"] == 0 and len(out) == 3
    for i, res in enumerate(out):
        bound = res.bound if res.bound is not None else certify(A[i], res, rng=0).bound  # cross core
        assert np.linalg.norm(A[i].numpy() - res.to_dense().numpy(), 2) <= bound


def test_a_bad_matrix_anywhere_in_the_stack_is_refused_before_work(spy):
    A = _stack()
    A[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        cur(torch.from_numpy(A), rank=5)
    assert spy["batched"] == 0
    with pytest.raises(ValueError, match="rank must satisfy"):
        cur(torch.from_numpy(_stack()), rank=46)


def test_complex_qdeim_stack_is_batched_and_deim_stack_loops(spy):
    """Q-DEIM (pivots by row norms) runs batched on complex stacks; complex DEIM loops over the
    matrices, since the batched getrf pivots on |Re| + |Im| rather than the modulus."""
    A = np.stack([known_spectrum(40, 30, exponential_spectrum(30, decay=0.2 + 0.05 * i), rng=i,
                                 dtype=np.complex128) for i in range(3)])
    At = torch.from_numpy(A)
    out = cur(At, rank=6, method="qdeim", rng=0)
    assert spy["batched"] == 1
    for i, res in enumerate(out):
        ref = cur(At[i], rank=6, method="qdeim", rng=0)
        assert res.U.dtype == torch.complex128
        assert torch.equal(torch.sort(res.rows).values, torch.sort(ref.rows).values)
        torch.testing.assert_close(res.to_dense(), ref.to_dense(), rtol=0, atol=1e-10)
        assert np.linalg.norm(A[i] - res.to_dense().numpy(), 2) <= res.bound
        assert res.bound == pytest.approx(ref.bound, rel=1e-5)
    out = cur(At, rank=6, method="deim", rng=0)
    assert spy["batched"] == 1 and len(out) == 3
    for i, res in enumerate(out):
        assert np.linalg.norm(A[i] - res.to_dense().numpy(), 2) <= res.bound
