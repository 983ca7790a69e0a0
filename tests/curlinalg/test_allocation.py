import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curlinalg import allocate_ranks, cur, cur_error_curve, svd_error_curve
from curlinalg.testing.strategies import problems


@given(problem=problems(max_dim=40))
def test_svd_curve_is_the_spectral_tail(problem):
    A = problem.A
    curve = svd_error_curve(A, relative=False)
    s2 = problem.s**2
    tail = np.array([s2[r:].sum() for r in range(1, len(s2))])
    np.testing.assert_allclose(curve, tail, rtol=1e-8, atol=1e-10 * s2.sum())
    rel = svd_error_curve(A, max_rank=2)
    assert len(rel) == min(2, len(tail))
    assert np.all(np.diff(curve) <= 1e-12 * s2.sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cur_curve_is_the_deim_cur_error_at_every_rank(seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((30, 18)) * np.logspace(0, -1, 18)
    curve = cur_error_curve(A, max_rank=18, relative=False)
    assert len(curve) == 18
    for r in range(1, 19):
        res = cur(A, rank=r, method="deim")
        assert curve[r - 1] == pytest.approx(np.linalg.norm(A - res.to_dense()) ** 2, rel=1e-6, abs=1e-12 * np.sum(A * A))
    svd = svd_error_curve(A, relative=False)
    assert np.all(curve[:17] >= svd - 1e-9)
    assert len(cur_error_curve(A, max_rank=0)) == 0


@st.composite
def allocation_problems(draw):
    count = draw(st.integers(1, 3))
    errors, savings = [], []
    for _ in range(count):
        length = draw(st.integers(1, 4))
        drops = draw(st.lists(st.floats(0.0, 10.0), min_size=length, max_size=length))
        errors.append(np.cumsum(drops[::-1])[::-1])          # non-increasing in the rank
        steps = draw(st.lists(st.integers(1, 20), min_size=length, max_size=length))
        savings.append(np.cumsum(steps[::-1])[::-1])        # decreasing in the rank
    most = sum(int(s[0]) for s in savings)
    need = draw(st.integers(1, most))
    return errors, savings, need


@given(allocation_problems())
def test_allocation_meets_the_budget_within_one_step(problem):
    errors, savings, need = problem
    res = allocate_ranks(errors, savings, need=need)
    saved = sum(int(s[r - 1]) for s, r in zip(savings, res.ranks) if r)
    assert saved - need == res.slack >= 0
    assert res.error == pytest.approx(sum(float(e[r - 1]) for e, r in zip(errors, res.ranks) if r))
    # No single step back (one rank up, or back to whole) stays within the budget.
    for j, (e, s) in enumerate(zip(errors, savings)):
        r = res.ranks[j]
        if r:
            assert int(s[r - 1]) > res.slack
            if r < len(e):
                assert int(s[r - 1] - s[r]) > res.slack or e[r - 1] - e[r] <= 0


@given(allocation_problems())
def test_allocation_is_close_to_the_brute_force_optimum(problem):
    errors, savings, need = problem
    res = allocate_ranks(errors, savings, need=need)
    best = min(
        sum(float(e[r - 1]) for e, r in zip(errors, ranks) if r)
        for ranks in itertools.product(*[range(len(e) + 1) for e in errors])
        if sum(int(s[r - 1]) for s, r in zip(savings, ranks) if r) >= need
    )
    total = sum(float(e[0]) for e in errors)
    assert res.error >= best - 1e-9
    assert res.error <= best + total  # never worse than compressing everything at rank 1


def test_allocation_prefers_the_cheap_error():
    steep = np.array([100.0 / k**3 for k in range(1, 21)])
    flat = np.array([100.0 * (1 - k / 21) for k in range(1, 21)])
    saves = np.array([1600 - 80 * k for k in range(1, 21)])
    res = allocate_ranks([steep, flat], [saves, saves], need=900)
    assert res.ranks[0] > 0 and res.ranks[0] <= res.ranks[1] or res.ranks[1] == 0
    with pytest.raises(ValueError, match="cannot remove"):
        allocate_ranks([steep, flat], [saves, saves], need=10_000)
    with pytest.raises(ValueError, match="must pair up"):
        allocate_ranks([steep], [saves, saves], need=10)


@st.composite
def exclusive_problems(draw):
    """An allocation problem with one group of two options over some of its curves."""
    errors, savings, _ = draw(allocation_problems())
    extra_e, extra_s, _ = draw(allocation_problems())
    errors, savings = errors + extra_e, savings + extra_s
    order = draw(st.permutations(range(len(errors))))
    cut = draw(st.integers(1, len(errors) - 1)) if len(errors) > 1 else None
    if cut is None:
        return errors, savings, 1, []
    groups = [[sorted(order[:cut]), sorted(order[cut:])]]
    most = max(sum(int(savings[j][0]) for j in option) for option in groups[0])
    need = draw(st.integers(1, most))
    return errors, savings, need, groups


def _respects(ranks, groups):
    return all(sum(any(ranks[j] for j in option) for option in group) <= 1 for group in groups)


@given(exclusive_problems())
def test_exclusive_options_are_never_both_taken_and_the_result_is_near_the_brute_force_optimum(problem):
    errors, savings, need, groups = problem
    res = allocate_ranks(errors, savings, need=need, exclusive=groups)
    saved = sum(int(s[r - 1]) for s, r in zip(savings, res.ranks) if r)
    assert saved - need == res.slack >= 0
    assert _respects(res.ranks, groups)
    feasible = [
        sum(float(e[r - 1]) for e, r in zip(errors, ranks) if r)
        for ranks in itertools.product(*[range(len(e) + 1) for e in errors])
        if _respects(ranks, groups) and sum(int(s[r - 1]) for s, r in zip(savings, ranks) if r) >= need
    ]
    best = min(feasible)
    assert res.error >= best - 1e-9
    # never worse than the best option of the group allocated alone (the switch step tries each)
    for option in groups[0] if groups else []:
        if sum(int(savings[j][0]) for j in option) >= need:
            alone = allocate_ranks([errors[j] for j in option], [savings[j] for j in option], need=need)
            assert res.error <= alone.error + 1e-9


def test_exclusive_changes_the_choice_and_is_checked():
    errs = [np.array([2.0, 0.3]), np.array([1.0, 0.2]), np.array([1.0, 0.3])]
    saves = [np.array([40, 20]), np.array([20, 10]), np.array([20, 10])]
    free = allocate_ranks(errs, saves, need=30)
    assert free.ranks[0] and (free.ranks[1] or free.ranks[2])   # both ways at once, unconstrained
    res = allocate_ranks(errs, saves, need=30, exclusive=[[[0], [1, 2]]])
    assert res.ranks == [0, 2, 1] and res.error == pytest.approx(1.2)
    # the budget counts the most saving option of each group once
    with pytest.raises(ValueError, match="at most 40"):
        allocate_ranks(errs, saves, need=50, exclusive=[[[0], [1, 2]]])
    for bad in ([[[0]]], [[[0], [0, 1]]], [[[0], [3]]], [[[0], []]], [[[0], [1]], [[1], [2]]], [3]):
        with pytest.raises(ValueError, match="exclusive must be"):
            allocate_ranks(errs, saves, need=10, exclusive=bad)


@given(problem=problems(max_dim=30, dtypes=("complex128",)))
def test_complex_svd_curve_is_the_spectral_tail(problem):
    """The spectral tail of a complex matrix, from its Hermitian Gram AA^H or A^HA."""
    s2 = problem.s**2
    tail = np.array([s2[r:].sum() for r in range(1, len(s2))])
    np.testing.assert_allclose(svd_error_curve(problem.A, relative=False), tail, rtol=1e-8,
                               atol=1e-10 * s2.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_complex_cur_curve_is_the_deim_cur_error_at_every_rank(seed):
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((30, 18)) + 1j * rng.standard_normal((30, 18))) * np.logspace(0, -1, 18)
    curve = cur_error_curve(A, max_rank=18, relative=False)
    for r in range(1, 19):
        res = cur(A, rank=r, method="deim")
        assert curve[r - 1] == pytest.approx(np.linalg.norm(A - res.to_dense()) ** 2, rel=1e-6,
                                             abs=1e-12 * np.sum(np.abs(A) ** 2))
