"""Fleet files (CSV): who arrives when, how empty, and when they leave.

Columns (header required; order free):

| column | meaning |
|---|---|
| ``vehicle_id`` | unique id |
| ``profile`` | a vehicle profile of the catalog (or of the station file) |
| ``arrival`` | ``HH:MM``; ``HH:MM+1`` for the next day |
| ``departure`` | ``HH:MM``, usually ``HH:MM+1`` (next morning); must be after arrival |
| ``arrival_soc_pct`` | SoC at arrival, 0..100; or leave empty and give ``kwh_used`` |
| ``kwh_used`` | optional: energy used that day; arrival SoC = target SoC - used |
| ``target_soc_pct`` | optional, default 100 |
| ``vin`` | optional, 17 characters; default derived from the vehicle id |
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass

from .catalog import Catalog, default_catalog
from .errors import InputError, open_input
from .specs import VehicleClass, VehicleSpec

REQUIRED = ("vehicle_id", "profile", "arrival", "departure")
KNOWN = REQUIRED + ("arrival_soc_pct", "kwh_used", "target_soc_pct", "vin")


@dataclass(frozen=True)
class FleetVehicle:
    vehicle_id: str
    profile: str
    spec: VehicleSpec
    arrival_min: int  # minutes after midnight of day 0
    departure_min: int
    arrival_soc_pct: float
    target_soc_pct: float
    vin: str
    line: int

    @property
    def is_bus(self) -> bool:
        return self.spec.vehicle_class is VehicleClass.BUS


def parse_clock(value: str, where: str) -> int:
    """``HH:MM`` or ``HH:MM+N`` -> minutes after midnight of day 0."""
    text = value.strip()
    day = 0
    if "+" in text:
        text, _, d = text.partition("+")
        if not d.isdigit():
            raise InputError(None, where, f"expected HH:MM or HH:MM+1, got {value!r}")
        day = int(d)
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(None, where, f"expected HH:MM or HH:MM+1, got {value!r}")
    h, m = int(parts[0]), int(parts[1])
    if h > 23 or m > 59:
        raise InputError(None, where, f"{value!r} is not a time of day")
    return day * 1440 + h * 60 + m


def format_clock(minutes: int) -> str:
    day, m = divmod(int(minutes), 1440)
    return f"{m // 60:02d}:{m % 60:02d}" + (f"+{day}" if day else "")


def vin_for(vehicle_id: str) -> str:
    """A stable, VIN-shaped 17-character id for a vehicle without one (not a real VIN)."""
    digest = hashlib.sha1(vehicle_id.encode()).hexdigest().upper()
    return ("LEV" + digest)[:17]


def _number(row: dict, key: str, where: str, lo: float, hi: float) -> float:
    raw = (row.get(key) or "").strip()
    try:
        v = float(raw)
    except ValueError:
        raise InputError(None, where, f"{key}: expected a number, got {raw!r}") from None
    if not (lo <= v <= hi):
        raise InputError(None, where, f"{key}: {raw} is outside {lo:g}..{hi:g}")
    return v


def load_fleet(path: str | os.PathLike, catalog: Catalog | None = None) -> list[FleetVehicle]:
    """Load and validate a fleet CSV. Errors name the file, the line and the reason."""
    catalog = catalog or default_catalog()
    src = str(path)
    f = open_input(path)
    with f:
        try:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise InputError(src, "line 1", f"missing column(s) {', '.join(missing)} (columns: {', '.join(KNOWN)})")
            unknown = [c for c in header if c not in KNOWN]
            if unknown:
                raise InputError(src, "line 1", f"unknown column(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})")
            if "arrival_soc_pct" not in header and "kwh_used" not in header:
                raise InputError(src, "line 1", "give arrival_soc_pct or kwh_used")
            out: list[FleetVehicle] = []
            seen: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                try:
                    out.append(_vehicle(row, line, catalog, seen))
                except InputError as e:
                    raise InputError(src, f"line {line}", e.reason if e.where is None else f"{e.where}: {e.reason}") from None
        except UnicodeDecodeError as e:
            raise InputError(src, None, f"not UTF-8 text ({e.reason})") from None
        except csv.Error as e:
            raise InputError(src, f"line {reader.line_num}", f"bad CSV: {e}") from None
    if not out:
        raise InputError(src, None, "no vehicles")
    return out


def _vehicle(row: dict, line: int, catalog: Catalog, seen: dict[str, int]) -> FleetVehicle:
    if None in row:
        raise InputError(None, None, "more fields than columns")
    vid = (row.get("vehicle_id") or "").strip()
    if not vid:
        raise InputError(None, None, "vehicle_id: empty")
    if vid in seen:
        raise InputError(None, None, f"vehicle_id: duplicate {vid!r} (also line {seen[vid]})")
    seen[vid] = line
    profile = (row.get("profile") or "").strip()
    try:
        spec = catalog.vehicle(profile)
    except KeyError as e:
        raise InputError(None, "profile", e.args[0]) from None
    arrival = parse_clock(row.get("arrival") or "", "arrival")
    departure = parse_clock(row.get("departure") or "", "departure")
    if departure <= arrival:
        hint = " (write HH:MM+1 for the next day)" if departure < 1440 else ""
        raise InputError(None, "departure", f"{format_clock(departure)} is not after arrival {format_clock(arrival)}{hint}")
    target = 100.0
    if (row.get("target_soc_pct") or "").strip():
        target = _number(row, "target_soc_pct", None, 0, 100)
    if (row.get("arrival_soc_pct") or "").strip():
        soc = _number(row, "arrival_soc_pct", None, 0, 100)
    elif (row.get("kwh_used") or "").strip():
        used = _number(row, "kwh_used", None, 0, spec.battery_kwh)
        soc = max(0.0, target - used / spec.battery_kwh * 100.0)
    else:
        raise InputError(None, None, "give arrival_soc_pct or kwh_used")
    vin = (row.get("vin") or "").strip() or vin_for(vid)
    if len(vin) != 17 or not vin.isascii() or not vin.isalnum():
        raise InputError(None, "vin", f"expected 17 letters and digits, got {vin!r}")
    return FleetVehicle(vid, profile, spec, arrival, departure, soc, target, vin, line)
