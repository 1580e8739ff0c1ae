"""Arrival scenarios for ``evstack sim --scenario``: vehicles plugged in (and out) at given times.

CSV with a header (order free); one row per vehicle:

| column | meaning |
|---|---|
| ``at`` | when to plug in: ``HH:MM`` (``HH:MM+1`` next day) on the simulated start date, or ``+SECONDS`` after start |
| ``pile`` | pile id |
| ``gun`` | gun number (from 1) |
| ``profile`` | vehicle profile (default ``bus-12m``) |
| ``soc_pct`` | SoC at plug-in (default 30) |
| ``target_soc_pct`` | the vehicle stops here (default 100) |
| ``vin``, ``id_token`` | optional |
| ``combined`` | optional ``true``/``1``: both guns of the pair |
| ``leave`` | optional: when to unplug, same forms as ``at`` |

Times are simulated. An event already in the past at start happens at once.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import os
import sys
from dataclasses import dataclass

from hw_profiles.errors import InputError
from hw_profiles.fleet import parse_clock

from .model import SimError

COLUMNS = ("at", "pile", "gun", "profile", "soc_pct", "target_soc_pct", "vin", "id_token", "combined", "leave")


@dataclass(frozen=True)
class Arrival:
    at_s: float  # simulated POSIX seconds
    pile: str
    gun: int
    profile: str
    soc_pct: float
    target_soc_pct: float
    vin: str | None
    id_token: str | None
    combined: bool
    leave_s: float | None
    line: int


def _when(text: str, start_s: float, where: str) -> float:
    text = text.strip()
    if text.startswith("+"):
        try:
            secs = float(text[1:])
        except ValueError:
            raise InputError(None, where, f"expected +SECONDS or HH:MM, got {text!r}") from None
        if not secs >= 0:
            raise InputError(None, where, f"must be >= 0 seconds, got {text!r}")
        return start_s + secs
    minutes = parse_clock(text, where)
    midnight = dt.datetime.fromtimestamp(start_s).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() + minutes * 60


def _num(row: dict, key: str, default: float, lo: float, hi: float, where: str) -> float:
    raw = (row.get(key) or "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise InputError(None, f"{where}: {key}", f"expected a number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise InputError(None, f"{where}: {key}", f"must be {lo:g}..{hi:g}, got {raw!r}")
    return v


def load_scenario(path: str | os.PathLike, station, start_s: float) -> list[Arrival]:
    """Read and check a scenario against ``station``. Raises InputError (file, line, reason)."""
    src = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise InputError(src, None, "empty file, expected a header line")
            unknown = [c for c in reader.fieldnames if c not in COLUMNS]
            if unknown:
                raise InputError(src, "header", f"unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
            for need in ("at", "pile", "gun"):
                if need not in reader.fieldnames:
                    raise InputError(src, "header", f"missing column {need!r}")
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(src, None, "no such file") from None
    except UnicodeDecodeError:
        raise InputError(src, None, "not UTF-8 text") from None
    except csv.Error as e:
        raise InputError(src, None, f"bad CSV ({e})") from None
    piles = {p.id: p for p in station.piles}
    out = []
    for i, row in enumerate(rows, start=2):
        where = f"line {i}"
        try:
            pile_id = (row.get("pile") or "").strip()
            if pile_id not in piles:
                raise InputError(None, f"{where}: pile", f"unknown pile {pile_id!r}")
            gun_raw = (row.get("gun") or "").strip()
            if not gun_raw.isdigit() or not 1 <= int(gun_raw) <= len(piles[pile_id].spec.guns):
                raise InputError(None, f"{where}: gun", f"pile {pile_id} has guns 1..{len(piles[pile_id].spec.guns)}, got {gun_raw!r}")
            profile = (row.get("profile") or "").strip() or "bus-12m"
            if station.catalog is not None and profile not in station.catalog.vehicles:
                raise InputError(None, f"{where}: profile", f"unknown vehicle profile {profile!r}")
            at_s = _when(row.get("at") or "", start_s, f"{where}: at")
            leave = (row.get("leave") or "").strip()
            leave_s = _when(leave, start_s, f"{where}: leave") if leave else None
            if leave_s is not None and leave_s <= at_s:
                raise InputError(None, f"{where}: leave", "must be after at")
            combined = (row.get("combined") or "").strip().lower()
            if combined not in ("", "0", "1", "true", "false", "yes", "no"):
                raise InputError(None, f"{where}: combined", f"expected true/false, got {combined!r}")
            out.append(Arrival(
                at_s=at_s, pile=pile_id, gun=int(gun_raw), profile=profile,
                soc_pct=_num(row, "soc_pct", 30.0, 0, 100, where),
                target_soc_pct=_num(row, "target_soc_pct", 100.0, 0.1, 100, where),
                vin=(row.get("vin") or "").strip() or None, id_token=(row.get("id_token") or "").strip() or None,
                combined=combined in ("1", "true", "yes"), leave_s=leave_s, line=i,
            ))
        except InputError as e:
            raise e.within(src) from None
    return out


async def run_scenario(sim, arrivals: list[Arrival], *, poll_s: float = 0.02) -> None:
    """Plug vehicles in and out at their simulated times. A refused event (gun occupied...) is
    reported on stderr and skipped."""
    events = sorted([(a.at_s, 0, a) for a in arrivals] + [(a.leave_s, 1, a) for a in arrivals if a.leave_s is not None],
                    key=lambda e: (e[0], e[1]))
    for t, kind, a in events:
        while sim.clock.now_s() < t:
            await asyncio.sleep(min(poll_s, max(0.001, (t - sim.clock.now_s()) / sim.clock.speed)))
        try:
            if kind == 0:
                sim.plug_in(a.pile, a.gun, profile=a.profile, vin=a.vin, soc_pct=a.soc_pct,
                            target_soc_pct=a.target_soc_pct, id_token=a.id_token, combined=a.combined)
            else:
                sim.unplug(a.pile, a.gun)
        except SimError as e:
            print(f"evstack sim: scenario line {a.line}: {e}", file=sys.stderr, flush=True)
