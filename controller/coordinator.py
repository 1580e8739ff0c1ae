"""Poll every pile concurrently and publish one frozen :class:`Snapshot` per cycle.

Everything downstream (policy, sessions, API, telemetry) reads the snapshot only, never a
driver. Each pile has an explicit status:

* ``online``: read this cycle; values fresh.
* ``stale``: this cycle's read failed or is still running, fewer than ``offline_after`` cycles
  in a row; the values are the last good ones, flagged ``stale`` (never reported as fresh).
* ``offline``: ``offline_after`` cycles without a good read (or never read): no values.
* ``incompatible``: the pile answers with another register map version or gun count.

A slow pile never delays the others: reads run as one task per pile; the coordinator waits
(up to ``read_deadline_s`` real seconds) only for piles that were online last cycle, and picks
up the reads of stale/offline piles whenever they finish. A read still running at the deadline
keeps running and counts as a failed cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from hw_profiles.registers import GUN_BLOCK, FaultBits, GunState
from hw_profiles.specs import GunKind, StationSpec

from .drivers import DriverError, MapVersionError, PileDriver, PileReading

ONLINE, STALE, OFFLINE, INCOMPATIBLE = "online", "stale", "offline", "incompatible"

_GUN_FIELDS = tuple(r.name for r in GUN_BLOCK)


@dataclass(frozen=True)
class GunSnapshot:
    """One gun as last read. Register values carry the map's names and units."""

    pile_id: str
    gun_no: int
    gun_id: str
    kind: GunKind
    stale: bool
    state: GunState
    fault_code: FaultBits
    setpoint_kw: float
    setpoint_a: float
    applied_limit_kw: float
    failsafe_kw: float
    failsafe_a: float
    validity_s: int
    remaining_s: float
    setpoint_accepted: int
    heartbeat: int
    command: int
    voltage_v: float
    current_a: float
    power_kw: float
    energy_wh: int
    session_energy_wh: int
    soc_pct: float
    bms_demand_voltage_v: float
    bms_demand_current_a: float
    bms_mode: int
    bms_remaining_min: int
    vin: str
    temperature_c: float
    max_available_kw: float
    paired_gun: int
    id_token: str
    min_kw: float
    rated_kw: float

    @property
    def combined(self) -> bool:
        """This gun drives both guns of its pile for one vehicle (it is the lower one)."""
        return self.paired_gun > self.gun_no

    @property
    def charge_point_id(self) -> str:
        """``B01-1`` or, for a combined pair, ``B01-1+2`` (the plan's naming)."""
        return f"{self.gun_id}+{self.paired_gun}" if self.combined else self.gun_id

    @property
    def plugged(self) -> bool:
        return self.state in (GunState.PREPARING, GunState.CHARGING, GunState.SUSPENDED_EV,
                              GunState.SUSPENDED_PILE, GunState.FINISHING)


@dataclass(frozen=True)
class PileSnapshot:
    """One pile: status, header values (empty when never read) and its guns."""

    pile_id: str
    status: str
    read_at_s: float | None  # simulated time of the values shown; None when never read
    failed_cycles: int
    error: str | None
    header: Mapping[str, float] = field(default_factory=dict)
    guns: tuple[GunSnapshot, ...] = ()

    @property
    def available(self) -> bool:
        """Values exist and may be used (fresh or stale)."""
        return self.status in (ONLINE, STALE)

    @property
    def stale(self) -> bool:
        return self.status == STALE

    @property
    def controllable(self) -> bool:
        """Read this cycle, so setpoints may be decided and written."""
        return self.status == ONLINE


@dataclass(frozen=True)
class Snapshot:
    """Everything the controller knows at ``t_s`` (simulated seconds)."""

    t_s: float
    piles: Mapping[str, PileSnapshot]

    def guns(self):
        for p in self.piles.values():
            yield from p.guns


def gun_snapshot(pile_id: str, gun_no: int, gun_id: str, kind: GunKind, values: Mapping, stale: bool) -> GunSnapshot:
    v = {k: values[k] for k in _GUN_FIELDS}
    try:
        v["state"] = GunState(v["state"])
    except ValueError:  # a state this map does not define: treat as out of service
        v["state"] = GunState.UNAVAILABLE
    v["fault_code"] = FaultBits(v["fault_code"] & 0xFFFF)
    return GunSnapshot(pile_id=pile_id, gun_no=gun_no, gun_id=gun_id, kind=kind, stale=stale, **v)


@dataclass
class _PileState:
    driver: PileDriver
    reading: PileReading | None = None
    guns: tuple[GunSnapshot, ...] = ()
    read_at_s: float | None = None
    failed_cycles: int = 0
    error: str | None = None
    incompatible: bool = False
    task: asyncio.Task | None = None
    status: str = OFFLINE


class Coordinator:
    """Owns all pile I/O reads; ``await poll()`` returns this cycle's :class:`Snapshot`."""

    def __init__(self, station: StationSpec, drivers: Mapping[str, PileDriver], clock, *,
                 offline_after: int = 3, read_deadline_s: float = 0.5) -> None:
        self.station = station
        self.clock = clock
        self.offline_after = offline_after
        self.read_deadline_s = read_deadline_s
        self._piles = {p.id: _PileState(drivers[p.id]) for p in station.piles}
        self._kinds = {p.id: tuple(g.kind for g in p.spec.guns) for p in station.piles}
        self._instances = {p.id: p for p in station.piles}

    @property
    def drivers(self) -> dict[str, PileDriver]:
        return {pid: st.driver for pid, st in self._piles.items()}

    async def poll(self) -> Snapshot:
        for st in self._piles.values():
            if st.task is None:
                st.task = asyncio.create_task(st.driver.read())
        # Wait for piles that answered last cycle (and for the first read of each pile);
        # the others are collected when their read finishes.
        waited = [st.task for st in self._piles.values()
                  if st.status == ONLINE or (st.reading is None and st.failed_cycles == 0)]
        if waited:
            await asyncio.wait(waited, timeout=self.read_deadline_s)
        else:
            await asyncio.sleep(0)
        now = self.clock.now_s()
        piles = {}
        for pid, st in self._piles.items():
            self._collect(pid, st, now)
            piles[pid] = PileSnapshot(pid, st.status, st.read_at_s, st.failed_cycles, st.error,
                                      dict(st.reading.header) if st.reading and st.status in (ONLINE, STALE) else {},
                                      st.guns if st.status in (ONLINE, STALE) else ())
        return Snapshot(now, piles)

    def _collect(self, pid: str, st: _PileState, now: float) -> None:
        task = st.task
        if task is not None and task.done():
            st.task = None
            exc = task.exception()
            if exc is None:
                reading = task.result()
                st.reading, st.read_at_s, st.failed_cycles, st.error = reading, now, 0, None
                st.incompatible = False
                st.status = ONLINE
                inst = self._instances[pid]
                kinds = self._kinds[pid]
                st.guns = tuple(gun_snapshot(pid, n, inst.gun_id(n), kinds[n - 1], g, False)
                                for n, g in enumerate(reading.guns, start=1))
                return
            st.error = str(exc) if isinstance(exc, DriverError) else f"{type(exc).__name__}: {exc}"
            st.incompatible = isinstance(exc, MapVersionError)
        st.failed_cycles += 1
        if st.incompatible:
            st.status = INCOMPATIBLE
        elif st.reading is not None and st.failed_cycles < self.offline_after:
            if st.status != STALE:
                st.guns = tuple(dataclasses.replace(g, stale=True) for g in st.guns)
            st.status = STALE
        else:
            st.status = OFFLINE
            st.guns = ()
        if st.error is None and task is not None and not task.done():
            st.error = "read still running at the cycle deadline"

    async def close(self) -> None:
        for st in self._piles.values():
            if st.task is not None:
                st.task.cancel()
        tasks = [st.task for st in self._piles.values() if st.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for st in self._piles.values():
            await st.driver.close()
