"""Typed, validated specifications of guns, piles, vehicles and stations.

All values carry their unit in their name (``rated_kw``, ``battery_kwh``, ``ramp_kw_per_s``).
Every spec validates itself on construction and raises :class:`InputError` with the key path
of the offending field, so a loader only has to add the file name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from .errors import InputError

AC_PHASE_VOLTAGE_V = 220.0
"""Nominal phase voltage of the Chinese low-voltage grid (220/380 V), used for A <-> kW on AC guns."""


class GunKind(str, Enum):
    DC = "DC"
    AC = "AC"


class PileClass(str, Enum):
    """The hardware classes of the Qujing technical direction (DOMAIN.md)."""

    BUS_DC = "bus_dc"
    LOGISTICS_DC = "logistics_dc"
    DISTRIBUTED_DC = "distributed_dc"
    AC_THREE_PHASE = "ac_three_phase"
    AC_SINGLE_PHASE = "ac_single_phase"


class VehicleClass(str, Enum):
    BUS = "bus"
    LOGISTICS = "logistics"
    TAXI = "taxi"
    CAR = "car"


class StationKind(str, Enum):
    """What a site is, which decides the rules that apply to it."""

    BUS_DEPOT = "bus_depot"
    LOGISTICS_STATION = "logistics_station"  # logistics / taxi / special / passenger-car station
    DISTRIBUTED = "distributed"  # public car park, office, residential: distributed piles


class PriceCategory(str, Enum):
    """Electricity price category by kind of site (DOMAIN.md, Prices and money)."""

    LARGE_INDUSTRIAL = "large_industrial"
    GENERAL_COMMERCIAL = "general_commercial"
    RESIDENTIAL = "residential"


class WordOrder(str, Enum):
    """Order of 16-bit words in multi-register values. Bytes within a word are big-endian."""

    BIG = "big"  # most significant word first (the norm)
    LITTLE = "little"  # least significant word first (some vendors)


def _enum(cls, value, key: str):
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise InputError(None, key, f"unknown value {value!r} (expected one of: {allowed})") from None


def _positive(value, key: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(None, key, f"expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(None, key, f"must be finite, got {value!r}")
    if v < 0 or (v == 0 and not allow_zero):
        raise InputError(None, key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


@dataclass(frozen=True)
class GunSpec:
    """One charging gun (connector) of a pile.

    DC guns: output voltage range ``voltage_min_v``..``voltage_max_v`` and current up to
    ``current_max_a``. AC guns: ``phases`` (1 or 3) at ``AC_PHASE_VOLTAGE_V`` per phase,
    ``current_min_a``..``current_max_a`` per phase (driven in amps, as AC hardware is).
    """

    kind: GunKind
    rated_kw: float
    min_kw: float
    voltage_min_v: float
    voltage_max_v: float
    current_max_a: float
    current_min_a: float = 0.0
    phases: int = 0  # 0 for DC, 1 or 3 for AC

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(GunKind, self.kind, "kind"))
        for name in ("rated_kw", "voltage_max_v", "current_max_a"):
            object.__setattr__(self, name, _positive(getattr(self, name), name))
        for name in ("min_kw", "voltage_min_v", "current_min_a"):
            object.__setattr__(self, name, _positive(getattr(self, name), name, allow_zero=True))
        if self.min_kw > self.rated_kw:
            raise InputError(None, "min_kw", f"{self.min_kw:g} kW is above rated_kw {self.rated_kw:g} kW")
        if self.voltage_min_v > self.voltage_max_v:
            raise InputError(None, "voltage_min_v", "is above voltage_max_v")
        if self.current_min_a > self.current_max_a:
            raise InputError(None, "current_min_a", "is above current_max_a")
        if self.kind is GunKind.AC:
            if self.phases not in (1, 3):
                raise InputError(None, "phases", f"an AC gun has 1 or 3 phases, got {self.phases!r}")
            deliverable_kw = self.phases * AC_PHASE_VOLTAGE_V * self.current_max_a / 1000.0
            if self.rated_kw > deliverable_kw * 1.01:
                raise InputError(
                    None,
                    "rated_kw",
                    f"{self.rated_kw:g} kW exceeds what {self.phases} phase(s) x "
                    f"{AC_PHASE_VOLTAGE_V:g} V x {self.current_max_a:g} A can deliver "
                    f"({deliverable_kw:.1f} kW)",
                )
        else:
            if self.phases not in (0,):
                raise InputError(None, "phases", "a DC gun has no phases (leave it out or 0)")
            deliverable_kw = self.voltage_max_v * self.current_max_a / 1000.0
            if self.rated_kw > deliverable_kw * 1.01:
                raise InputError(
                    None,
                    "rated_kw",
                    f"{self.rated_kw:g} kW exceeds {self.voltage_max_v:g} V x {self.current_max_a:g} A "
                    f"({deliverable_kw:.1f} kW)",
                )

    def kw_from_amps(self, current_a: float) -> float:
        """AC: power in kW for ``current_a`` amps per phase at nominal phase voltage."""
        return self.phases * AC_PHASE_VOLTAGE_V * current_a / 1000.0

    def amps_from_kw(self, power_kw: float) -> float:
        """AC: amps per phase for ``power_kw`` at nominal phase voltage."""
        return power_kw * 1000.0 / (self.phases * AC_PHASE_VOLTAGE_V)


@dataclass(frozen=True)
class PileSpec:
    """A charging pile model: its guns and the power electronics behind them.

    DC guns share a pool of ``module_count`` power modules of ``module_kw`` each; a gun is
    given whole modules (its setpoint moves in ``module_kw`` steps). AC piles have no modules
    (``module_count = 0``); their pool is the sum of their guns.
    ``derating`` is a curve of (temperature_c, fraction of rated power available), linear in
    between; above ``trip_temp_c`` the pile trips.
    """

    model: str
    pile_class: PileClass
    guns: tuple[GunSpec, ...]
    source: str
    module_kw: float = 0.0
    module_count: int = 0
    combinable: bool = False
    combined_max_kw: float = 0.0
    ramp_kw_per_s: float = 10.0
    derating: tuple[tuple[float, float], ...] = ((55.0, 1.0), (65.0, 0.5), (75.0, 0.0))
    trip_temp_c: float = 75.0
    preparing_s: float = 5.0
    validity_s: float = 10.0
    failsafe_kw: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pile_class", _enum(PileClass, self.pile_class, "class"))
        if not self.guns:
            raise InputError(None, "guns", "a pile has at least one gun")
        if len(self.guns) > 4:
            raise InputError(None, "guns", f"at most 4 guns per pile, got {len(self.guns)}")
        _positive(self.module_kw, "module_kw", allow_zero=True)
        if isinstance(self.module_count, bool) or not isinstance(self.module_count, int) or self.module_count < 0:
            raise InputError(None, "module_count", f"expected a whole number >= 0, got {self.module_count!r}")
        if (self.module_count == 0) != (self.module_kw == 0):
            raise InputError(None, "module_kw", "module_kw and module_count are both set or both 0")
        dc = any(g.kind is GunKind.DC for g in self.guns)
        if dc and self.module_count == 0:
            raise InputError(None, "module_count", "a DC pile needs a power-module pool")
        if self.module_count:
            for i, gun in enumerate(self.guns, start=1):
                if self.pool_kw + 1e-9 < gun.rated_kw:
                    raise InputError(
                        None,
                        "module_count",
                        f"module pool {self.module_count} x {self.module_kw:g} kW = {self.pool_kw:g} kW "
                        f"is smaller than gun {i}'s rating of {gun.rated_kw:g} kW",
                    )
        _positive(self.ramp_kw_per_s, "ramp_kw_per_s")
        _positive(self.preparing_s, "preparing_s", allow_zero=True)
        _positive(self.validity_s, "validity_s")
        _positive(self.failsafe_kw, "failsafe_kw", allow_zero=True)
        if self.combinable:
            if len(self.guns) < 2:
                raise InputError(None, "combinable", "combining needs two guns")
            _positive(self.combined_max_kw, "combined_max_kw")
            if self.combined_max_kw > self.pool_kw + 1e-9:
                raise InputError(None, "combined_max_kw", f"{self.combined_max_kw:g} kW exceeds the pool {self.pool_kw:g} kW")
        curve = tuple((float(t), float(f)) for t, f in self.derating)
        object.__setattr__(self, "derating", curve)
        if not curve:
            raise InputError(None, "derating", "needs at least one (temperature_c, fraction) point")
        for i, (t, f) in enumerate(curve):
            if not (0.0 <= f <= 1.0):
                raise InputError(None, f"derating[{i}]", f"fraction {f:g} is outside 0..1")
            if i and t <= curve[i - 1][0]:
                raise InputError(None, f"derating[{i}]", "temperatures must increase")
            if i and f > curve[i - 1][1]:
                raise InputError(None, f"derating[{i}]", "available fraction must not rise with temperature")

    @property
    def pool_kw(self) -> float:
        """Power the pile's electronics can deliver in total, kW."""
        if self.module_count:
            return self.module_kw * self.module_count
        return sum(g.rated_kw for g in self.guns)

    @property
    def max_output_kw(self) -> float:
        """The most the pile delivers at once over all guns, kW (its nameplate for subsidies)."""
        return min(self.pool_kw, sum(g.rated_kw for g in self.guns))

    @property
    def kind(self) -> GunKind:
        return self.guns[0].kind

    def derate_fraction(self, temperature_c: float) -> float:
        """Fraction (0..1) of rated power available at ``temperature_c``."""
        curve = self.derating
        if temperature_c <= curve[0][0]:
            return curve[0][1]
        for (t0, f0), (t1, f1) in zip(curve, curve[1:]):
            if temperature_c <= t1:
                return f0 + (f1 - f0) * (temperature_c - t0) / (t1 - t0)
        return curve[-1][1]


@dataclass(frozen=True)
class VehicleSpec:
    """A vehicle's battery and its BMS.

    ``curve`` is the maximum power the battery accepts against state of charge, as
    (soc_pct, kw) points, linear in between: flat in the constant-current phase, then the
    constant-voltage taper. ``ac_max_kw`` is the on-board charger's limit on AC guns.
    The pack voltage moves linearly from ``pack_voltage_min_v`` (0 %) to ``pack_voltage_max_v``
    (100 %); the BMS asks for ``pack_voltage_max_v`` and the current its curve allows
    (GB/T 27930 BCL). ``charge_efficiency`` is battery energy over metered energy.
    """

    model: str
    vehicle_class: VehicleClass
    battery_kwh: float
    curve: tuple[tuple[float, float], ...]
    pack_voltage_min_v: float
    pack_voltage_max_v: float
    ac_max_kw: float
    source: str
    cv_start_soc_pct: float = 80.0
    charge_efficiency: float = 0.97

    def __post_init__(self) -> None:
        object.__setattr__(self, "vehicle_class", _enum(VehicleClass, self.vehicle_class, "class"))
        _positive(self.battery_kwh, "battery_kwh")
        _positive(self.pack_voltage_min_v, "pack_voltage_min_v")
        _positive(self.pack_voltage_max_v, "pack_voltage_max_v")
        _positive(self.ac_max_kw, "ac_max_kw", allow_zero=True)
        if self.pack_voltage_min_v >= self.pack_voltage_max_v:
            raise InputError(None, "pack_voltage_min_v", "must be below pack_voltage_max_v")
        if not (0.5 <= self.charge_efficiency <= 1.0):
            raise InputError(None, "charge_efficiency", f"{self.charge_efficiency!r} is outside 0.5..1")
        curve = tuple((float(s), float(p)) for s, p in self.curve)
        object.__setattr__(self, "curve", curve)
        if len(curve) < 2 or curve[0][0] != 0.0 or curve[-1][0] != 100.0:
            raise InputError(None, "curve", "needs points from soc 0 to soc 100")
        for i, (s, p) in enumerate(curve):
            if i and s <= curve[i - 1][0]:
                raise InputError(None, f"curve[{i}]", "soc values must increase")
            if p < 0 or not math.isfinite(p):
                raise InputError(None, f"curve[{i}]", f"power {p!r} must be finite and >= 0")

    @property
    def max_dc_kw(self) -> float:
        """Highest DC acceptance anywhere on the curve, kW."""
        return max(p for _, p in self.curve)


@dataclass(frozen=True)
class FeederSpec:
    """A feeder or transformer between the site connection and some piles."""

    id: str
    limit_kw: float
    parent: str | None = None  # None: directly under the site

    def __post_init__(self) -> None:
        object.__setattr__(self, "limit_kw", _positive(self.limit_kw, "limit_kw"))


@dataclass(frozen=True)
class PileInstance:
    """A pile installed at a station, and where its Modbus TCP server answers."""

    id: str
    spec: PileSpec
    host: str = "127.0.0.1"
    port: int = 502
    unit_id: int = 1
    feeder: str | None = None
    word_order: WordOrder = WordOrder.BIG

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not (0 <= self.port <= 65535):
            raise InputError(None, "port", f"expected 0..65535, got {self.port!r}")
        if not isinstance(self.unit_id, int) or isinstance(self.unit_id, bool) or not (1 <= self.unit_id <= 247):
            raise InputError(None, "unit_id", f"expected 1..247, got {self.unit_id!r}")
        object.__setattr__(self, "word_order", _enum(WordOrder, self.word_order, "word_order"))

    def gun_id(self, gun_no: int) -> str:
        """Station-wide gun id, e.g. ``P1-2`` for gun 2 of pile P1 (guns count from 1)."""
        return f"{self.id}-{gun_no}"


@dataclass(frozen=True)
class LimitNode:
    """One node of the tree of power limits above the guns (site, feeder, pile pool)."""

    id: str
    parent: str | None
    limit_kw: float
    step_kw: float = 0.0  # pile pools: setpoints of its guns move in module steps


@dataclass(frozen=True)
class StationSpec:
    """A charging site: its limit, its feeders and piles, its price category and tariff."""

    name: str
    kind: StationKind
    site_limit_kw: float
    price_category: PriceCategory
    tariff: str
    piles: tuple[PileInstance, ...]
    feeders: tuple[FeederSpec, ...] = ()
    public: bool = True
    source: str | None = field(default=None, compare=False)
    catalog: object = field(default=None, compare=False, repr=False)  # Catalog incl. the file's own profiles

    def guns(self):
        """Yield (pile, gun_no, gun_spec) for every gun of the station, gun_no from 1."""
        for pile in self.piles:
            for no, gun in enumerate(pile.spec.guns, start=1):
                yield pile, no, gun

    @property
    def gun_count(self) -> int:
        return sum(len(p.spec.guns) for p in self.piles)

    @property
    def installed_kw(self) -> float:
        """Sum of the piles' maximum outputs, kW."""
        return sum(p.spec.max_output_kw for p in self.piles)

    def pile(self, pile_id: str) -> PileInstance:
        for p in self.piles:
            if p.id == pile_id:
                return p
        raise KeyError(pile_id)

    def limit_tree(self) -> tuple[LimitNode, ...]:
        """The tree of limits above the guns: site, feeders, one node per pile (its module pool).

        Node ids: ``site``, ``feeder:<id>``, ``pile:<id>``. Parents come before children.
        """
        nodes = [LimitNode("site", None, self.site_limit_kw)]
        by_id = {f.id: f for f in self.feeders}
        done: set[str] = set()

        def add(f: FeederSpec) -> None:
            if f.id in done:
                return
            if f.parent is not None:
                add(by_id[f.parent])
            nodes.append(LimitNode(f"feeder:{f.id}", f"feeder:{f.parent}" if f.parent else "site", f.limit_kw))
            done.add(f.id)

        for f in self.feeders:
            add(f)
        for p in self.piles:
            parent = f"feeder:{p.feeder}" if p.feeder else "site"
            nodes.append(LimitNode(f"pile:{p.id}", parent, p.spec.pool_kw, p.spec.module_kw))
        return tuple(nodes)
