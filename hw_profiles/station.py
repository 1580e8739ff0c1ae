"""Station files (TOML) -> :class:`StationSpec`.

```toml
[station]
name = "Qujing Xiping bus depot"
kind = "bus_depot"                 # bus_depot | logistics_station | distributed
site_limit_kw = 1600
price_category = "large_industrial" # large_industrial | general_commercial | residential
tariff = "yunnan-2024"             # a preset name, or a path relative to this file
public = false                     # public piles earn the construction subsidy

[[feeders]]                        # optional: transformers / feeders between site and piles
id = "T1"
limit_kw = 800
parent = "T0"                      # optional, another feeder; default the site

[[piles]]
id = "P1"
profile = "bus-dc-360"             # from the catalog or from [profiles.piles.*] below
host = "127.0.0.1"
port = 15021
unit_id = 1
feeder = "T1"                      # optional
word_order = "big"                 # optional: big | little
guns = [{}, { rated_kw = 150 }]    # optional per-gun overrides of the profile
```
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from .catalog import Catalog, _check_keys, _construct, default_catalog, pile_from_table, vehicle_from_table
from .errors import InputError
from .specs import FeederSpec, PileInstance, StationSpec

_STATION_KEYS = {"name", "kind", "site_limit_kw", "price_category", "tariff", "public"}
_PILE_KEYS = {"id", "profile", "host", "port", "unit_id", "feeder", "word_order", "guns"}
_FEEDER_KEYS = {"id", "limit_kw", "parent"}
_TOP_KEYS = {"station", "piles", "feeders", "profiles"}


def read_toml(path: str | os.PathLike) -> dict:
    """Read a TOML file; any failure becomes an :class:`InputError` naming the file."""
    src = str(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(src, None, "no such file") from None
    except IsADirectoryError:
        raise InputError(src, None, "is a directory, expected a TOML file") from None
    except PermissionError:
        raise InputError(src, None, "permission denied") from None
    except UnicodeDecodeError as e:
        raise InputError(src, None, f"not UTF-8 text ({e.reason})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(src, None, f"invalid TOML: {e}") from None


def load_station(path: str | os.PathLike) -> StationSpec:
    """Load and validate a station file. Raises :class:`InputError` (file, key path, reason)."""
    doc = read_toml(path)
    try:
        return station_from_toml(doc, source=str(path))
    except InputError as e:
        raise e.within(str(path)) from None


def station_from_toml(doc: Mapping[str, Any], source: str | None = None) -> StationSpec:
    for key in doc:
        if key not in _TOP_KEYS:
            raise InputError(None, key, f"unknown table (known: {', '.join(sorted(_TOP_KEYS))})")
    if "station" not in doc:
        raise InputError(None, "station", "missing [station] table")
    st = doc["station"]
    _check_keys(st, _STATION_KEYS, {"name", "kind", "site_limit_kw", "price_category", "tariff"}, "station")
    catalog = _merged_catalog(doc.get("profiles", {}))

    feeders_raw = doc.get("feeders", [])
    if not isinstance(feeders_raw, list):
        raise InputError(None, "feeders", "expected [[feeders]] tables")
    feeders = []
    for i, f in enumerate(feeders_raw):
        where = f"feeders[{i}]"
        _check_keys(f, _FEEDER_KEYS, {"id", "limit_kw"}, where)
        feeders.append(_construct(FeederSpec, where, id=str(f["id"]), limit_kw=f["limit_kw"], parent=f.get("parent")))
    _check_feeder_tree(feeders)
    feeder_ids = {f.id for f in feeders}

    piles_raw = doc.get("piles", [])
    if not isinstance(piles_raw, list) or not piles_raw:
        raise InputError(None, "piles", "expected at least one [[piles]] table")
    piles = []
    seen_ids: dict[str, int] = {}
    seen_addr: dict[tuple[str, int, int], str] = {}
    for i, p in enumerate(piles_raw):
        where = f"piles[{i}]"
        _check_keys(p, _PILE_KEYS, {"id", "profile"}, where)
        pid = str(p["id"])
        if pid in seen_ids:
            raise InputError(None, f"{where}.id", f"duplicate pile id {pid!r} (also piles[{seen_ids[pid]}])")
        seen_ids[pid] = i
        try:
            spec = catalog.pile(str(p["profile"]))
        except KeyError as e:
            raise InputError(None, f"{where}.profile", e.args[0]) from None
        if "guns" in p:
            spec = _override_guns(spec, p["guns"], f"{where}.guns")
        feeder = p.get("feeder")
        if feeder is not None and feeder not in feeder_ids:
            raise InputError(None, f"{where}.feeder", f"unknown feeder {feeder!r}")
        kwargs = {k: p[k] for k in ("host", "port", "unit_id", "word_order") if k in p}
        pile = _construct(PileInstance, where, id=pid, spec=spec, feeder=feeder, **kwargs)
        addr = (pile.host, pile.port, pile.unit_id)
        if pile.port != 0 and addr in seen_addr:
            raise InputError(
                None, f"{where}.unit_id",
                f"duplicate Modbus address {pile.host}:{pile.port} unit {pile.unit_id} (also pile {seen_addr[addr]})",
            )
        seen_addr[addr] = pid
        piles.append(pile)

    station = _construct(
        StationSpec, "station",
        name=str(st["name"]), kind=_enum_field("kind", st["kind"]),
        site_limit_kw=_kw(st["site_limit_kw"], "station.site_limit_kw"),
        price_category=_price(st["price_category"]), tariff=str(st["tariff"]),
        public=bool(st.get("public", True)), piles=tuple(piles), feeders=tuple(feeders),
        source=source, catalog=catalog,
    )
    _check_limits(station)
    return station


def _kw(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(None, where, f"expected a number of kW, got {value!r}")
    if not value > 0:
        raise InputError(None, where, f"must be > 0 kW, got {value!r}")
    return float(value)


def _enum_field(key: str, value: Any):
    from .specs import StationKind, _enum
    try:
        return _enum(StationKind, value, key)
    except InputError as e:
        raise e.under("station") from None


def _price(value: Any):
    from .specs import PriceCategory, _enum
    try:
        return _enum(PriceCategory, value, "price_category")
    except InputError as e:
        raise e.under("station") from None


def _merged_catalog(profiles: Any) -> Catalog:
    base = default_catalog()
    if not profiles:
        return base
    if not isinstance(profiles, Mapping):
        raise InputError(None, "profiles", "expected [profiles.piles.*] / [profiles.vehicles.*] tables")
    for key in profiles:
        if key not in ("piles", "vehicles"):
            raise InputError(None, f"profiles.{key}", "unknown (known: piles, vehicles)")
    piles = dict(base.piles)
    vehicles = dict(base.vehicles)
    for n, t in profiles.get("piles", {}).items():
        piles[n] = pile_from_table(n, t, f"profiles.piles.{n}")
    for n, t in profiles.get("vehicles", {}).items():
        vehicles[n] = vehicle_from_table(n, t, f"profiles.vehicles.{n}")
    return Catalog(piles=piles, vehicles=vehicles)


def _override_guns(spec, overrides: Any, where: str):
    if not isinstance(overrides, list):
        raise InputError(None, where, "expected a list of gun tables")
    if len(overrides) != len(spec.guns):
        raise InputError(None, where, f"profile {spec.model!r} has {len(spec.guns)} guns, got {len(overrides)} overrides")
    guns = []
    for i, (gun, o) in enumerate(zip(spec.guns, overrides)):
        if not isinstance(o, Mapping):
            raise InputError(None, f"{where}[{i}]", "expected a table")
        for k in o:
            if k not in {f.name for f in dataclasses.fields(gun)}:
                raise InputError(None, f"{where}[{i}].{k}", "unknown gun key")
        try:
            guns.append(dataclasses.replace(gun, **o))
        except InputError as e:
            raise e.under(f"{where}[{i}]") from None
    try:
        return dataclasses.replace(spec, guns=tuple(guns))
    except InputError as e:
        raise e.under(where.rsplit(".", 1)[0]) from None


def _check_feeder_tree(feeders: list[FeederSpec]) -> None:
    by_id: dict[str, FeederSpec] = {}
    for i, f in enumerate(feeders):
        if f.id in by_id:
            raise InputError(None, f"feeders[{i}].id", f"duplicate feeder id {f.id!r}")
        by_id[f.id] = f
    for i, f in enumerate(feeders):
        seen = {f.id}
        cur = f
        while cur.parent is not None:
            if cur.parent not in by_id:
                raise InputError(None, f"feeders[{i}].parent", f"unknown feeder {cur.parent!r}")
            if cur.parent in seen:
                raise InputError(None, f"feeders[{i}].parent", f"feeders form a cycle through {cur.parent!r}")
            seen.add(cur.parent)
            cur = by_id[cur.parent]


def _check_limits(station: StationSpec) -> None:
    """A limit below one gun's minimum can never let that gun run."""
    feeder_limit = {f.id: f.limit_kw for f in station.feeders}
    for i, pile in enumerate(station.piles):
        for no, gun in enumerate(pile.spec.guns, start=1):
            if gun.min_kw > station.site_limit_kw:
                raise InputError(
                    None, "station.site_limit_kw",
                    f"{station.site_limit_kw:g} kW is below the {gun.min_kw:g} kW minimum of pile {pile.id} gun {no}",
                )
            if pile.feeder and gun.min_kw > feeder_limit[pile.feeder]:
                raise InputError(
                    None, f"piles[{i}].feeder",
                    f"feeder {pile.feeder} limit {feeder_limit[pile.feeder]:g} kW is below the "
                    f"{gun.min_kw:g} kW minimum of pile {pile.id} gun {no}",
                )


def resolve_relative(station: StationSpec, ref: str) -> Path:
    """A path named in a station file, relative to that file."""
    p = Path(ref)
    if not p.is_absolute() and station.source:
        p = Path(station.source).parent / p
    return p
