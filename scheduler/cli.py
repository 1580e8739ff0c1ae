"""``evstack schedule``: plan and simulate a night (or N days) of depot charging.

Writes ``DIR/report.json``, ``DIR/plan.csv`` and ``DIR/load.png`` and prints the report.
Exit 0 when every vehicle meets every rule, 1 when some vehicle misses one (the plan is still
written: it is the best the policy can do), 2 on bad input (one line naming file and reason).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from hw_profiles.errors import EXIT_OK, EXIT_RULE_FAILED, InputError

POLICIES = ("valley", "uncontrolled", "optimal")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule", help="plan and simulate depot charging: report.json, plan.csv, load.png",
        description="Simulate a night (or N days) of charging at a station for a fleet timetable under a "
                    "time-of-use tariff, with the same allocation core and vehicle model as the live "
                    "controller. Exit 0 every rule met, 1 some vehicle misses a rule, 2 bad input.")
    p.add_argument("--station", required=True, help="station file (TOML)")
    p.add_argument("--fleet", required=True, help="fleet timetable (CSV)")
    p.add_argument("--tariff", help="tariff preset (yunnan-pre2024, yunnan-2024) or TOML file; default: the station's")
    p.add_argument("--days", type=int, default=1, help="days to simulate; day 0 is the fleet file, later days vary it")
    p.add_argument("--policy", choices=POLICIES, default="valley", help="charging policy (default: valley)")
    p.add_argument("--seed", type=int, default=0, help="seed of the day-to-day variation (same seed, same result)")
    p.add_argument("--date", help="date of day 0, YYYY-MM-DD (default: tomorrow)")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--no-plot", action="store_true", help="skip load.png")
    p.add_argument("--json", action="store_true", help="print report.json instead of the text report")
    p.set_defaults(func=cmd_schedule)


def _date(text: str | None, clock) -> dt.date:
    if text is None:
        now = dt.datetime.fromtimestamp(clock.now_s())
        return now.date() + dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InputError(None, "--date", f"expected YYYY-MM-DD, got {text!r}") from None


class Progress:
    """A one-line progress bar on stderr, shown only once a run has taken ``after_s`` seconds."""

    def __init__(self, stream=sys.stderr, after_s: float = 2.0, monotonic=time.monotonic) -> None:
        self.stream, self.after_s, self.monotonic = stream, after_s, monotonic
        self.t0 = monotonic()
        self.shown = False
        self.last = -1

    def __call__(self, frac: float) -> None:
        if self.monotonic() - self.t0 < self.after_s:
            return
        pct = int(frac * 100)
        if pct == self.last:
            return
        self.last, self.shown = pct, True
        bar = "#" * (pct // 4)
        self.stream.write(f"\rsimulating [{bar:<25}] {pct:3d}%")
        self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 45 + "\r")
            self.stream.flush()


def cmd_schedule(args, clock=None) -> int:
    import json

    from hw_profiles.clock import ScaledClock
    from hw_profiles.fleet import load_fleet
    from hw_profiles.station import load_station
    from hw_profiles.tariff import load_tariff

    from .feasibility import check
    from .report import build_report, plot_load, render_text, write_plan
    from .runner import prepare
    from .model import build_scenario
    from .policies import make_plan
    from .sim import simulate
    from .runner import Run

    if args.days < 1 or args.days > 3660:
        raise InputError(None, "--days", f"expected 1..3660, got {args.days}")
    day0 = _date(args.date, clock or ScaledClock())
    station = load_station(args.station)
    base = Path(station.source).parent if station.source else None
    tariff = load_tariff(args.tariff, None) if args.tariff else load_tariff(station.tariff, base)
    fleet = load_fleet(args.fleet, station.catalog)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(str(out), None, f"cannot create the output folder ({e.strerror})") from None
    sc = build_scenario(station, fleet, tariff, day0=day0, days=args.days, seed=args.seed)
    ctx = prepare(sc, args.policy)
    findings = check(sc, ctx)
    plan = make_plan(args.policy, sc, ctx)
    bar = Progress()
    result = simulate(sc, ctx.assignment, plan, bar)
    bar.done()
    run = Run(args.policy, sc, ctx.assignment, ctx, plan, result)
    doc = build_report(run, findings, station_path=str(args.station), fleet_path=str(args.fleet))
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    rows = write_plan(run, out / "plan.csv")
    if not args.no_plot:
        plot_load(run, out / "load.png")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_text(doc))
        print(f"Wrote {out / 'report.json'}, {out / 'plan.csv'} ({rows} rows)"
              + ("" if args.no_plot else f", {out / 'load.png'}"))
    missed = any(v["missed"] for v in doc["vehicles"])
    return EXIT_RULE_FAILED if missed else EXIT_OK
