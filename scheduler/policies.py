"""Charging policies: pure functions from the scenario to a plan of *windows*.

A window asks for a constant power (session total, kW) for a vehicle over ``[start, end)``
engine minutes, with the least power worth running (``min_kw``: below it the allocation core
switches the gun off rather than trickle) and a priority class (lower first). The simulation
executes the windows through the allocation core and the vehicle model; a window may ask for
more than the vehicle takes (the battery's acceptance and the station's limits cut it down).

Policies (DOMAIN.md, Operating modes):

- ``valley``: every plugged vehicle starts within 30 minutes of the later of valley start and
  its plug-in (starts are staggered 0-27 min by gun, so the site does not jump at once), at the
  lowest power in the band (30-60 kW per bus, 15-30 kW per other vehicle; whole module steps)
  that gets it full by the end of the valley. What the valleys cannot hold goes into the
  cheapest other minutes before departure (cheapest first, earlier first among equal prices).
  Daytime (no valley before departure): a bus below ``emergency_soc_pct`` gets an emergency
  top-up at 180 kW per gun (two guns when a pile has both free) in priority class 0; other
  buses use the cheapest minutes; public vehicles get full power in class 2, after the buses.
- ``uncontrolled``: full gun power from plug-in (the baseline).
- ``optimal``: the cost optimum of a linear program (:mod:`scheduler.optimal`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .assign import Assignment
from .curves import ceil_step, floor_step, minutes_to_full
from .model import Scenario
from hw_profiles.tariff import PERIODS

KIND_VALLEY, KIND_OTHER_HOURS, KIND_EMERGENCY, KIND_PUBLIC, KIND_FULL_POWER, KIND_OPTIMAL = range(6)
KIND_NAMES = ("valley", "other_hours", "emergency", "public", "full_power", "optimal")
PRIO_EMERGENCY, PRIO_NIGHT, PRIO_PUBLIC = 0, 1, 2
POLICIES = ("valley", "uncontrolled", "optimal")


@dataclass
class Plan:
    """Windows sorted by (session, start). ``first[i]``..``first[i+1]`` are session i's windows."""

    session: np.ndarray
    start: np.ndarray
    end: np.ndarray
    kw: np.ndarray
    min_kw: np.ndarray
    priority: np.ndarray
    kind: np.ndarray
    first: np.ndarray  # (sessions + 1,)
    lp: dict | None = None  # the optimal policy's LP figures

    @classmethod
    def of(cls, n_sessions: int, rows: dict[str, np.ndarray], lp: dict | None = None) -> "Plan":
        order = np.lexsort((rows["start"], rows["session"]))
        r = {k: np.asarray(v)[order] for k, v in rows.items()}
        first = np.searchsorted(r["session"], np.arange(n_sessions + 1))
        return cls(r["session"].astype(np.int64), r["start"].astype(np.int64), r["end"].astype(np.int64),
                   r["kw"].astype(float), r["min_kw"].astype(float), r["priority"].astype(np.int64),
                   r["kind"].astype(np.int64), first, lp)


@dataclass
class Context:
    """What every policy needs besides the scenario: the gun assignment and full SoCs."""

    assignment: Assignment
    full_soc: np.ndarray
    need_kwh: np.ndarray

    @property
    def n_guns(self) -> np.ndarray:
        return self.assignment.n_guns


def gun_caps(sc: Scenario, ctx: Context):
    """Per session: step (kW per gun), session max kW (guns x rating, AC limited by the on-board
    charger), least kW of one gun."""
    st, s = sc.station, sc.sessions
    g = np.maximum(ctx.assignment.gun0, 0)
    n = np.maximum(ctx.n_guns, 1)
    step = st.gun_step_kw[g]
    rating = st.gun_rating_kw[g] * n
    rating = np.where(st.gun_dc[g], rating, np.minimum(rating, s.ac_max_kw))
    return step, rating, st.gun_min_kw[g]


def bands(sc: Scenario) -> tuple[np.ndarray, np.ndarray]:
    s, r = sc.sessions, sc.rules
    lo = np.where(s.is_bus, r.bus_band_kw[0], r.other_band_kw[0])
    hi = np.where(s.is_bus, r.bus_band_kw[1], r.other_band_kw[1])
    return lo, hi


def valley_spans(sc: Scenario, ctx: Context, stagger: bool = True):
    """(S, W) valley windows of every session's stay: clipped start/end and the planned start
    (within 30 minutes of the later of valley start and plug-in), and a validity mask."""
    s, a = sc.sessions, ctx.assignment
    vw = sc.valley_windows()[s.lane]  # (S, W, 2)
    plug = a.plug.astype(float)[:, None]
    dep = s.departure.astype(float)[:, None]
    vs, ve = vw[..., 0], vw[..., 1]
    e = np.minimum(ve, dep)
    begin = np.maximum(vs, plug)
    valid = (e > begin) & (a.gun0 >= 0)[:, None]
    lag = (np.maximum(a.gun0, 0) % 10 * 3)[:, None].astype(float) if stagger else 0.0
    start = np.where(vs >= plug, vs + lag, plug)
    start = np.minimum(start, e)
    return np.where(valid, begin, np.inf), np.where(valid, start, np.inf), np.where(valid, e, np.inf), valid


def _empty_rows():
    return {k: [] for k in ("session", "start", "end", "kw", "min_kw", "priority", "kind")}


def _add(rows, session, start, end, kw, min_kw, priority, kind):
    n = np.size(session)
    rows["session"].append(np.broadcast_to(session, n))
    rows["start"].append(np.broadcast_to(start, n))
    rows["end"].append(np.broadcast_to(end, n))
    rows["kw"].append(np.broadcast_to(kw, n))
    rows["min_kw"].append(np.broadcast_to(min_kw, n))
    rows["priority"].append(np.broadcast_to(priority, n))
    rows["kind"].append(np.broadcast_to(kind, n))


def _rows_done(rows):
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in rows.items()}


def wants_two_guns(sc: Scenario, policy: str) -> np.ndarray:
    """Sessions the policy wants on both guns of a pile (known before guns are assigned)."""
    s = sc.sessions
    if policy != "valley":
        return np.zeros(len(s), bool)
    vw = sc.valley_windows()[s.lane]
    has_valley = ((np.minimum(vw[..., 1], s.departure[:, None]) > np.maximum(vw[..., 0], s.arrival[:, None]))).any(axis=1)
    return s.is_bus & ~has_valley & (s.soc0 < sc.rules.emergency_soc_pct)


def cheapest_minutes(price: np.ndarray, lo: int, hi: int, exclude: np.ndarray, count: int) -> list[tuple[int, int]]:
    """The ``count`` cheapest minutes of ``[lo, hi)`` not in ``exclude`` (bool per minute),
    cheapest first and earlier first among equal prices, as [start, end) runs."""
    if count <= 0 or hi <= lo:
        return []
    minutes = np.arange(lo, hi)
    minutes = minutes[~exclude[lo:hi]]
    if minutes.size == 0:
        return []
    pick = np.sort(minutes[np.lexsort((minutes, price[minutes]))][:count])
    breaks = np.flatnonzero(np.diff(pick) > 1)
    starts = np.r_[pick[0], pick[breaks + 1]]
    ends = np.r_[pick[breaks] + 1, pick[-1] + 1]
    return list(zip(starts.tolist(), ends.tolist()))


def plan_valley(sc: Scenario, ctx: Context) -> Plan:
    s, a = sc.sessions, ctx.assignment
    n = len(s)
    step, rating, gmin = gun_caps(sc, ctx)
    ng = np.maximum(ctx.n_guns, 1)
    unit = step * ng
    lo, hi = bands(sc)
    plugged = a.gun0 >= 0
    begin, start, end, valid = valley_spans(sc, ctx)
    usable = np.where(valid, _span(start, end), 0.0).sum(axis=1)
    night = valid.any(axis=1)
    todo = plugged & (ctx.need_kwh > 1e-9)

    # levels in the band, in whole module steps, within the gun(s)
    l_lo = np.where(unit > 0, ceil_step(lo, unit), lo)
    l_hi = np.where(unit > 0, floor_step(np.minimum(hi, rating), unit), np.minimum(hi, rating))
    # no whole step inside the band (or the gun is below it): the nearest level the gun can do
    l_hi = np.maximum(l_hi, np.minimum(l_lo, np.where(unit > 0, floor_step(rating, unit), rating)))
    l_lo = np.minimum(l_lo, l_hi)
    level = np.full(n, np.nan)
    need_min = np.full(n, np.inf)
    und = np.flatnonzero(todo & night)
    for k in range(17):
        if und.size == 0:
            break
        cand = np.where(unit[und] > 0, np.minimum(l_lo[und] + k * unit[und], l_hi[und]),
                        l_lo[und] + (l_hi[und] - l_lo[und]) * k / 16)
        mtf = minutes_to_full(s.batch, s.spec_idx[und], s.soc0[und], ctx.full_soc[und], cand, step[und], ng[und])
        ok = mtf <= usable[und]
        last = (cand >= l_hi[und] - 1e-9)
        fix = ok | last
        level[und[fix]] = cand[fix]
        need_min[und[fix]] = mtf[fix]
        und = und[~fix]

    # a vehicle that needs every valley minute does not wait for its staggered start
    _, start0, end0, _ = valley_spans(sc, ctx, stagger=False)
    usable0 = np.where(valid, _span(start0, end0), 0.0).sum(axis=1)
    tight = need_min > usable + 1e-9
    start = np.where(tight[:, None], start0, start)
    usable = np.where(tight, usable0, usable)

    rows = _empty_rows()
    # night: every valley window of the stay at the chosen level
    si, wi = np.nonzero(valid & todo[:, None] & night[:, None])
    _add(rows, si, start[si, wi], end[si, wi], level[si], np.minimum(lo[si], level[si]), PRIO_NIGHT, KIND_VALLEY)

    # what the valleys cannot hold: the cheapest other minutes before departure
    over = np.flatnonzero(todo & night & (need_min > usable + 1e-9))
    day_bus = np.flatnonzero(todo & ~night & s.is_bus)
    emergency = day_bus[s.soc0[day_bus] < sc.rules.emergency_soc_pct]
    cheap_bus = day_bus[s.soc0[day_bus] >= sc.rules.emergency_soc_pct]
    valley_mask = sc.period == PERIODS.index("valley")
    cheap_set = set(cheap_bus.tolist())
    for i in over.tolist() + cheap_bus.tolist():
        lane = int(s.lane[i])
        lvl = level[i] if np.isfinite(level[i]) else l_hi[i]
        if i in cheap_set:
            mtf = minutes_to_full(s.batch, s.spec_idx[[i]], s.soc0[[i]], ctx.full_soc[[i]], np.array([l_hi[i]]),
                                  step[[i]], ng[[i]])[0]
            extra, lvl = mtf, l_hi[i]
        else:
            extra = need_min[i] - usable[i]
        if not np.isfinite(extra):
            extra = s.departure[i] - a.plug[i]
        runs = cheapest_minutes(sc.price[lane], int(a.plug[i]), int(s.departure[i]), valley_mask[lane], int(np.ceil(extra)))
        for r0, r1 in runs:
            _add(rows, i, r0, r1, lvl, min(lo[i], lvl), PRIO_NIGHT, KIND_OTHER_HOURS)
    # daytime emergency top-up, first served
    if emergency.size:
        kw = sc.rules.emergency_kw_per_gun * ng[emergency]
        _add(rows, emergency, a.plug[emergency], s.departure[emergency], np.minimum(kw, rating[emergency]),
             gmin[emergency], PRIO_EMERGENCY, KIND_EMERGENCY)
    # daytime public vehicles: full power, after the buses
    pub = np.flatnonzero(todo & ~night & ~s.is_bus)
    _add(rows, pub, a.plug[pub], s.departure[pub], rating[pub], gmin[pub], PRIO_PUBLIC, KIND_PUBLIC)
    return Plan.of(n, _rows_done(rows))


def plan_uncontrolled(sc: Scenario, ctx: Context) -> Plan:
    s, a = sc.sessions, ctx.assignment
    _, rating, gmin = gun_caps(sc, ctx)
    i = np.flatnonzero((a.gun0 >= 0) & (ctx.need_kwh > 1e-9))
    rows = _empty_rows()
    _add(rows, i, a.plug[i], s.departure[i], rating[i], gmin[i], PRIO_NIGHT, KIND_FULL_POWER)
    return Plan.of(len(s), _rows_done(rows))


def make_plan(policy: str, sc: Scenario, ctx: Context) -> Plan:
    if policy == "valley":
        return plan_valley(sc, ctx)
    if policy == "uncontrolled":
        return plan_uncontrolled(sc, ctx)
    if policy == "optimal":
        from .optimal import plan_optimal
        return plan_optimal(sc, ctx)
    raise ValueError(f"unknown policy {policy!r} (expected one of: {', '.join(POLICIES)})")


def _span(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """end - start where both are finite (padded windows are inf), else 0."""
    ok = np.isfinite(start) & np.isfinite(end)
    return np.where(ok, np.where(ok, end, 0.0) - np.where(ok, start, 0.0), 0.0)
