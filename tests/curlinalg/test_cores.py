import numpy as np
import pytest

from curlinalg import cross_core, optimal_core
from curlinalg.testing import exponential_spectrum, known_spectrum, step_spectrum


def test_optimal_core_is_the_pseudoinverse_formula(xp):
    A = known_spectrum(30, 20, exponential_spectrum(20, decay=0.2), rng=0)
    rows, cols = np.array([1, 5, 7, 11]), np.array([0, 3, 8])
    C, R = A[:, cols], A[rows]
    U = optimal_core(xp.asarray(A), xp.asarray(C), xp.asarray(R))
    np.testing.assert_allclose(
        xp.to_numpy(U), np.linalg.pinv(C) @ A @ np.linalg.pinv(R), rtol=1e-8, atol=1e-10
    )


def test_optimal_core_minimizes_the_frobenius_error():
    rng = np.random.default_rng(0)
    A = known_spectrum(25, 20, exponential_spectrum(20, decay=0.3), rng=1)
    C, R = A[:, :4], A[:5]
    U = optimal_core(A, C, R)
    best = np.linalg.norm(A - C @ U @ R)
    for _ in range(20):
        assert np.linalg.norm(A - C @ (U + 1e-3 * rng.standard_normal(U.shape)) @ R) > best


def test_cores_are_exact_on_low_rank_and_finite_on_deficient_selections():
    A = known_spectrum(30, 20, step_spectrum(20, rank=3, gap=0.0), rng=0)
    rows, cols = np.array([0, 1, 2, 3, 4]), np.array([2, 4, 6, 8])
    C, R = A[:, cols], A[rows]
    for U in (optimal_core(A, C, R), cross_core(A, rows, cols)):
        assert np.isfinite(U).all()
        np.testing.assert_allclose(C @ U @ R, A, atol=1e-10)


def test_cross_core_truncation():
    W = np.diag([1.0, 1e-3])
    assert cross_core(W, np.array([0, 1]), np.array([0, 1]), rtol=1e-2)[1, 1] == 0.0


def test_mixed_backends_rejected():
    torch = pytest.importorskip("torch")
    A = np.ones((4, 4))
    with pytest.raises(TypeError, match="different namespaces"):
        optimal_core(A, torch.ones((4, 2), dtype=torch.float64), A[:2])


def test_stable_factors_beat_the_plain_product_near_the_numerical_rank():
    """The factored evaluation is accurate where C @ (U @ R) is not (finding 1's cause)."""
    from curlinalg import deim, optimal_core_factors, cross_core_factors
    from curlinalg.testing import known_spectrum

    A = known_spectrum(300, 250, np.exp(-np.arange(250) / 8), rng=1)
    U_, s, Vt = np.linalg.svd(A, full_matrices=False)
    k = 200
    rows, cols = deim(U_[:, :k]), deim(Vt[:k].T)
    C, R = A[:, cols], A[rows]
    f = optimal_core_factors(A, C, R)
    stable = np.linalg.norm(A - f.left @ f.right, 2)
    plain = np.linalg.norm(A - C @ (f.U @ R), 2)
    assert stable < 1e-9 < plain
    np.testing.assert_allclose(f.left.T @ f.left, np.eye(f.rank), atol=1e-12)
    g = cross_core_factors(A, rows, cols, rtol=s[k] / s[0])
    assert np.linalg.norm(A - g.left @ g.right, 2) < 1e-6


def test_optimal_core_truncation_option():
    from curlinalg import optimal_core_factors

    A = np.diag([1.0, 1e-3, 1e-9])
    full = optimal_core_factors(A, A, A)
    cut = optimal_core_factors(A, A, A, rtol=1e-6)
    assert full.rank == 3 and cut.rank == 2


def test_public_cores_take_sparse_input_and_cuts():
    import scipy.sparse as sp

    from curlinalg import cur, optimal_core_factors

    S = sp.random(120, 80, density=0.1, random_state=0, format="csr")
    res = cur(S, rank=6)
    f = optimal_core_factors(S, res.C, res.R)
    np.testing.assert_allclose(f.U, res.U, atol=1e-12)
    np.testing.assert_allclose(f.left @ f.right, res.to_dense(), atol=1e-12)


def _complex(m, n, seed, spectrum):
    return known_spectrum(m, n, spectrum, rng=seed, dtype=np.complex128)


def test_complex_optimal_core_is_the_pseudoinverse_formula(xp):
    A = _complex(30, 20, 0, exponential_spectrum(20, decay=0.2))
    rows, cols = np.array([1, 5, 7, 11]), np.array([0, 3, 8])
    C, R = A[:, cols], A[rows]
    U = optimal_core(xp.asarray(A), xp.asarray(C), xp.asarray(R))
    np.testing.assert_allclose(
        xp.to_numpy(U), np.linalg.pinv(C) @ A @ np.linalg.pinv(R), rtol=1e-8, atol=1e-10
    )


def test_complex_cores_are_exact_on_low_rank_and_finite_on_deficient_selections():
    A = _complex(30, 20, 0, step_spectrum(20, rank=3, gap=0.0))
    rows, cols = np.array([0, 1, 2, 3, 4]), np.array([2, 4, 6, 8])
    C, R = A[:, cols], A[rows]
    for U in (optimal_core(A, C, R), cross_core(A, rows, cols)):
        assert U.dtype == np.complex128 and np.isfinite(U).all()
        np.testing.assert_allclose(C @ U @ R, A, atol=1e-10)
    np.testing.assert_allclose(cross_core(A, rows, cols), np.linalg.pinv(A[np.ix_(rows, cols)], rcond=1e-10),
                               atol=1e-8)


def test_mixed_real_and_complex_operands_are_refused():
    """optimal_core(A, C, R) with a real C or R and a complex A (or the other way round) says
    which operand is which, before any work."""
    A = _complex(10, 8, 0, exponential_spectrum(8, decay=0.5))
    with pytest.raises(TypeError, match=r"A is complex \(complex128\), C is real \(float64\), R is complex"):
        optimal_core(A, A[:, :3].real, A[:3])
    with pytest.raises(TypeError, match=r"A is real \(float64\), C is complex \(complex128\), R is real"):
        optimal_core(A.real, A[:, :3], A[:3].real)
