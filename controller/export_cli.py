"""``evstack export``: sessions (with their bills), meter samples, prices, events or faults as CSV.

    evstack export --db evstack.db --what sessions --from 2024-03-01 --to 2024-04-01 --out march.csv

Times in the file are ISO local datetimes (the tariff's wall time) next to POSIX seconds.
``--from`` is inclusive, ``--to`` exclusive; each takes an ISO date or datetime (local time
unless it carries an offset) or POSIX seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys

from hw_profiles.errors import InputError

WHAT = ("sessions", "meter", "prices", "events", "faults")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export sessions, meter samples, prices, events or faults as CSV",
        description="Export rows from the controller's store as CSV (stdout unless --out). Sessions carry "
                    "their bill: energy and electricity fee by tariff period, the electricity fee, the service "
                    "fee and the total, separately. Exit 0 ok, 2 bad input (e.g. a database that cannot be "
                    "opened).")
    p.add_argument("--db", metavar="URL", default=None,
                   help="database: an SQLite file or URL, or postgresql://user@host:port/db[?schema=NAME] "
                        "(default evstack.db)")
    p.add_argument("--what", required=True, choices=WHAT, help="which rows")
    p.add_argument("--from", dest="from_", metavar="WHEN",
                   help="first time included: ISO date/datetime (local) or POSIX seconds")
    p.add_argument("--to", metavar="WHEN", help="first time excluded: ISO date/datetime (local) or POSIX seconds")
    p.add_argument("--format", default="csv", choices=("csv",), help="output format (csv)")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=cmd_export)


def parse_when(value: str | None, option: str) -> float | None:
    """``--from``/``--to`` as POSIX seconds: an ISO date or datetime (naive = local) or a number."""
    if value is None:
        return None
    text = value.strip()
    try:
        t = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(t):
            raise InputError(None, option, f"{value!r} is not a time")
        return t
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(None, option, f"{value!r} is not a time (expected e.g. 2024-03-01, "
                         "2024-03-01T23:00 or POSIX seconds)") from None
    return when.timestamp()


def cmd_export(args) -> int:
    import asyncio

    from_s = parse_when(args.from_, "--from")
    to_s = parse_when(args.to, "--to")
    if from_s is not None and to_s is not None and to_s <= from_s:
        raise InputError(None, "--to", f"{args.to!r} is not after --from {args.from_!r}")
    try:
        count = asyncio.run(_export(args.db, args.what, from_s, to_s, args.out))
    except BrokenPipeError:  # stdout closed early (`| head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"evstack export: {count} {args.what} row(s)" + (f" to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


async def _export(db: str | None, what: str, from_s: float | None, to_s: float | None, out: str | None) -> int:
    import csv

    from controller.store import Store, export_columns

    store = await Store.open(db, create=False)
    try:
        if out:
            try:
                f = open(out, "w", newline="", encoding="utf-8")
            except OSError as e:
                raise InputError(out, None, f"cannot write: {e.strerror or e}") from None
        else:
            f = sys.stdout
        count = 0
        try:
            writer = csv.DictWriter(f, fieldnames=export_columns(what), lineterminator="\n")
            writer.writeheader()
            async for chunk in store.iter_export(what, from_s, to_s):
                writer.writerows(chunk)
                count += len(chunk)
        finally:
            if out:
                f.close()
        return count
    finally:
        await store.close()
