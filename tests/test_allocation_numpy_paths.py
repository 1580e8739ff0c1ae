"""The numpy backend's internal shortcuts (flat path, partition cache, greedy compaction,
whole-depth gathers) must not change a single bit of its result: each property compares it
with its general path (``_core._FAST_PATHS = False``), and with the oracle where it is cheap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.allocation import AllocationProblem, allocate_numpy

try:
    from test_allocation_properties import DEFAULT, KW, LIMIT, SLOW, WEIGHT, check_oracle, check_rules, problems
except ImportError:  # pragma: no cover
    from tests.test_allocation_properties import (DEFAULT, KW, LIMIT, SLOW, WEIGHT, check_oracle, check_rules,
                                                  problems)

allocate = allocate_numpy  # every test here is about the numpy backend


# ----------------------------------------------------------------------------- fast paths
# The core takes shortcuts that must not change a single bit of the result: the flat path
# (one class, no minimums, no steps, guns straight under roots), the partition cache across
# calls, the greedy going on with the undecided items only, the identity gathers skipped
# when a whole depth binds. ``_core._FAST_PATHS = False`` turns them all off.


def general_path(p: AllocationProblem):
    from controller.allocation import _core

    saved = _core._FAST_PATHS
    _core._FAST_PATHS = False
    try:
        return allocate_numpy(p)
    finally:
        _core._FAST_PATHS = saved


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.setpoint_kw, b.setpoint_kw)
    np.testing.assert_array_equal(a.bound_by, b.bound_by)


@st.composite
def flat_problems(draw):
    """One class, no minimums, no steps, every gun directly under a root, guns by node: the
    case of ACN-Sim's single aggregate constraint (and what the flat path takes)."""
    n_roots = draw(st.integers(1, 4))
    parent = [-1] * n_roots
    for _ in range(draw(st.integers(0, 3))):  # nodes without guns below them
        parent.append(draw(st.integers(0, len(parent) - 1)))
    n_n = len(parent)
    limit = [draw(LIMIT) for _ in range(n_n)]
    counts = [draw(st.integers(0, 12)) for _ in range(n_roots)]
    gun_node = [r for r in range(n_roots) for _ in range(counts[r])]
    if not gun_node:
        gun_node = [0]
    n = len(gun_node)
    prio = draw(st.integers(0, 5))
    return AllocationProblem(
        gun_node=np.array(gun_node, np.int64), upper_kw=np.array([draw(KW) for _ in range(n)]),
        min_kw=np.zeros(n), ask_kw=np.array([draw(KW) for _ in range(n)]),
        priority=np.full(n, prio, np.int64), weight=np.array([draw(WEIGHT) for _ in range(n)]),
        node_parent=np.array(parent, np.int64), node_limit_kw=np.array(limit, float),
        node_step_kw=draw(st.sampled_from([None, np.zeros(n_n)])),
    )


@DEFAULT
@given(problems())
def test_fast_paths_equal_general_path(p):
    assert_same(allocate(p), general_path(p))
    assert_same(allocate(p), general_path(p))  # the second call reuses the cached partition


@DEFAULT
@given(flat_problems())
def test_flat_path_equals_general_path(p):
    r = allocate(p)
    assert_same(r, general_path(p))
    check_rules(p, r)
    check_oracle(p, r)


@DEFAULT
@given(problems(), st.sampled_from([0.5, 0.9, 1.0, 1.1, 2.0]))
def test_cached_partition_gives_what_a_cold_call_gives(p, k):
    """Same gun_node and classes, other kW: the partition kept from the first call must
    serve the second exactly as a fresh one would."""
    allocate(p)
    q = AllocationProblem(p.gun_node, p.upper_kw, p.min_kw, p.ask_kw * k, p.priority, p.weight,
                          p.node_parent, p.node_limit_kw * k, p.node_step_kw)
    assert_same(allocate(q), general_path(q))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_sites=6, max_nodes=5, max_guns=40))
def test_fast_paths_equal_general_path_on_crowded_sites(p):
    """Many guns per site: the greedy admission settles most of them in its first round and
    goes on with the rest only (its compaction)."""
    r = allocate(p)
    assert_same(r, general_path(p))
    check_oracle(p, r)


@st.composite
def crowded_problems(draw):
    """Sites of 10-40 guns with minimums, oversubscribed at the root, mostly weight 1 with a
    few low-weight guns of small minimums: the greedy admission decides most guns in its
    first round and a few low-weight ones are still open after it, which is when it goes on
    with those only (about one example in six)."""
    parent, limit, step = [], [], []
    gun_node, upper, mn, ask, prio, weight = [], [], [], [], [], []
    for _ in range(draw(st.integers(1, 3))):
        base = len(parent)
        k = draw(st.integers(2, 5))
        parent.append(-1)
        limit.append(0.0)
        step.append(0.0)
        for _ in range(1, k):
            parent.append(base)
            limit.append(draw(st.sampled_from([math.inf, math.inf, 240.0, 360.0])))
            step.append(draw(st.sampled_from([0.0, 0.0, 10.0, 30.0])))
        total_min = 0.0
        for _ in range(draw(st.integers(10, 40))):
            gun_node.append(base + draw(st.integers(1, k - 1)))
            u = draw(st.sampled_from([30.0, 60.0, 90.0, 180.0]))
            w = draw(st.sampled_from([1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.5]))
            m = 7.5 if w < 1 else draw(st.sampled_from([15.0, 30.0, 45.0]))
            upper.append(u)
            mn.append(min(m, u))
            ask.append(draw(st.sampled_from([u, u, u / 2, 0.0])))
            prio.append(draw(st.sampled_from([0, 0, 0, 1])))
            weight.append(w)
            total_min += min(m, u)
        limit[base] = round(total_min * draw(st.sampled_from([0.6, 0.8, 0.9, 0.95])), 3)
    f = lambda xs, dt=float: np.array(xs, dt)
    return AllocationProblem(f(gun_node, np.int64), f(upper), f(mn), f(ask), f(prio, np.int64), f(weight),
                             f(parent, np.int64), f(limit), f(step))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crowded_problems())
def test_fast_paths_equal_general_path_when_the_greedy_compacts(p):
    r = allocate(p)
    assert_same(r, general_path(p))
    check_rules(p, r)
    check_oracle(p, r)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # ~70 ms each
@given(crowded_problems())
def test_fast_paths_equal_general_path_when_the_greedy_compacts_slow(p):
    test_fast_paths_equal_general_path_when_the_greedy_compacts.hypothesis.inner_test(p)


@pytest.mark.slow
@SLOW
@given(problems(max_sites=4, max_nodes=9, max_guns=14))
def test_fast_paths_equal_general_path_slow(p):
    test_fast_paths_equal_general_path.hypothesis.inner_test(p)


@pytest.mark.slow
@SLOW
@given(flat_problems())
def test_flat_path_equals_general_path_slow(p):
    test_flat_path_equals_general_path.hypothesis.inner_test(p)
