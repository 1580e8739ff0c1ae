"""``evstack demo``: the whole stack on the shipped examples, a night in accelerated time.

1. ``evstack check`` on the three example stations (the Qujing rules, the subsidy);
2. ``evstack schedule`` of the example bus depot and fleet (valley policy): the plan;
3. the depot's piles as simulated firmware behind real Modbus TCP (free ports on 127.0.0.1),
   buses plugging in at their arrival times, and ``evstack run``'s controller executing the plan
   over Modbus into a SQLite store;
4. the report: every session as billed from the pile meters (electricity by tariff period and
   the service fee, shown separately) beside what the scheduler predicted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole stack on the shipped examples: check, schedule, a simulated night",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", default=None, help="folder of the example files (default: ./examples)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--speed", type=float, default=800.0,
                   help="simulated seconds per real second while buses charge (default 800; hours when nothing "
                        "charges run at x3000): the night takes under a minute")
    p.add_argument("--date", default=None, help="date the night starts, YYYY-MM-DD (default: tomorrow)")
    p.set_defaults(func=cmd_demo)


def examples_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    here = Path.cwd() / "examples"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "examples"


def _title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cmd_demo(args) -> int:
    from hw_profiles.errors import InputError

    if not args.speed > 0:
        raise InputError("--speed", None, f"must be > 0, got {args.speed:g}")
    ex = examples_dir(args.examples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    date = dt.date.fromisoformat(args.date) if args.date else dt.date.today() + dt.timedelta(days=1)
    worst = check_examples(ex)
    plan_dir = out / "schedule"
    worst = max(worst, schedule(ex, plan_dir, date))
    worst = max(worst, asyncio.run(night(ex, plan_dir, out / "evstack.db", date, args.speed)))
    return worst


def check_examples(ex: Path) -> int:
    from hw_profiles.compliance import check
    from hw_profiles.fleet import load_fleet
    from hw_profiles.station import load_station

    _title("1. The Qujing rules: evstack check")
    worst = 0
    for name, fleet in (("bus-depot.toml", "bus-fleet.csv"), ("logistics-station.toml", None),
                        ("public-car-park.toml", None)):
        st = load_station(ex / name)
        rep = check(st, load_fleet(ex / fleet, st.catalog) if fleet else None)
        failed = [r for r in rep.results if not r.passed]
        worst = max(worst, 1 if failed else 0)
        sub = f"subsidy {rep.subsidy.total_cny:,.0f} CNY" if rep.subsidy.public else "not public: no subsidy"
        print(f"$ evstack check examples/{name}" + (f" --fleet examples/{fleet}" if fleet else ""))
        print(f"  {st.name}: {len(rep.results) - len(failed)}/{len(rep.results)} rules pass, "
              f"{st.gun_count} guns, {st.installed_kw:g} kW installed; {sub}")
        for r in failed:
            print("  " + r.line())
    return worst


def schedule(ex: Path, plan_dir: Path, date: dt.date) -> int:
    from evstack.cli import main as evstack

    argv = ["schedule", "--station", str(ex / "bus-depot.toml"), "--fleet", str(ex / "bus-fleet.csv"),
            "--date", date.isoformat(), "--out", str(plan_dir)]
    _title("2. The night's plan: evstack " + " ".join(argv))
    return evstack(argv)


async def night(ex: Path, plan_dir: Path, db: Path, date: dt.date, speed: float) -> int:
    from controller.runner import RunConfig, run
    from controller.store import Store
    from firmware_sim.station import SimulatedStation
    from hw_profiles.clock import ScaledClock
    from hw_profiles.fleet import load_fleet
    from hw_profiles.station import load_station

    station_path = ex / "bus-depot.toml"
    fleet_path = ex / "bus-fleet.csv"
    station = load_station(station_path)
    fleet = load_fleet(fleet_path, station.catalog)
    predicted = {v["vehicle_id"]: v for v in json.loads((plan_dir / "report.json").read_text())["vehicles"]}
    midnight = dt.datetime.combine(date, dt.time())
    at = lambda minute: midnight + dt.timedelta(minutes=minute)  # noqa: E731
    begin = at(min(v.arrival_min for v in fleet) - 10)
    end = at(max(v.departure_min for v in fleet) + 5)
    if db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)

    _title(f"3. The night, live over Modbus TCP: {begin:%H:%M} to {end:%H:%M} at x{speed:g}")
    print("$ evstack sim examples/bus-depot.toml   (in-process, free ports on 127.0.0.1)")
    print(f"$ evstack run examples/bus-depot.toml --plan {plan_dir / 'plan.csv'} --fleet examples/bus-fleet.csv "
          f"--db {db}", flush=True)
    # The piles listen on free ports: the example's fixed ports may be taken on this machine.
    on_free_ports = dataclasses.replace(station, piles=tuple(dataclasses.replace(p, port=0) for p in station.piles))
    # Hours when nothing charges (buses arriving before the valley, leaving after it) run fast.
    starts = [dt.datetime.fromisoformat(v["start"]) for v in predicted.values() if v.get("start")]
    ends = [dt.datetime.fromisoformat(v["end"]) for v in predicted.values() if v.get("end")]
    busy_from = min(starts) - dt.timedelta(minutes=10) if starts else begin
    busy_to = max(ends) + dt.timedelta(minutes=10) if ends else end
    idle_speed = max(speed, 3000.0)
    clock = ScaledClock(idle_speed if begin < busy_from else speed, begin.timestamp())
    guns = {v["vehicle_id"]: v["gun"] for v in predicted.values()}
    async with SimulatedStation(on_free_ports, clock=clock) as sim:
        cfg = RunConfig(station=str(station_path), plan=str(plan_dir / "plan.csv"), fleet=str(fleet_path),
                        db=str(db), cycle_s=max(1.0, speed / 40), timeout_s=0.5, log_level="ERROR",
                        hosts={pid: ep[:2] for pid, ep in sim.endpoints.items()})
        stop = asyncio.Event()
        controller = asyncio.create_task(run(cfg, stop=stop, clock=clock))
        events = sorted([(at(v.arrival_min), 1, v) for v in fleet] + [(at(v.departure_min), 0, v) for v in fleet],
                        key=lambda e: (e[0], e[1]))
        events += [(busy_from, 2, None), (busy_to, 3, None)]
        events.sort(key=lambda e: (e[0], e[1]))
        for when, plug, v in events:
            while clock.now() < when:
                if controller.done():
                    return controller.result() or 2
                await asyncio.sleep(min(0.05, max(0.0, (when - clock.now()).total_seconds() / speed)))
            if v is None:  # entering or leaving the hours when buses charge
                clock.set_speed(speed if plug == 2 else idle_speed)
                print(f"  {clock.now():%H:%M} clock x{clock.speed:g}", flush=True)
                continue
            gun = guns.get(v.vehicle_id)
            if not gun:
                continue
            pile_id, gun_no = gun.split("+")[0].rsplit("-", 1)
            if plug:
                sim.plug_in(pile_id, int(gun_no), profile=v.profile, vin=v.vin, soc_pct=v.arrival_soc_pct,
                            target_soc_pct=v.target_soc_pct, combined="+" in gun)
                print(f"  {clock.now():%H:%M} {v.vehicle_id} plugs into {gun} at {v.arrival_soc_pct:.0f} %", flush=True)
            else:
                soc = sim.state(pile_id)["guns"][int(gun_no) - 1].get("soc_pct")
                sim.unplug(pile_id, int(gun_no))
                print(f"  {clock.now():%H:%M} {v.vehicle_id} leaves {gun}" + (f" at {soc:.1f} %" if soc else ""), flush=True)
        await asyncio.sleep(max(0.2, 3 * cfg.cycle_s / speed))  # the controller sees the last unplug
        stop.set()
        rc = await controller
    store = await Store.open(str(db))
    try:
        sessions = await store.export_rows("sessions", None, None)
    finally:
        await store.close()
    return report(sessions, predicted, rc)


def report(sessions: list[dict], predicted: dict, rc: int) -> int:
    _title("4. The bills, from the pile meters (electricity by tariff period + service fee)")
    print(f"{'vehicle':8} {'gun':7} {'start':>5} {'end':>5} {'kWh':>7} {'plan kWh':>8} {'diff':>6} "
          f"{'valley':>7} {'flat':>6} {'peak':>6} {'elec CNY':>9} {'service':>8} {'total':>8}")
    tot = {"kwh": 0.0, "plan": 0.0, "elec": 0.0, "svc": 0.0, "total": 0.0}
    worst = 0.0
    for s in sorted(sessions, key=lambda r: r["vehicle_id"] or r["gun_id"]):
        kwh = (s["energy_wh"] or 0) / 1000
        plan_kwh = predicted.get(s["vehicle_id"], {}).get("energy_kwh") or 0.0
        diff = (kwh - plan_kwh) / plan_kwh * 100 if plan_kwh else 0.0
        worst = max(worst, abs(diff))
        print(f"{s['vehicle_id'] or '?':8} {s['gun_id']:7} {s['start'][11:16]:>5} {(s['end'] or '')[11:16]:>5} "
              f"{kwh:7.1f} {plan_kwh:8.1f} {diff:5.1f}% {s['energy_kwh_valley'] or 0:7.1f} {s['energy_kwh_flat'] or 0:6.1f} "
              f"{s['energy_kwh_peak'] or 0:6.1f} {s['electricity_cny'] or 0:9.2f} {s['service_cny'] or 0:8.2f} "
              f"{s['total_cny'] or 0:8.2f}")
        tot["kwh"] += kwh
        tot["plan"] += plan_kwh
        tot["elec"] += s["electricity_cny"] or 0
        tot["svc"] += s["service_cny"] or 0
        tot["total"] += s["total_cny"] or 0
    print(f"{'total':8} {'':7} {'':5} {'':5} {tot['kwh']:7.1f} {tot['plan']:8.1f} {'':6} {'':7} {'':6} {'':6} "
          f"{tot['elec']:9.2f} {tot['svc']:8.2f} {tot['total']:8.2f}")
    print(f"{len(sessions)} sessions billed; delivered vs planned energy: worst {worst:.2f} % (target 2 %); "
          f"controller exit code {rc}")
    if not sessions or rc != 0:
        print("demo: the live night did not complete", file=sys.stderr)
        return 1
    return 0
