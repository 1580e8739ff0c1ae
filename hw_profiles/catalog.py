"""The catalog of ready pile and vehicle profiles, and the parser shared with station files.

Profiles are data (``data/catalog.toml``); a station file may add its own in ``[profiles.*]``
tables of the same form.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from .errors import InputError
from .specs import GunSpec, PileSpec, VehicleSpec

_GUN_KEYS = {"kind", "rated_kw", "min_kw", "voltage_min_v", "voltage_max_v", "current_max_a", "current_min_a", "phases"}
_PILE_KEYS = {
    "class", "source", "guns", "module_kw", "module_count", "combinable", "combined_max_kw", "ramp_kw_per_s",
    "derating", "trip_temp_c", "preparing_s", "validity_s", "failsafe_kw",
}
_VEHICLE_KEYS = {
    "class", "source", "battery_kwh", "curve", "pack_voltage_min_v", "pack_voltage_max_v", "ac_max_kw",
    "cv_start_soc_pct", "charge_efficiency",
}
_REQUIRED_GUN = {"kind", "rated_kw", "voltage_min_v", "voltage_max_v", "current_max_a"}


def _check_keys(table: Any, allowed: set[str], required: set[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise InputError(None, where, f"expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise InputError(None, f"{where}.{key}", f"unknown key (known: {', '.join(sorted(allowed))})")
    for key in sorted(required):
        if key not in table:
            raise InputError(None, f"{where}.{key}", "missing")


def _construct(cls, where: str, **kwargs):
    """Build a spec; re-raise its validation error with the full key path."""
    try:
        return cls(**kwargs)
    except InputError as e:
        raise e.under(where) from None
    except TypeError as e:  # wrong type that validation did not catch (e.g. a string for a number)
        raise InputError(None, where, f"bad value: {e}") from None


def gun_from_table(table: Mapping[str, Any], where: str) -> GunSpec:
    _check_keys(table, _GUN_KEYS, _REQUIRED_GUN, where)
    args = dict(table)
    args.setdefault("min_kw", 0.0)
    return _construct(GunSpec, where, **args)


def pile_from_table(name: str, table: Mapping[str, Any], where: str) -> PileSpec:
    _check_keys(table, _PILE_KEYS, {"class", "source", "guns"}, where)
    guns_raw = table["guns"]
    if not isinstance(guns_raw, list):
        raise InputError(None, f"{where}.guns", "expected a list of gun tables")
    guns = tuple(gun_from_table(g, f"{where}.guns[{i}]") for i, g in enumerate(guns_raw))
    args = {k: v for k, v in table.items() if k not in ("class", "guns")}
    if "derating" in args:
        args["derating"] = _pairs(args["derating"], f"{where}.derating")
    return _construct(PileSpec, where, model=name, pile_class=table["class"], guns=guns, **args)


def vehicle_from_table(name: str, table: Mapping[str, Any], where: str) -> VehicleSpec:
    _check_keys(
        table, _VEHICLE_KEYS,
        {"class", "source", "battery_kwh", "curve", "pack_voltage_min_v", "pack_voltage_max_v", "ac_max_kw"}, where,
    )
    args = {k: v for k, v in table.items() if k != "class"}
    args["curve"] = _pairs(args["curve"], f"{where}.curve")
    return _construct(VehicleSpec, where, model=name, vehicle_class=table["class"], **args)


def _pairs(raw: Any, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, list):
        raise InputError(None, where, "expected a list of [x, y] pairs")
    out = []
    for i, pair in enumerate(raw):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)):
            raise InputError(None, f"{where}[{i}]", f"expected a [number, number] pair, got {pair!r}")
        out.append((float(pair[0]), float(pair[1])))
    return tuple(out)


@dataclass(frozen=True)
class Catalog:
    piles: Mapping[str, PileSpec]
    vehicles: Mapping[str, VehicleSpec]

    def pile(self, name: str) -> PileSpec:
        try:
            return self.piles[name]
        except KeyError:
            raise KeyError(f"unknown pile profile {name!r} (known: {', '.join(sorted(self.piles))})") from None

    def vehicle(self, name: str) -> VehicleSpec:
        try:
            return self.vehicles[name]
        except KeyError:
            raise KeyError(f"unknown vehicle profile {name!r} (known: {', '.join(sorted(self.vehicles))})") from None


def catalog_from_toml(doc: Mapping[str, Any], source: str) -> Catalog:
    try:
        piles = {n: pile_from_table(n, t, f"piles.{n}") for n, t in doc.get("piles", {}).items()}
        vehicles = {n: vehicle_from_table(n, t, f"vehicles.{n}") for n, t in doc.get("vehicles", {}).items()}
    except InputError as e:
        raise e.within(source) from None
    return Catalog(piles=piles, vehicles=vehicles)


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The catalog shipped with evstack (``hw_profiles/data/catalog.toml``)."""
    text = resources.files("hw_profiles").joinpath("data/catalog.toml").read_text(encoding="utf-8")
    return catalog_from_toml(tomllib.loads(text), "hw_profiles/data/catalog.toml")
