"""Charging sessions: detected from gun state, measured by the pile's meter, billed by tariff period.

Energy is never integrated by the controller: a session's energy is the difference of the pile's
monotonic meter register (``energy_wh``) at its start and end. The pile also reports the energy
of its current (or last) session, so the meter value at the session's start is always
``energy_wh - session_energy_wh`` as the pile saw it: a session detected late (the controller
was down, or the pile was unreachable) still starts at the right meter value, and a restarted
controller recognises its own open sessions (same gun, same meter start) instead of opening
them twice.

Rules, per gun (the lower gun of a combined pair carries the pair's meter):
* a session is open while the gun is preparing, charging or suspended;
* it ends when the gun leaves those states (finishing, unplugged, faulted, out of service), or
  when the pile shows a different session (its meter start moved on): then the old session
  ended at the new one's meter start, since the meter only moves during sessions;
* a start is authorized by the id token (card or QR) the pile reports; a refused start opens no
  session, is recorded as an ``auth_refused`` event and gets 0 kW;
* meter samples (for the split by tariff period) are kept at most once per simulated minute
  per session, one batched insert per cycle; closing reads them back and bills with
  :func:`controller.billing.bill_session`; closing is idempotent.

Data of stale or offline piles never opens or closes anything: a session is held open until
the pile answers again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Callable

from .billing import Authorizer, bill_session
from .coordinator import GunSnapshot, Snapshot
from .policy import ACTIVE_STATES

log = logging.getLogger("evstack.controller.sessions")

SAMPLE_PERIOD_S = 60.0
METER_JITTER_WH = 1  # energy_wh and session_energy_wh are floored independently by the pile


@dataclass
class OpenSession:
    id: object
    gun_id: str
    start_s: float
    meter_start_wh: int
    vin: str
    id_token: str
    vehicle_id: str | None
    last_sample_s: float = field(default=float("-inf"))


@dataclass(frozen=True)
class SessionEvent:
    kind: str  # "session_start", "session_resumed", "session_stop", "auth_refused"
    gun_id: str
    t_s: float
    detail: dict


class SessionManager:
    """Keeps ``open`` (gun id -> :class:`OpenSession`) in step with the piles and the store.

    ``identify(gun, t_s, taken)`` returns the vehicle id of a newly plugged vehicle (from its
    VIN, or its gun via the plan) or None; ``taken`` is the set of vehicle ids already in a
    session.
    """

    def __init__(self, store, tariff, price_category: str, authorizer: Authorizer | None = None,
                 identify: Callable[[GunSnapshot, float, set], str | None] | None = None) -> None:
        self.store = store
        self.tariff = tariff
        self.price_category = price_category
        self.authorizer = authorizer or Authorizer(None)
        self.identify = identify or (lambda g, t, taken: None)
        self.open: dict[str, OpenSession] = {}
        self.refused: dict[str, int] = {}  # gun id -> pile meter start of the refused session
        self.bills: dict[object, object] = {}  # session id -> Bill of sessions closed by this process
        self._period: str | None = None
        self._new_period = False

    async def resume(self) -> int:
        """Load the sessions the store still has open (after a crash or restart)."""
        for r in await self.store.open_sessions():
            self.open[r.gun_id] = OpenSession(r.id, r.gun_id, r.start_s, int(r.meter_start_wh), r.vin or "",
                                              r.id_token or "", r.vehicle_id)
        return len(self.open)

    def vehicle_on(self, gun_id: str) -> str | None:
        s = self.open.get(gun_id)
        return s.vehicle_id if s else None

    def is_refused(self, g: GunSnapshot) -> bool:
        start = self.refused.get(g.gun_id)
        return start is not None and abs(start - (g.energy_wh - g.session_energy_wh)) <= METER_JITTER_WH

    async def update(self, snap: Snapshot) -> list[SessionEvent]:
        """Detect starts and ends in ``snap``; write them and this cycle's meter samples."""
        events: list[SessionEvent] = []
        samples = []
        t = snap.t_s
        # A sample right after each tariff period change keeps the split by period accurate
        # to one cycle's energy, with samples otherwise once a minute.
        period = self.tariff.period_at(dt.datetime.fromtimestamp(t))
        self._new_period, self._period = period != self._period, period
        for ps in snap.piles.values():
            if not ps.controllable:
                continue
            for g in ps.guns:
                events.extend(await self._gun(g, t, samples))
        if samples:
            await self.store.add_meter_samples(samples)
        for e in events:
            await self.store.add_event(e.t_s, e.kind, e.gun_id, e.detail)
        return events

    async def _gun(self, g: GunSnapshot, t: float, samples: list) -> list[SessionEvent]:
        from .store import MeterSample

        out: list[SessionEvent] = []
        active = g.state in ACTIVE_STATES
        pile_start_wh = int(g.energy_wh - g.session_energy_wh)
        s = self.open.get(g.gun_id)
        if s is not None:
            # The pile's two meter registers are floored separately: allow their 1 Wh of jitter.
            if abs(s.meter_start_wh - pile_start_wh) > METER_JITTER_WH:
                # The pile shows another session: ours ended where that one began.
                out.append(await self._close(s, t, max(s.meter_start_wh, pile_start_wh), "pile shows a newer session"))
                s = None
            elif not active:
                out.append(await self._close(s, t, int(g.energy_wh), g.state.name.lower()))
                return out
        if s is None and active:
            if self.is_refused(g):
                return out
            if not self.authorizer.check(g.id_token):
                self.refused[g.gun_id] = pile_start_wh
                out.append(SessionEvent("auth_refused", g.gun_id, t, {"id_token": g.id_token, "vin": g.vin}))
                log.warning("gun %s: start refused for id token %r", g.gun_id, g.id_token)
                return out
            self.refused.pop(g.gun_id, None)
            taken = {x.vehicle_id for x in self.open.values() if x.vehicle_id}
            vehicle_id = self.identify(g, t, taken)
            sid = await self.store.open_session(g.gun_id, t, pile_start_wh, g.vin or None, g.id_token or None,
                                                vehicle_id=vehicle_id)
            s = OpenSession(sid, g.gun_id, t, pile_start_wh, g.vin, g.id_token, vehicle_id)
            self.open[g.gun_id] = s
            out.append(SessionEvent("session_start", g.gun_id, t, {
                "session_id": sid, "vin": g.vin, "vehicle_id": vehicle_id, "meter_start_wh": pile_start_wh,
                "charge_point": g.charge_point_id}))
            log.info("gun %s: session %s started (vin %s, vehicle %s, meter %d Wh)",
                     g.gun_id, sid, g.vin or "-", vehicle_id or "-", pile_start_wh)
        if s is not None and (t - s.last_sample_s >= SAMPLE_PERIOD_S or self._new_period):
            samples.append(MeterSample(g.gun_id, t, int(g.energy_wh), float(g.power_kw), float(g.soc_pct)))
            s.last_sample_s = t
        return out

    async def _close(self, s: OpenSession, t: float, meter_end_wh: int, why: str) -> SessionEvent:
        rows = await self.store.meter_samples(s.gun_id, s.start_s, t)
        pts = [(s.start_s, s.meter_start_wh)]
        for r in rows:
            rt, re_ = _sample_t_e(r)
            if s.start_s <= rt <= t and pts[-1][1] <= re_ <= meter_end_wh and rt >= pts[-1][0]:
                pts.append((rt, re_))
        pts.append((max(t, pts[-1][0]), meter_end_wh))
        bill = bill_session(self.tariff, self.price_category, pts)
        await self.store.close_session(s.id, t, meter_end_wh, bill)
        self.open.pop(s.gun_id, None)
        self.bills[s.id] = bill
        log.info("gun %s: session %s closed (%s): %d Wh, electricity %.2f CNY + service %.2f CNY",
                 s.gun_id, s.id, why, bill.energy_wh, bill.electricity_cny, bill.service_cny)
        return SessionEvent("session_stop", s.gun_id, t, {
            "session_id": s.id, "energy_wh": bill.energy_wh, "electricity_cny": bill.electricity_cny,
            "service_cny": bill.service_cny, "total_cny": bill.total_cny, "reason": why,
            "kwh_by_period": bill.energy_kwh_by_period})


def _sample_t_e(row) -> tuple[float, int]:
    if isinstance(row, tuple):
        return float(row[0]), int(row[1])
    return float(row.t_s), int(row.energy_wh)
