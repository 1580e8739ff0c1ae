"""Scheduler bench: prints figures with their targets beside them (not a timed test).

Speed: 365 days of a 200-bus depot (100 dual-gun 360 kW piles, 4 feeders) at 1-minute steps,
policy ``valley``; target <= 30 s. Median of 3 runs; the baseline in the same run is the plain
minute-by-minute simulation (whole tree through the allocation core every minute, as
tests/scheduler_helpers.py does) on one day, scaled to the year.
Quality: on examples/bus-depot.toml + bus-fleet.csv with each Yunnan preset, the cost of
``valley`` against ``optimal`` (the LP bound, and its plan as simulated; target: within 1 %)
and against ``uncontrolled`` (the saving), and the share of rules met.

Run: ``.venv/bin/python bench/scheduler.py`` (``--quick`` for 30 days).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hw_profiles.fleet import load_fleet  # noqa: E402
from hw_profiles.station import load_station  # noqa: E402
from hw_profiles.tariff import load_tariff  # noqa: E402
from scheduler.feasibility import check  # noqa: E402
from scheduler.report import build_report  # noqa: E402
from scheduler.runner import run_schedule  # noqa: E402

DAY0 = dt.date(2026, 1, 1)


def depot_200(tmp: Path) -> tuple[Path, Path]:
    from scheduler_helpers import write_station

    station = write_station(tmp / "depot200.toml", piles=100, site_kw=9000, feeders=[2500.0] * 4)
    rng = np.random.default_rng(2026)
    rows = ["vehicle_id,profile,arrival,departure,arrival_soc_pct,target_soc_pct"]
    for i in range(200):
        a = int(rng.integers(19 * 60, 23 * 60))
        d = int(rng.integers(5 * 60 + 30, 8 * 60 + 30))
        rows.append(f"BUS{i:03d},bus-12m,{a // 60:02d}:{a % 60:02d},{d // 60:02d}:{d % 60:02d}+1,{rng.integers(25, 65)},100")
    fleet = tmp / "fleet200.csv"
    fleet.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return station, fleet


def speed(days: int) -> None:
    from scheduler_helpers import reference_minutes

    with tempfile.TemporaryDirectory() as d:
        station_path, fleet_path = depot_200(Path(d))
        st = load_station(station_path)
        fl = load_fleet(fleet_path, st.catalog)
        tar = load_tariff(st.tariff)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run = run_schedule(st, fl, tar, policy="valley", day0=DAY0, days=days, seed=1)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        res, sc = run.result, run.scenario
        nominal = days * len(fl) * 1440
        s = sc.sessions
        plugged_min = int(np.sum(np.where(run.assignment.gun0 >= 0, s.departure - run.assignment.plug, 0)))
        # baseline: plain minute-by-minute stepping of one day, whole tree every minute
        one = run_schedule(st, fl, tar, policy="valley", day0=DAY0, days=1, seed=1)
        t0 = time.perf_counter()
        reference_minutes(one)
        ref_day = time.perf_counter() - t0
    print(f"== speed: {days} days x {len(fl)} buses x 1440 one-minute steps, policy valley "
          f"({sc.lanes} lanes side by side)")
    print(f"  wall time        median {med:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times)})   target <= 30 s"
          f"{'' if days == 365 else ' (for 365 days)'}")
    print(f"  vehicle-steps/s  {nominal / med / 1e6:6.2f} M/s nominal ({nominal / 1e6:.0f} M vehicle-minutes), "
          f"{plugged_min / med / 1e6:.2f} M/s plugged ({plugged_min / 1e6:.1f} M)")
    print(f"  engine           {res.ticks} ticks, {res.core_calls} allocation calls, {res.core_guns:,} gun rows "
          f"allocated; unmet {float(np.maximum(run.context.full_soc - res.final_soc, 0).sum()):.1f} % SoC total")
    print(f"  baseline         minute-by-minute whole-tree stepping: {ref_day:.2f} s per day -> "
          f"{ref_day * days:.0f} s for {days} days; this engine is {ref_day * days / med:.0f}x faster")


def quality() -> None:
    ex = ROOT / "examples"
    st = load_station(ex / "bus-depot.toml")
    fl = load_fleet(ex / "bus-fleet.csv", st.catalog)
    print("== quality: examples/bus-depot.toml + bus-fleet.csv (18 buses, 1 night)")
    for preset in ("yunnan-pre2024", "yunnan-2024"):
        tar = load_tariff(preset)
        cost, rules, unmet = {}, {}, {}
        lp = None
        for policy in ("valley", "optimal", "uncontrolled"):
            run = run_schedule(st, fl, tar, policy=policy, day0=DAY0)
            doc = build_report(run, check(run.scenario, run.context))
            cost[policy] = doc["cost_cny"]["total"]
            rules[policy] = doc["rules_met_share"]
            unmet[policy] = doc["unmet_kwh"]
            if policy == "optimal":
                lp = run.plan.lp["cost_cny"]
        gap = (cost["valley"] / lp - 1) * 100
        print(f"  {preset:15s} valley {cost['valley']:8.2f} CNY | optimal LP bound {lp:8.2f} (valley +{gap:.2f} %, "
              f"target <= 1 %), optimal plan simulated {cost['optimal']:8.2f} (unmet {unmet['optimal']:.1f} kWh) | uncontrolled {cost['uncontrolled']:8.2f} "
              f"(valley saves {cost['uncontrolled'] - cost['valley']:.2f} CNY, "
              f"{(1 - cost['valley'] / cost['uncontrolled']) * 100:.1f} %)")
        print(f"  {'':15s} rules met: valley {rules['valley']:.1%}, optimal {rules['optimal']:.1%}, "
              f"uncontrolled {rules['uncontrolled']:.1%}")


if __name__ == "__main__":
    speed(30 if "--quick" in sys.argv else 365)
    quality()
