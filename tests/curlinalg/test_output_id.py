"""curlinalg.output_id: the column ID of activations under the next projection's output metric."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg.output_id import output_id, output_id_curve, selection_ratio
from curlinalg.testing import known_spectrum

EPS = np.finfo(np.float64).eps


def _problem(seed, tokens, n, m, decay, rank=None):
    """Activations Z (tokens x n) with a decaying spectrum (or exact rank), and a projection W."""
    rng = np.random.default_rng(seed)
    s = np.exp(-decay * np.arange(min(tokens, n)))
    if rank is not None:
        s[rank:] = 0.0
    Z = known_spectrum(tokens, n, s, rng=rng)
    W = rng.standard_normal((m, n)) * rng.uniform(0.1, 2.0, n)
    return Z, W


def _tail(Z, W, k):
    """The relative squared tail past ``k`` of the singular values of the output ``Z W^T``,
    from an SVD of the product of the tokens themselves (no Gram)."""
    s = np.linalg.svd(Z @ W.T, compute_uv=False)
    return float((s[k:] ** 2).sum() / (s**2).sum())


def _direct(Z, W, res):
    """The relative squared output error computed from the tokens themselves."""
    S = np.asarray(res.indices)
    return np.linalg.norm(Z @ W.T - Z[:, S] @ np.asarray(res.weight).T) ** 2 / np.linalg.norm(Z @ W.T) ** 2


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 24), m=st.integers(1, 12),
       decay=st.floats(0.0, 1.0), extra=st.integers(0, 30))
def test_curve_is_the_exact_refit_error_and_above_its_lower_bound(seed, n, m, decay, extra):
    Z, W = _problem(seed, n + extra, n, m, decay)
    G = Z.T @ Z
    c = output_id_curve(G, W, ridge=0.0)
    assert sorted(np.asarray(c.order).tolist()) == list(range(n))
    assert np.all(np.diff(c.errors) <= 1e-12) and c.errors[0] <= 1.0 + 1e-12
    # Eckart-Young: no refit through k units beats the SVD tail of the whitened output.
    assert np.all(c.lower <= c.errors + 64 * n * EPS)
    for k in {1, max(1, n // 2), n}:
        res = output_id(G, W, rank=k, order=c.order, shift=0.0)
        slack = 1e4 * n * EPS * (1 + np.linalg.cond(Z[:, np.asarray(res.indices)]))
        assert abs(_direct(Z, W, res) - c.errors[k - 1]) <= slack
        assert abs(res.rel_error**2 - c.errors[k - 1]) <= slack


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 20), rank=st.integers(1, 3))
def test_activations_of_rank_r_are_reproduced_exactly_by_r_units(seed, n, rank):
    Z, W = _problem(seed, 3 * n, n, 4, 0.0, rank=rank)
    res = output_id(Z.T @ Z, W, rank=rank, shift=0.0)
    np.testing.assert_allclose(Z[:, np.asarray(res.indices)] @ np.asarray(res.weight).T, Z @ W.T,
                               atol=1e-8 * np.linalg.norm(Z @ W.T))


def test_refit_is_the_least_squares_optimum_for_its_units():
    Z, W = _problem(3, 80, 12, 5, 0.3)
    res = output_id(Z.T @ Z, W, rank=5, shift=0.0)
    S = np.asarray(res.indices)
    base = np.linalg.norm(Z @ W.T - Z[:, S] @ res.weight.T)
    rng = np.random.default_rng(0)
    for _ in range(5):
        moved = res.weight + 1e-3 * rng.standard_normal(res.weight.shape)
        assert np.linalg.norm(Z @ W.T - Z[:, S] @ moved.T) > base


def test_output_weighting_prefers_the_units_that_the_projection_reads():
    """Two equally strong, independent units; W reads only the second: it is kept first."""
    rng = np.random.default_rng(1)
    Z = rng.standard_normal((100, 2))
    W = np.array([[0.0, 1.0], [0.0, 2.0]])
    c = output_id_curve(Z.T @ Z, W, ridge=0.0)
    assert int(np.asarray(c.order)[0]) == 1
    assert c.errors[0] < 1e-12


def test_mixed_target_and_ridge():
    rng = np.random.default_rng(2)
    Zc = rng.standard_normal((120, 10))
    Zd = Zc + 0.3 * rng.standard_normal((120, 10))
    W = rng.standard_normal((4, 10))
    G, K = Zc.T @ Zc, Zc.T @ Zd
    order = output_id_curve(G, W).order
    # mix=0 fits the reference outputs Z_d W^T from the kept Z_c columns: least squares there.
    res = output_id(G, W, rank=6, order=order, cross=K, mix=0.0, shift=0.0)
    S = np.asarray(res.indices)
    sol = np.linalg.lstsq(Zc[:, S], Zd @ W.T, rcond=None)[0].T
    np.testing.assert_allclose(res.weight, sol, rtol=1e-8, atol=1e-10)
    # mix=1 is the plain fit on Z_c.
    plain = output_id(G, W, rank=6, order=order, shift=0.0)
    np.testing.assert_allclose(output_id(G, W, rank=6, order=order, cross=K, mix=1.0, shift=0.0).weight,
                               plain.weight, rtol=1e-10)
    # A huge ridge pulls the refit onto the kept columns of W.
    far = output_id(G, W, rank=6, order=order, ridge=1e8)
    np.testing.assert_allclose(far.weight, W[:, S], atol=1e-5)


def test_backends_agree(xp):
    Z, W = _problem(4, 60, 9, 3, 0.2)
    G, Wx = xp.asarray(Z.T @ Z), xp.asarray(W)
    c = output_id_curve(G, Wx)
    ref = output_id_curve(Z.T @ Z, W)
    np.testing.assert_allclose(c.errors, ref.errors, rtol=1e-8, atol=1e-12)
    res = output_id(G, Wx, rank=4, order=c.order)
    assert type(res.weight) is type(G) and tuple(res.weight.shape) == (3, 4)
    np.testing.assert_allclose(xp.to_numpy(res.weight), output_id(Z.T @ Z, W, rank=4).weight, rtol=1e-8)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0}, "rank must be an int in"),
    ({"rank": 7}, "rank must be an int in"),
    ({"rank": 2, "mix": 1.5}, "mix must be"),
    ({"rank": 2, "order": [0, 0, 1, 2, 3, 4]}, "permutation"),
])
def test_bad_options_are_named(kwargs, match):
    Z, W = _problem(5, 30, 6, 2, 0.1)
    with pytest.raises(ValueError, match=match):
        output_id(Z.T @ Z, W, **kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="square"):
        output_id_curve(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="weight must be an"):
        output_id_curve(np.eye(3), np.ones((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        output_id_curve(np.full((2, 2), np.nan), np.ones((1, 2)))


@given(seed=st.integers(0, 2**32 - 1), dims=st.integers(2, 8), heads=st.integers(1, 3), m=st.integers(1, 6))
def test_grouped_curve_keeps_items_whole_and_is_exact(seed, dims, heads, m):
    """Items of ``heads`` columns each (a KV group's shared value dimension): the order never
    splits one, and the curve at ``t`` items is the exact refit error on their columns."""
    n = dims * heads
    Z, W = _problem(seed, 3 * n, n, m, 0.2)
    labels = np.tile(np.arange(dims), heads)  # column h * dims + i belongs to item i
    G = Z.T @ Z
    c = output_id_curve(G, W, ridge=0.0, groups=labels)
    order = np.asarray(c.order)
    assert sorted(order.tolist()) == list(range(n)) and len(c.errors) == dims
    assert np.array_equal(c.widths, heads * np.arange(1, dims + 1))
    items = labels[order].reshape(dims, heads)
    assert (items == items[:, :1]).all()  # each item's columns are consecutive
    assert np.all(np.diff(c.errors) <= 1e-12)
    for t in {1, dims}:
        res = output_id(G, W, rank=heads * t, order=order, shift=0.0)
        slack = 1e4 * n * EPS * (1 + np.linalg.cond(Z[:, np.asarray(res.indices)]))
        assert abs(_direct(Z, W, res) - c.errors[t - 1]) <= slack
    again = output_id_curve(G, W, ridge=0.0, groups=labels, order=order)
    np.testing.assert_allclose(again.errors, c.errors, atol=1e-12)


def test_given_order_that_splits_an_item_is_refused():
    Z, W = _problem(6, 40, 4, 2, 0.1)
    with pytest.raises(ValueError, match="splits an item"):
        output_id_curve(Z.T @ Z, W, groups=[0, 0, 1, 1], order=[0, 2, 1, 3])


def test_complex_input_gets_the_metric_refusal_by_name():
    with pytest.raises(TypeError, match="real matrices only.*gram.*complex"):
        output_id_curve(np.eye(4) + 0j, np.ones((2, 4)))
    with pytest.raises(TypeError, match="real matrices only.*weight.*complex"):
        output_id(np.eye(4), np.ones((2, 4)) + 1j, rank=2)


# ---- the optimum each refit is compared to, and the selection constant ----

@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 24), m=st.integers(1, 30), decay=st.floats(0.0, 1.5),
       extra=st.integers(0, 30), width=st.floats(0.0, 1.0), ridge=st.sampled_from([0.0, 1e-2]),
       shift=st.sampled_from([0.0, 1e-6]), mixed=st.booleans())
def test_optimal_error_is_the_output_svd_tail_and_below_every_refit(seed, n, m, decay, extra, width, ridge, shift,
                                                                    mixed):
    """``optimal_error`` is the Eckart-Young tail of the output from an SVD of ``Z W^T`` (tall and
    wide ``W``), and no refit beats it: not the pivoted order's, not a random order's, whatever
    the ridge, shift or mixed target."""
    Z, W = _problem(seed, n + extra, n, m, decay)
    G = Z.T @ Z
    k = 1 + int(width * (n - 1))
    rng = np.random.default_rng(seed)
    cross = None
    if mixed:  # a sequential refit's target: reference activations near the kept ones
        Zd = Z + 0.1 * rng.standard_normal(Z.shape)
        cross = Z.T @ Zd
    for order in (None, rng.permutation(n)):
        res = output_id(G, W, rank=k, order=order, cross=cross, mix=0.5, ridge=ridge, shift=shift)
        assert res.rounding == pytest.approx(4 * np.sqrt(max(m, n) * EPS))
        assert abs(res.optimal_error**2 - _tail(Z, W, k)) <= 64 * max(m, n) * EPS
        assert res.optimal_error**2 <= res.rel_error**2 + 64 * max(m, n) * EPS
        if res.optimal_error > res.rounding:
            assert res.optimality_ratio == pytest.approx(res.rel_error / res.optimal_error, rel=1e-14)
            assert res.optimality_ratio >= 1 - 1e-8


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 16), taller=st.integers(0, 6), k=st.integers(1, 16))
def test_independent_units_read_by_orthogonal_columns_reach_the_optimum(seed, n, taller, k):
    """``Z`` with orthogonal columns, read by ``W`` with orthogonal columns: the output's singular
    values are the products of the column norms, the best ``k`` units are those of the largest
    products and the pivoted order keeps exactly them, so the constant is 1 and the error the
    optimum, though the optimum is not 0."""
    k = min(k, n)
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n + 10, n)))[0]
    P = np.linalg.qr(rng.standard_normal((n + taller, n)))[0]
    Z, W = Q * rng.uniform(0.1, 2.0, n), P * rng.uniform(0.1, 2.0, n)
    res = output_id(Z.T @ Z, W, rank=k, shift=0.0)
    assert abs(res.optimal_error**2 - _tail(Z, W, k)) <= 64 * (n + taller) * EPS
    if k < n:
        assert res.optimal_error > 1e-3
        assert res.optimality_ratio == pytest.approx(1.0, abs=1e-10)
    else:
        assert res.optimality_ratio == 1.0


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 20), rank=st.integers(1, 3), m=st.integers(3, 8))
def test_an_output_of_rank_k_refitted_exactly_has_constant_one(seed, n, rank, m):
    """Activations of rank ``k``: ``k`` units reproduce the output, the optimum is 0, and both are
    at rounding level, which the constant reports as 1 (not a ratio of rounding errors)."""
    Z, W = _problem(seed, 3 * n, n, m, 0.0, rank=rank)
    res = output_id(Z.T @ Z, W, rank=rank, shift=0.0)
    assert res.optimal_error <= res.rounding and res.rel_error <= res.rounding
    assert res.optimality_ratio == 1.0


def test_a_width_past_the_output_rank_makes_the_optimum_vacuous():
    """``k >= m``: every rank-``k`` map is exact, ``k`` of the ``n`` generic units are not."""
    Z, W = _problem(7, 60, 10, 2, 0.1)
    res = output_id(Z.T @ Z, W, rank=3, shift=0.0)
    assert res.optimal_error == 0.0 and res.rel_error > 1e-3
    assert res.optimality_ratio == np.inf


def test_optimum_on_every_backend(xp):
    for seed, (tokens, n, m) in enumerate([(60, 9, 3), (40, 6, 11), (50, 12, 12)]):
        Z, W = _problem(seed, tokens, n, m, 0.3)
        for k in (1, n // 2, n - 1):
            res = output_id(xp.asarray(Z.T @ Z), xp.asarray(W), rank=k)
            assert isinstance(res.optimal_error, float) and isinstance(res.optimality_ratio, float)
            assert abs(res.optimal_error**2 - _tail(Z, W, k)) <= 64 * max(m, n) * EPS
            assert res.optimal_error <= res.rel_error and res.optimality_ratio >= 1.0


def test_selection_ratio_conventions_and_refusals():
    assert selection_ratio(0.5, 0.25) == 2.0
    assert selection_ratio(1e-9, 1e-10, rounding=1e-8) == 1.0  # both rounding
    assert selection_ratio(0.1, 1e-10, rounding=1e-8) == np.inf  # an exact optimum not reached
    assert selection_ratio(0.0, 0.0) == 1.0 and selection_ratio(1e-300, 0.0) == np.inf
    assert selection_ratio(np.float64(0.3), np.float64(0.3)) == 1.0
    for bad in [(-0.1, 0.1), (0.1, float("nan")), (0.1, float("inf")), (True, 0.1), ("0.1", 0.1)]:
        with pytest.raises(ValueError, match="non-negative real numbers, got error="):
            selection_ratio(*bad)
    with pytest.raises(ValueError, match="rounding=-1"):
        selection_ratio(0.1, 0.1, rounding=-1)
