"""A whole simulated station in one process: every pile's model, its Modbus server, the clock.

```python
async with SimulatedStation(load_station("examples/bus-depot.toml"), clock=ScaledClock(60)) as sim:
    host, port, unit = sim.endpoints["B01"]
    sim.plug_in("B01", 1, profile="bus-12m", soc_pct=30, target_soc_pct=90)
    ...
```

Time: the models advance on simulated time from the injected clock. A background task steps
every pile every ``tick_s`` real seconds (0.1 s by default), so the fail-safe applies within
``tick_s`` of its deadline; a write first brings its pile up to the present, so the watchdog is
fed at the write's own time.

Meter persistence (``state_path``): the state file (JSON, replaced atomically with
``os.replace``) holds every meter, session and plugged vehicle. The meter a client reads is
never above the value last written to that file (each gun has a ceiling, raised only after a
save), and the file is saved on every tick in which a meter moved. So after ``kill -9`` the
restarted simulator resumes from a value at or above anything a client has seen: the meter
never goes backwards. A save survives a process crash (the kernel has the data); it is not
fsynced, so a power cut of the machine itself may lose the last fraction of a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

from hw_profiles.catalog import default_catalog
from hw_profiles.clock import ScaledClock
from hw_profiles.errors import InputError
from hw_profiles.fleet import vin_for
from hw_profiles.registers import pile_span
from hw_profiles.specs import PileInstance, StationSpec

from .model import PileModel, SimError, Vehicle

STATE_VERSION = 1


class _PileUnit:
    """The Modbus unit of one pile: what :class:`firmware_sim.server.ModbusPileServer` calls."""

    def __init__(self, station: "SimulatedStation", pile: PileInstance, model: PileModel) -> None:
        self.station = station
        self.pile = pile
        self.model = model
        self.span_words = pile_span(model.gun_count)[1]

    def read_words(self) -> list[int]:
        return self.model.read_pile_words()

    def write(self, address: int, words: list[int]) -> int | None:
        self.station._sync(self.pile.id)
        code, entries = self.model.write_block(address, words)
        self.station._audit(self.pile, entries)
        return code

    def silent(self) -> bool:
        return self.model.comm_dropped


class SimulatedStation:
    """Every pile of ``station`` behind Modbus TCP, stepped on ``clock``. Use ``async with``.

    ``endpoints`` maps pile id -> (host, port, unit_id) once started (port 0 in the station
    file: a free port chosen at start).
    """

    def __init__(self, station: StationSpec, clock=None, state_path: str | os.PathLike | None = None,
                 audit_path: str | os.PathLike | None = None, tick_s: float = 0.1) -> None:
        self.station = station
        self.clock = clock if clock is not None else ScaledClock(1.0)
        self.state_path = Path(state_path) if state_path is not None else None
        self.audit_path = Path(audit_path) if audit_path is not None else None
        self.tick_s = float(tick_s)
        self.catalog = station.catalog if station.catalog is not None else default_catalog()
        self.models: dict[str, PileModel] = {
            p.id: PileModel(p.id, p.spec, p.word_order) for p in station.piles
        }
        self.endpoints: dict[str, tuple[str, int, int]] = {}
        self._servers: list = []
        self._last_s: dict[str, float] = {}
        self._saved_wh: dict[tuple[str, int], float] = {}
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._audit_file = None
        self._plugs = 0
        self.started_s: float | None = None

    # ------------------------------------------------------------------ life cycle

    async def __aenter__(self) -> "SimulatedStation":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        from .server import ModbusPileServer  # pymodbus only where the servers are

        self._load_state()
        if self.audit_path is not None:
            self._audit_file = open(self.audit_path, "a", encoding="utf-8", buffering=1)
        now = self.clock.now_s()
        self.started_s = now
        self._last_s = {pid: now for pid in self.models}
        if self.state_path is not None:
            self._save_state()  # ceilings in place before the first read is served
        groups: dict[tuple[str, int], dict[int, _PileUnit]] = {}
        alone: list[tuple[PileInstance, _PileUnit]] = []
        for p in self.station.piles:
            unit = _PileUnit(self, p, self.models[p.id])
            if p.port == 0:
                alone.append((p, unit))
            else:
                groups.setdefault((p.host, p.port), {})[p.unit_id] = unit
        try:
            for (host, port), units in groups.items():
                srv = ModbusPileServer(host, port, units)
                await srv.start()
                self._servers.append(srv)
                for uid, u in units.items():
                    self.endpoints[u.pile.id] = (host, srv.port, uid)
            for p, unit in alone:
                srv = ModbusPileServer(p.host, 0, {p.unit_id: unit})
                await srv.start()
                self._servers.append(srv)
                self.endpoints[p.id] = (p.host, srv.port, p.unit_id)
        except OSError:
            await self.stop()
            raise
        self.endpoints = {p.id: self.endpoints[p.id] for p in self.station.piles}  # station order
        self._task = asyncio.create_task(self._tick_loop(), name="firmware_sim ticks")

    async def stop(self) -> None:
        """Stop ticking and serving, save the state (if a state file is set)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for srv in self._servers:
            await srv.stop()
        self._servers = []
        if self.started_s is not None:
            self.advance()
            if self.state_path is not None:
                self._save_state()
        if self._audit_file is not None:
            self._audit_file.close()
            self._audit_file = None

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.advance()

    def advance(self) -> None:
        """Bring every pile up to the clock's present and persist moved meters."""
        now = self.clock.now_s()
        for pid, m in self.models.items():
            dt_s = now - self._last_s[pid]
            if dt_s > 0:
                m.step(dt_s)
                self._last_s[pid] = now
        if self.state_path is not None and (self._dirty or self._meters_moved()):
            self._save_state()

    def _sync(self, pile_id: str) -> None:
        now = self.clock.now_s()
        dt_s = now - self._last_s.get(pile_id, now)
        if dt_s > 0:
            self.models[pile_id].step(dt_s)
            self._last_s[pile_id] = now

    # ------------------------------------------------------------------ persistence

    def _meters_moved(self) -> bool:
        for pid, m in self.models.items():
            for g in m.guns:
                if g.meter_wh != self._saved_wh.get((pid, g.no)):
                    return True
        return False

    def _save_state(self) -> None:
        doc = {"version": STATE_VERSION, "station": self.station.name,
               "piles": {pid: m.to_state() for pid, m in self.models.items()}}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, self.state_path)
        self._dirty = False
        for pid, m in self.models.items():
            for g in m.guns:
                self._saved_wh[(pid, g.no)] = g.meter_wh
                m.set_meter_ceiling(g.no, g.meter_wh)

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        src = str(self.state_path)
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(src, None, f"unreadable state file ({e})") from None
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("piles"), dict):
            raise InputError(src, "version", f"not an evstack sim state file of version {STATE_VERSION}")
        for pid, st in doc["piles"].items():
            m = self.models.get(pid)
            if m is None or not isinstance(st, dict) or st.get("model") != m.spec.model:
                continue  # a pile that left the station file, or changed model: start afresh
            try:
                m.load_state(st, self.catalog.vehicle)
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(src, f"piles.{pid}", f"bad pile state ({e})") from None

    # ------------------------------------------------------------------ audit

    def _audit(self, pile: PileInstance, entries: list[dict]) -> None:
        if self._audit_file is None:
            return
        now = self.clock.now_s()
        iso = dt.datetime.fromtimestamp(now).isoformat(timespec="milliseconds")
        for e in entries:
            code = e["code"]
            rec = {"t": round(now, 3), "time": iso, "pile": pile.id, "unit": pile.unit_id, "gun": e["gun"],
                   "register": e["register"], "address": e["address"], "value": e["value"], "raw": e["raw"],
                   "accepted": code is None, "exception": code}
            self._audit_file.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ bench actions

    def model(self, pile_id: str) -> PileModel:
        try:
            return self.models[pile_id]
        except KeyError:
            raise SimError("pile_id", f"unknown pile {pile_id!r} (known: {', '.join(self.models)})") from None

    def plug_in(self, pile_id: str, gun_no: int, profile: str = "bus-12m", vin: str | None = None,
                soc_pct: float = 30.0, target_soc_pct: float = 100.0, id_token: str | None = None,
                combined: bool = False) -> None:
        """Plug a vehicle of ``profile`` into a gun (both guns of the pair when ``combined``)."""
        m = self.model(pile_id)
        try:
            spec = self.catalog.vehicle(profile)
        except KeyError as e:
            raise SimError("profile", e.args[0]) from None
        self._sync(pile_id)
        self._plugs += 1
        vin = vin if vin is not None else vin_for(f"{pile_id}-{gun_no}-{self._plugs}")
        m.plug_in(gun_no, Vehicle(profile=profile, spec=spec, vin=vin, soc_pct=float(soc_pct),
                                  target_soc_pct=float(target_soc_pct), id_token=id_token or ""),
                  combined=combined)
        self._dirty = True

    def unplug(self, pile_id: str, gun_no: int) -> None:
        self._sync(pile_id)
        self.model(pile_id).unplug(gun_no)
        self._dirty = True

    def set_paused(self, pile_id: str, gun_no: int, paused: bool = True) -> None:
        """The vehicle's BMS pauses (SUSPENDED_EV) or resumes."""
        self._sync(pile_id)
        self.model(pile_id).set_paused(gun_no, paused)

    def set_in_service(self, pile_id: str, gun_no: int, in_service: bool) -> None:
        self._sync(pile_id)
        self.model(pile_id).set_in_service(gun_no, in_service)
        self._dirty = True

    def inject_fault(self, pile_id: str, gun_no: int | None, kind: str, **params: Any) -> None:
        """Kinds: over_temperature (temperature_c), insulation, emergency_stop, meter_failure,
        comm_drop (duration_s, simulated seconds), module_loss (modules)."""
        self._sync(pile_id)
        self.model(pile_id).inject_fault(gun_no, kind, **params)

    def clear_faults(self, pile_id: str, gun_no: int | None = None) -> None:
        """Remove injected causes (one gun's, or the whole pile's) and reset latched faults."""
        self._sync(pile_id)
        self.model(pile_id).clear_faults(gun_no)

    def state(self, pile_id: str) -> dict:
        """Everything about a pile, JSON-able."""
        m = self.model(pile_id)
        self._sync(pile_id)
        snap = m.snapshot()
        host, port, unit = self.endpoints.get(pile_id, (None, None, None))
        pile = self.station.pile(pile_id)
        now = self.clock.now_s()
        snap.update(host=host, port=port, unit_id=unit, profile=pile.spec.model,
                    sim_time_s=now, sim_time=dt.datetime.fromtimestamp(now).isoformat(timespec="seconds"),
                    speed=self.clock.speed)
        return _jsonable(snap)

    def table(self) -> list[dict]:
        """One row per pile: id, host, port, unit, guns, profile."""
        return [{"pile": p.id, "host": self.endpoints.get(p.id, (p.host,))[0],
                 "port": self.endpoints.get(p.id, (None, p.port))[1], "unit": p.unit_id,
                 "guns": len(p.spec.guns), "profile": p.spec.model} for p in self.station.piles]


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
