"""Property tests of controller.allocation against the oracle and against every rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.allocation import (
    BACKENDS,
    BOUND_ASK,
    BOUND_SHED,
    BOUND_UPPER,
    LIMIT_TOL_KW,
    AllocationProblem,
    allocate,
)
try:  # tests/ is a rootdir-less folder today; a package if someone adds __init__.py
    from allocation_oracle import oracle_allocate
except ImportError:  # pragma: no cover
    from tests.allocation_oracle import oracle_allocate



# Every property here holds for every backend this installation has (conftest.py: backend).
pytestmark = pytest.mark.usefixtures("backend")


DEFAULT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values from small sets make ties (equal levels, minimums that exactly fit) common, which is
# where implementations disagree; free floats catch the rest.
KW = st.one_of(st.sampled_from([0.0, 7.5, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 360.0]),
               st.floats(0.0, 400.0, allow_nan=False).map(lambda v: round(v, 3)))
LIMIT = st.one_of(KW, st.just(math.inf))
STEP = st.sampled_from([0.0, 0.0, 0.0, 10.0, 20.0, 30.0, 7.5])
WEIGHT = st.one_of(st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0]), st.floats(0.1, 5.0).map(lambda v: round(v, 3)))


@st.composite
def problems(draw, max_sites=3, max_nodes=6, max_guns=8, steps=True, mins=True, classes=3):
    parent, limit, step = [], [], []
    gun_node, upper, mn, ask, prio, weight = [], [], [], [], [], []
    for _ in range(draw(st.integers(1, max_sites))):
        base = len(parent)
        k = draw(st.integers(1, max_nodes))
        for j in range(k):
            parent.append(-1 if j == 0 else base + draw(st.integers(0, j - 1)))
            limit.append(draw(LIMIT))
            step.append(draw(STEP) if steps else 0.0)
        for _ in range(draw(st.integers(0, max_guns))):
            gun_node.append(base + draw(st.integers(0, k - 1)))
            u = draw(KW)
            upper.append(u)
            m = draw(st.one_of(st.just(0.0), KW)) if mins else 0.0
            mn.append(min(m, u))
            ask.append(draw(KW))
            prio.append(draw(st.integers(0, classes - 1)))
            weight.append(draw(WEIGHT))
    n_n = len(parent)
    # Renumber the nodes at random (tests the non-pre-order path) and shuffle the guns.
    perm = draw(st.permutations(range(n_n))) if draw(st.booleans()) else list(range(n_n))
    inv = {old: new for new, old in enumerate(perm)}
    parent = [(-1 if parent[o] < 0 else inv[parent[o]]) for o in perm]
    limit = [limit[o] for o in perm]
    step = [step[o] for o in perm]
    gun_node = [inv[g] for g in gun_node]
    gp = draw(st.permutations(range(len(gun_node))))
    f = lambda xs, dt=float: np.array([xs[i] for i in gp], dt)
    return AllocationProblem(
        gun_node=f(gun_node, np.int64), upper_kw=f(upper), min_kw=f(mn), ask_kw=f(ask),
        priority=f(prio, np.int64), weight=f(weight),
        node_parent=np.array(parent, np.int64), node_limit_kw=np.array(limit, float),
        node_step_kw=np.array(step, float) if steps else None,
    )


# ----------------------------------------------------------------------------- helpers


def ancestors(p: AllocationProblem, n: int) -> list[int]:
    out = []
    while n >= 0:
        out.append(n)
        n = int(p.node_parent[n])
    return out


def effective(p: AllocationProblem):
    """Per gun: (step, cap, min) after module-step rounding, as the rules define them."""
    stp = np.zeros(len(p.gun_node)) if p.node_step_kw is None else p.node_step_kw[p.gun_node]
    cap = np.minimum(p.ask_kw, p.upper_kw)
    mn = p.min_kw.copy()
    has = stp > 0
    cap[has] = np.floor(cap[has] / stp[has] + 1e-9) * stp[has]
    mn[has] = np.ceil(mn[has] / stp[has] - 1e-9) * stp[has]
    return stp, cap, mn


def node_use(p: AllocationProblem, x: np.ndarray) -> np.ndarray:
    use = np.zeros(len(p.node_parent))
    for i in range(len(x)):
        for a in ancestors(p, int(p.gun_node[i])):
            use[a] += x[i]
    return use


def tol(v) -> float:
    return LIMIT_TOL_KW * max(1.0, abs(v) / 1e3)


def check_rules(p: AllocationProblem, r) -> None:
    x, b = r.setpoint_kw, r.bound_by
    stp, cap, mn = effective(p)
    use = node_use(p, x)
    head = p.node_limit_kw - use
    # Every limit holds.
    for n in range(len(head)):
        assert head[n] >= -LIMIT_TOL_KW, f"node {n} over its limit by {-head[n]} kW"
    for i in range(len(x)):
        anc = ancestors(p, int(p.gun_node[i]))
        assert -1e-12 <= x[i] <= cap[i] + 1e-9, f"gun {i}: {x[i]} outside [0, {cap[i]}]"
        if x[i] > 0:
            assert x[i] >= mn[i] - 1e-9, f"gun {i} runs below its minimum"
            if stp[i] > 0:
                q = x[i] / stp[i]
                assert abs(q - round(q)) < 1e-6, f"gun {i}: {x[i]} not a multiple of {stp[i]}"
        if b[i] == BOUND_SHED:
            assert x[i] == 0
            assert mn[i] > 0 and cap[i] > 0
            # Shed only if its minimum cannot run: beyond its own cap, or some node above it
            # has less than the minimum left even now (no power is left that it could use).
            assert cap[i] < mn[i] - 1e-9 or min(head[a] for a in anc) < mn[i] + 1e-6, (
                f"gun {i} shed but {min(head[a] for a in anc)} kW left for its {mn[i]} kW minimum")
            continue
        if b[i] in (BOUND_ASK, BOUND_UPPER):
            assert x[i] >= cap[i] - 1e-6, f"gun {i} marked full but got {x[i]} of {cap[i]}"
            want = BOUND_UPPER if p.upper_kw[i] < p.ask_kw[i] else BOUND_ASK
            assert b[i] == want
            continue
        # Pareto: the gun is below its cap, so the node named must be above it and too full
        # to give it any more (a whole step more, for a stepped gun).
        assert x[i] < cap[i] - 1e-9
        assert b[i] in anc, f"gun {i}: bound_by {b[i]} is not above it ({anc})"
        need = stp[i] if stp[i] > 0 else 0.0
        assert head[b[i]] < need + tol(p.node_limit_kw[b[i]]) + 1e-6, (
            f"gun {i} at {x[i]} < {cap[i]} but node {b[i]} has {head[b[i]]} kW free")


def check_oracle(p: AllocationProblem, r) -> None:
    ox, oshed = oracle_allocate(p.gun_node, p.upper_kw, p.min_kw, p.ask_kw, p.priority, p.weight,
                                p.node_parent, p.node_limit_kw, p.node_step_kw)
    np.testing.assert_allclose(r.setpoint_kw, ox, rtol=1e-7, atol=1e-6)
    assert list(r.bound_by == BOUND_SHED) == oshed


# ----------------------------------------------------------------------------- properties


@DEFAULT
@given(problems())
def test_matches_oracle_and_rules(p):
    r = allocate(p)
    check_rules(p, r)
    check_oracle(p, r)


@DEFAULT
@given(problems(steps=False, mins=False, classes=1, max_sites=2, max_nodes=8, max_guns=12))
def test_plain_max_min_matches_oracle(p):
    """One class, no minimums, no steps: pure weighted max-min over a tree."""
    r = allocate(p)
    check_rules(p, r)
    check_oracle(p, r)


@DEFAULT
@given(problems(), st.randoms(use_true_random=False))
def test_order_of_guns_does_not_matter(p, rnd):
    perm = list(range(len(p.gun_node)))
    rnd.shuffle(perm)
    q = AllocationProblem(*(getattr(p, f)[perm] for f in
                            ("gun_node", "upper_kw", "min_kw", "ask_kw", "priority", "weight")),
                          p.node_parent, p.node_limit_kw, p.node_step_kw)
    a, b = allocate(p), allocate(q)
    # Guns equal in every field the rules use are interchangeable: which of two identical guns gets the
    # one minimum or module step that fits is decided by input index, so compare each such
    # group as a multiset; every other gun must get exactly the same setpoint.
    groups: dict[tuple, list[int]] = {}
    for i in range(len(p.gun_node)):
        # what the rules look at: node, effective cap min(ask, upper), minimum, class, weight
        key = (int(p.gun_node[i]), float(min(p.ask_kw[i], p.upper_kw[i])), float(p.min_kw[i]),
               int(p.priority[i]), float(p.weight[i]))
        groups.setdefault(key, []).append(i)
    inv = np.argsort(perm)  # position in q of gun i of p
    for members in groups.values():
        got = np.sort(b.setpoint_kw[inv[members]])
        want = np.sort(a.setpoint_kw[members])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        if len(members) == 1:
            assert b.bound_by[inv[members[0]]] == a.bound_by[members[0]]


@DEFAULT
@given(problems())
def test_strict_priority_lower_class_takes_nothing_from_higher(p):
    """Removing every gun of the last class leaves all other setpoints as they were."""
    if len(p.gun_node) == 0:
        return
    last = p.priority.max()
    keep = p.priority != last
    q = AllocationProblem(*(getattr(p, f)[keep] for f in
                            ("gun_node", "upper_kw", "min_kw", "ask_kw", "priority", "weight")),
                          p.node_parent, p.node_limit_kw, p.node_step_kw)
    np.testing.assert_allclose(allocate(q).setpoint_kw, allocate(p).setpoint_kw[keep], rtol=1e-9, atol=1e-9)


@DEFAULT
@given(problems(), st.integers(0, 3))
def test_batch_is_independent_problems(p, k):
    """Allocating a batch equals allocating each site alone (and the batch twice over)."""
    r = allocate(p)
    n_n = len(p.node_parent)
    twice = AllocationProblem(
        np.r_[p.gun_node, p.gun_node + n_n], *(np.r_[getattr(p, f), getattr(p, f)] for f in
                                               ("upper_kw", "min_kw", "ask_kw", "priority", "weight")),
        np.r_[p.node_parent, np.where(p.node_parent >= 0, p.node_parent + n_n, -1)],
        np.r_[p.node_limit_kw, p.node_limit_kw],
        None if p.node_step_kw is None else np.r_[p.node_step_kw, p.node_step_kw])
    r2 = allocate(twice)
    np.testing.assert_allclose(r2.setpoint_kw, np.r_[r.setpoint_kw, r.setpoint_kw], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@SLOW
@given(problems(max_sites=4, max_nodes=9, max_guns=14))
def test_matches_oracle_and_rules_slow(p):
    r = allocate(p)
    check_rules(p, r)
    check_oracle(p, r)


def as_site_objects(p: AllocationProblem):
    from controller.allocation import GunDemand, LimitNode

    nodes = [LimitNode(f"n{j}", None if p.node_parent[j] < 0 else f"n{p.node_parent[j]}", float(p.node_limit_kw[j]),
                       0.0 if p.node_step_kw is None else float(p.node_step_kw[j])) for j in range(len(p.node_parent))]
    guns = [GunDemand(f"g{i}", f"n{p.gun_node[i]}", float(p.ask_kw[i]), float(p.upper_kw[i]), float(p.min_kw[i]),
                      int(p.priority[i]), float(p.weight[i])) for i in range(len(p.gun_node))]
    return guns, nodes


@DEFAULT
@given(problems())
def test_site_call_equals_batched_core(p):
    """allocate_site (objects, string ids) gives what the batched core gives, bound_by too."""
    from controller.allocation import allocate_site

    guns, nodes = as_site_objects(p)
    got = allocate_site(guns, nodes)
    r = allocate(p)
    names = {BOUND_ASK: "ask", BOUND_UPPER: "upper", BOUND_SHED: "shed"}
    for i, gd in enumerate(guns):
        assert got[gd.id].setpoint_kw == pytest.approx(r.setpoint_kw[i], rel=1e-9, abs=1e-9)
        b = int(r.bound_by[i])
        assert got[gd.id].bound_by == names.get(b, f"n{b}"), (gd.id, got[gd.id], b)


@pytest.mark.slow
@SLOW
@given(problems(max_sites=4, max_nodes=9, max_guns=14), st.randoms(use_true_random=False))
def test_order_of_guns_does_not_matter_slow(p, rnd):
    test_order_of_guns_does_not_matter.hypothesis.inner_test(p, rnd)


# ----------------------------------------------------------------------------- backends agree
# The compiled kernel and the numpy backend are two implementations of the same rules with
# the same order of operations: same bound_by everywhere, setpoints equal to float rounding.


def assert_backends_agree(p: AllocationProblem) -> None:
    from controller.allocation import allocate_numpy

    a, b = allocate(p, backend="numba"), allocate_numpy(p)
    np.testing.assert_allclose(a.setpoint_kw, b.setpoint_kw, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(a.bound_by, b.bound_by)


needs_numba = pytest.mark.skipif("numba" not in BACKENDS, reason="numba does not import here")


@needs_numba
@DEFAULT
@given(problems())
def test_backends_agree(backend, p):
    if backend == "numba":  # (one run is enough: the test names both backends itself)
        assert_backends_agree(p)


@needs_numba
@pytest.mark.slow
@SLOW
@given(problems(max_sites=4, max_nodes=9, max_guns=14))
def test_backends_agree_slow(backend, p):
    if backend == "numba":
        assert_backends_agree(p)


@DEFAULT
@given(problems(), st.integers(2, 1000), st.integers(-50, 50))
def test_only_the_order_of_class_numbers_matters(p, scale, shift):
    """Class numbers far apart (the compiled backend's fallback when they span more than 64
    values) or shifted give what the plain 0, 1, 2 give."""
    q = AllocationProblem(p.gun_node, p.upper_kw, p.min_kw, p.ask_kw, p.priority * scale + shift, p.weight,
                          p.node_parent, p.node_limit_kw, p.node_step_kw)
    a, b = allocate(p), allocate(q)
    np.testing.assert_array_equal(a.setpoint_kw, b.setpoint_kw)
    np.testing.assert_array_equal(a.bound_by, b.bound_by)


@needs_numba
@DEFAULT
@given(problems(max_sites=6))
def test_parallel_chunks_give_what_one_pass_gives(backend, p):
    """The compiled backend's parallel loop (chunks of trees on every core; taken for big
    batches) gives exactly what its one-thread loop gives, whatever the chunk boundaries."""
    if backend != "numba":
        return
    from controller.allocation import _kernel

    serial = allocate(p)
    saved = _kernel.PARALLEL_MIN_GUNS
    _kernel.PARALLEL_MIN_GUNS = 0
    try:
        par = allocate(p)
    finally:
        _kernel.PARALLEL_MIN_GUNS = saved
    np.testing.assert_array_equal(par.setpoint_kw, serial.setpoint_kw)
    np.testing.assert_array_equal(par.bound_by, serial.bound_by)
