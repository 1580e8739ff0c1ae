"""``evstack run``: wire station, plan, fleet, store, drivers and the control loop together.

Start-up refuses (exit 2, one line) only what makes running impossible: an unreadable station,
plan, fleet or token file, a database that cannot be opened, or a station where no pile answers
with the right register map. A pile that is down or wrong at start is reported on its own line
and the controller runs the others (and picks it up when it answers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hw_profiles.errors import InputError

log = logging.getLogger("evstack.controller")


@dataclass
class RunConfig:
    station: str
    plan: str | None = None
    fleet: str | None = None
    db: str | None = None
    speed: float = 1.0
    start_s: float | None = None
    cycle_s: float = 1.0
    validity_s: int | None = None  # default: max(10, 5 x cycle_s)
    auth_tokens: str | None = None
    until_s: float | None = None
    duration_s: float | None = None
    json_logs: bool = False
    offline_after: int = 3
    timeout_s: float = 0.5
    compact_every_s: float = 3600.0
    log_level: str = "INFO"
    hosts: dict = field(default_factory=dict)  # pile id -> (host, port) overrides (tests, bench)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc = {"t": dt.datetime.fromtimestamp(record.created).isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in self._skip:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(json_logs: bool, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("evstack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    from .drivers import quiet_pymodbus
    quiet_pymodbus()


def load_tokens(path: str) -> list[str]:
    """Authorization tokens, one per line; blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "no such file") from None
    except (IsADirectoryError, PermissionError) as e:
        raise InputError(path, None, e.strerror) from None
    except UnicodeDecodeError as e:
        raise InputError(path, None, f"not UTF-8 text ({e.reason})") from None
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


class Identifier:
    """Recognises a plugged vehicle: by VIN (fleet file, or the default VIN of a planned
    vehicle id), else by gun through the plan."""

    def __init__(self, plan=None, fleet=None) -> None:
        self.plan = plan
        self.by_vin: dict[str, str] = {}
        if plan is not None:
            self.by_vin.update(plan.vin_map())
        for v in fleet or ():
            self.by_vin[v.vin] = v.vehicle_id

    def __call__(self, gun, t_s: float, taken: set) -> str | None:
        vid = self.by_vin.get((gun.vin or "").strip())
        if vid is not None:
            return vid
        if self.plan is not None:
            return self.plan.vehicle_for_gun(gun.charge_point_id, t_s, taken)
        return None


async def run(cfg: RunConfig, stop: asyncio.Event | None = None, ready=None, clock=None) -> int:
    """Run the controller until ``stop``, ``cfg.until_s`` or ``cfg.duration_s``; returns the exit code.

    ``ready(loop)`` is called once control starts (tests); ``clock`` replaces the ScaledClock
    made from ``cfg.speed``/``cfg.start_s`` (an in-process simulator's clock, in tests).
    """
    from hw_profiles.clock import ScaledClock
    from hw_profiles.fleet import load_fleet
    from hw_profiles.station import load_station
    from hw_profiles.tariff import load_tariff

    from .billing import Authorizer
    from .coordinator import INCOMPATIBLE, ONLINE, Coordinator
    from .drivers import PileDriver
    from .loop import ControlLoop
    from .plan import load_plan
    from .policy import ValleyPolicy
    from .sessions import SessionManager
    from .store import Store

    station = load_station(cfg.station)
    base = Path(station.source).parent if station.source else None
    try:
        tariff = load_tariff(station.tariff, base)
    except InputError as e:
        raise e.within(cfg.station) from None
    plan = None
    if cfg.plan:
        plan, warnings = load_plan(cfg.plan, station)
        for w in warnings:
            log.warning("plan: %s", w)
        log.info("plan %s: %d vehicles, %d segments", cfg.plan, len(plan.vehicles), len(plan.segments))
    fleet = load_fleet(cfg.fleet, station.catalog) if cfg.fleet else None
    tokens = load_tokens(cfg.auth_tokens) if cfg.auth_tokens else None
    validity_s = int(cfg.validity_s or max(10, round(5 * cfg.cycle_s)))
    if not 1 <= validity_s <= 3600:
        raise InputError("--validity-s", None, f"must be 1..3600 s, got {validity_s}")

    # The allocation kernel compiles on its first call after an install (~10 s): do it now,
    # before any pile is written, not inside the first control cycle.
    from time import perf_counter

    from .allocation import warm_up

    t0 = perf_counter()
    warm_up()
    if perf_counter() - t0 > 1.0:
        log.info("allocation kernel compiled in %.1f s (once after an install; cached for later runs)",
                 perf_counter() - t0)
    clock = clock or ScaledClock(cfg.speed, cfg.start_s)
    store = await Store.open(cfg.db)
    try:
        await store.sync_station(station, tariff)
        drivers = {}
        for p in station.piles:
            host, port = cfg.hosts.get(p.id, (p.host, p.port))
            drivers[p.id] = PileDriver(p, host=host, port=port, timeout_s=cfg.timeout_s)
        coordinator = Coordinator(station, drivers, clock, offline_after=cfg.offline_after,
                                  read_deadline_s=max(cfg.timeout_s, 0.05) * 2)
        sessions = SessionManager(store, tariff, station.price_category.value, Authorizer(tokens),
                                  Identifier(plan, fleet))
        loop = ControlLoop(station, coordinator, clock, policy=ValleyPolicy(tariff, station.kind),
                           sessions=sessions, plan=plan, fleet_by_id={v.vehicle_id: v for v in fleet or ()},
                           cycle_s=cfg.cycle_s, validity_s=validity_s, compact_every_s=cfg.compact_every_s)
        # First read: one line per pile; nothing answering is a start-up failure.
        snap = await coordinator.poll()
        for _ in range(3):
            if any(ps.status == ONLINE for ps in snap.piles.values()):
                break
            await asyncio.sleep(cfg.timeout_s)
            snap = await coordinator.poll()
        good = 0
        for pid, ps in snap.piles.items():
            inst = station.pile(pid)
            where = f"{drivers[pid].host}:{drivers[pid].port} unit {inst.unit_id}"
            if ps.status == ONLINE:
                good += 1
                states = ", ".join(f"{g.gun_id} {g.state.name.lower()}" for g in ps.guns)
                print(f"pile {pid} ({where}): online, map version {ps.header.get('map_version')}: {states}", flush=True)
            elif ps.status == INCOMPATIBLE:
                print(f"pile {pid} ({where}): NOT CONTROLLED, wrong register map: {ps.error}", flush=True)
                log.error("pile %s: not controlled: %s", pid, ps.error, extra={"pile": pid, "status": ps.status})
            else:
                print(f"pile {pid} ({where}): offline ({ps.error or 'no answer'}); will keep trying", flush=True)
        if not good:
            await coordinator.close()
            reasons = "; ".join(f"{pid}: {ps.error or 'no answer'}" for pid, ps in list(snap.piles.items())[:3])
            more = f" (and {len(snap.piles) - 3} more)" if len(snap.piles) > 3 else ""
            raise InputError(cfg.station, None, f"no pile can be controlled: {reasons}{more}")
        resumed = await sessions.resume()
        if resumed:
            log.info("resumed %d open session(s) from the store", resumed)
            await store.add_event(clock.now_s(), "recovered", station.name, {"open_sessions": resumed})
        until_s = cfg.until_s
        if cfg.duration_s is not None:
            end = clock.now_s() + cfg.duration_s
            until_s = end if until_s is None else min(until_s, end)
        print(f"evstack run: controlling {good} of {len(station.piles)} piles, cycle {cfg.cycle_s:g} s, "
              f"validity {validity_s} s, store {store.url}", flush=True)
        if ready is not None:
            ready(loop)
        stop = stop or asyncio.Event()
        aloop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                aloop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            await loop.run(stop, until_s)
        finally:
            for sig in installed:
                aloop.remove_signal_handler(sig)
            await loop.close()
        log.info("stopped after %d cycles; %d session(s) still open", loop.cycles, len(sessions.open))
        return 0
    finally:
        await store.close()
