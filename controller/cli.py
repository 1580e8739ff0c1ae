"""``evstack run``: the live controller."""

from __future__ import annotations

import argparse
import datetime as dt

from hw_profiles.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="control the piles of a station over Modbus TCP",
        description="Poll the piles of STATION over Modbus TCP, decide every gun's setpoint through the "
                    "allocation core (a plan from `evstack schedule`, else the valley policy), record and "
                    "bill sessions in the store. Runs until SIGTERM/SIGINT (exit 0), --until or "
                    "--duration-s. Exit 2 when nothing can run (bad file, database, no pile answers).")
    p.add_argument("station", help="station file (TOML)")
    p.add_argument("--plan", help="plan.csv from `evstack schedule` (vehicle_id,gun_id,start,end,kw)")
    p.add_argument("--fleet", help="fleet CSV: maps VINs to vehicle ids (and batteries, for the valley policy)")
    p.add_argument("--db", help="database URL or SQLite file (default evstack.db; postgresql://... for PostgreSQL)")
    p.add_argument("--speed", type=float, default=1.0, help="clock speed, simulated s per real s (match `evstack sim --speed`)")
    p.add_argument("--start", help="simulated start time, ISO local datetime (match `evstack sim --start`)")
    p.add_argument("--cycle-s", type=float, default=1.0, help="control cycle, simulated seconds (default 1)")
    p.add_argument("--validity-s", type=int, help="setpoint validity written to every gun (default max(10, 5 x cycle))")
    p.add_argument("--auth-tokens", help="file of allowed card ids / QR tokens, one per line (default: accept all)")
    p.add_argument("--until", help="stop at this simulated time (ISO local datetime)")
    p.add_argument("--duration-s", type=float, help="stop after this many simulated seconds")
    p.add_argument("--offline-after", type=int, default=3, help="failed cycles before a pile is offline (default 3)")
    p.add_argument("--timeout-s", type=float, default=0.5, help="Modbus request timeout, real seconds (default 0.5)")
    p.add_argument("--json-logs", action="store_true", help="log one JSON object per line on stderr")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_run)


def _iso(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InputError(flag, None, f"expected an ISO datetime like 2026-11-29T22:00, got {value!r}") from None


def cmd_run(args) -> int:
    import asyncio

    from .runner import RunConfig, run, setup_logging

    if not args.speed > 0:
        raise InputError("--speed", None, f"must be > 0, got {args.speed}")
    if not args.cycle_s > 0:
        raise InputError("--cycle-s", None, f"must be > 0, got {args.cycle_s}")
    if args.offline_after < 1:
        raise InputError("--offline-after", None, f"must be >= 1, got {args.offline_after}")
    if not args.timeout_s > 0:
        raise InputError("--timeout-s", None, f"must be > 0, got {args.timeout_s}")
    cfg = RunConfig(
        station=args.station, plan=args.plan, fleet=args.fleet, db=args.db, speed=args.speed,
        start_s=_iso(args.start, "--start"), cycle_s=args.cycle_s, validity_s=args.validity_s,
        auth_tokens=args.auth_tokens, until_s=_iso(args.until, "--until"), duration_s=args.duration_s,
        json_logs=args.json_logs, offline_after=args.offline_after, timeout_s=args.timeout_s,
        log_level=args.log_level,
    )
    setup_logging(cfg.json_logs, cfg.log_level)
    return asyncio.run(run(cfg))
