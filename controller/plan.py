"""Depot plans from ``evstack schedule``: parsing, validation and "which kW at time t".

``plan.csv`` columns: ``vehicle_id,gun_id,start,end,kw`` with ISO local datetimes
(``2026-11-29T23:00``), gun ids ``B01-1`` (one gun) or ``B01-1+2`` (both guns of a combinable
pile for one vehicle), and constant power over ``[start, end)``.

A malformed file (missing column, bad number or date, end before start) is bad input: one
:class:`InputError` naming the file and line. Rows that are well formed but cannot be executed
here (an unknown gun, power above the gun's rating) are reported as warnings and dropped or
capped, so the rest of the plan still runs (:func:`load_plan` returns them).
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import math
import os
from dataclasses import dataclass, field

from hw_profiles.errors import InputError, open_input
from hw_profiles.fleet import vin_for
from hw_profiles.specs import StationSpec

COLUMNS = ("vehicle_id", "gun_id", "start", "end", "kw")


@dataclass(frozen=True)
class Segment:
    """Constant power ``kw`` for ``vehicle_id`` on ``gun_id`` over [start_s, end_s) (POSIX s)."""

    vehicle_id: str
    gun_id: str
    start_s: float
    end_s: float
    kw: float
    line: int


@dataclass(frozen=True)
class Plan:
    """Segments by vehicle, sorted by start; answers "what does this vehicle get at t"."""

    segments: tuple[Segment, ...]
    source: str | None = None
    _by_vehicle: dict = field(default_factory=dict, compare=False, repr=False)
    _starts: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        by: dict[str, list[Segment]] = {}
        for s in sorted(self.segments, key=lambda s: (s.vehicle_id, s.start_s)):
            by.setdefault(s.vehicle_id, []).append(s)
        self._by_vehicle.update({k: tuple(v) for k, v in by.items()})
        self._starts.update({k: [s.start_s for s in v] for k, v in by.items()})

    @property
    def vehicles(self) -> tuple[str, ...]:
        return tuple(self._by_vehicle)

    def has(self, vehicle_id: str) -> bool:
        return vehicle_id in self._by_vehicle

    def kw_at(self, vehicle_id: str, t_s: float) -> float:
        """Planned kW for ``vehicle_id`` at ``t_s``; 0 between and outside its segments."""
        segs = self._by_vehicle.get(vehicle_id)
        if not segs:
            return 0.0
        i = bisect.bisect_right(self._starts[vehicle_id], t_s)
        # A schedule's segments of one vehicle do not overlap; if a hand-written plan's do, add them.
        return sum(s.kw for s in segs[:i] if t_s < s.end_s)

    def planned_kwh(self, vehicle_id: str) -> float:
        return sum(s.kw * (s.end_s - s.start_s) / 3600.0 for s in self._by_vehicle.get(vehicle_id, ()))

    def vehicle_for_gun(self, charge_point_id: str, t_s: float, exclude: set[str] = frozenset()) -> str | None:
        """The planned vehicle on this gun at ``t_s`` when the vehicle gave no VIN we know.

        The vehicle whose plan on this gun spans ``t_s`` (first start .. last end); else the one
        whose first segment on this gun starts next; vehicles in ``exclude`` are taken already.
        """
        best, best_key = None, None
        for vid, segs in self._by_vehicle.items():
            if vid in exclude:
                continue
            mine = [s for s in segs if s.gun_id == charge_point_id]
            if not mine:
                continue
            first, last = mine[0].start_s, max(s.end_s for s in mine)
            if last <= t_s:
                continue
            key = (0, first) if first <= t_s else (1, first - t_s)
            if best_key is None or key < best_key:
                best, best_key = vid, key
        return best

    def vin_map(self) -> dict[str, str]:
        """VIN -> vehicle id using the default VIN of each planned vehicle (fleet files may override)."""
        return {vin_for(v): v for v in self._by_vehicle}


def parse_local(value: str) -> float:
    """ISO local datetime (naive = this machine's local time) -> POSIX seconds."""
    return dt.datetime.fromisoformat(value.strip()).timestamp()


def gun_ratings(station: StationSpec) -> dict[str, float]:
    """Every gun id a plan may name -> its rating (kW), including ``P-1+2`` pairs."""
    out: dict[str, float] = {}
    for pile in station.piles:
        for n, g in enumerate(pile.spec.guns, start=1):
            out[pile.gun_id(n)] = g.rated_kw
        if pile.spec.combinable:
            for n in range(1, len(pile.spec.guns)):
                out[f"{pile.gun_id(n)}+{n + 1}"] = pile.spec.combined_max_kw
    return out


def load_plan(path: str | os.PathLike, station: StationSpec) -> tuple[Plan, list[str]]:
    """Read and check ``plan.csv`` against ``station``. Returns (plan, warnings).

    Raises :class:`InputError` (file, line, reason) when the file cannot be read as a plan.
    """
    src = str(path)
    f = open_input(path)
    ratings = gun_ratings(station)
    segments: list[Segment] = []
    warnings: list[str] = []
    with f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InputError(src, "line 1", f"missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise InputError(src, f"line {line}", "more fields than columns")
                seg = _segment(row, src, line)
                rating = ratings.get(seg.gun_id)
                if rating is None:
                    warnings.append(f"{src}: line {line}: unknown gun {seg.gun_id!r} "
                                    f"(station {station.name!r} has no such gun); row ignored")
                    continue
                if seg.kw > rating + 1e-9:
                    warnings.append(f"{src}: line {line}: {seg.kw:g} kW exceeds gun {seg.gun_id}'s rating "
                                    f"of {rating:g} kW; capped")
                    seg = Segment(seg.vehicle_id, seg.gun_id, seg.start_s, seg.end_s, rating, line)
                segments.append(seg)
        except UnicodeDecodeError as e:
            raise InputError(src, None, f"not UTF-8 text ({e.reason})") from None
        except csv.Error as e:
            raise InputError(src, f"line {reader.line_num}", f"bad CSV: {e}") from None
    return Plan(tuple(segments), src), warnings


def _segment(row: dict, src: str, line: int) -> Segment:
    where = f"line {line}"
    vid = (row["vehicle_id"] or "").strip()
    gun = (row["gun_id"] or "").strip()
    if not vid:
        raise InputError(src, where, "vehicle_id: empty")
    if not gun:
        raise InputError(src, where, "gun_id: empty")
    times = []
    for key in ("start", "end"):
        try:
            times.append(parse_local(row[key] or ""))
        except ValueError:
            raise InputError(src, where, f"{key}: expected an ISO datetime like 2026-11-29T23:00, got {row[key]!r}") from None
    try:
        kw = float((row["kw"] or "").strip())
    except ValueError:
        raise InputError(src, where, f"kw: expected a number, got {row['kw']!r}") from None
    if not math.isfinite(kw) or kw < 0:
        raise InputError(src, where, f"kw: must be a finite number >= 0, got {row['kw']!r}")
    if times[1] <= times[0]:
        raise InputError(src, where, f"end {row['end']} is not after start {row['start']}")
    return Segment(vid, gun, times[0], times[1], kw, line)
