"""``evstack check``, ``evstack profiles``, ``evstack registers``."""

from __future__ import annotations

import argparse
import json
import sys

from hw_profiles.errors import EXIT_OK, EXIT_RULE_FAILED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a station (and fleet) against the Qujing rules",
                       description="Evaluate every rule of the Qujing technical direction that applies to a "
                                   "station, print each with pass/fail and its reason, then the subsidy estimate. "
                                   "Exit 0 compliant, 1 a rule fails, 2 the input cannot be read.")
    p.add_argument("station", help="station file (TOML)")
    p.add_argument("--fleet", help="fleet file (CSV): adds the one-bus-one-gun and site-limit rules")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("profiles", help="list the pile and vehicle catalog")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("registers", help="print the Modbus register map")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print as JSON")
    g.add_argument("--markdown", action="store_true", help="print docs/register-map.md")
    p.set_defaults(func=cmd_registers)


def cmd_check(args) -> int:
    from hw_profiles.compliance import check
    from hw_profiles.fleet import load_fleet
    from hw_profiles.station import load_station
    from hw_profiles.tariff import load_tariff

    station = load_station(args.station)
    tariff = load_tariff(station.tariff, _base_dir(station))  # a broken tariff reference is bad input too
    fleet = load_fleet(args.fleet, station.catalog) if args.fleet else None
    report = check(station, fleet)
    if args.json:
        doc = report.as_dict()
        doc["tariff"] = {"name": tariff.name, "note": tariff.note}
        print(json.dumps(doc, indent=2))
    else:
        print(f"Station {station.name!r} ({args.station}): {station.kind.value}, site limit {station.site_limit_kw:g} kW, "
              f"{len(station.piles)} piles, {station.gun_count} guns, installed {station.installed_kw:g} kW")
        print(f"Tariff: {tariff.name} ({tariff.note})" if tariff.note else f"Tariff: {tariff.name}")
        for r in report.results:
            print(r.line())
        s = report.subsidy
        if s.public:
            print(f"Subsidy estimate (public piles): DC {s.dc_kw:g} kW x 500 + AC {s.ac_kw:g} kW x 200 = "
                  f"{s.total_cny:,.0f} CNY (province {s.province_cny:,.0f}, city {s.city_cny:,.0f})")
        else:
            print("Subsidy estimate: 0 CNY (not a public station; the subsidy is for public piles)")
        failed = sum(not r.passed for r in report.results)
        print(f"Result: {'compliant' if not failed else 'NOT compliant'}: "
              f"{len(report.results) - failed} of {len(report.results)} rules pass")
    return EXIT_OK if report.compliant else EXIT_RULE_FAILED


def _base_dir(station):
    from pathlib import Path
    return Path(station.source).parent if station.source else None


def cmd_profiles(args) -> int:
    from hw_profiles.catalog import default_catalog

    cat = default_catalog()
    piles = [{
        "name": name, "class": spec.pile_class.value, "kind": spec.kind.value,
        "phases": spec.guns[0].phases or None, "guns": len(spec.guns),
        "rated_kw_per_gun": [g.rated_kw for g in spec.guns],
        "combined_kw": spec.combined_max_kw if spec.combinable else None,
        "module_kw": spec.module_kw or None, "module_count": spec.module_count or None,
        "pool_kw": spec.pool_kw, "source": spec.source,
    } for name, spec in cat.piles.items()]
    vehicles = [{
        "name": name, "class": spec.vehicle_class.value, "battery_kwh": spec.battery_kwh,
        "max_dc_kw": spec.max_dc_kw, "ac_max_kw": spec.ac_max_kw, "source": spec.source,
    } for name, spec in cat.vehicles.items()]
    if args.json:
        print(json.dumps({"piles": piles, "vehicles": vehicles}, indent=2))
        return EXIT_OK
    print(f"{'pile profile':<20} {'class':<16} {'kind':<4} {'ph':>2} {'guns':>4} {'kW/gun':>7} {'combined':>8}  pool")
    for p in piles:
        print(f"{p['name']:<20} {p['class']:<16} {p['kind']:<4} {p['phases'] or '':>2} {p['guns']:>4} "
              f"{p['rated_kw_per_gun'][0]:>7g} {p['combined_kw'] or '':>8}  "
              + (f"{p['module_count']} x {p['module_kw']:g} kW" if p["module_count"] else f"{p['pool_kw']:g} kW"))
    print()
    print(f"{'vehicle profile':<20} {'class':<10} {'kWh':>5} {'DC kW':>6} {'AC kW':>6}")
    for v in vehicles:
        print(f"{v['name']:<20} {v['class']:<10} {v['battery_kwh']:>5g} {v['max_dc_kw']:>6g} {v['ac_max_kw']:>6g}")
    return EXIT_OK


def cmd_registers(args) -> int:
    from hw_profiles import registers

    if args.json:
        print(json.dumps({"map_version": registers.MAP_VERSION, "gun_base": registers.GUN_BASE,
                          "gun_stride": registers.GUN_STRIDE, "registers": registers.as_rows()}, indent=2))
    elif args.markdown:
        sys.stdout.write(registers.render_markdown())
    else:
        for row in registers.as_rows():
            addr = row["address"] if row["block"] == "pile" else f"g+{row['offset']}"
            print(f"{row['block']:<4} {addr!s:>5} {row['name']:<22} {row['type']:<6} x{row['scale']:<4g} {row['unit']:<4} {row['access']:<2} {row['meaning']}")
    return EXIT_OK
