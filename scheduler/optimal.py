"""The ``optimal`` policy: the cost optimum as a linear program, solved by HiGHS
(``scipy.optimize.linprog(method="highs")``).

Per lane: the time is cut into slots at every plug-in, departure and tariff change, so price
and presence are constant in a slot. Variables: the power ``x[i, k]`` (kW) of session i in
slot k, and its unmet energy ``u[i]`` (kWh). Minimise energy cost (price + service fee) plus
a large penalty on unmet energy, subject to

- each session's energy to full: ``sum_k x[i, k] * len_k / 60 + u[i] = need[i]``;
- ``0 <= x[i, k] <= cap[i]``: the top of the power band at night (60 kW per bus, 30 kW per
  other vehicle, in whole module steps), the gun(s) in the daytime;
- every node of the limit tree (site, feeders, pile pools), in every slot.

It leaves out what a linear program cannot say (the band's lower edge, the start within 30
minutes, module steps, the battery's taper), so its cost is a lower bound: a policy that keeps
all the rules can only cost as much or more. The simulation executes the solution through the
allocation core like any other plan: in each slot a vehicle runs at the two module-step levels
around ``x`` for as many minutes as give the same energy (higher level first).
"""

from __future__ import annotations

import numpy as np

from .curves import floor_step
from .model import Scenario
from .policies import (KIND_OPTIMAL, PRIO_EMERGENCY, PRIO_NIGHT, PRIO_PUBLIC, Context, Plan, _add, _empty_rows,
                       _rows_done, bands, gun_caps, valley_spans)

PENALTY_CNY_PER_KWH = 1000.0


def plan_optimal(sc: Scenario, ctx: Context) -> Plan:
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    s, a, st = sc.sessions, ctx.assignment, sc.station
    n = len(s)
    step, rating, gmin = gun_caps(sc, ctx)
    ng = np.maximum(ctx.n_guns, 1)
    unit = step * ng
    lo, hi = bands(sc)
    _, _, _, valid = valley_spans(sc, ctx)
    night = valid.any(axis=1)
    band_top = np.where(unit > 0, floor_step(np.minimum(hi, rating), unit), np.minimum(hi, rating))
    band_top = np.where(band_top > 0, band_top, np.minimum(rating, np.where(unit > 0, unit, rating)))
    cap = np.where(night, band_top, rating)
    prio = np.where(night, PRIO_NIGHT, np.where(s.is_bus, PRIO_EMERGENCY, PRIO_PUBLIC))
    rows = _empty_rows()
    fee = sc.service_fee
    totals = {"cost_cny": 0.0, "electricity_cny": 0.0, "service_cny": 0.0, "unmet_kwh": 0.0, "energy_kwh": 0.0,
              "status": []}
    for lane in range(sc.lanes):
        idx = np.flatnonzero((s.lane == lane) & (a.gun0 >= 0) & (ctx.need_kwh > 1e-9))
        if idx.size == 0:
            continue
        p0, d0 = a.plug[idx], s.departure[idx]
        t_lo, t_hi = int(p0.min()), int(d0.max())
        change = t_lo + np.flatnonzero(np.diff(sc.period[lane, t_lo:t_hi])) + 1
        edges = np.unique(np.r_[p0, d0, change])
        b0, b1 = edges[:-1], edges[1:]
        length = (b1 - b0).astype(float)
        price = sc.price[lane, b0]
        present = (p0[:, None] <= b0[None, :]) & (d0[:, None] >= b1[None, :])
        vi, kk = np.nonzero(present)
        nv = vi.size
        m = idx.size
        # objective: x then u
        c = np.r_[(price[kk] + fee) * length[kk] / 60.0, np.full(m, PENALTY_CNY_PER_KWH)]
        bounds_hi = np.r_[cap[idx][vi], np.full(m, np.inf)]
        # energy equalities
        a_eq = coo_matrix((np.r_[length[kk] / 60.0, np.ones(m)], (np.r_[vi, np.arange(m)], np.r_[np.arange(nv), nv + np.arange(m)])),
                          shape=(m, nv + m))
        b_eq = ctx.need_kwh[idx]
        # node limits: one row per (node, slot) that has a vehicle below it
        g = a.gun0[idx][vi]
        chain = st.gun_chain[g]  # (nv, depth+1)
        r_node, r_var = [], []
        for j in range(chain.shape[1]):
            ok = chain[:, j] >= 0
            r_node.append(chain[ok, j] * len(b0) + kk[ok])
            r_var.append(np.flatnonzero(ok))
        r_node = np.concatenate(r_node)
        r_var = np.concatenate(r_var)
        keys, row = np.unique(r_node, return_inverse=True)
        lim = st.node_limit_kw[keys // len(b0)]
        finite = np.isfinite(lim)
        keep = finite[row]
        remap = np.cumsum(finite) - 1
        a_ub = coo_matrix((np.ones(int(keep.sum())), (remap[row[keep]], r_var[keep])), shape=(int(finite.sum()), nv + m))
        res = linprog(c, A_ub=a_ub.tocsr(), b_ub=lim[finite], A_eq=a_eq.tocsr(), b_eq=b_eq,
                      bounds=np.c_[np.zeros(nv + m), bounds_hi], method="highs")
        totals["status"].append(res.status)
        if res.status != 0:
            raise RuntimeError(f"optimal: the linear program failed on lane {lane}: {res.message}")
        x, u = res.x[:nv], res.x[nv:]
        e = x * length[kk] / 60.0
        totals["electricity_cny"] += float((e * price[kk]).sum())
        totals["service_cny"] += float(e.sum() * fee)
        totals["energy_kwh"] += float(e.sum())
        totals["unmet_kwh"] += float(u.sum())
        # execute: two step levels around x, the higher first, same energy
        sess = idx[vi]
        # unstepped guns below their minimum: run at the minimum for part of the slot
        un = np.where(unit[sess] > 0, unit[sess], np.where(x < gmin[sess] - 1e-9, gmin[sess], 0.0))
        lvl_lo = np.where(un > 0, floor_step(x, np.where(un > 0, un, 1.0)), x)
        lvl_hi = np.where(un > 0, lvl_lo + un, x)
        frac = np.where(un > 0, (x - lvl_lo) / np.where(un > 0, un, 1.0), 0.0)
        k_hi = np.where(un > 0, np.rint(frac * length[kk]), 0).astype(np.int64)
        start = b0[kk]
        mid = start + k_hi
        mn = np.where(night[sess], np.minimum(lo[sess], cap[sess]), gmin[sess])
        keep_hi = (k_hi > 0) & (lvl_hi > 1e-6)
        _add(rows, sess[keep_hi], start[keep_hi], mid[keep_hi], lvl_hi[keep_hi], np.minimum(mn[keep_hi], lvl_hi[keep_hi]),
             prio[sess][keep_hi], KIND_OPTIMAL)
        keep_lo = (mid < b1[kk]) & (lvl_lo > 1e-6)
        _add(rows, sess[keep_lo], mid[keep_lo], b1[kk][keep_lo], lvl_lo[keep_lo], np.minimum(mn[keep_lo], lvl_lo[keep_lo]),
             prio[sess][keep_lo], KIND_OPTIMAL)
    totals["cost_cny"] = totals["electricity_cny"] + totals["service_cny"]
    totals["status"] = "optimal" if all(v == 0 for v in totals["status"]) else "failed"
    return Plan.of(n, _rows_done(rows), lp=totals)
