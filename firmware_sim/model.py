"""The simulated pile firmware: a pure model of one pile, its guns and the vehicles behind them.

No I/O, no asyncio, no clock of its own: :meth:`PileModel.step` advances the pile by a number
of simulated seconds, :meth:`PileModel.write` / :meth:`PileModel.write_block` apply what a
Modbus master writes (returning a Modbus exception code when refused), and
:meth:`PileModel.read_pile_words` gives the register image of the whole pile, encoded with the
one register map of :mod:`hw_profiles.registers`.

Units: kW, A, V, Wh (meter), %, °C, simulated seconds. Every number of the pile comes from its
:class:`~hw_profiles.specs.PileSpec`; every vehicle number from its
:class:`~hw_profiles.specs.VehicleSpec` through :mod:`hw_profiles.vehicle`.

Gun life cycle (register ``state``)::

    AVAILABLE --plug in--> PREPARING (insulation test + pre-charge, spec.preparing_s)
        --> CHARGING <--> SUSPENDED_PILE (limit below the gun's minimum, e.g. setpoint 0)
                     <--> SUSPENDED_EV   (the BMS pauses)
        --> FINISHING (target SoC reached, or command STOP) --unplug--> AVAILABLE
    any --fault (over-temperature trip, insulation, emergency stop)--> FAULTED
        --reset, cause gone--> PREPARING (vehicle still plugged) or AVAILABLE
    second gun of a combined pair, or out of service: UNAVAILABLE
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hw_profiles import registers as rm
from hw_profiles import vehicle as vm
from hw_profiles.registers import BmsMode, Command, FaultBits, GunState
from hw_profiles.specs import AC_PHASE_VOLTAGE_V, GunKind, PileSpec, VehicleSpec, WordOrder

EXC_ILLEGAL_ADDRESS = 2
"""Modbus exception 02: address outside the map, read-only register, or not on this gun kind."""
EXC_ILLEGAL_VALUE = 3
"""Modbus exception 03: value out of range or unknown command; nothing is applied."""

AMBIENT_C = 25.0
"""Gun temperature with no load, °C."""
FULL_LOAD_RISE_C = 20.0
"""Temperature rise at rated power, °C (stays below the derating knee in normal use)."""
MAX_SUBSTEP_S = 10.0
"""Longest simulated interval integrated in one go (ramp and SoC taper stay accurate)."""
MAX_SUBSTEPS = 60

FAULT_KINDS = ("over_temperature", "insulation", "emergency_stop", "meter_failure", "comm_drop", "module_loss")
_STOP_FAULTS = FaultBits.OVER_TEMPERATURE | FaultBits.INSULATION | FaultBits.EMERGENCY_STOP


class SimError(ValueError):
    """A request of the bench (plug in, fault...) that does not fit the pile's state or spec.

    ``field`` names the offending argument, so the HTTP API can say which one.
    """

    def __init__(self, field_name: str, reason: str, *, conflict: bool = False) -> None:
        self.field = field_name
        self.reason = reason
        self.conflict = conflict  # valid request, wrong moment (gun occupied, nothing plugged in)
        super().__init__(f"{field_name}: {reason}")


@dataclass
class Vehicle:
    """A vehicle plugged into a gun: its battery state, what its BMS says, who it is."""

    profile: str
    spec: VehicleSpec
    vin: str
    soc_pct: float
    target_soc_pct: float
    id_token: str = ""
    paused: bool = False  # the BMS asks for nothing for now (SUSPENDED_EV)


@dataclass
class Gun:
    """One gun's firmware state. Setpoints are stored as written (kW for DC, A per phase for AC)."""

    no: int
    kind: GunKind
    rated_kw: float  # the gun's own rating; a combined lead shows the pair's rating instead
    min_kw: float
    current_min_a: float
    current_max_a: float
    phases: int
    setpoint_kw: float = 0.0
    setpoint_a: float = 0.0
    failsafe_kw: float = 0.0
    failsafe_a: float = 0.0
    validity_s: float = 10.0
    last_feed_s: float = 0.0  # pile time of the last accepted setpoint / heartbeat write
    heartbeat: int = 0
    command: int = 0
    vehicle: Vehicle | None = None
    paired_gun: int = 0
    lead: bool = False  # lower gun of a combined pair: carries setpoint, vehicle and meter
    preparing_left_s: float = 0.0
    finished: bool = False
    out_of_service: bool = False
    power_kw: float = 0.0
    meter_wh: float = 0.0
    meter_ceiling_wh: float | None = None  # served meter never exceeds this (what is persisted)
    session_start_wh: float = 0.0
    session_end_wh: float | None = None
    forced_temperature_c: float | None = None
    insulation_bad: bool = False
    meter_failed: bool = False
    frozen: dict | None = None  # meter registers frozen at the moment of a meter failure
    latched: FaultBits = FaultBits.NONE
    # derived each step, served in registers
    state: GunState = GunState.AVAILABLE
    applied_limit_kw: float = 0.0
    max_available_kw: float = 0.0
    temperature_c: float = AMBIENT_C
    derating: bool = False

    @property
    def ac(self) -> bool:
        return self.kind is GunKind.AC

    def kw_from_amps(self, a: float) -> float:
        return self.phases * AC_PHASE_VOLTAGE_V * a / 1000.0


class PileModel:
    """One pile: header, guns, module pool, attached vehicles. See the module docstring."""

    def __init__(self, pile_id: str, spec: PileSpec, word_order: WordOrder = WordOrder.BIG) -> None:
        self.pile_id = pile_id
        self.spec = spec
        self.word_order = word_order
        self.t_s = 0.0  # simulated seconds since the firmware started (uptime)
        self.modules_lost = 0
        self.estop_pressed = False
        self.estop_latched = False
        self.comm_drop_left_s = 0.0
        self.guns: list[Gun] = []
        for no, g in enumerate(spec.guns, start=1):
            failsafe_a = 0.0
            if g.kind is GunKind.AC and spec.failsafe_kw > 0:
                failsafe_a = min(g.current_max_a, max(g.current_min_a, g.amps_from_kw(spec.failsafe_kw)))
            self.guns.append(Gun(
                no=no, kind=g.kind, rated_kw=g.rated_kw, min_kw=g.min_kw, current_min_a=g.current_min_a,
                current_max_a=g.current_max_a, phases=g.phases, validity_s=spec.validity_s,
                failsafe_kw=spec.failsafe_kw if g.kind is GunKind.DC else 0.0, failsafe_a=failsafe_a,
            ))
        self._words: list[int] | None = None
        self._update(0.0)

    # ------------------------------------------------------------------ helpers

    @property
    def gun_count(self) -> int:
        return len(self.guns)

    def gun(self, gun_no: int) -> Gun:
        if not isinstance(gun_no, int) or not 1 <= gun_no <= len(self.guns):
            raise SimError("gun_no", f"pile {self.pile_id} has guns 1..{len(self.guns)}, got {gun_no!r}")
        return self.guns[gun_no - 1]

    @property
    def modules_online(self) -> int:
        return max(0, self.spec.module_count - self.modules_lost)

    def partner(self, gun_no: int) -> int:
        """The gun a combined pair is made with: pairs are (1, 2), (3, 4)."""
        return gun_no + 1 if gun_no % 2 == 1 else gun_no - 1

    def gun_rating_kw(self, g: Gun) -> float:
        return self.spec.combined_max_kw if g.lead else g.rated_kw

    def expired(self, g: Gun) -> bool:
        return self.t_s - g.last_feed_s >= g.validity_s

    def pile_faults(self) -> FaultBits:
        bits = FaultBits.NONE
        if self.estop_latched:
            bits |= FaultBits.EMERGENCY_STOP
        if self.modules_lost:
            bits |= FaultBits.MODULE_LOSS
        return bits

    def gun_faults(self, g: Gun) -> FaultBits:
        bits = g.latched | self.pile_faults()
        if g.derating:
            bits |= FaultBits.DERATING
        if self.expired(g):
            bits |= FaultBits.FAILSAFE
        return bits

    @property
    def comm_dropped(self) -> bool:
        """True while an injected communication drop lasts: the server must not answer."""
        return self.comm_drop_left_s > 0

    # ------------------------------------------------------------------ bench actions

    def plug_in(self, gun_no: int, vehicle: Vehicle, combined: bool = False) -> None:
        """Plug ``vehicle`` into ``gun_no`` (and its partner when ``combined``)."""
        g = self.gun(gun_no)
        if not 0 <= vehicle.soc_pct <= 100:
            raise SimError("soc_pct", f"must be 0..100, got {vehicle.soc_pct!r}")
        if not 0 < vehicle.target_soc_pct <= 100:
            raise SimError("target_soc_pct", f"must be in (0, 100], got {vehicle.target_soc_pct!r}")
        if len(vehicle.vin) > 17 or not vehicle.vin.isascii():
            raise SimError("vin", "at most 17 ASCII characters")
        if len(vehicle.id_token) > 20 or not vehicle.id_token.isascii():
            raise SimError("id_token", "at most 20 ASCII characters")
        guns = [g]
        if combined:
            if not self.spec.combinable:
                raise SimError("combined", f"pile {self.pile_id} ({self.spec.model}) cannot combine guns")
            other_no = self.partner(gun_no)
            if not 1 <= other_no <= len(self.guns):
                raise SimError("combined", f"gun {gun_no} has no partner gun")
            guns.append(self.guns[other_no - 1])
        for x in guns:
            if x.vehicle is not None or x.paired_gun:
                raise SimError("gun_no", f"gun {x.no} of pile {self.pile_id} is occupied", conflict=True)
            if x.out_of_service:
                raise SimError("gun_no", f"gun {x.no} of pile {self.pile_id} is out of service", conflict=True)
        lead = min(guns, key=lambda x: x.no)
        if combined:
            other = max(guns, key=lambda x: x.no)
            lead.lead, lead.paired_gun, other.paired_gun = True, other.no, lead.no
        lead.vehicle = vehicle
        lead.finished = False
        lead.preparing_left_s = self.spec.preparing_s
        lead.session_start_wh = lead.meter_wh
        lead.session_end_wh = None
        lead.power_kw = 0.0
        self._update(0.0)

    def unplug(self, gun_no: int) -> None:
        """Unplug whatever is on ``gun_no`` (either gun of a combined pair)."""
        g = self.gun(gun_no)
        if g.paired_gun and not g.lead:
            g = self.guns[g.paired_gun - 1]
        if g.vehicle is None:
            raise SimError("gun_no", f"nothing is plugged into gun {gun_no} of pile {self.pile_id}", conflict=True)
        if g.session_end_wh is None:
            g.session_end_wh = g.meter_wh
        if g.paired_gun:
            other = self.guns[g.paired_gun - 1]
            other.paired_gun = 0
            g.paired_gun, g.lead = 0, False
        g.vehicle = None
        g.finished = False
        g.power_kw = 0.0
        g.preparing_left_s = 0.0
        self._update(0.0)

    def set_paused(self, gun_no: int, paused: bool) -> None:
        """The vehicle's BMS pauses (asks for nothing) or resumes."""
        g = self.gun(gun_no)
        if g.paired_gun and not g.lead:
            g = self.guns[g.paired_gun - 1]
        if g.vehicle is None:
            raise SimError("gun_no", f"nothing is plugged into gun {gun_no} of pile {self.pile_id}", conflict=True)
        g.vehicle.paused = bool(paused)
        self._update(0.0)

    def set_in_service(self, gun_no: int, in_service: bool) -> None:
        """Take a gun out of service (UNAVAILABLE) or back."""
        g = self.gun(gun_no)
        if not in_service and (g.vehicle is not None or g.paired_gun):
            raise SimError("gun_no", f"gun {gun_no} is in use; unplug first", conflict=True)
        g.out_of_service = not in_service
        self._update(0.0)

    def inject_fault(self, gun_no: int | None, kind: str, *, temperature_c: float | None = None,
                     duration_s: float | None = None, modules: int | None = None) -> None:
        """Inject a fault. Pile-wide kinds (emergency_stop, comm_drop, module_loss) ignore ``gun_no``."""
        if kind not in FAULT_KINDS:
            raise SimError("kind", f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if kind == "emergency_stop":
            self.estop_pressed = self.estop_latched = True
        elif kind == "comm_drop":
            if duration_s is None or not (isinstance(duration_s, (int, float)) and 0 < duration_s <= 86400):
                raise SimError("duration_s", f"comm_drop needs duration_s in (0, 86400] simulated seconds, got {duration_s!r}")
            self.comm_drop_left_s = float(duration_s)
        elif kind == "module_loss":
            if self.spec.module_count == 0:
                raise SimError("kind", f"pile {self.pile_id} has no power modules")
            if modules is None or isinstance(modules, bool) or not isinstance(modules, int) \
                    or not 1 <= modules <= self.spec.module_count:
                raise SimError("modules", f"module_loss needs modules in 1..{self.spec.module_count}, got {modules!r}")
            self.modules_lost = modules
        else:
            g = self.gun(gun_no if gun_no is not None else 1)
            if kind == "over_temperature":
                if temperature_c is None or not isinstance(temperature_c, (int, float)) \
                        or not -40 <= temperature_c <= 200:
                    raise SimError("temperature_c", f"over_temperature needs temperature_c in -40..200, got {temperature_c!r}")
                g.forced_temperature_c = float(temperature_c)
            elif kind == "insulation":
                g.insulation_bad = True
            elif kind == "meter_failure":
                if not g.meter_failed:
                    g.meter_failed = True
                    g.frozen = self._meter_values(g)
                g.latched |= FaultBits.METER_FAILURE
        self._update(0.0)

    def clear_faults(self, gun_no: int | None = None) -> None:
        """Remove injected causes (of ``gun_no``, or the whole pile) and reset latched faults."""
        guns = self.guns if gun_no is None else [self.gun(gun_no)]
        if gun_no is None:
            self.estop_pressed = False
            self.modules_lost = 0
            self.comm_drop_left_s = 0.0
        for g in guns:
            g.forced_temperature_c = None
            g.insulation_bad = False
            if g.meter_failed:
                g.meter_failed = False
                g.frozen = None
        self._update(0.0)
        self.reset(gun_no)

    def reset(self, gun_no: int | None = None) -> None:
        """Command RESET: clear latched faults whose cause is gone."""
        if not self.estop_pressed:
            self.estop_latched = False
        for g in self.guns if gun_no is None else [self.gun(gun_no)]:
            was_faulted = bool(g.latched & _STOP_FAULTS)
            if g.temperature_c < self.spec.trip_temp_c:
                g.latched &= ~FaultBits.OVER_TEMPERATURE
            if not g.insulation_bad:
                g.latched &= ~FaultBits.INSULATION
            if not g.meter_failed:
                g.latched &= ~FaultBits.METER_FAILURE
            if was_faulted and not (g.latched & _STOP_FAULTS) and g.vehicle is not None and not g.finished:
                g.preparing_left_s = self.spec.preparing_s  # a new insulation test before power flows
        self._update(0.0)

    # ------------------------------------------------------------------ Modbus writes

    def check_write(self, gun_no: int, name: str, value: float) -> int | None:
        """The exception code a write of ``value`` (engineering units) would get, or None."""
        if not 1 <= gun_no <= len(self.guns):
            return EXC_ILLEGAL_ADDRESS
        reg = rm.GUN_REGISTER.get(name)
        g = self.guns[gun_no - 1]
        if reg is None or not reg.writable or g.kind not in reg.kinds:
            return EXC_ILLEGAL_ADDRESS
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return EXC_ILLEGAL_VALUE
        if reg.write_min is not None and value < reg.write_min - 1e-9:
            return EXC_ILLEGAL_VALUE
        if reg.write_max is not None and value > reg.write_max + 1e-9:
            return EXC_ILLEGAL_VALUE
        if name in ("setpoint_kw", "failsafe_kw") and value > self.gun_rating_kw(g) + 1e-9:
            return EXC_ILLEGAL_VALUE
        if name in ("setpoint_a", "failsafe_a") and value != 0 and not (
                g.current_min_a - 1e-9 <= value <= g.current_max_a + 1e-9):
            return EXC_ILLEGAL_VALUE
        if name == "command" and int(value) not in {c.value for c in Command}:
            return EXC_ILLEGAL_VALUE
        return None

    def write(self, gun_no: int, name: str, value: float) -> int | None:
        """Apply a write of register ``name`` (engineering units). Returns None, or the Modbus
        exception code (2 or 3) of a refusal, in which case nothing changed."""
        code = self.check_write(gun_no, name, value)
        if code is not None:
            return code
        self._apply(self.guns[gun_no - 1], name, value)
        self._update(0.0)
        return None

    def _apply(self, g: Gun, name: str, value: float) -> None:
        if name in ("setpoint_kw", "setpoint_a", "heartbeat"):
            g.last_feed_s = self.t_s
        if name == "command":
            g.command = int(value)
            if value == Command.STOP and g.vehicle is not None:
                g.finished = True
            elif value == Command.START and g.vehicle is not None and g.finished:
                g.finished = False
                g.preparing_left_s = self.spec.preparing_s
                g.session_start_wh, g.session_end_wh = g.meter_wh, None
            elif value == Command.RESET:
                self.reset(g.no)
        elif name == "validity_s":
            g.validity_s = float(int(value))
        elif name == "heartbeat":
            g.heartbeat = int(value)
        else:
            setattr(g, name, float(value))

    def write_block(self, address: int, words: list[int]) -> tuple[int | None, list[dict]]:
        """A Modbus write of ``words`` at ``address``: all or nothing.

        Returns (exception code or None, one entry per register touched:
        ``{gun, register, address, value, raw}``) for the audit log.
        """
        entries: list[dict] = []
        code: int | None = None
        i = 0
        while i < len(words):
            addr = address + i
            hit = rm.locate(addr, len(self.guns))
            if hit is None or hit[0] == 0:
                entries.append({"gun": None if hit is None else 0, "register": None if hit is None else hit[1].name,
                                "address": addr, "value": words[i], "raw": words[i]})
                code = code or EXC_ILLEGAL_ADDRESS
                i += 1
                continue
            gun_no, reg = hit
            start = rm.gun_base(gun_no) + reg.offset
            raw = list(words[i: i + reg.words])
            if start != addr or len(raw) < reg.words:  # a partial write of a multi-word register
                entries.append({"gun": gun_no, "register": reg.name, "address": addr, "value": None, "raw": raw})
                code = code or EXC_ILLEGAL_ADDRESS
                i += max(1, len(raw))
                continue
            value = rm.decode(reg, raw, self.word_order) if reg.type is not rm.RegType.STRING else None
            entries.append({"gun": gun_no, "register": reg.name, "address": addr, "value": value, "raw": raw})
            c = self.check_write(gun_no, reg.name, value) if value is not None else EXC_ILLEGAL_ADDRESS
            if c is not None:
                code = code or c
            i += reg.words
        if code is None:
            for e in entries:
                self._apply(self.guns[e["gun"] - 1], e["register"], e["value"])
            self._update(0.0)
        for e in entries:
            e["code"] = code
        return code, entries

    # ------------------------------------------------------------------ time

    def step(self, dt_s: float) -> None:
        """Advance the pile by ``dt_s`` simulated seconds."""
        if not dt_s > 0:
            return
        n = min(MAX_SUBSTEPS, max(1, math.ceil(dt_s / MAX_SUBSTEP_S)))
        h = dt_s / n
        for _ in range(n):
            self._update(h)

    def _eff_limit_kw(self, g: Gun) -> float:
        """Setpoint (or fail-safe) in kW, capped by rating and derating."""
        if g.ac:
            a = g.failsafe_a if self.expired(g) else g.setpoint_a
            sp = g.kw_from_amps(a)
        else:
            sp = g.failsafe_kw if self.expired(g) else g.setpoint_kw
        rating = self.gun_rating_kw(g)
        return min(sp, rating, rating * self.spec.derate_fraction(g.temperature_c))

    def _bms_kw(self, g: Gun) -> float:
        v = g.vehicle
        if v is None or v.paused:
            return 0.0
        kw = vm.acceptance_kw(v.spec, v.soc_pct, v.target_soc_pct)
        return min(kw, v.spec.ac_max_kw) if g.ac else kw

    def _update(self, dt_s: float) -> None:
        """Advance by ``dt_s`` (0: only recompute what the registers show)."""
        spec = self.spec
        self.t_s += dt_s
        if self.comm_drop_left_s > 0:
            self.comm_drop_left_s = max(0.0, self.comm_drop_left_s - dt_s)
        guns = self.guns
        # temperature, trips and faults
        for g in guns:
            load = g.power_kw / g.rated_kw if g.rated_kw else 0.0
            g.temperature_c = g.forced_temperature_c if g.forced_temperature_c is not None \
                else AMBIENT_C + FULL_LOAD_RISE_C * min(load, 2.0)
            if g.temperature_c >= spec.trip_temp_c:
                g.latched |= FaultBits.OVER_TEMPERATURE
            if g.insulation_bad and (g.vehicle is not None or g.latched & FaultBits.INSULATION):
                g.latched |= FaultBits.INSULATION  # found by the insulation monitor while a vehicle is connected
            g.derating = spec.derate_fraction(g.temperature_c) < 1.0
        # who can take power, and the module pool split between them
        ready = []
        for g in guns:
            faulted = bool(g.latched & _STOP_FAULTS) or self.estop_latched
            if g.out_of_service or (g.paired_gun and not g.lead):
                g.state = GunState.UNAVAILABLE
            elif faulted:
                g.state = GunState.FAULTED
            elif g.vehicle is None:
                g.state = GunState.AVAILABLE
            elif g.finished:
                g.state = GunState.FINISHING
            elif g.vehicle.soc_pct >= g.vehicle.target_soc_pct - 1e-9 and g.preparing_left_s <= 0:
                g.finished = True  # the BMS ends the session at its target (GB/T 27930 BST)
                g.session_end_wh = g.meter_wh
                g.state = GunState.FINISHING
            elif g.preparing_left_s > 0:
                g.state = GunState.PREPARING
                g.preparing_left_s = max(0.0, g.preparing_left_s - dt_s)
            else:
                ready.append(g)
        wants = {g.no: self._eff_limit_kw(g) for g in ready}
        share = self._module_shares(wants)
        pile_budget = self._pool_kw()
        for g in guns:
            limit = min(self._eff_limit_kw(g), share.get(g.no, 0.0)) if g in ready else 0.0
            g.applied_limit_kw = max(0.0, limit)
            rating = self.gun_rating_kw(g)
            cap = rating * spec.derate_fraction(g.temperature_c)
            others = sum(share.get(x.no, 0.0) for x in ready if x is not g)
            g.max_available_kw = max(0.0, min(cap, pile_budget - others, self._bms_kw(g))) \
                if g.vehicle is not None and g.state not in (GunState.FAULTED, GunState.UNAVAILABLE) else 0.0
        # power, energy, vehicle
        for g in guns:
            if g not in ready:
                g.power_kw = 0.0
                continue
            v = g.vehicle
            bms = self._bms_kw(g)
            # the pile cannot run below its minimum; the vehicle may draw less than the limit
            target = min(g.applied_limit_kw, bms) if g.applied_limit_kw >= g.min_kw - 1e-9 else 0.0
            if bms <= 0:
                g.state = GunState.SUSPENDED_EV
            elif target <= 0:
                g.state = GunState.SUSPENDED_PILE
            else:
                g.state = GunState.CHARGING
            p0 = g.power_kw
            p1 = target if target <= p0 else min(target, p0 + spec.ramp_kw_per_s * dt_s)
            g.power_kw = p1
            if dt_s > 0 and (p0 > 0 or p1 > 0):
                avg = 0.5 * (min(p0, p1) + p1) if p1 > p0 else p1  # downward steps are immediate
                soc, kwh = vm.charge_step(v.spec, v.soc_pct, avg, dt_s, v.target_soc_pct)
                v.soc_pct = soc
                if not g.meter_failed:
                    g.meter_wh += kwh * 1000.0
                if v.soc_pct >= v.target_soc_pct - 1e-9:
                    g.finished = True
                    g.power_kw = 0.0
                    g.state = GunState.FINISHING
                    g.session_end_wh = g.meter_wh
        self._words = None

    def _pool_kw(self) -> float:
        if self.spec.module_count:
            return self.modules_online * self.spec.module_kw
        return sum(g.rated_kw for g in self.guns)

    def _module_shares(self, wants: dict[int, float]) -> dict[int, float]:
        """kW each gun may draw from the module pool: whole modules, handed out one at a time
        in gun order until every gun has what it wants or the pool is empty."""
        spec = self.spec
        if not spec.module_count:
            return dict(wants)
        need = {n: math.ceil(w / spec.module_kw - 1e-9) if w > 0 else 0 for n, w in wants.items()}
        got = dict.fromkeys(need, 0)
        left = self.modules_online
        while left > 0:
            moved = False
            for n in need:
                if got[n] < need[n] and left > 0:
                    got[n] += 1
                    left -= 1
                    moved = True
            if not moved:
                break
        return {n: got[n] * spec.module_kw for n in need}

    # ------------------------------------------------------------------ registers

    def _meter_values(self, g: Gun) -> dict:
        if g.frozen is not None:
            return g.frozen
        energy = g.meter_wh if g.meter_ceiling_wh is None else min(g.meter_wh, g.meter_ceiling_wh)
        if g.vehicle is not None and not g.ac:
            volts = vm.pack_voltage_v(g.vehicle.spec, g.vehicle.soc_pct) if g.power_kw > 0 else 0.0
            amps = g.power_kw * 1000.0 / volts if volts else 0.0
        elif g.ac and g.power_kw > 0:
            volts = AC_PHASE_VOLTAGE_V
            amps = g.power_kw * 1000.0 / (g.phases * AC_PHASE_VOLTAGE_V)
        else:
            volts = amps = 0.0
        end = g.session_end_wh if g.session_end_wh is not None else energy
        session = max(0.0, min(end, energy) - g.session_start_wh)
        return {"voltage_v": volts, "current_a": amps, "power_kw": g.power_kw,
                "energy_wh": math.floor(energy), "session_energy_wh": math.floor(session)}

    def gun_values(self, g: Gun) -> dict:
        """Engineering values of gun ``g``'s register block."""
        vals = {
            "state": int(g.state), "fault_code": int(self.gun_faults(g)),
            "setpoint_kw": g.setpoint_kw, "setpoint_a": g.setpoint_a,
            "applied_limit_kw": g.applied_limit_kw, "failsafe_kw": g.failsafe_kw, "failsafe_a": g.failsafe_a,
            "validity_s": g.validity_s,
            "remaining_s": max(0.0, g.validity_s - (self.t_s - g.last_feed_s)),
            "setpoint_accepted": 0 if self.expired(g) else 1,
            "heartbeat": g.heartbeat, "command": g.command,
            "temperature_c": g.temperature_c, "max_available_kw": g.max_available_kw,
            "paired_gun": g.paired_gun, "min_kw": g.min_kw, "rated_kw": self.gun_rating_kw(g),
            "soc_pct": 0.0, "bms_demand_voltage_v": 0.0, "bms_demand_current_a": 0.0,
            "bms_mode": int(BmsMode.NONE), "bms_remaining_min": 0, "vin": "", "id_token": "",
        }
        vals.update(self._meter_values(g))
        v = g.vehicle
        if v is not None:
            vals["id_token"] = v.id_token
            if not g.ac:  # GB/T 27930 (BMS messages) exists on DC only; an AC pile sees no SoC or VIN
                d = vm.bms_demand(v.spec, v.soc_pct, v.target_soc_pct)
                if v.paused:
                    d = vm.BmsDemand(d.voltage_v, 0.0, BmsMode.NONE, d.remaining_min)
                vals.update(soc_pct=v.soc_pct, bms_demand_voltage_v=d.voltage_v, bms_demand_current_a=d.current_a,
                            bms_mode=int(d.mode), bms_remaining_min=d.remaining_min, vin=v.vin)
        return vals

    def header_values(self) -> dict:
        spec = self.spec
        caps = sum(g.rated_kw * spec.derate_fraction(g.temperature_c) for g in self.guns)
        return {
            "map_version": rm.MAP_VERSION, "gun_count": len(self.guns),
            "pile_class": rm.PILE_CLASS_CODES[spec.pile_class.value],
            "modules_total": spec.module_count, "modules_online": self.modules_online,
            "module_kw": spec.module_kw, "pile_fault_code": int(self.pile_faults()),
            "pile_max_kw": min(self._pool_kw(), caps), "uptime_s": int(self.t_s),
        }

    def read_pile_words(self) -> list[int]:
        """The register image of the whole pile from address 0 (header + every gun block)."""
        if self._words is None:
            words = _encode_block(self.header_values(), rm.PILE_HEADER, rm.PILE_HEADER_WORDS, self.word_order)
            for g in self.guns:
                words += _encode_block(self.gun_values(g), rm.GUN_BLOCK, rm.GUN_STRIDE, self.word_order)
            self._words = words
        return self._words

    def set_meter_ceiling(self, gun_no: int, ceiling_wh: float | None) -> None:
        """Never serve a meter above ``ceiling_wh`` (the value last persisted). None: no ceiling."""
        g = self.guns[gun_no - 1]
        if g.meter_ceiling_wh != ceiling_wh:
            g.meter_ceiling_wh = ceiling_wh
            self._words = None

    # ------------------------------------------------------------------ snapshot & persistence

    def snapshot(self) -> dict:
        """Everything about the pile, JSON-able (the control API's ``GET /piles/{id}``)."""
        guns = []
        for g in self.guns:
            vals = self.gun_values(g)
            vals["state_name"] = GunState(g.state).name
            vals["faults"] = [b.name for b in FaultBits if b and vals["fault_code"] & b]
            vals["gun_no"] = g.no
            vals["kind"] = g.kind.value
            vals["meter_wh_exact"] = g.meter_wh
            vals["preparing_left_s"] = g.preparing_left_s
            vals["out_of_service"] = g.out_of_service
            v = g.vehicle
            vals["vehicle"] = None if v is None else {
                "profile": v.profile, "vin": v.vin, "soc_pct": v.soc_pct, "target_soc_pct": v.target_soc_pct,
                "id_token": v.id_token, "paused": v.paused, "combined": bool(g.paired_gun),
            }
            guns.append(vals)
        header = self.header_values()
        header["pile_faults"] = [b.name for b in FaultBits if b and header["pile_fault_code"] & b]
        return {"pile_id": self.pile_id, "model": self.spec.model, "header": header, "guns": guns,
                "comm_drop_left_s": self.comm_drop_left_s, "emergency_stop_pressed": self.estop_pressed}

    def to_state(self) -> dict:
        """What survives a restart: meters, sessions, vehicles, configuration registers."""
        guns = []
        for g in self.guns:
            v = g.vehicle
            guns.append({
                "meter_wh": g.meter_wh, "session_start_wh": g.session_start_wh, "session_end_wh": g.session_end_wh,
                "failsafe_kw": g.failsafe_kw, "failsafe_a": g.failsafe_a, "validity_s": g.validity_s,
                "finished": g.finished, "paired_gun": g.paired_gun, "lead": g.lead, "out_of_service": g.out_of_service,
                "vehicle": None if v is None else {
                    "profile": v.profile, "vin": v.vin, "soc_pct": v.soc_pct, "target_soc_pct": v.target_soc_pct,
                    "id_token": v.id_token, "paused": v.paused},
            })
        return {"model": self.spec.model, "guns": guns}

    def load_state(self, state: dict, vehicles) -> None:
        """Restore :meth:`to_state` output. ``vehicles`` maps a profile name to its VehicleSpec.
        A plugged vehicle goes through PREPARING again (the firmware rebooted)."""
        for g, s in zip(self.guns, state.get("guns", [])):
            g.meter_wh = float(s.get("meter_wh", 0.0))
            g.session_start_wh = float(s.get("session_start_wh", g.meter_wh))
            g.session_end_wh = s.get("session_end_wh")
            g.failsafe_kw = float(s.get("failsafe_kw", g.failsafe_kw))
            g.failsafe_a = float(s.get("failsafe_a", g.failsafe_a))
            g.validity_s = float(s.get("validity_s", g.validity_s))
            g.finished = bool(s.get("finished", False))
            g.paired_gun = int(s.get("paired_gun", 0))
            g.lead = bool(s.get("lead", False))
            g.out_of_service = bool(s.get("out_of_service", False))
            v = s.get("vehicle")
            if v is not None:
                g.vehicle = Vehicle(profile=v["profile"], spec=vehicles(v["profile"]), vin=v["vin"],
                                    soc_pct=float(v["soc_pct"]), target_soc_pct=float(v["target_soc_pct"]),
                                    id_token=v.get("id_token", ""), paused=bool(v.get("paused", False)))
                g.preparing_left_s = self.spec.preparing_s if not g.finished else 0.0
        self._update(0.0)


def _encode_block(values: dict, block, size: int, word_order: WordOrder) -> list[int]:
    """Encode a block; numbers that do not fit their register saturate instead of failing."""
    out = [0] * size
    for r in block:
        v = values.get(r.name)
        if v is None:
            continue
        try:
            out[r.offset: r.offset + r.words] = rm.encode(r, v, word_order)
        except ValueError:
            bits = 16 * r.words
            lo, hi = (-(1 << 15), (1 << 15) - 1) if r.type is rm.RegType.I16 else (0, (1 << bits) - 1)
            raw = lo if float(v) < 0 else hi
            out[r.offset: r.offset + r.words] = rm.encode(r, raw * r.scale, word_order)
    return out

