"""Helpers for the scheduler tests: a plain minute-by-minute reference simulation, a tiny
station/fleet writer, and plan.csv readers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from controller.allocation import AllocationProblem, allocate
from hw_profiles.vehicle import VehicleBatch, acceptance_kw_batch, charge_step_batch

DAY0 = dt.date(2026, 11, 29)


def reference_minutes(run, per_session: bool = False):
    """Step every minute of every lane: the whole limit tree through the allocation core,
    every vehicle through charge_step_batch. Returns (kw per lane-minute, energy per session)."""
    sc, asg, plan = run.scenario, run.assignment, run.plan
    st, s = sc.station, sc.sessions
    n = len(s)
    soc = s.soc0.astype(float).copy()
    energy = np.zeros(n)
    kw = np.zeros((sc.lanes, sc.horizon_min))
    sess_kw = np.zeros((n, sc.horizon_min)) if per_session else None
    ng = np.maximum(asg.n_guns, 1)
    g0 = np.maximum(asg.gun0, 0)
    for t in range(sc.horizon_min):
        act = np.flatnonzero((asg.gun0 >= 0) & (asg.plug <= t) & (s.departure > t))
        if act.size == 0:
            continue
        ask = np.zeros(act.size)
        mn = np.zeros(act.size)
        prio = np.zeros(act.size, np.int64)
        for k, i in enumerate(act):
            for w in range(plan.first[i], plan.first[i + 1]):
                if plan.start[w] <= t < plan.end[w]:
                    ask[k], mn[k], prio[k] = plan.kw[w], plan.min_kw[w], plan.priority[w]
                    break
        sub = VehicleBatch(s.batch.curve_soc[s.spec_idx[act]], s.batch.curve_kw[s.spec_idx[act]],
                           s.batch.battery_kwh[s.spec_idx[act]], s.batch.efficiency[s.spec_idx[act]])
        acc = acceptance_kw_batch(sub, soc[act], s.target[act])
        ac = ~st.gun_dc[g0[act]]
        acc = np.where(ac, np.minimum(acc, s.ac_max_kw[act]), acc)
        rating = st.gun_rating_kw[g0[act]]
        gmin = st.gun_min_kw[g0[act]]
        n_a = ng[act]
        upper = np.minimum(rating, acc / n_a)
        mn_g = np.where(ask > 0, np.maximum(gmin, np.minimum(mn / n_a, upper)), gmin)
        mn_g = np.minimum(mn_g, rating)
        # guns: one row per (session, gun)
        rows_s = np.r_[np.arange(act.size), np.flatnonzero(asg.gun1[act] >= 0)]
        gun = np.r_[asg.gun0[act], asg.gun1[act][asg.gun1[act] >= 0]]
        lanes = s.lane[act][rows_s]
        # guns in station order (as the live controller lists them): the core breaks ties
        # between guns equal in every input by their position
        order = np.lexsort((gun, lanes))
        rows_s, gun, lanes = rows_s[order], gun[order], lanes[order]
        NN = st.n_nodes
        node_parent = np.concatenate([np.where(st.node_parent < 0, -1, st.node_parent + l * NN) for l in range(sc.lanes)])
        sdv = st.gun_step_kw[gun]
        capv = np.where(sdv > 0, np.floor(np.minimum(ask / n_a, upper)[rows_s] / np.where(sdv > 0, sdv, 1) + 1e-9) * sdv,
                        np.minimum(ask / n_a, upper)[rows_s])
        mnv = np.where(sdv > 0, np.ceil(mn_g[rows_s] / np.where(sdv > 0, sdv, 1) - 1e-9) * sdv, mn_g[rows_s])
        prob = AllocationProblem(
            gun_node=st.gun_node[gun] + lanes * NN, upper_kw=np.maximum(upper[rows_s], mnv),
            min_kw=mn_g[rows_s], ask_kw=np.where(capv >= mnv - 1e-9, (ask / n_a)[rows_s], 0.0),
            priority=prio[rows_s], weight=np.ones(rows_s.size), node_parent=node_parent,
            node_limit_kw=np.tile(st.node_limit_kw, sc.lanes), node_step_kw=np.tile(st.node_step_kw, sc.lanes))
        sp = allocate(prob).setpoint_kw
        p = np.bincount(rows_s, weights=sp, minlength=act.size)
        new, e = charge_step_batch(sub, soc[act], p, 60.0, s.target[act])
        soc[act] = new
        energy[act] += e
        np.add.at(kw, (s.lane[act], np.full(act.size, t)), p)
        if per_session:
            sess_kw[act, t] = p
    return (kw, energy, soc, sess_kw) if per_session else (kw, energy, soc)


def write_station(path: Path, *, piles: int, site_kw: float, feeders: list[float] | None = None,
                  profile: str = "bus-dc-360", tariff: str = "yunnan-pre2024", kind: str = "bus_depot") -> Path:
    lines = ["[station]", f'name = "test depot"', f'kind = "{kind}"', f"site_limit_kw = {site_kw}",
             'price_category = "large_industrial"', f'tariff = "{tariff}"', "public = false", ""]
    for k, lim in enumerate(feeders or []):
        lines += ["[[feeders]]", f'id = "T{k + 1}"', f"limit_kw = {lim}", ""]
    for p in range(piles):
        lines += ["[[piles]]", f'id = "B{p + 1:02d}"', f'profile = "{profile}"', "port = 0"]
        if feeders:
            lines.append(f'feeder = "T{p % len(feeders) + 1}"')
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_fleet(path: Path, rows: list[tuple]) -> Path:
    """rows: (vehicle_id, profile, arrival, departure, arrival_soc_pct)."""
    text = "vehicle_id,profile,arrival,departure,arrival_soc_pct,target_soc_pct\n"
    text += "".join(f"{v},{p},{a},{d},{soc},100\n" for v, p, a, d, soc in rows)
    path.write_text(text, encoding="utf-8")
    return path
