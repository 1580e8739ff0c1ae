"""The depot scenario as arrays: the station's limit tree and guns, the sessions, the tariff.

A *session* is one vehicle's stay: it arrives, waits for a gun if none is free, charges, and
leaves. ``--days N`` repeats the fleet's day N times; day 0 is the fleet file exactly, days
1.. vary it with a seeded generator (arrival jitter, energy spread). Same seed, same result.

A *lane* is one independent copy of the station. When the sessions of one day cannot meet
those of the next (every stay fits in one 24-hour cycle), the days are simulated side by side,
one lane per day, in one pass (this is what makes a year of a 200-bus depot fast); otherwise
there is one lane and the days follow each other on it. Engine time is in whole minutes from
the lane's start; ``lane_start[l]`` is that start as a local datetime.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from hw_profiles.fleet import FleetVehicle
from hw_profiles.specs import GunKind, StationSpec, VehicleClass
from hw_profiles.tariff import PERIODS, Tariff
from hw_profiles.vehicle import VehicleBatch

from .curves import full_soc

MINUTES_PER_DAY = 1440
DEFAULT_JITTER_MIN = 20.0
"""Standard deviation of the arrival jitter on varied days, minutes (clipped to +/- 2 sd)."""
DEFAULT_ENERGY_SPREAD = 0.10
"""Relative standard deviation of the energy a vehicle used on varied days (clipped to +/- 2 sd)."""


@dataclass(frozen=True)
class Rules:
    """The numbers of the technical direction (DOMAIN.md) the policies follow and the report checks."""

    start_within_min: int = 30
    bus_band_kw: tuple[float, float] = (30.0, 60.0)
    other_band_kw: tuple[float, float] = (15.0, 30.0)
    emergency_soc_pct: float = 30.0  # daytime: a bus below this gets an emergency top-up
    emergency_kw_per_gun: float = 180.0


@dataclass
class Station:
    """The station's limit tree in pre-order and its guns ("slots") ordered by their pile.

    Pre-order makes every subtree a contiguous range of nodes (``node_size``) and of gun slots
    (``node_glo``..``node_ghi``), so the simulation can take one component of the tree at a time.
    """

    spec: StationSpec
    node_id: list[str]
    node_parent: np.ndarray  # local, -1 for the site
    node_limit_kw: np.ndarray
    node_step_kw: np.ndarray
    node_size: np.ndarray  # nodes in the subtree (self included)
    node_glo: np.ndarray
    node_ghi: np.ndarray
    gun_id: list[str]  # "B01-1"
    gun_pile: np.ndarray  # pile index (into spec.piles)
    gun_no: np.ndarray  # 1-based gun number on its pile
    gun_node: np.ndarray  # local node index of the gun's pile
    gun_rating_kw: np.ndarray
    gun_min_kw: np.ndarray
    gun_step_kw: np.ndarray
    gun_dc: np.ndarray  # bool
    gun_bus: np.ndarray  # bool: a gun of a bus pile
    gun_chain: np.ndarray  # (G, depth+1) ancestors of the gun's pile node, pile first, padded -1
    pile_guns: list[list[int]]  # slots of each pile
    pile_combinable: np.ndarray

    @property
    def n_nodes(self) -> int:
        return len(self.node_id)

    @property
    def n_guns(self) -> int:
        return len(self.gun_id)


def build_station(spec: StationSpec) -> Station:
    tree = spec.limit_tree()
    ids = [n.id for n in tree]
    children: dict[str | None, list[str]] = {}
    for n in tree:
        children.setdefault(n.parent, []).append(n.id)
    by_id = {n.id: n for n in tree}
    order: list[str] = []

    def visit(nid: str) -> None:
        order.append(nid)
        for c in children.get(nid, []):
            visit(c)

    for root in children.get(None, []):
        visit(root)
    assert len(order) == len(ids)
    pos = {nid: i for i, nid in enumerate(order)}
    parent = np.array([pos[by_id[n].parent] if by_id[n].parent else -1 for n in order], np.int64)
    limit = np.array([by_id[n].limit_kw for n in order], float)
    step = np.array([by_id[n].step_kw for n in order], float)
    nn = len(order)
    size = np.ones(nn, np.int64)
    for i in range(nn - 1, 0, -1):
        size[parent[i]] += size[i]

    pile_index = {p.id: k for k, p in enumerate(spec.piles)}
    piles_in_order = [pile_index[n[5:]] for n in order if n.startswith("pile:")]
    gun_id, gun_pile, gun_no, gun_node, rating, gmin, gstep, dc, bus = [], [], [], [], [], [], [], [], []
    pile_guns: list[list[int]] = [[] for _ in spec.piles]
    node_glo = np.zeros(nn, np.int64)
    node_ghi = np.zeros(nn, np.int64)
    for k in piles_in_order:
        pile = spec.piles[k]
        for no, g in enumerate(pile.spec.guns, start=1):
            pile_guns[k].append(len(gun_id))
            gun_id.append(pile.gun_id(no))
            gun_pile.append(k)
            gun_no.append(no)
            gun_node.append(pos[f"pile:{pile.id}"])
            rating.append(g.rated_kw)
            gmin.append(g.min_kw)
            gstep.append(pile.spec.module_kw)
            dc.append(g.kind is GunKind.DC)
            bus.append(pile.spec.pile_class.value == "bus_dc")
    gun_node_a = np.array(gun_node, np.int64)
    # gun ranges of every node: pre-order puts the piles of a subtree together
    for i in range(nn):
        inside = (gun_node_a >= i) & (gun_node_a < i + size[i])
        idx = np.flatnonzero(inside)
        node_glo[i], node_ghi[i] = (idx[0], idx[-1] + 1) if idx.size else (0, 0)
    depth = 0
    for i in range(nn):
        d, j = 0, i
        while parent[j] >= 0:
            j, d = parent[j], d + 1
        depth = max(depth, d)
    chain = np.full((len(gun_id), depth + 1), -1, np.int64)
    for g, nd in enumerate(gun_node):
        j, c = nd, 0
        while j >= 0:
            chain[g, c] = j
            j, c = parent[j], c + 1
    return Station(
        spec=spec, node_id=order, node_parent=parent, node_limit_kw=limit, node_step_kw=step, node_size=size,
        node_glo=node_glo, node_ghi=node_ghi, gun_id=gun_id, gun_pile=np.array(gun_pile, np.int64),
        gun_no=np.array(gun_no, np.int64), gun_node=gun_node_a, gun_rating_kw=np.array(rating, float),
        gun_min_kw=np.array(gmin, float), gun_step_kw=np.array(gstep, float), gun_dc=np.array(dc, bool),
        gun_bus=np.array(bus, bool), gun_chain=chain, pile_guns=pile_guns,
        pile_combinable=np.array([p.spec.combinable for p in spec.piles], bool),
    )


@dataclass
class Sessions:
    """One row per vehicle stay. Times are engine minutes of the session's lane."""

    vehicle: np.ndarray  # index into the fleet
    day: np.ndarray
    lane: np.ndarray
    arrival: np.ndarray
    departure: np.ndarray
    soc0: np.ndarray
    target: np.ndarray
    spec_idx: np.ndarray  # index into ``batch``
    is_bus: np.ndarray
    ac_max_kw: np.ndarray
    batch: VehicleBatch

    def __len__(self) -> int:
        return self.vehicle.size


@dataclass
class Scenario:
    station: Station
    fleet: list[FleetVehicle]
    tariff: Tariff
    price_category: str
    day0: dt.date
    days: int
    seed: int
    lanes: int
    horizon_min: int  # engine minutes per lane
    lane_start: list[dt.datetime]
    period: np.ndarray  # (lanes, horizon) period index into PERIODS
    price: np.ndarray  # (lanes, horizon) CNY/kWh electricity
    period_ext: np.ndarray  # (lanes, horizon + 1 day): to see where a valley cut by the horizon ends
    sessions: Sessions
    rules: Rules = field(default_factory=Rules)

    @property
    def service_fee(self) -> float:
        return self.tariff.service_fee_cny_per_kwh

    def valley_windows(self) -> np.ndarray:
        """(lanes, W, 2) valley windows [start, end) in engine minutes, padded with (inf, inf)."""
        v = PERIODS.index("valley")
        out = []
        for lane in range(self.lanes):
            m = self.period_ext[lane] == v
            edges = np.flatnonzero(np.diff(np.r_[0, m.astype(np.int8), 0]))
            out.append(edges.reshape(-1, 2))
        w = max((len(o) for o in out), default=0) or 1
        arr = np.full((self.lanes, w, 2), np.inf)
        for lane, o in enumerate(out):
            arr[lane, : len(o)] = o
        return arr

    def to_datetime(self, lane: np.ndarray, minute: np.ndarray) -> np.ndarray:
        """Local datetimes (numpy datetime64[m]) of engine minutes of lanes."""
        base = np.array([np.datetime64(s, "m") for s in self.lane_start])
        return base[lane] + np.asarray(minute).astype("timedelta64[m]")


def build_scenario(station_spec: StationSpec, fleet: list[FleetVehicle], tariff: Tariff, *, day0: dt.date,
                   days: int = 1, seed: int = 0, jitter_min: float = DEFAULT_JITTER_MIN,
                   energy_spread: float = DEFAULT_ENERGY_SPREAD, rules: Rules | None = None,
                   lanes: bool | None = None) -> Scenario:
    """Sessions for ``days`` days of ``fleet`` at ``station_spec`` under ``tariff``.

    ``lanes``: None decides by itself (side by side when the days cannot meet), False forces one
    lane (the days follow each other), True insists on side by side.
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    station = build_station(station_spec)
    rules = rules or Rules()
    rng = np.random.default_rng(seed)
    v = len(fleet)
    arr0 = np.array([f.arrival_min for f in fleet], np.int64)
    dep0 = np.array([f.departure_min for f in fleet], np.int64)
    soc_base = np.array([f.arrival_soc_pct for f in fleet], float)
    tgt = np.array([f.target_soc_pct for f in fleet], float)
    arr = np.tile(arr0, (days, 1))
    dep = np.tile(dep0, (days, 1))
    soc = np.tile(soc_base, (days, 1))
    if days > 1:
        jit = np.clip(rng.normal(0.0, jitter_min, (days - 1, v)), -2 * jitter_min, 2 * jitter_min)
        spread = np.clip(rng.normal(1.0, energy_spread, (days - 1, v)), 1 - 2 * energy_spread, 1 + 2 * energy_spread)
        arr[1:] = arr0 + np.rint(jit).astype(np.int64)
        used = np.maximum(tgt - soc_base, 0.0) * spread
        soc[1:] = np.clip(tgt - used, 0.0, 100.0)
        arr[1:] = np.minimum(arr[1:], dep[1:] - 1)
    arr = arr + np.arange(days)[:, None] * MINUTES_PER_DAY
    dep = dep + np.arange(days)[:, None] * MINUTES_PER_DAY
    margin = int(np.ceil(2 * jitter_min)) if days > 1 else 0
    c0 = (int(arr0.min()) - margin) // 5 * 5  # cycle start, minutes after day-0 midnight
    span = int(dep0.max()) - c0
    side_by_side = span <= MINUTES_PER_DAY if lanes is None else bool(lanes)
    if lanes and span > MINUTES_PER_DAY:
        raise ValueError("the stays of one day reach into the next: days cannot run side by side")
    if not side_by_side:
        # one lane: a vehicle plugs in again only after its previous stay ended
        for d in range(1, days):
            arr[d] = np.maximum(arr[d], dep[d - 1])
    day = np.repeat(np.arange(days), v)
    vehicle = np.tile(np.arange(v), days)
    arr_f, dep_f = arr.ravel(), dep.ravel()
    base = dt.datetime.combine(day0, dt.time())
    if side_by_side:
        n_lanes, horizon = days, span
        lane = day.copy()
        arr_e = arr_f - day * MINUTES_PER_DAY - c0
        dep_e = dep_f - day * MINUTES_PER_DAY - c0
        starts = [base + dt.timedelta(days=d, minutes=c0) for d in range(days)]
    else:
        n_lanes = 1
        horizon = int(dep_f.max()) - c0
        lane = np.zeros_like(day)
        arr_e, dep_e = arr_f - c0, dep_f - c0
        starts = [base + dt.timedelta(minutes=c0)]
    period_ext = np.stack([tariff.period_index_series(s, horizon + MINUTES_PER_DAY) for s in starts])
    period = period_ext[:, :horizon]
    try:
        table = tariff.price_table(station_spec.price_category.value)
    except KeyError:
        from hw_profiles.errors import InputError
        raise InputError(tariff.source, "prices", f"no prices for the station's category "
                         f"{station_spec.price_category.value!r}") from None
    price = table[period]
    specs = [f.spec for f in fleet]
    names = sorted({s.model for s in specs})
    uniq = [next(s for s in specs if s.model == n) for n in names]
    spec_idx_v = np.array([names.index(s.model) for s in specs], np.int64)
    sessions = Sessions(
        vehicle=vehicle, day=day, lane=lane, arrival=arr_e.astype(np.int64), departure=dep_e.astype(np.int64),
        soc0=soc.ravel(), target=np.tile(tgt, days), spec_idx=np.tile(spec_idx_v, days),
        is_bus=np.tile(np.array([f.spec.vehicle_class is VehicleClass.BUS for f in fleet]), days),
        ac_max_kw=np.tile(np.array([f.spec.ac_max_kw for f in fleet]), days), batch=VehicleBatch.of(uniq),
    )
    return Scenario(station=station, fleet=fleet, tariff=tariff, price_category=station_spec.price_category.value,
                    day0=day0, days=days, seed=seed, lanes=n_lanes, horizon_min=horizon, lane_start=starts,
                    period=period, price=price, period_ext=period_ext, sessions=sessions, rules=rules)


def session_full_soc(sc: Scenario, guns: np.ndarray, n_guns: np.ndarray) -> np.ndarray:
    """Full SoC of every session on its gun(s) (see :func:`curves.full_soc`); target if no gun."""
    st, s = sc.station, sc.sessions
    g = np.where(guns >= 0, guns, 0)
    least = np.where(st.gun_step_kw[g] > 0, st.gun_step_kw[g], st.gun_min_kw[g]) * np.maximum(n_guns, 1)
    least = np.maximum(least, 1e-6)
    out = full_soc(s.batch, s.spec_idx, s.target, least)
    return np.where(guns >= 0, np.maximum(out, np.minimum(s.soc0, s.target)), s.target)
