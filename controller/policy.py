"""Allocation inputs from a snapshot: what each gun asks (plan or valley policy) and may take.

Pure: no I/O, no clock of its own. The loop calls :func:`build_problem` once per cycle with the
snapshot, the per-gun demands and the reservations of piles it cannot control this cycle, and
hands the result to the allocation core.

* **Demand** (what a gun asks): the plan's kW for the vehicle on it; else the valley policy
  (DOMAIN.md: start within 30 min of the valley start, 30-60 kW per bus / 15-30 kW for
  logistics, full by the valley's end; outside the valley a depot vehicle without a plan waits);
  at a ``distributed`` site (public car park) a vehicle without a plan charges at once.
* **Bounds** (what a gun may take, from telemetry): state (only guns with a vehicle that may
  charge), blocking faults, the gun's rating (the pair's for combined guns) and what it can
  deliver now (``max_available_kw``: derating, module loss, BMS demand). The BMS demand is
  rounded *up* to the pile's module step: the vehicle draws only what it asks, and rounding
  down would starve a tapering battery.
* **Limits**: site, feeders and each controllable pile's pool (``pile_max_kw`` after module loss
  and derating; module step ``module_kw``). Piles that are stale or offline are not allocated;
  their worst-case draw (last setpoint, or fail-safe power) is taken off every limit above them.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from hw_profiles.registers import FaultBits, GunState
from hw_profiles.specs import GunKind, PileClass, StationKind, StationSpec, VehicleClass
from hw_profiles.vehicle import energy_to_target_kwh

from .allocation import AllocationProblem
from .coordinator import GunSnapshot, PileSnapshot, Snapshot

ACTIVE_STATES = frozenset({GunState.PREPARING, GunState.CHARGING, GunState.SUSPENDED_EV, GunState.SUSPENDED_PILE})
BLOCKING_FAULTS = FaultBits.OVER_TEMPERATURE | FaultBits.INSULATION | FaultBits.EMERGENCY_STOP

# DOMAIN.md, night valley charging bands (kW per vehicle).
BAND_BUS_KW = (30.0, 60.0)
BAND_OTHER_KW = (15.0, 30.0)

PRIORITY_NORMAL = 1  # 0 is kept for emergencies (daytime top-up), served first


@dataclass(frozen=True)
class Demand:
    """What one charge point asks this cycle (kW), its priority class and weight, and why."""

    ask_kw: float
    source: str  # "plan", "valley", "immediate", "wait", "unauthorized", "no-vehicle"
    priority: int = PRIORITY_NORMAL
    weight: float = 1.0


class ValleyPolicy:
    """The default policy for vehicles without a plan (DOMAIN.md, operating modes)."""

    def __init__(self, tariff, station_kind: StationKind, margin: float = 1.1) -> None:
        self.tariff = tariff
        self.station_kind = station_kind
        self.margin = margin

    def valley_end_s(self, t_s: float) -> float | None:
        """End (POSIX s) of the valley window containing ``t_s``, or None outside the valley."""
        when = dt.datetime.fromtimestamp(t_s)
        for day in (when.date() - dt.timedelta(days=1), when.date()):
            for a, b in self.tariff.windows_of("valley", day):
                if a <= when < b:
                    return b.timestamp()
        return None

    def demand(self, t_s: float, gun: GunSnapshot, vehicle=None, pile_class: PileClass | None = None) -> Demand:
        """``vehicle``: the fleet entry (FleetVehicle) when the VIN is known, else None."""
        if self.station_kind is StationKind.DISTRIBUTED:
            return Demand(math.inf, "immediate")
        end_s = self.valley_end_s(t_s)
        if end_s is None:
            return Demand(0.0, "wait")
        bus = (vehicle.spec.vehicle_class is VehicleClass.BUS) if vehicle is not None else pile_class is PileClass.BUS_DC
        lo, hi = BAND_BUS_KW if bus else BAND_OTHER_KW
        if vehicle is None:
            return Demand(hi, "valley")
        need_kwh = energy_to_target_kwh(vehicle.spec, gun.soc_pct, vehicle.target_soc_pct)
        hours = max((end_s - t_s) / 3600.0, 1 / 60)
        need_kw = need_kwh / hours * self.margin
        # Full by the end of the valley beats staying inside the band.
        return Demand(max(lo, need_kw) if need_kw > hi else min(hi, max(lo, need_kw)), "valley")


def gun_bounds(gun: GunSnapshot, step_kw: float) -> tuple[float, float]:
    """(upper_kw, min_kw) a gun may take now, from telemetry alone.

    The BMS demand (``bms_demand_voltage_v`` x ``bms_demand_current_a``) bounds the gun, not
    ``max_available_kw``, which also holds the pool share the *other* guns have now and would
    freeze today's split of the pool; the pool is the pile node's limit instead. Under
    temperature derating ``max_available_kw`` bounds the gun too.
    """
    if gun.stale or gun.state not in ACTIVE_STATES or gun.fault_code & BLOCKING_FAULTS:
        return 0.0, 0.0
    rated = gun.rated_kw
    bms_kw = gun.bms_demand_voltage_v * gun.bms_demand_current_a / 1000.0
    if gun.kind is GunKind.AC:
        avail = gun.max_available_kw if gun.max_available_kw > 0 else rated
    elif gun.state is GunState.PREPARING and bms_kw <= 0:
        avail = rated  # hold power ready for the end of the handshake
    else:
        avail = bms_kw
    if gun.fault_code & FaultBits.DERATING:
        avail = min(avail, gun.max_available_kw)
    if step_kw > 0:
        avail = math.ceil(avail / step_kw - 1e-9) * step_kw
    return max(0.0, min(rated, avail)), max(0.0, gun.min_kw)


@dataclass(frozen=True)
class ProblemMap:
    """An allocation problem and what its rows are: ``guns[i]`` is gun row i, ``node_ids[j]`` node j."""

    problem: AllocationProblem
    guns: tuple[GunSnapshot, ...]
    node_ids: tuple[str, ...]


def reservations(station: StationSpec, snapshot: Snapshot, failsafe_kw: Mapping[str, float]) -> dict[str, float]:
    """Worst-case draw (kW) of each pile the loop cannot control this cycle.

    A stale pile keeps what it was told (its last setpoints, or what it measured if more); an
    offline or incompatible pile is assumed at its fail-safe power (``failsafe_kw[pile_id]``:
    the sum over its guns as last read, else the profile's).
    """
    out: dict[str, float] = {}
    for pile in station.piles:
        ps = snapshot.piles[pile.id]
        if ps.controllable:
            continue
        if ps.stale:
            out[pile.id] = sum(max(g.applied_limit_kw, g.power_kw) for g in ps.guns)
        else:
            out[pile.id] = failsafe_kw.get(pile.id, pile.spec.failsafe_kw * len(pile.spec.guns))
    return out


def build_problem(station: StationSpec, snapshot: Snapshot, demands: Mapping[str, Demand],
                  reserved_kw: Mapping[str, float]) -> ProblemMap:
    """One site's allocation problem. ``demands`` is keyed by charge point id (``B01-1``, ``B01-1+2``)."""
    tree = station.limit_tree()
    index = {n.id: i for i, n in enumerate(tree)}
    parent = np.array([-1 if n.parent is None else index[n.parent] for n in tree], np.int64)
    limit = np.array([n.limit_kw for n in tree], float)
    step = np.array([n.step_kw for n in tree], float)
    pile_of: dict[str, PileSnapshot] = snapshot.piles

    for pid, kw in reserved_kw.items():
        j = parent[index[f"pile:{pid}"]]
        while j >= 0:
            limit[j] -= kw
            j = parent[j]
    np.maximum(limit, 0.0, out=limit)

    guns: list[GunSnapshot] = []
    gun_node, upper, mn, ask, prio, weight = [], [], [], [], [], []
    for pile in station.piles:
        ps = pile_of[pile.id]
        j = index[f"pile:{pile.id}"]
        if not ps.controllable:
            limit[j] = 0.0
            continue
        pile_max = ps.header.get("pile_max_kw")
        if pile_max is not None:
            limit[j] = min(limit[j], float(pile_max))
        module_kw = float(ps.header.get("module_kw") or 0.0)
        if step[j] > 0 and module_kw > 0:
            step[j] = module_kw
        for g in ps.guns:
            if g.state is GunState.UNAVAILABLE:
                continue  # out of service, or the second gun of a combined pair
            d = demands.get(g.charge_point_id)
            up, lo = gun_bounds(g, step[j])
            guns.append(g)
            gun_node.append(j)
            upper.append(up)
            mn.append(lo)
            # "As much as possible" (inf) is the gun's rating: the core takes finite asks only.
            ask.append(min(d.ask_kw, max(g.rated_kw, up)) if d is not None else 0.0)
            prio.append(d.priority if d is not None else PRIORITY_NORMAL)
            weight.append(d.weight if d is not None else 1.0)
    problem = AllocationProblem(
        gun_node=np.array(gun_node, np.int64), upper_kw=np.array(upper, float), min_kw=np.array(mn, float),
        ask_kw=np.array(ask, float), priority=np.array(prio, np.int64), weight=np.array(weight, float),
        node_parent=parent, node_limit_kw=limit, node_step_kw=step,
    )
    return ProblemMap(problem, tuple(guns), tuple(n.id for n in tree))


def setpoint_register(gun: GunSnapshot, kw: float, spec) -> tuple[str, float]:
    """The register and value that carry ``kw`` to this gun (``spec``: its GunSpec).

    DC: ``setpoint_kw`` floored to 0.1 kW (never above the allocation). AC: ``setpoint_a``, amps
    per phase at the nominal phase voltage (``GunSpec.amps_from_kw``) floored to 0.1 A; below
    the gun's minimum current the gun is off (0 A).
    """
    from hw_profiles.specs import GunKind

    if spec.kind is GunKind.AC:
        amps = min(math.floor(spec.amps_from_kw(kw) * 10 + 1e-6) / 10, spec.current_max_a)
        return "setpoint_a", (amps if amps > 0 and amps + 1e-9 >= spec.current_min_a else 0.0)
    return "setpoint_kw", max(0.0, math.floor(kw * 10 + 1e-6) / 10)


def demands_summary(demands: Sequence[Demand]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in demands:
        out[d.source] = out.get(d.source, 0) + 1
    return out
