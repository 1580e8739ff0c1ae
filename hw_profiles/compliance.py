"""The rules of the Qujing technical direction (DOMAIN.md), as plain functions over specs.

Each rule yields :class:`RuleResult` rows with a concrete reason, pass or fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .fleet import FleetVehicle, format_clock
from .specs import GunKind, PileClass, StationKind, StationSpec, VehicleClass

BUS_GUN_MIN_KW = 180.0
BUS_COMBINED_MIN_KW = 360.0
LOGISTICS_GUN_MIN_KW = 60.0
LOGISTICS_COMBINED_MIN_KW = 120.0
LOGISTICS_STATION_MIN_KW = 300.0
LOGISTICS_STATION_MIN_GUNS = 20
DISTRIBUTED_DC_MAX_KW = 60.0
AC_THREE_PHASE_MAX_KW = 30.0
AC_SINGLE_PHASE_MAX_KW = 7.0
BUS_VALLEY_BAND_KW = (30.0, 60.0)
LOGISTICS_VALLEY_BAND_KW = (15.0, 30.0)
SUBSIDY_DC_CNY_PER_KW = 500.0
SUBSIDY_AC_CNY_PER_KW = 200.0

CLASS_LABEL = {
    PileClass.BUS_DC: "bus DC pile",
    PileClass.LOGISTICS_DC: "logistics DC pile",
    PileClass.DISTRIBUTED_DC: "distributed DC pile",
    PileClass.AC_THREE_PHASE: "AC three-phase pile",
    PileClass.AC_SINGLE_PHASE: "AC single-phase pile",
}


@dataclass(frozen=True)
class RuleResult:
    rule: str  # stable id, e.g. "hardware.ac_single_phase"
    subject: str  # what it is about, e.g. "pile P3 gun 2"
    passed: bool
    reason: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.subject}: {self.reason}"


def _r(rule, subject, ok, reason) -> RuleResult:
    return RuleResult(rule, subject, bool(ok), reason)


@dataclass(frozen=True)
class ClassRule:
    """The per-gun rule of one hardware class: gun kind and phases, and a floor or a cap in kW."""

    label: str
    kind: GunKind
    phases: int  # 0 for DC
    min_kw: float | None = None
    max_kw: float | None = None
    combined_min_kw: float | None = None  # two guns on one vehicle


CLASS_RULES = {
    PileClass.BUS_DC: ClassRule("bus DC", GunKind.DC, 0, min_kw=BUS_GUN_MIN_KW, combined_min_kw=BUS_COMBINED_MIN_KW),
    PileClass.LOGISTICS_DC: ClassRule("logistics DC", GunKind.DC, 0, min_kw=LOGISTICS_GUN_MIN_KW,
                                      combined_min_kw=LOGISTICS_COMBINED_MIN_KW),
    PileClass.DISTRIBUTED_DC: ClassRule("distributed DC", GunKind.DC, 0, max_kw=DISTRIBUTED_DC_MAX_KW),
    PileClass.AC_THREE_PHASE: ClassRule("AC three-phase", GunKind.AC, 3, max_kw=AC_THREE_PHASE_MAX_KW),
    PileClass.AC_SINGLE_PHASE: ClassRule("AC single-phase", GunKind.AC, 1, max_kw=AC_SINGLE_PHASE_MAX_KW),
}


def hardware_rules(station: StationSpec) -> list[RuleResult]:
    """Per pile and gun: the hardware class limits of the technical direction."""
    out: list[RuleResult] = []
    for pile in station.piles:
        spec = pile.spec
        cr = CLASS_RULES[spec.pile_class]
        rule = f"hardware.{spec.pile_class.value}"
        for no, gun in enumerate(spec.guns, start=1):
            subj = f"pile {pile.id} gun {no}"
            if gun.kind is not cr.kind or gun.phases != cr.phases:
                got = f"{gun.kind.value}" + (f" {gun.phases}-phase" if gun.phases else "")
                out.append(_r(rule, subj, False, f"a {CLASS_LABEL[spec.pile_class]} needs {cr.label} guns, got {got}"))
            elif cr.min_kw is not None:
                ok = gun.rated_kw >= cr.min_kw
                out.append(_r(rule, subj, ok, f"{cr.label} {gun.rated_kw:g} kW {'meets' if ok else 'is below'} "
                                              f"the {cr.min_kw:g} kW per-gun minimum"))
            else:
                ok = gun.rated_kw <= cr.max_kw
                out.append(_r(rule, subj, ok, f"{cr.label} {gun.rated_kw:g} kW {'is within' if ok else 'exceeds'} "
                                              f"the {cr.max_kw:g} kW cap"))
        if cr.combined_min_kw is not None and len(spec.guns) >= 2:
            need = cr.combined_min_kw
            if not spec.combinable:
                out.append(_r(rule, f"pile {pile.id}", False,
                              f"two guns cannot combine on one vehicle; {need:g} kW on two guns is required"))
            else:
                ok = spec.combined_max_kw >= need
                out.append(_r(rule, f"pile {pile.id}", ok, f"two guns combined {spec.combined_max_kw:g} kW "
                                                           f"{'meets' if ok else 'is below'} the {need:g} kW minimum"))
    return out


def station_rules(station: StationSpec) -> list[RuleResult]:
    """Rules on the whole site by its kind."""
    out: list[RuleResult] = []
    subj = f"station {station.name!r}"
    if station.kind is StationKind.LOGISTICS_STATION:
        cap = min(station.installed_kw, station.site_limit_kw)
        which = "installed" if station.installed_kw <= station.site_limit_kw else "site limit"
        ok = cap >= LOGISTICS_STATION_MIN_KW
        out.append(_r("station.logistics_min_kw", subj, ok,
                      f"{cap:g} kW ({which}; installed {station.installed_kw:g} kW, site limit {station.site_limit_kw:g} kW) "
                      f"{'meets' if ok else 'is below'} the {LOGISTICS_STATION_MIN_KW:g} kW minimum"))
        n = station.gun_count
        ok = n >= LOGISTICS_STATION_MIN_GUNS
        out.append(_r("station.logistics_min_guns", subj, ok,
                      f"{n} guns {'meets' if ok else 'is below'} the {LOGISTICS_STATION_MIN_GUNS}-gun minimum"))
        dc = [p for p in station.piles if p.spec.pile_class is PileClass.LOGISTICS_DC]
        ok = len(dc) == len(station.piles)
        out.append(_r("station.logistics_piles", subj, ok,
                      "every pile is a logistics DC pile" if ok else
                      f"piles {', '.join(p.id for p in station.piles if p not in dc)} are not logistics DC piles"))
    if station.kind is StationKind.BUS_DEPOT:
        bus = [p for p in station.piles if p.spec.pile_class is PileClass.BUS_DC]
        ok = bool(bus)
        out.append(_r("station.bus_piles", subj, ok, f"{len(bus)} bus DC piles" if ok else "a bus depot without bus DC piles"))
    # valley band: every bus/logistics gun can run inside the night band
    for pile in station.piles:
        cls = pile.spec.pile_class
        if cls not in (PileClass.BUS_DC, PileClass.LOGISTICS_DC):
            continue
        lo, hi = BUS_VALLEY_BAND_KW if cls is PileClass.BUS_DC else LOGISTICS_VALLEY_BAND_KW
        for no, gun in enumerate(pile.spec.guns, start=1):
            ok = gun.min_kw <= hi and gun.rated_kw >= lo
            out.append(_r("operation.valley_band", f"pile {pile.id} gun {no}", ok,
                          f"can run at {lo:g}-{hi:g} kW for night valley charging (gun range {gun.min_kw:g}-{gun.rated_kw:g} kW)"
                          if ok else f"gun range {gun.min_kw:g}-{gun.rated_kw:g} kW cannot run in the {lo:g}-{hi:g} kW valley band"))
    return out


def fleet_rules(station: StationSpec, fleet: list[FleetVehicle]) -> list[RuleResult]:
    """Rules that need the fleet: one bus one gun, 30 kW per parked bus within the site limit."""
    out: list[RuleResult] = []
    buses = [v for v in fleet if v.spec.vehicle_class is VehicleClass.BUS]
    if not buses:
        return out
    bus_guns = sum(len(p.spec.guns) for p in station.piles if p.spec.pile_class is PileClass.BUS_DC)
    peak, at = _max_parked(buses)
    subj = f"station {station.name!r}"
    ok = peak <= bus_guns
    out.append(_r("fleet.one_bus_one_gun", subj, ok,
                  f"at most {peak} buses parked at once ({format_clock(at)}) for {bus_guns} bus guns"
                  + ("" if ok else f": {peak - bus_guns} bus(es) without a gun")))
    need_kw = peak * BUS_VALLEY_BAND_KW[0]
    ok = station.site_limit_kw >= need_kw
    out.append(_r("fleet.site_limit_valley", subj, ok,
                  f"site limit {station.site_limit_kw:g} kW {'covers' if ok else 'is below'} "
                  f"{BUS_VALLEY_BAND_KW[0]:g} kW x {peak} parked buses = {need_kw:g} kW"
                  + ("" if ok else f"; raise it by {need_kw - station.site_limit_kw:g} kW")))
    return out


def _max_parked(vehicles: list[FleetVehicle]) -> tuple[int, int]:
    events = sorted([(v.arrival_min, 1) for v in vehicles] + [(v.departure_min, -1) for v in vehicles])
    best, at, cur = 0, 0, 0
    for t, d in events:  # departures sort before arrivals at the same minute
        cur += d
        if cur > best:
            best, at = cur, t
    return best, at


@dataclass(frozen=True)
class Subsidy:
    public: bool
    dc_kw: float
    ac_kw: float
    total_cny: float

    @property
    def province_cny(self) -> float:
        return self.total_cny / 2

    @property
    def city_cny(self) -> float:
        return self.total_cny / 2


def subsidy(station: StationSpec) -> Subsidy:
    """Construction subsidy for public piles: DC 500 CNY/kW, AC 200 CNY/kW of pile output."""
    dc = sum(p.spec.max_output_kw for p in station.piles if p.spec.kind is GunKind.DC)
    ac = sum(p.spec.max_output_kw for p in station.piles if p.spec.kind is GunKind.AC)
    total = (dc * SUBSIDY_DC_CNY_PER_KW + ac * SUBSIDY_AC_CNY_PER_KW) if station.public else 0.0
    return Subsidy(station.public, dc, ac, total)


@dataclass(frozen=True)
class Report:
    station: StationSpec
    results: list[RuleResult]
    subsidy: Subsidy

    @property
    def compliant(self) -> bool:
        return all(r.passed for r in self.results)

    def as_dict(self) -> dict:
        s = self.subsidy
        return {
            "station": self.station.name,
            "source": self.station.source,
            "compliant": self.compliant,
            "rules": [asdict(r) for r in self.results],
            "failed": sum(not r.passed for r in self.results),
            "subsidy": {
                "public": s.public, "dc_kw": s.dc_kw, "ac_kw": s.ac_kw,
                "dc_cny_per_kw": SUBSIDY_DC_CNY_PER_KW, "ac_cny_per_kw": SUBSIDY_AC_CNY_PER_KW,
                "total_cny": s.total_cny, "province_cny": s.province_cny, "city_cny": s.city_cny,
            },
        }


def check(station: StationSpec, fleet: list[FleetVehicle] | None = None) -> Report:
    results = hardware_rules(station) + station_rules(station)
    if fleet is not None:
        results += fleet_rules(station, fleet)
    return Report(station, results, subsidy(station))
