"""Feasibility, said before the night: which rule cannot be kept, for whom, by how much, and
what would fix it. Pure: it reads the scenario, the gun assignment and the energy needs only.

Checks (DOMAIN.md, night valley charging):

- ``gun``: more vehicles than free guns -- a vehicle that gets no gun before it leaves, or one
  so late that it cannot start within 30 minutes of the later of valley start and arrival;
- ``site_limit``: a node of the limit tree (the site, a feeder) below the band's lower edge
  (30 kW per bus, 15 kW per other vehicle) times the vehicles plugged under it in the valley;
- ``energy_in_valley``: a vehicle needing more than the top of its band over the valley minutes of its
  stay (it can only be full with cheaper-than-peak other hours, or not at all);
- ``departure``: a vehicle leaving before its valley ends whose valley minutes before departure
  cannot hold its energy (full by the valley end then means full by departure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hw_profiles.tariff import PERIODS

from .curves import floor_step
from .model import Scenario
from .policies import Context, _span, bands, gun_caps, valley_spans


@dataclass(frozen=True)
class Finding:
    rule: str
    reason: str
    fix: str
    vehicle_id: str | None = None
    day: int | None = None
    kwh: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["kwh"] = round(self.kwh, 2)
        return d

    def line(self) -> str:
        who = f"{self.vehicle_id} (day {self.day}): " if self.vehicle_id else ""
        kwh = f" [{self.kwh:.1f} kWh]" if self.kwh > 0.05 else ""
        return f"{who}{self.rule}: {self.reason}{kwh}; fix: {self.fix}"


def _clock(sc: Scenario, lane: int, minute: float) -> str:
    return str(sc.to_datetime(np.array([lane]), np.array([int(minute)]))[0]).replace("T", " ")[:16]


def check(sc: Scenario, ctx: Context, max_vehicle_findings: int = 200) -> list[Finding]:
    s, a, st = sc.sessions, ctx.assignment, sc.station
    out: list[Finding] = []
    ids = [f.vehicle_id for f in sc.fleet]
    step, rating, _ = gun_caps(sc, ctx)
    unit = step * np.maximum(ctx.n_guns, 1)
    lo, hi = bands(sc)
    top = np.where(unit > 0, floor_step(np.minimum(hi, rating), unit), np.minimum(hi, rating))
    vw = sc.valley_windows()[s.lane]
    in_valley = (np.minimum(vw[..., 1], s.departure[:, None]) > np.maximum(vw[..., 0], s.arrival[:, None]))
    night = in_valley.any(axis=1)
    first_vs = np.where(in_valley, np.maximum(vw[..., 0], s.arrival[:, None]), np.inf).min(axis=1)
    last_ve = np.where(in_valley, vw[..., 1], -np.inf).max(axis=1)
    rw = sc.rules.start_within_min

    # gun
    for i in np.flatnonzero(a.gun0 < 0):
        out.append(Finding("gun", "no free gun before departure (one vehicle, one gun)",
                           "one more gun, or a bus leaving earlier", ids[s.vehicle[i]], int(s.day[i]), float(ctx.need_kwh[i])))
    late = np.flatnonzero((a.gun0 >= 0) & night & (a.plug > first_vs + rw))
    for i in late:
        out.append(Finding("start_within_30min", f"waits for a gun until {_clock(sc, s.lane[i], a.plug[i])}",
                           "one more gun free at valley start", ids[s.vehicle[i]], int(s.day[i])))
    # site limit: band lower edge x plugged vehicles under each node, in valley minutes
    vmask = sc.period == PERIODS.index("valley")
    plugged = np.flatnonzero((a.gun0 >= 0) & night)
    for lane in range(sc.lanes):
        idx = plugged[s.lane[plugged] == lane]
        if idx.size == 0:
            continue
        minutes = np.flatnonzero(vmask[lane])
        if minutes.size == 0:
            continue
        here = (a.plug[idx][:, None] <= minutes[None, :]) & (s.departure[idx][:, None] > minutes[None, :])
        least = np.minimum(lo[idx], top[idx])
        for node in range(st.n_nodes):
            if st.node_id[node].startswith("pile:") or not np.isfinite(st.node_limit_kw[node]):
                continue
            under = np.isin(st.gun_node[a.gun0[idx]], np.arange(node, node + st.node_size[node]))
            load = (least[under, None] * here[under]).sum(axis=0)
            worst = int(np.argmax(load)) if load.size else 0
            if load.size and load[worst] > st.node_limit_kw[node] + 1e-6:
                count = int(here[under, worst].sum())
                short = load[worst] - st.node_limit_kw[node]
                out.append(Finding(
                    "site_limit",
                    f"{st.node_id[node]} limit {st.node_limit_kw[node]:g} kW < band minimum x {count} plugged vehicles "
                    f"= {load[worst]:g} kW at {_clock(sc, lane, minutes[worst])} (day {lane if sc.lanes > 1 else 0}): "
                    "some vehicles cannot start",
                    f"+{short:g} kW of {st.node_id[node]} limit"))
    # energy above band x valley minutes; departure before the valley ends
    _, _, _, valid = valley_spans(sc, ctx, stagger=False)
    begin, start, end, _ = valley_spans(sc, ctx, stagger=False)
    usable = np.where(valid, _span(start, end), 0.0).sum(axis=1)
    cap_kwh = top * usable / 60.0
    short = ctx.need_kwh - cap_kwh
    n_found = 0
    early = night & (s.departure < last_ve)
    for i in np.flatnonzero(night & (a.gun0 >= 0) & (short > 0.05) & ~early):
        if n_found >= max_vehicle_findings:
            break
        extra_min = int(np.ceil(short[i] / max(top[i], 1e-9) * 60))
        if a.plug[i] > first_vs[i] - 1e-9 and s.arrival[i] > np.min(np.where(valid[i], begin[i], np.inf)) - 1:
            fix = (f"plug in {extra_min} min earlier (by {_clock(sc, s.lane[i], a.plug[i] - extra_min)}); "
                   "until then the plan uses the cheapest other hours")
        else:
            fix = "none within the band; the plan puts it in the cheapest other hours before departure"
        out.append(Finding(
            "energy_in_valley",
            f"needs {ctx.need_kwh[i]:.1f} kWh, the valley minutes of its stay hold {cap_kwh[i]:.1f} at {top[i]:g} kW "
            f"({usable[i]:.0f} min)", fix, ids[s.vehicle[i]], int(s.day[i]), float(short[i])))
        n_found += 1
    # leaving before the valley ends matters when the valley minutes before departure are short
    for i in np.flatnonzero(early & (a.gun0 >= 0) & (short > 0.05)):
        if n_found >= max_vehicle_findings:
            break
        out.append(Finding(
            "departure", f"leaves at {_clock(sc, s.lane[i], s.departure[i])}, before the valley ends at "
            f"{_clock(sc, s.lane[i], last_ve[i])}: full by departure instead",
            f"depart at {_clock(sc, s.lane[i], last_ve[i])} or later", ids[s.vehicle[i]], int(s.day[i]),
            float(max(short[i], 0.0))))
        n_found += 1
    return out
