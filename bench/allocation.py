"""Benchmark of the allocation core. Prints a table; not a timed test.

    python bench/allocation.py            # full run (a few minutes with acnportal at 2000 EVs)
    python bench/allocation.py --quick    # smaller repeats, skips ACN-Sim at 2000 EVs

(a) 10,000 sites x 100 guns, three levels (site -> 5 feeders -> 50 piles -> 2 guns), mixed
    pile kinds (bus DC 2x180 kW on a 360 kW pool of 30 kW modules, logistics 2x60 kW on a
    120 kW pool of 20 kW modules, AC 2x7 kW), three classes, minimums on DC guns; every
    site and feeder oversubscribed so the water-fill, the admission of minimums and the
    module steps all do real work. Compared with a floor measured in the same run: numpy
    reading each input array once, summing per node and writing one output array.
(b) one site of 20 guns through allocate_site.
(c) the plain-Python oracle on a 20-site batch of the (a) shape: the core's speed-up.
(d) ACN-Sim (acnportal) least-laxity-first and earliest-deadline-first on one constraint
    with 20, 200, 2000 EVs, beside allocate_site on the same problem.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from controller.allocation import (  # noqa: E402
    AllocationProblem,
    GunDemand,
    LimitNode,
    allocate,
    allocate_numpy,
    allocate_site,
)

FEEDERS, PILES_PER_FEEDER, GUNS_PER_PILE = 5, 10, 2


def depot_batch(n_sites: int, seed: int = 0, shuffle_guns: bool = False, site_frac: float = 0.6,
                feeder_frac: float = 0.8) -> AllocationProblem:
    """n_sites sites of 100 guns each, nodes numbered depth-first per site."""
    rng = np.random.default_rng(seed)
    per_site_nodes = 1 + FEEDERS * (1 + PILES_PER_FEEDER)
    parent = np.empty(per_site_nodes, np.int64)
    kind = np.zeros(per_site_nodes, np.int64)  # 0 site, 1 feeder, 2 pile
    gun_parent_local = []
    j = 0
    parent[0] = -1
    j = 1
    for _f in range(FEEDERS):
        fj = j
        parent[j], kind[j] = 0, 1
        j += 1
        for _p in range(PILES_PER_FEEDER):
            parent[j], kind[j] = fj, 2
            gun_parent_local += [j] * GUNS_PER_PILE
            j += 1
    gun_parent_local = np.array(gun_parent_local)
    n_n, g_per = per_site_nodes, gun_parent_local.size
    S = n_sites
    node_parent = (parent[None, :] + np.where(parent >= 0, np.arange(S)[:, None] * n_n, 0)).ravel()
    node_parent[np.tile(parent, S) < 0] = -1
    gun_node = (gun_parent_local[None, :] + np.arange(S)[:, None] * n_n).ravel()

    # Pile kinds: 50% bus DC, 30% logistics DC, 20% AC, drawn per pile.
    piles = np.flatnonzero(np.tile(kind, S) == 2)
    pk = rng.choice(3, size=piles.size, p=[0.5, 0.3, 0.2])
    pool = np.array([360.0, 120.0, 14.0])[pk]
    step = np.array([30.0, 20.0, 0.0])[pk]
    rating = np.array([180.0, 60.0, 7.0])[pk]
    minimum = np.array([30.0, 15.0, 0.0])[pk]
    n_all = S * n_n
    limit = np.full(n_all, np.inf)
    node_step = np.zeros(n_all)
    limit[piles] = pool * rng.uniform(0.8, 1.0, piles.size)  # module derating
    node_step[piles] = step
    n_g = S * g_per
    g_pile = np.repeat(np.arange(piles.size), GUNS_PER_PILE)
    upper = rating[g_pile] * rng.uniform(0.6, 1.0, n_g)  # vehicle acceptance, derating
    ask = np.where(rng.random(n_g) < 0.15, 0.0, upper * rng.uniform(0.3, 1.2, n_g))
    mn = np.minimum(minimum[g_pile], upper)
    prio = rng.choice(3, size=n_g, p=[0.05, 0.6, 0.35])
    weight = rng.choice([1.0, 1.0, 2.0, 0.5], size=n_g)
    # Sites and feeders get a fraction of what their guns ask: always binding.
    site_of_gun = np.repeat(np.arange(S), g_per)
    ask_site = np.bincount(site_of_gun, weights=np.minimum(ask, upper), minlength=S)
    limit[np.arange(S) * n_n] = site_frac * ask_site
    feeders = np.flatnonzero(np.tile(kind, S) == 1)
    limit[feeders] = np.repeat(feeder_frac * ask_site / FEEDERS, FEEDERS)
    if shuffle_guns:
        perm = rng.permutation(n_g)
        gun_node, upper, mn, ask, prio, weight = (a[perm] for a in (gun_node, upper, mn, ask, prio, weight))
    return AllocationProblem(gun_node=gun_node, upper_kw=upper, min_kw=mn, ask_kw=ask, priority=prio,
                             weight=weight, node_parent=node_parent, node_limit_kw=limit, node_step_kw=node_step)


def floor_pass(p: AllocationProblem) -> np.ndarray:
    """The least any allocator must do: read each input array once, sum per node, write one
    output array (here: a proportional scale-down against each gun's own node)."""
    t = np.minimum(p.upper_kw, p.ask_kw)
    np.maximum(t, p.min_kw, out=t)
    np.multiply(t, p.weight, out=t)
    t += p.priority
    per_node = np.bincount(p.gun_node, weights=t, minlength=p.node_parent.size)
    scale = np.minimum(1.0, p.node_limit_kw / np.maximum(per_node, 1e-12)) * (p.node_parent >= -1)
    if p.node_step_kw is not None:
        scale = scale + 0.0 * p.node_step_kw
    return t * scale[p.gun_node]


def median_time(fn, repeats: int) -> float:
    fn()  # warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def site20():
    nodes = [LimitNode("site", None, 400.0), LimitNode("feeder-a", "site", 300.0), LimitNode("feeder-b", "site", 300.0)]
    guns = []
    for k in range(10):
        f = "feeder-a" if k < 5 else "feeder-b"
        nodes.append(LimitNode(f"pile-{k}", f, 360.0 if k % 2 == 0 else 120.0, 30.0 if k % 2 == 0 else 20.0))
        for gi in range(2):
            guns.append(GunDemand(f"gun-{k}-{gi}", f"pile-{k}", ask_kw=60.0 + 7 * k + gi, upper_kw=180.0 if k % 2 == 0 else 60.0,
                                  min_kw=30.0 if k % 2 == 0 else 15.0, priority=(k + gi) % 3, weight=1.0 + gi))
    return guns, nodes


def acn_rows(sizes, quick: bool):
    """Time ACN-Sim's LLF and EDF per scheduling call at each size. Returns rows or a reason."""
    try:
        import warnings

        warnings.filterwarnings("ignore")
        from acnportal import acnsim
        from acnportal.algorithms import SortedSchedulingAlgo, earliest_deadline_first, least_laxity_first
    except Exception as e:  # report exactly why, keep the rest of the bench
        return None, f"acnportal not importable: {type(e).__name__}: {e}"
    rows = []
    for n in sizes:
        # One constraint: n EVSEs at 400 V, 32 A max each, together at most 40% of that.
        # (ACN-Sim works in amps; kW = A * 400 V / 1000 for the equivalent problem ours gets.)
        net = acnsim.ChargingNetwork()
        ids = [f"s{i}" for i in range(n)]
        for sid in ids:
            net.register_evse(acnsim.models.EVSE(sid, max_rate=32), 400, 0)
        net.add_constraint(acnsim.Current(ids), 0.4 * 32 * n, name="site")
        rng = np.random.default_rng(n)
        evs = []
        for i, sid in enumerate(ids):
            bat = acnsim.models.Battery(100, 0, 32 * 400 / 1000)
            evs.append(acnsim.models.EV(0, int(rng.integers(60, 600)), float(rng.uniform(5, 40)), sid, f"ev{i}", bat))
        for ev in evs:
            net.plugin(ev)
        times = {}
        for name, fn in (("LLF", least_laxity_first), ("EDF", earliest_deadline_first)):
            algo = SortedSchedulingAlgo(fn)
            sim = acnsim.Simulator(net, algo, acnsim.EventQueue(), start=__import__("datetime").datetime(2026, 1, 1),
                                   period=1, verbose=False)
            algo.register_interface(acnsim.Interface(sim))
            active = algo.interface.active_sessions()
            reps = 1 if (n >= 2000 or quick and n >= 200) else 5
            times[name] = median_time(lambda: algo.schedule(active), reps)
        # Ours on the same problem: one root limit, n guns under it, as arrays (the core) and
        # as objects (allocate_site).
        kw = 32 * 400 / 1000
        prob = AllocationProblem(gun_node=np.zeros(n, np.int64), upper_kw=np.full(n, kw), min_kw=np.zeros(n),
                                 ask_kw=np.full(n, kw), priority=np.zeros(n, np.int64), weight=np.ones(n),
                                 node_parent=np.array([-1]), node_limit_kw=np.array([0.4 * kw * n]))
        ours = median_time(lambda: allocate(prob), 201)
        nodes = [LimitNode("site", None, 0.4 * kw * n)]
        guns = [GunDemand(f"g{i}", "site", ask_kw=kw, upper_kw=kw) for i in range(n)]
        ours_site = median_time(lambda: allocate_site(guns, nodes), 51)
        rows.append((n, times["LLF"], times["EDF"], ours, ours_site))
    return rows, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sites", type=int, default=10_000)
    args = ap.parse_args()
    rep = 5 if args.quick else 11

    from controller.allocation import DEFAULT_BACKEND, _core, _kernel

    nb = __import__("numba")
    print(f"numpy {np.__version__}, numba {nb.__version__} ({nb.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs; default backend: {DEFAULT_BACKEND}")
    print()
    print("(a) batch: {} sites x 100 guns, site -> 5 feeders -> 50 piles -> 2 guns".format(args.sites))
    p = depot_batch(args.sites)
    ps = depot_batch(args.sites, shuffle_guns=True)
    n_g = p.gun_node.size
    r = allocate(p)
    shed = int((r.setpoint_kw == 0).sum())

    def numba_cold(q):  # a tree and guns it has not seen: nothing reused
        _kernel._LAYOUT.clear()
        allocate(q)

    def numpy_cold(q):
        _core._TREE_CACHE.clear()
        _core._PART_CACHE.clear()
        allocate_numpy(q)

    # (name, untimed set-up, timed call); a warm row's set-up is a call on the same problem,
    # so what it times is a call after one with the same tree and guns, as in a control loop.
    nothing = lambda: None  # noqa: E731
    floor_row = ("floor (read inputs, sum per node, write)", nothing, lambda: floor_pass(p))
    numba_rows = [("numba: allocate(validate=True)", lambda: allocate(p), lambda: allocate(p)),
                  ("numba: allocate(validate=False)", lambda: allocate(p), lambda: allocate(p, validate=False)),
                  ("numba: new tree and guns (validate=True)", nothing, lambda: numba_cold(p)),
                  ("numba: guns shuffled, new tree and guns", nothing, lambda: numba_cold(ps))]
    numpy_rows = [("numpy: allocate(validate=False)", lambda: allocate_numpy(p), lambda: allocate_numpy(p, validate=False)),
                  ("numpy: new tree and guns (validate=True)", nothing, lambda: numpy_cold(p)),
                  ("numpy: guns shuffled, new tree and guns", nothing, lambda: numpy_cold(ps))]

    def rounds(rows):
        """Interleaved rounds (each row once per round), medians: the machine's speed drifts,
        and every row of a group then sees the same drift. The two backends are timed in
        separate groups: the numpy backend's large temporaries would otherwise leave the
        allocator in a state that slows the next call whatever it is (~10 ms here)."""
        times: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for _, _, fn in rows:
            fn()  # warm up (compiles on a cold numba cache)
        for _ in range(rep):
            for name, setup, fn in rows:
                setup()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        return {name: statistics.median(ts) for name, ts in times.items()}

    med_a = rounds([floor_row] + numba_rows)
    med_b = rounds([floor_row] + numpy_rows)
    t_core = med_a["numba: allocate(validate=True)"]
    print(f"{'what':44s} {'ms/batch':>9s} {'ns/gun':>8s} {'x floor':>8s}")
    for med, names in ((med_a, [floor_row[0]] + [r[0] for r in numba_rows]),
                       (med_b, [r[0] for r in numpy_rows])):
        fl = med[floor_row[0]]
        for name in names:
            t = med[name]
            print(f"{name:44s} {t * 1e3:9.1f} {t / n_g * 1e9:8.1f} {t / fl:8.1f}")
    med = {**med_b, **med_a}
    print(f"  targets: <= 50 ms/batch, <= 50 ns/gun, <= 10x floor; guns at 0 kW in the result: {shed} of {n_g}")
    print(f"  numba vs numpy backend, same run: {med['numpy: allocate(validate=False)'] / med['numba: allocate(validate=False)']:.1f}x"
          f" (warm), {med['numpy: new tree and guns (validate=True)'] / med['numba: new tree and guns (validate=True)']:.1f}x (cold)")
    print("  (warm rows reuse the analysis of an unchanged node_parent and gun_node, as a control loop or")
    print("   a scheduler calling again and again does; 'new tree and guns': nothing reused)")
    print()

    print("(b) one site of 20 guns through allocate_site")
    guns, nodes = site20()
    t_site = median_time(lambda: allocate_site(guns, nodes), 2001 if not args.quick else 301)
    print(f"  median {t_site * 1e6:.1f} us per call (target <= 50 us)")
    saved = _core.DEFAULT_BACKEND
    _core.DEFAULT_BACKEND = "numpy"
    try:
        t_site_np = median_time(lambda: allocate_site(guns, nodes), 501 if not args.quick else 101)
    finally:
        _core.DEFAULT_BACKEND = saved
    print(f"  (numpy backend, same run: {t_site_np * 1e6:.1f} us, {t_site_np / t_site:.1f}x slower)")
    print()

    print("(c) oracle (plain Python) on a 20-site batch of the (a) shape")
    from allocation_oracle import oracle_allocate

    q = depot_batch(20, seed=1)
    t0 = time.perf_counter()
    oracle_allocate(q.gun_node, q.upper_kw, q.min_kw, q.ask_kw, q.priority, q.weight, q.node_parent,
                    q.node_limit_kw, q.node_step_kw)
    t_or = time.perf_counter() - t0
    per_or = t_or / q.gun_node.size
    print(f"  oracle {per_or * 1e9:,.0f} ns/gun; allocate {t_core / n_g * 1e9:.1f} ns/gun: speed-up {per_or / (t_core / n_g):,.0f}x")
    print()

    print("(d) ACN-Sim (acnportal) sorted algorithms, one constraint, time per scheduling call")
    sizes = (20, 200) if args.quick else (20, 200, 2000)
    rows, why = acn_rows(sizes, args.quick)
    if rows is None:
        print(f"  skipped: {why}")
    else:
        print(f"  {'EVs':>5s} {'LLF ms':>9s} {'EDF ms':>9s} {'allocate us':>12s} {'LLF/ours':>9s} {'EDF/ours':>9s}"
              f" {'allocate_site us':>17s}")
        for n, llf, edf, ours, ours_site in rows:
            print(f"  {n:5d} {llf * 1e3:9.1f} {edf * 1e3:9.1f} {ours * 1e6:12.1f} {llf / ours:9,.0f} {edf / ours:9,.0f}"
                  f" {ours_site * 1e6:17.1f}")
        print("  (ours = allocate on arrays; allocate_site = the same through objects with string ids)")


if __name__ == "__main__":
    main()
