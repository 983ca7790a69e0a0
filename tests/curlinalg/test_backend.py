import numpy as np
import pytest

import scipy.linalg as sla

from curlinalg._backend import Random, _first_k_of_swaps, _lu_normalize_torch, lu_normalize, namespace


def test_swaps_to_permutation():
    # LAPACK ipiv [2, 2, 2] on 3 rows: swap 0<->2, then 1<->2, then nothing.
    np.testing.assert_array_equal(_first_k_of_swaps(np.array([2, 2, 2]), 3), [2, 0, 1])


def test_random_is_reproducible_and_on_device(xp):
    like = xp.asarray(np.ones((2, 2)))
    a = xp.to_numpy(Random(5, like).normal((3, 4)))
    b = xp.to_numpy(Random(5, like).normal((3, 4)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, xp.to_numpy(Random(6, like).normal((3, 4))))
    assert type(Random(5, like).normal((1,))) is type(like)


def test_namespace_rejects_non_arrays_and_mixtures():
    with pytest.raises(TypeError, match="numpy, torch or cupy"):
        namespace([1.0])
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="different namespaces"):
        namespace(np.ones(2), torch.ones(2))


def test_lu_normalize_keeps_the_range_with_bounded_entries(xp):
    Y = np.random.default_rng(0).standard_normal((50, 6)) @ np.diag([1e6, 1e3, 1, 1e-3, 1e-6, 1e-9])
    L = xp.to_numpy(lu_normalize(xp.asarray(Y)))
    assert L.shape == (50, 6) and np.abs(L).max() <= 1.0 + 1e-12
    Q = np.linalg.qr(L)[0]
    np.testing.assert_allclose(Y - Q @ (Q.T @ Y), 0, atol=1e-9 * np.abs(Y).max())
    assert np.linalg.cond(L) < 1e3  # the scales are gone: what the power iteration needs


def test_lu_normalize_torch_device_path_matches_lapack():
    """The path CUDA tensors take (lu_factor, swaps to an order, one scatter), run on CPU."""
    torch = pytest.importorskip("torch")
    Y = np.random.default_rng(1).standard_normal((40, 7))
    np.testing.assert_allclose(
        _lu_normalize_torch(torch.from_numpy(Y)).numpy(), sla.lu(Y, permute_l=True)[0], atol=1e-14
    )
