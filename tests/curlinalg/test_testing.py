import numpy as np
import pytest
from hypothesis import given

from curlinalg.testing import graded, kahan, known_spectrum, step_spectrum
from curlinalg.testing.strategies import HARD_KINDS, hard_problems, problems


@given(problems())
def test_problems_have_the_stated_spectrum(problem):
    s = np.linalg.svd(problem.A, compute_uv=False)
    np.testing.assert_allclose(s, problem.s, atol=1e-12)
    assert 1 <= problem.rank < max(2, min(problem.A.shape))


def test_builders():
    assert np.allclose(np.triu(kahan(5)), kahan(5))
    g = graded(6, 3, ratio=1e-4, rng=0)
    assert np.linalg.norm(g[-1]) < 1e-3 * np.linalg.norm(g[0])
    with pytest.raises(ValueError, match="min\\(m, n\\)"):
        known_spectrum(3, 2, [1.0])
    with pytest.raises(ValueError, match="gap"):
        step_spectrum(3, rank=1, gap=2.0)


@given(hard_problems())
def test_hard_problems_state_their_spectrum_and_precision(problem):
    m, n = problem.A.shape
    assert problem.A.dtype == np.dtype(problem.dtype)
    assert 1 <= problem.rank <= min(m, n)
    assert problem.kind in HARD_KINDS
    s = np.linalg.svd(problem.A.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s, problem.s, rtol=1e-10, atol=1e-14)


def test_new_builders():
    from curlinalg.testing import clustered_spectrum, duplicated_columns, hilbert_like

    s = clustered_spectrum(9, clusters=3, spread=0.0)
    assert sorted(set(s.tolist()), reverse=True) == [1.0, 1e-4, 1e-8]
    H = hilbert_like(5, 4)
    assert H[2, 3] == 1 / 6
    D = duplicated_columns(np.arange(6.0).reshape(2, 3), copies=3, rng=0)
    assert D.shape == (2, 9) and sorted(map(tuple, D.T.tolist())) == sorted(
        [(0.0, 3.0), (1.0, 4.0), (2.0, 5.0)] * 3)
