"""The control loop: read -> snapshot -> demands -> allocation core -> setpoint writes.

One cycle (``cycle_s`` simulated seconds apart, 1 s by default):

1. the coordinator polls every pile into one frozen snapshot;
2. sessions are detected and billed from it (store writes);
3. every charge point gets a demand: the plan's kW for its vehicle, else the valley policy;
   refused starts and idle guns ask nothing;
4. the allocation core splits the site's power (limits: site, feeders, pile pools minus what
   unreachable piles may still draw) -- every setpoint written comes out of it;
5. setpoints are written to online piles when they changed, when the pile is in fail-safe, or
   when an unchanged setpoint is due for renewal (see :class:`RenewalSchedule`: renewals are
   staggered by pile so that about 1/k of the piles renew each cycle, never later than
   ``validity_s`` minus two cycles after the last write); the watchdog period itself is set on
   each gun to ``validity_s`` when it differs.

Writes to different piles run concurrently; a slow pile is not waited for beyond the cycle's
write deadline (its writes finish in the background). Each cycle's duration is measured;
cycles slower than ``slow_cycle_s`` real seconds are logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from hw_profiles.registers import GunState
from hw_profiles.specs import GunKind, StationSpec

from .allocation import allocate
from .coordinator import OFFLINE, ONLINE, Coordinator, GunSnapshot, Snapshot
from .drivers import RegisterWrite
from .policy import ACTIVE_STATES, Demand, ValleyPolicy, build_problem, reservations, setpoint_register
from .sessions import SessionManager

log = logging.getLogger("evstack.controller.loop")


@dataclass(frozen=True)
class RenewalSchedule:
    """When to rewrite an unchanged setpoint before the pile's watchdog runs out. Pure.

    Renewing every gun on the same cycle makes that cycle carry one write per gun on top of the
    reads (the p99 spike of ``bench/controller.py``). Instead each pile gets a phase
    (``pile index % period_cycles``) and renews on the cycles whose number matches it, so
    about ``1/period_cycles`` of the piles renew per cycle.

    Safety: a renewal is never later than ``validity_s - 2 x cycle_s`` after the last write
    (while cycles run on time). ``latest_age_s`` = that bound minus 1.5 cycles is the age at
    which a gun is renewed on any cycle, whatever its phase, so a cycle up to half a cycle late
    still keeps the renewal within the bound. The period is at most
    ``validity_s / 2`` and at most ``latest_age_s``, so in steady state renewals happen on
    phase, well before expiry. All times in simulated seconds.
    """

    cycle_s: float
    validity_s: float

    @property
    def latest_age_s(self) -> float:
        """Age of the last write (s) from which a gun is renewed on any cycle."""
        return max(0.0, self.validity_s - 3.5 * self.cycle_s)

    @property
    def period_cycles(self) -> int:
        """Cycles between two on-phase renewals of a pile (1: every cycle, no staggering)."""
        return max(1, int(min(self.validity_s / 2, self.latest_age_s) / self.cycle_s + 1e-9))

    def on_phase(self, cycle_no: int, pile_index: int) -> bool:
        return cycle_no % self.period_cycles == pile_index % self.period_cycles

    def due(self, age_s: float, remaining_s: float, on_phase: bool) -> bool:
        """Renew now? ``age_s``: since the controller last wrote the value; ``remaining_s``: the
        pile's own watchdog time left (it may know better, e.g. after a pile restart)."""
        if age_s >= self.latest_age_s or remaining_s <= self.validity_s - self.latest_age_s:
            return True
        # On phase: renew if waiting for the next on-phase cycle would reach latest_age_s
        # (that keeps the gun on its pile's phase instead of drifting to the fallback).
        return on_phase and age_s + self.period_cycles * self.cycle_s >= self.latest_age_s


@dataclass
class CycleStats:
    """Durations of the last cycle's phases, real seconds; counts of requests."""

    read_s: float = 0.0
    decide_s: float = 0.0
    write_s: float = 0.0
    store_s: float = 0.0
    total_s: float = 0.0
    writes: int = 0
    history: list = field(default_factory=list)  # total_s of recent cycles (bench)
    phases: list = field(default_factory=list)  # (read_s, decide_s, write_s, store_s, writes) of recent cycles (bench)


class ControlLoop:
    def __init__(self, station: StationSpec, coordinator: Coordinator, clock, *,
                 policy: ValleyPolicy, sessions: SessionManager | None = None, plan=None, fleet_by_id=None,
                 cycle_s: float = 1.0, validity_s: int = 10, write_deadline_s: float = 0.5,
                 slow_cycle_s: float = 0.25, compact_every_s: float = 3600.0, keep_history: int = 0) -> None:
        self.station = station
        self.coordinator = coordinator
        self.clock = clock
        self.policy = policy
        self.sessions = sessions
        self.plan = plan
        self.fleet_by_id = fleet_by_id or {}
        self.cycle_s = cycle_s
        self.validity_s = int(validity_s)
        self.write_deadline_s = write_deadline_s
        self.slow_cycle_s = slow_cycle_s
        self.compact_every_s = compact_every_s
        self.keep_history = keep_history
        self.stats = CycleStats()
        self.snapshot: Snapshot | None = None
        self.setpoints_kw: dict[str, float] = {}  # gun id -> last allocation (kW)
        self.demands: dict[str, Demand] = {}
        self.cycles = 0
        self._specs = {(p.id, n): g for p, n, g in station.guns()}
        self._pile_index = {p.id: i for i, p in enumerate(station.piles)}
        self.renewals = RenewalSchedule(cycle_s, self.validity_s)
        self._pile_class = {p.id: p.spec.pile_class for p in station.piles}
        self._written: dict[tuple[str, int], tuple[str, float, float]] = {}  # (pile, gun) -> (reg, value, t_s)
        self._failsafe_kw: dict[str, float] = {}
        self._write_tasks: dict[str, asyncio.Task] = {}
        self._status: dict[str, str] = {}
        self._last_compact_s: float | None = None

    # ------------------------------------------------------------------ one cycle

    async def cycle(self) -> Snapshot:
        t0 = time.perf_counter()
        snap = await self.coordinator.poll()
        t1 = time.perf_counter()
        self.snapshot = snap
        self._log_status(snap)
        st0 = time.perf_counter()
        if self.sessions is not None:
            await self.sessions.update(snap)
        st1 = time.perf_counter()
        demands = self._demands(snap)
        reserved = reservations(self.station, snap, self._failsafe_kw)
        pm = build_problem(self.station, snap, demands, reserved)
        alloc = allocate(pm.problem, validate=False)
        self.demands = demands
        writes = self._writes(snap, pm.guns, alloc.setpoint_kw)
        t2 = time.perf_counter()
        await self._write(writes)
        t3 = time.perf_counter()
        await self._maybe_compact(snap.t_s)
        t4 = time.perf_counter()
        s = self.stats
        s.read_s, s.decide_s, s.write_s = t1 - t0, (t2 - t1) - (st1 - st0), t3 - t2
        s.store_s = (st1 - st0) + (t4 - t3)
        s.total_s = t4 - t0
        s.writes = sum(len(w) for w in writes.values())
        if self.keep_history:
            s.history.append(s.total_s)
            del s.history[: -self.keep_history]
            s.phases.append((s.read_s, s.decide_s, s.write_s, s.store_s, s.writes))
            del s.phases[: -self.keep_history]
        if s.total_s > self.slow_cycle_s:
            log.warning("slow cycle: %.0f ms (read %.0f, decide %.0f, write %.0f, store %.0f ms)",
                        s.total_s * 1e3, s.read_s * 1e3, s.decide_s * 1e3, s.write_s * 1e3, s.store_s * 1e3,
                        extra={"cycle_ms": round(s.total_s * 1e3, 1)})
        self.cycles += 1
        return snap

    async def run(self, stop: asyncio.Event, until_s: float | None = None) -> None:
        """Cycle every ``cycle_s`` simulated seconds until ``stop`` is set or ``until_s`` passes."""
        next_s = self.clock.now_s()
        while not stop.is_set():
            if until_s is not None and self.clock.now_s() >= until_s:
                break
            await self.cycle()
            next_s += self.cycle_s
            delay = next_s - self.clock.now_s()
            if delay < 0:  # fell behind: do not try to catch up with a burst of cycles
                next_s = self.clock.now_s()
                delay = 0.0
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay / self.clock.speed)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        tasks = [t for t in self._write_tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=self.write_deadline_s)
        await self.coordinator.close()

    # ------------------------------------------------------------------ decisions

    def vehicle_on(self, g: GunSnapshot) -> str | None:
        return self.sessions.vehicle_on(g.gun_id) if self.sessions is not None else None

    def _demands(self, snap: Snapshot) -> dict[str, Demand]:
        out: dict[str, Demand] = {}
        t = snap.t_s
        for ps in snap.piles.values():
            if not ps.controllable:
                continue
            for g in ps.guns:
                if g.state not in ACTIVE_STATES:
                    continue
                if self.sessions is not None and self.sessions.is_refused(g):
                    out[g.charge_point_id] = Demand(0.0, "unauthorized")
                    continue
                vid = self.vehicle_on(g)
                if vid is not None and self.plan is not None and self.plan.has(vid):
                    out[g.charge_point_id] = Demand(self.plan.kw_at(vid, t), "plan")
                else:
                    vehicle = self.fleet_by_id.get(vid) if vid else None
                    out[g.charge_point_id] = self.policy.demand(t, g, vehicle, self._pile_class[g.pile_id])
        return out

    def _writes(self, snap: Snapshot, guns, setpoint_kw) -> dict[str, list[RegisterWrite]]:
        """Which registers to write this cycle, per pile."""
        alloc_kw = {(g.pile_id, g.gun_no): float(kw) for g, kw in zip(guns, setpoint_kw)}
        t = snap.t_s
        sched = self.renewals
        out: dict[str, list[RegisterWrite]] = {}
        for ps in snap.piles.values():
            if not ps.controllable:
                continue
            fs = 0.0
            for g in ps.guns:
                spec = self._specs[(g.pile_id, g.gun_no)]
                fs += g.failsafe_kw if spec.kind is GunKind.DC else spec.kw_from_amps(g.failsafe_a)
            self._failsafe_kw[ps.pile_id] = fs
            on_phase = sched.on_phase(self.cycles, self._pile_index[ps.pile_id])
            writes: list[RegisterWrite] = []
            for g in ps.guns:
                if g.state is GunState.UNAVAILABLE:
                    continue
                key = (g.pile_id, g.gun_no)
                kw = alloc_kw.get(key, 0.0)
                self.setpoints_kw[g.gun_id] = kw
                spec = self._specs[key]
                if g.validity_s != self.validity_s:
                    writes.append(RegisterWrite(g.gun_no, "validity_s", self.validity_s))
                reg, value = setpoint_register(g, kw, spec)
                current = g.setpoint_kw if reg == "setpoint_kw" else g.setpoint_a
                last = self._written.get(key)
                due = (
                    abs(current - value) > 1e-6
                    or not g.setpoint_accepted
                    or last is None or last[1] != value
                    or sched.due(t - last[2], g.remaining_s, on_phase)
                )
                if due:
                    writes.append(RegisterWrite(g.gun_no, reg, value))
                    self._written[key] = (reg, value, t)
            if writes:
                out[ps.pile_id] = writes
        return out

    async def _write(self, writes: dict[str, list[RegisterWrite]]) -> None:
        drivers = self.coordinator.drivers
        started = []
        for pid, ws in writes.items():
            prev = self._write_tasks.get(pid)
            if prev is not None and not prev.done():
                # That pile is still busy with last cycle's writes: skip, and forget these values
                # as written so they are retried next cycle (a skipped renewal must not count).
                for w in ws:
                    self._written.pop((pid, w.gun_no), None)
                continue
            task = asyncio.create_task(self._write_pile(drivers[pid], pid, ws))
            self._write_tasks[pid] = task
            started.append(task)
        if started:
            await asyncio.wait(started, timeout=self.write_deadline_s)

    async def _write_pile(self, driver, pid: str, ws: list[RegisterWrite]) -> None:
        failed = await driver.write(ws)
        for w, why in failed:
            self._written.pop((pid, w.gun_no), None)  # unknown what the pile has: write again
            log.warning("pile %s gun %d: write %s=%g failed: %s", pid, w.gun_no, w.name, w.value, why)

    async def _maybe_compact(self, t_s: float) -> None:
        store = getattr(self.sessions, "store", None)
        if store is None:
            return
        if self._last_compact_s is None:
            self._last_compact_s = t_s
            return
        if t_s - self._last_compact_s >= self.compact_every_s:
            self._last_compact_s = t_s
            await store.compact(t_s)

    def _log_status(self, snap: Snapshot) -> None:
        for pid, ps in snap.piles.items():
            prev = self._status.get(pid)
            if prev == ps.status:
                continue
            self._status[pid] = ps.status
            if prev is None and ps.status in (ONLINE, OFFLINE):
                continue  # the runner printed the start-up state
            level = logging.INFO if ps.status == ONLINE else logging.WARNING
            log.log(level, "pile %s: %s%s", pid, ps.status, f" ({ps.error})" if ps.error and ps.status != ONLINE else "",
                    extra={"pile": pid, "status": ps.status})
