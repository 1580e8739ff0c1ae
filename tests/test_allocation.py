"""Table tests of controller.allocation: worked examples, bad input, the one-site call."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.allocation import (
    BACKENDS,
    BOUND_ASK,
    BOUND_SHED,
    BOUND_UPPER,
    AllocationProblem,
    GunDemand,
    GunResult,
    LimitNode,
    allocate,
    allocate_site,
)


# Every table here holds for every backend this installation has (conftest.py: backend).
pytestmark = pytest.mark.usefixtures("backend")


def problem(**kw) -> AllocationProblem:
    """A one-site problem: root 0 (site), piles 1 and 2 below it; override any field."""
    base = dict(
        gun_node=np.array([1, 1, 2]),
        upper_kw=np.array([180.0, 180.0, 60.0]),
        min_kw=np.array([0.0, 0.0, 0.0]),
        ask_kw=np.array([180.0, 180.0, 60.0]),
        priority=np.array([0, 0, 0]),
        weight=np.array([1.0, 1.0, 1.0]),
        node_parent=np.array([-1, 0, 0]),
        node_limit_kw=np.array([300.0, 360.0, 120.0]),
        node_step_kw=None,
    )
    base.update(kw)
    return AllocationProblem(**base)


# ----------------------------------------------------------------------------- worked examples

EXAMPLES = [
    # (what it shows, overrides, expected setpoints, expected bound_by)
    ("equal shares under the site limit", {}, [120, 120, 60], [0, 0, BOUND_ASK]),
    ("weights split the level", {"weight": np.array([2.0, 1.0, 1.0])}, [160, 80, 60], [0, 0, BOUND_ASK]),
    ("unlimited site: everyone gets the ask", {"node_limit_kw": np.array([np.inf, 360.0, 120.0])},
     [180, 180, 60], [BOUND_ASK, BOUND_ASK, BOUND_ASK]),
    ("pile pool binds below the site", {"node_limit_kw": np.array([1000.0, 200.0, 120.0])},
     [100, 100, 60], [1, 1, BOUND_ASK]),
    ("upper below ask is reported as upper", {"upper_kw": np.array([180.0, 50.0, 60.0]), "node_limit_kw": np.array([1000.0, 360.0, 120.0])},
     [180, 50, 60], [BOUND_ASK, BOUND_UPPER, BOUND_ASK]),
    ("strict priority: class 0 first", {"priority": np.array([1, 0, 1])}, [60, 180, 60], [0, BOUND_ASK, BOUND_ASK]),
    ("a minimum that does not fit is shed and its power goes to others",
     {"priority": np.array([0, 1, 1]), "min_kw": np.array([0.0, 130.0, 0.0])}, [180, 0, 60], [BOUND_ASK, BOUND_SHED, BOUND_ASK]),
    ("lower weight is shed first", {"min_kw": np.array([100.0, 100.0, 0.0]), "weight": np.array([1.0, 2.0, 1.0]),
                                    "node_limit_kw": np.array([150.0, 360.0, 120.0])},
     [0, 100 + 100 / 3, 50 / 3], [BOUND_SHED, 0, 0]),
    ("fairness is over the power above the minimum", {"min_kw": np.array([0.0, 60.0, 0.0]), "node_limit_kw": np.array([240.0, 360.0, 120.0])},
     [60, 120, 60], [0, 0, BOUND_ASK]),
    ("module steps: floor to 30 kW, a step back where it fits, the rest to the unstepped gun",
     {"node_step_kw": np.array([0.0, 30.0, 0.0]), "node_limit_kw": np.array([260.0, 360.0, 120.0]),
      "upper_kw": np.array([180.0, 180.0, 100.0]), "ask_kw": np.array([180.0, 180.0, 100.0])},
     [90, 60, 100], [0, 0, BOUND_ASK]),
    ("ask of 0 is served", {"ask_kw": np.array([0.0, 180.0, 60.0])}, [0, 180, 60], [BOUND_ASK, BOUND_ASK, BOUND_ASK]),
    ("ask below the minimum: off", {"ask_kw": np.array([20.0, 180.0, 60.0]), "min_kw": np.array([30.0, 0.0, 0.0])},
     [0, 180, 60], [BOUND_SHED, BOUND_ASK, BOUND_ASK]),
]


@pytest.mark.parametrize("what,over,want_x,want_b", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_worked_example(what, over, want_x, want_b):
    r = allocate(problem(**over))
    np.testing.assert_allclose(r.setpoint_kw, want_x, atol=1e-9)
    assert r.bound_by.tolist() == want_b


def test_qujing_bus_depot_night():
    """Two 360 kW bus piles (2 x 180 kW guns, 30 kW modules) and a logistics pile on a
    630 kVA-ish site limit of 500 kW: the emergency top-up is served in full, the valley buses
    share what is left in whole modules, the logistics vans get the rest."""
    nodes = [LimitNode("site", None, 500.0), LimitNode("bus-1", "site", 360.0, 30.0),
             LimitNode("bus-2", "site", 360.0, 30.0), LimitNode("van", "site", 120.0, 20.0)]
    guns = [GunDemand("b1a", "bus-1", ask_kw=180.0, upper_kw=180.0, min_kw=30.0, priority=0),
            GunDemand("b1b", "bus-1", ask_kw=150.0, upper_kw=180.0, min_kw=30.0, priority=1),
            GunDemand("b2a", "bus-2", ask_kw=170.0, upper_kw=180.0, min_kw=30.0, priority=1),
            GunDemand("b2b", "bus-2", ask_kw=0.0, upper_kw=180.0, min_kw=30.0, priority=1),
            GunDemand("v1", "van", ask_kw=60.0, upper_kw=60.0, min_kw=15.0, priority=2)]
    r = allocate_site(guns, nodes)
    assert r["b1a"] == GunResult(180.0, "ask")
    assert r["b1b"].setpoint_kw == 150.0 and r["b2a"].setpoint_kw == 150.0
    assert r["b2b"] == GunResult(0.0, "ask")
    assert r["v1"] == GunResult(20.0, "site")
    assert sum(x.setpoint_kw for x in r.values()) <= 500.0


def test_empty_problem():
    r = allocate(problem(gun_node=np.zeros(0, int), upper_kw=np.zeros(0), min_kw=np.zeros(0), ask_kw=np.zeros(0),
                         priority=np.zeros(0, int), weight=np.zeros(0)))
    assert r.setpoint_kw.shape == (0,) and r.bound_by.shape == (0,)


def test_inputs_are_not_modified():
    p = problem(node_step_kw=np.array([0.0, 30.0, 0.0]), min_kw=np.array([30.0, 0.0, 0.0]))
    before = {f: getattr(p, f).copy() for f in p.__dataclass_fields__}
    allocate(p)
    for f, v in before.items():
        np.testing.assert_array_equal(getattr(p, f), v)


# ----------------------------------------------------------------------------- bad input

BAD = [
    ({"upper_kw": np.array([180.0, np.nan, 60.0])}, r"upper_kw\[1\]: NaN"),
    ({"ask_kw": np.array([180.0, 180.0, np.inf])}, r"ask_kw\[2\]: infinite"),
    ({"min_kw": np.array([0.0, -1.0, 0.0])}, r"min_kw\[1\]: .*>= 0"),
    ({"weight": np.array([1.0, 0.0, 1.0])}, r"weight\[1\]: .*> 0"),
    ({"node_limit_kw": np.array([300.0, -5.0, 120.0])}, r"node_limit_kw\[1\]: .*>= 0"),
    ({"node_limit_kw": np.array([np.nan, 360.0, 120.0])}, r"node_limit_kw\[0\]: NaN"),
    ({"node_step_kw": np.array([0.0, np.inf, 0.0])}, r"node_step_kw\[1\]: infinite"),
    ({"min_kw": np.array([0.0, 0.0, 61.0])}, r"min_kw\[2\]: 61.0 is above upper_kw\[2\]"),
    ({"node_parent": np.array([-1, 2, 1])}, r"node_parent\[1\]: .*cycle"),
    ({"node_parent": np.array([1, 0, 0])}, r"node_parent\[0\]: .*cycle"),
    ({"node_parent": np.array([-1, 1, 0])}, r"node_parent\[1\]: 1 is not"),
    ({"node_parent": np.array([-1, 7, 0])}, r"node_parent\[1\]: 7 is not"),
    ({"gun_node": np.array([1, 3, 2])}, r"gun_node\[1\]: 3 is not a node"),
    ({"weight": np.array([1.0, 1.0])}, r"weight: length 2, expected 3"),
    ({"node_limit_kw": np.array([300.0, 360.0])}, r"node_limit_kw: length 2, expected 3"),
    ({"priority": np.array([0.0, 1.0, 0.0])}, r"priority: integer array expected"),
    ({"upper_kw": np.array([[180.0, 180.0, 60.0]])}, r"upper_kw: expected a 1-D array"),
]


@pytest.mark.parametrize("over,msg", BAD, ids=[m for _, m in BAD])
def test_bad_input_names_field_and_index(over, msg):
    with pytest.raises(ValueError, match=msg):
        allocate(problem(**over))


def test_bad_input_in_one_site_names_the_object():
    nodes = [LimitNode("site", None, 100.0)]
    with pytest.raises(ValueError, match=r"gun 'g2' upper_kw: NaN"):
        allocate_site([GunDemand("g1", "site", 10.0, 20.0), GunDemand("g2", "site", 10.0, math.nan)], nodes)
    with pytest.raises(ValueError, match=r"unknown node_id 'nope'"):
        allocate_site([GunDemand("g1", "nope", 10.0, 20.0)], nodes)
    with pytest.raises(ValueError, match=r"duplicate gun id 'g1'"):
        allocate_site([GunDemand("g1", "site", 10.0, 20.0), GunDemand("g1", "site", 10.0, 20.0)], nodes)
    with pytest.raises(ValueError, match=r"unknown parent_id 'x'"):
        allocate_site([], [LimitNode("a", "x")])
    with pytest.raises(ValueError, match=r"node 'a' node_parent: .*cycle"):
        allocate_site([], [LimitNode("a", "b"), LimitNode("b", "a")])


# ----------------------------------------------------------------------------- one site vs batch


def test_allocate_site_matches_batch():
    nodes = [LimitNode("site", None, 300.0), LimitNode("p1", "site", 360.0), LimitNode("p2", "site", 120.0)]
    guns = [GunDemand("a", "p1", 180.0, 180.0), GunDemand("b", "p1", 180.0, 180.0), GunDemand("c", "p2", 60.0, 60.0)]
    r = allocate_site(guns, nodes)
    assert r == {"a": GunResult(120.0, "site"), "b": GunResult(120.0, "site"), "c": GunResult(60.0, "ask")}


def test_first_bad_index_whatever_the_reason():
    with pytest.raises(ValueError, match=r"upper_kw\[0\]: -1.0 must be >= 0"):
        allocate(problem(upper_kw=np.array([-1.0, np.nan, 60.0]), min_kw=np.array([-2.0, 0.0, 0.0])))


def test_cycle_without_validation_raises_instead_of_hanging():
    with pytest.raises(ValueError, match="cycle"):
        allocate(problem(node_parent=np.array([-1, 2, 1])), validate=False)


def test_validation_still_runs_when_the_tree_is_reused():
    p = problem()
    allocate(p)
    with pytest.raises(ValueError, match=r"upper_kw\[2\]: NaN"):
        allocate(problem(upper_kw=np.array([180.0, 180.0, np.nan])))
    allocate(problem(), validate=False)  # caches the tree unvalidated ...
    with pytest.raises(ValueError, match=r"node_parent\[1\]: .*cycle"):
        allocate(problem(node_parent=np.array([-1, 2, 1])))  # ... a different tree is checked


def test_identical_guns_tie_break_by_lowest_input_index():
    """Regression (found by the slow property run): two identical guns under a 10 kW-step pile
    that has room for one step; the deterministic tie-break gives it to the lower input index,
    whatever order the nodes and other guns come in (the oracle does the same)."""
    p = AllocationProblem(
        gun_node=np.array([6, 1, 1, 1, 1, 1, 1, 6, 1, 1]),
        upper_kw=np.array([180, 0, 7.5, 0, 0, 0, 0, 180, 0, 7.5]),
        min_kw=np.zeros(10),
        ask_kw=np.array([180, 0, 7.5, 0, 0, 0, 0, 180, 0, 7.5]),
        priority=np.array([2, 0, 0, 0, 0, 0, 0, 2, 0, 0]),
        weight=np.full(10, 0.5),
        node_parent=np.array([-1, -1, 1, 1, 1, 1, 1, 1, 1]),
        node_limit_kw=np.array([0, 30, 0, 0, 0, np.inf, 10, 0, 0.0]),
        node_step_kw=np.array([0, 0, 0, 0, 0, 0, 10, 0, 0.0]),
    )
    r = allocate(p)
    assert r.setpoint_kw[0] == 10 and r.setpoint_kw[7] == 0
    assert r.setpoint_kw.sum() == 25


def test_bound_by_names_the_deepest_node_that_cut_a_gun_to_zero():
    """Regression (slow property run): a class-2 gun under a 0 kW node, while the site's room is
    also used up by class 0, is bound by its own node (the nearer reason), in the array core and
    the single-site path alike."""
    p = AllocationProblem(
        gun_node=np.array([0, 0, 0, 2]), upper_kw=np.array([7.5, 7.5, 7.5, 1.0]), min_kw=np.zeros(4),
        ask_kw=np.array([7.5, 7.5, 7.5, 1.0]), priority=np.array([0, 0, 2, 2]), weight=np.array([0.5, 1, 0.5, 0.5]),
        node_parent=np.array([-1, 0, 0, 0, 0, 0, 0]), node_limit_kw=np.array([1, np.inf, 0, 0, 0, 0, 0.0]),
        node_step_kw=np.zeros(7),
    )
    r = allocate(p)
    assert r.setpoint_kw[3] == 0 and r.bound_by[3] == 2
    assert r.bound_by[2] == 0  # the other class-2 gun is stopped by the site


def test_bound_by_of_a_gun_cut_to_a_float_residue():
    """Regression (slow property run): a gun a deeper node cuts to ~1e-16 kW keeps that node as
    its bound in the array core and the single-site path alike (tolerance, not exact zero)."""
    from controller.allocation import GunDemand, LimitNode, allocate_site

    p = AllocationProblem(
        gun_node=np.array([4, 3, 3, 4, 3, 3, 3, 3, 4]), upper_kw=np.array([7.5, 0, 0, 7.5, 0, 0, 15, 0, 7.5]),
        min_kw=np.zeros(9), ask_kw=np.array([7.5, 0, 0, 7.5, 0, 0, 9, 0, 2.0]),
        priority=np.array([1, 0, 0, 2, 0, 0, 1, 0, 1]), weight=np.array([4.414, 0.5, 0.5, 0.5, 0.5, 0.5, 2, 0.5, 1]),
        node_parent=np.array([-1, 0, 0, -1, 3, 3]), node_limit_kw=np.array([0, 0, 0, 16, 7.5, np.inf]),
        node_step_kw=np.zeros(6),
    )
    r = allocate(p)
    assert r.setpoint_kw[3] < 1e-9 and r.bound_by[3] == 4
    site = [i for i in range(9) if p.gun_node[i] in (3, 4)]
    res = allocate_site([GunDemand(f"g{i}", f"n{p.gun_node[i]}", p.ask_kw[i], p.upper_kw[i], p.min_kw[i],
                                   int(p.priority[i]), p.weight[i]) for i in site],
                        [LimitNode("n3", None, 16.0), LimitNode("n4", "n3", 7.5), LimitNode("n5", "n3")])
    assert res["g3"].bound_by == "n4"


# ----------------------------------------------------------------------------- backends


def test_the_compiled_backend_is_the_default():
    """numba is a dependency: an installation without it would silently run ~10x slower."""
    from controller.allocation import DEFAULT_BACKEND

    assert BACKENDS == ("numba", "numpy") and DEFAULT_BACKEND == "numba"


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match=r"^backend: 'fortran' is not one of"):
        allocate(problem(), backend="fortran")


def test_an_index_out_of_range_raises_even_without_validation(backend):
    if backend != "numba":  # (the numpy backend raises IndexError from numpy itself)
        return
    with pytest.raises(ValueError, match=r"^gun_node or node_parent: an index out of range"):
        allocate(problem(gun_node=np.array([1, 1, 7])), validate=False)
    with pytest.raises(ValueError, match=r"^gun_node or node_parent"):
        allocate(problem(node_parent=np.array([-1, 0, 5])), validate=False)


def test_a_tree_changed_in_place_is_seen():
    """The compiled backend keeps the analysis of the last tree; it must notice when the
    caller changes its arrays in place between calls."""
    p = problem(node_limit_kw=np.array([300.0, 100.0, 120.0]))
    assert allocate(p).setpoint_kw.tolist() == [50.0, 50.0, 60.0]
    p.node_parent[2] = 1  # pile 2 now sits below pile 1 (limit 100 for all three guns)
    assert allocate(p).setpoint_kw.tolist() == pytest.approx([100 / 3] * 3)
    p.gun_node[2] = 0  # the third gun straight under the site
    assert allocate(p).setpoint_kw.tolist() == [50.0, 50.0, 60.0]


def depot_like_batch(n_sites: int, seed: int) -> AllocationProblem:
    """n_sites sites: root -> 3 feeders -> 4 piles each (module steps on DC piles) -> 2 guns,
    every limit binding somewhere, three classes, minimums: 24 guns a site."""
    rng = np.random.default_rng(seed)
    parent, limit, step, gun_node = [], [], [], []
    for _ in range(n_sites):
        root = len(parent)
        parent.append(-1)
        limit.append(0.0)
        step.append(0.0)
        for _ in range(3):
            f = len(parent)
            parent.append(root)
            limit.append(float(rng.uniform(150, 500)))
            step.append(0.0)
            for _ in range(4):
                pile = len(parent)
                parent.append(f)
                dc = rng.random() < 0.7
                limit.append(float(rng.uniform(100, 360)) if dc else 11.0)
                step.append(float(rng.choice([20.0, 30.0])) if dc else 0.0)
                gun_node += [pile, pile]
    n = len(gun_node)
    upper = rng.uniform(5, 180, n)
    ask = np.where(rng.random(n) < 0.1, 0.0, upper * rng.uniform(0.3, 1.2, n))
    limit = np.array(limit)
    roots = np.flatnonzero(np.array(parent) < 0)
    limit[roots] = rng.uniform(200, 900, roots.size)
    return AllocationProblem(
        gun_node=np.array(gun_node), upper_kw=upper, min_kw=np.where(rng.random(n) < 0.7, np.minimum(upper, 30.0), 0.0),
        ask_kw=ask, priority=rng.choice(3, n, p=[0.1, 0.6, 0.3]), weight=rng.choice([0.5, 1.0, 2.0], n),
        node_parent=np.array(parent), node_limit_kw=limit, node_step_kw=np.array(step))


def test_a_big_batch_runs_on_every_core_and_agrees_with_the_numpy_backend(backend):
    """1000 sites, 24,000 guns: big enough for the compiled backend's parallel loop over
    trees (and shuffled: the guns are not in node order). Same bound_by, same setpoints to
    float rounding, and no limit broken anywhere."""
    if backend != "numba":
        return
    from controller.allocation import _kernel, allocate_numpy

    p = depot_like_batch(1000, seed=7)
    perm = np.random.default_rng(1).permutation(p.gun_node.size)
    p = AllocationProblem(*(getattr(p, f)[perm] for f in ("gun_node", "upper_kw", "min_kw", "ask_kw", "priority", "weight")),
                          p.node_parent, p.node_limit_kw, p.node_step_kw)
    assert p.gun_node.size >= _kernel.PARALLEL_MIN_GUNS
    a, b = allocate(p), allocate_numpy(p)
    np.testing.assert_allclose(a.setpoint_kw, b.setpoint_kw, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(a.bound_by, b.bound_by)
    # every node's limit holds: add each gun's setpoint to every node on its path
    total = np.zeros(p.node_parent.size)
    np.add.at(total, p.gun_node, a.setpoint_kw)
    node = p.gun_node.copy()
    x = a.setpoint_kw
    while True:
        up = p.node_parent[node]
        keep = up >= 0
        if not keep.any():
            break
        np.add.at(total, up[keep], x[keep])
        node, x = up[keep], x[keep]
    assert (total <= p.node_limit_kw + 1e-6).all()
    # it did real work: guns shed, guns cut by a node, and most of the asking guns running
    assert (a.bound_by == BOUND_SHED).any() and (a.bound_by >= 0).any() and (a.setpoint_kw > 0).mean() > 0.3


def test_a_bad_value_deep_in_a_big_batch_is_named(backend):
    """The compiled backend checks values while it gathers them (in parallel for a big
    batch); a bad one anywhere still gives the one-line message with the first bad index,
    and nothing is allocated."""
    p = depot_like_batch(1000, seed=3)
    upper = p.upper_kw.copy()
    upper[[15_000, 20_001]] = [np.nan, -1.0]
    limit = p.node_limit_kw.copy()
    limit[7_000] = -5.0
    for over, msg in (({"upper_kw": upper}, r"^upper_kw\[15000\]: NaN$"),
                      ({"node_limit_kw": limit}, r"^node_limit_kw\[7000\]: -5\.0 must be >= 0$")):
        q = AllocationProblem(**{**p.__dict__, **over})
        with pytest.raises(ValueError, match=msg):
            allocate(q)


def test_class_numbers_at_both_ends_of_int64():
    """Class numbers are only compared: the extremes of int64 are two classes like 0 and 1
    (the compiled backend must not overflow taking their difference)."""
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    got = allocate(problem(priority=np.array([hi, lo, hi])))
    want = allocate(problem(priority=np.array([1, 0, 1])))
    assert got.setpoint_kw.tolist() == want.setpoint_kw.tolist() == [60.0, 180.0, 60.0]
    assert got.bound_by.tolist() == want.bound_by.tolist()


def test_read_only_or_strided_input_does_not_compile_a_second_kernel(backend):
    """numba compiles one kernel per array type; allocate hands it the one type it was
    warmed up with, whatever the caller's arrays are (read-only, strided, int32, float32)."""
    if backend != "numba":
        return
    from controller.allocation import _kernel, warm_up

    warm_up()
    before = len(_kernel._solve_range.signatures)
    p = problem()
    ro = {f: getattr(p, f).copy() for f in ("upper_kw", "ask_kw", "node_limit_kw")}
    for a in ro.values():
        a.flags.writeable = False
    odd = AllocationProblem(**{**p.__dict__, **ro, "weight": np.ones(6)[::2],
                               "gun_node": p.gun_node.astype(np.int32), "min_kw": p.min_kw.astype(np.float32)})
    assert allocate(odd).setpoint_kw.tolist() == allocate(p).setpoint_kw.tolist()
    assert len(_kernel._solve_range.signatures) == before
