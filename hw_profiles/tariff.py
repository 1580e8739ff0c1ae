"""Time-of-use tariffs (TOML): periods as windows per day, seasons, prices by site category.

```toml
[tariff]
name = "Yunnan 2024"
note = "as reported, verify before billing"
currency = "CNY"
service_fee_cny_per_kwh = 0.60     # operator's service fee, billed separately (DOMAIN.md)
effective_from = 2024-01-01        # optional
effective_to = 2099-12-31          # optional

[prices.large_industrial]          # CNY/kWh by site price category and period
peak = 0.675
flat = 0.45
valley = 0.225

[[seasons]]                        # one or more; months may not overlap; default all year
name = "all year"
months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
windows = [
  { period = "valley", start = "23:00", end = "07:00" },   # windows may cross midnight
  ...
]
```
The windows of a season must cover the day exactly once: a gap or an overlap is an error.
Periods: ``critical_peak``, ``peak``, ``flat``, ``valley``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InputError

PERIODS = ("critical_peak", "peak", "flat", "valley")
PRESETS = {
    "yunnan-pre2024": "data/tariff-yunnan-pre2024.toml",
    "yunnan-2024": "data/tariff-yunnan-2024.toml",
}
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Window:
    period: str
    start_min: int  # minutes after midnight, 0..1439
    end_min: int  # 1..1440; end < start means the window crosses midnight


@dataclass(frozen=True)
class Season:
    name: str
    months: frozenset[int]
    windows: tuple[Window, ...]
    minute_period: np.ndarray  # 1440 indices into PERIODS


@dataclass(frozen=True)
class Tariff:
    name: str
    note: str
    currency: str
    service_fee_cny_per_kwh: float
    prices: Mapping[str, Mapping[str, float]]  # category -> period -> CNY/kWh
    seasons: tuple[Season, ...]
    effective_from: dt.date | None = None
    effective_to: dt.date | None = None
    source: str | None = None

    def season(self, day: dt.date) -> Season:
        for s in self.seasons:
            if day.month in s.months:
                return s
        raise ValueError(f"tariff {self.name!r} has no season for month {day.month}")

    def minute_table(self, day: dt.date) -> np.ndarray:
        """Period index (into ``PERIODS``) of each of the 1440 minutes of ``day``."""
        return self.season(day).minute_period

    def period_at(self, when: dt.datetime) -> str:
        return PERIODS[self.minute_table(when.date())[when.hour * 60 + when.minute]]

    def price_table(self, category: str) -> np.ndarray:
        """Energy price by period index (CNY/kWh); NaN for periods the tariff does not price."""
        prices = self.prices[category]
        return np.array([prices.get(p, np.nan) for p in PERIODS])

    def price_cny_per_kwh(self, category: str, when: dt.datetime) -> float:
        return float(self.prices[category][self.period_at(when)])

    def windows_of(self, period: str, day: dt.date) -> list[tuple[dt.datetime, dt.datetime]]:
        """The windows of ``period`` that start on ``day`` (a window crossing midnight ends next day)."""
        out = []
        base = dt.datetime.combine(day, dt.time())
        for w in self.season(day).windows:
            if w.period != period:
                continue
            end = w.end_min if w.end_min > w.start_min else w.end_min + MINUTES_PER_DAY
            out.append((base + dt.timedelta(minutes=w.start_min), base + dt.timedelta(minutes=end)))
        return _merge(sorted(out))

    def energy_by_period_kwh(self, start: dt.datetime, minute_kwh: np.ndarray) -> dict[str, float]:
        """Split energy given per minute from ``start`` (a minute boundary) by tariff period."""
        idx = self.period_index_series(start, len(minute_kwh))
        sums = np.bincount(idx, weights=np.asarray(minute_kwh, float), minlength=len(PERIODS))
        return {p: float(sums[i]) for i, p in enumerate(PERIODS) if sums[i] or p in self.used_periods}

    def period_index_series(self, start: dt.datetime, minutes: int) -> np.ndarray:
        """Period index of each minute from ``start`` on, for ``minutes`` minutes."""
        out = np.empty(minutes, dtype=np.int64)
        t = start.replace(second=0, microsecond=0)
        pos = 0
        while pos < minutes:
            m0 = t.hour * 60 + t.minute
            n = min(MINUTES_PER_DAY - m0, minutes - pos)
            out[pos: pos + n] = self.minute_table(t.date())[m0: m0 + n]
            pos += n
            t = dt.datetime.combine(t.date() + dt.timedelta(days=1), dt.time())
        return out

    @property
    def used_periods(self) -> tuple[str, ...]:
        used = {w.period for s in self.seasons for w in s.windows}
        return tuple(p for p in PERIODS if p in used)


def _merge(spans):
    out = []
    for a, b in spans:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _hhmm(value: Any, where: str, *, end: bool) -> int:
    if not isinstance(value, str) or len(value.split(":")) != 2:
        raise InputError(None, where, f"expected a time \"HH:MM\", got {value!r}")
    h, m = value.split(":")
    if not (h.isdigit() and m.isdigit()):
        raise InputError(None, where, f"expected a time \"HH:MM\", got {value!r}")
    minutes = int(h) * 60 + int(m)
    if int(m) > 59 or minutes > MINUTES_PER_DAY or (minutes == MINUTES_PER_DAY and not end):
        raise InputError(None, where, f"{value!r} is not a time of day")
    return minutes


def _fmt(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _season(raw: Any, where: str) -> Season:
    if not isinstance(raw, Mapping):
        raise InputError(None, where, "expected a table")
    for k in raw:
        if k not in ("name", "months", "windows"):
            raise InputError(None, f"{where}.{k}", "unknown key (known: name, months, windows)")
    months = raw.get("months", list(range(1, 13)))
    if not isinstance(months, list) or not all(isinstance(m, int) and 1 <= m <= 12 for m in months):
        raise InputError(None, f"{where}.months", "expected a list of months 1..12")
    windows_raw = raw.get("windows")
    if not isinstance(windows_raw, list) or not windows_raw:
        raise InputError(None, f"{where}.windows", "expected a list of {period, start, end} windows")
    owner = np.full(MINUTES_PER_DAY, -1, dtype=np.int64)
    windows = []
    for i, w in enumerate(windows_raw):
        wwhere = f"{where}.windows[{i}]"
        if not isinstance(w, Mapping) or set(w) - {"period", "start", "end"} or not {"period", "start", "end"} <= set(w):
            raise InputError(None, wwhere, "expected { period, start, end }")
        if w["period"] not in PERIODS:
            raise InputError(None, f"{wwhere}.period", f"unknown period {w['period']!r} (expected one of: {', '.join(PERIODS)})")
        start = _hhmm(w["start"], f"{wwhere}.start", end=False)
        end = _hhmm(w["end"], f"{wwhere}.end", end=True)
        if start == end % MINUTES_PER_DAY:
            raise InputError(None, wwhere, "a window cannot start where it ends")
        minutes = np.arange(start, end) if end > start else np.r_[np.arange(start, MINUTES_PER_DAY), np.arange(0, end)]
        clash = owner[minutes] >= 0
        if clash.any():
            other = int(owner[minutes][clash][0])
            m = int(minutes[clash][0])
            raise InputError(None, wwhere, f"overlaps windows[{other}] at {_fmt(m)}")
        owner[minutes] = i
        windows.append(Window(w["period"], start, end))
    gaps = np.flatnonzero(owner < 0)
    if gaps.size:
        g0 = int(gaps[0])
        g1 = g0
        while g1 + 1 < MINUTES_PER_DAY and owner[g1 + 1] < 0:
            g1 += 1
        raise InputError(None, f"{where}.windows", f"gap: no window covers {_fmt(g0)}-{_fmt(g1 + 1)}")
    minute_period = np.array([PERIODS.index(windows[o].period) for o in owner], dtype=np.int64)
    return Season(str(raw.get("name", "all year")), frozenset(months), tuple(windows), minute_period)


def tariff_from_toml(doc: Mapping[str, Any], source: str | None = None) -> Tariff:
    for k in doc:
        if k not in ("tariff", "prices", "seasons"):
            raise InputError(None, k, "unknown table (known: tariff, prices, seasons)")
    head = doc.get("tariff")
    if not isinstance(head, Mapping):
        raise InputError(None, "tariff", "missing [tariff] table")
    known = {"name", "note", "currency", "service_fee_cny_per_kwh", "effective_from", "effective_to"}
    for k in head:
        if k not in known:
            raise InputError(None, f"tariff.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    fee = head.get("service_fee_cny_per_kwh", 0.0)
    if isinstance(fee, bool) or not isinstance(fee, (int, float)) or fee < 0:
        raise InputError(None, "tariff.service_fee_cny_per_kwh", f"expected a number >= 0, got {fee!r}")
    for k in ("effective_from", "effective_to"):
        if k in head and not isinstance(head[k], dt.date):
            raise InputError(None, f"tariff.{k}", f"expected a date (YYYY-MM-DD), got {head[k]!r}")
    seasons_raw = doc.get("seasons")
    if not isinstance(seasons_raw, list) or not seasons_raw:
        raise InputError(None, "seasons", "expected at least one [[seasons]] table with windows")
    seasons = tuple(_season(s, f"seasons[{i}]") for i, s in enumerate(seasons_raw))
    month_owner: dict[int, int] = {}
    for i, s in enumerate(seasons):
        for m in s.months:
            if m in month_owner:
                raise InputError(None, f"seasons[{i}].months", f"month {m} is also in seasons[{month_owner[m]}]")
            month_owner[m] = i
    missing = sorted(set(range(1, 13)) - set(month_owner))
    if missing:
        raise InputError(None, "seasons", f"no season covers month(s) {', '.join(map(str, missing))}")
    used = {w.period for s in seasons for w in s.windows}
    prices_raw = doc.get("prices")
    if not isinstance(prices_raw, Mapping) or not prices_raw:
        raise InputError(None, "prices", "expected [prices.<category>] tables")
    prices = {}
    from .specs import PriceCategory
    for cat, table in prices_raw.items():
        if cat not in {c.value for c in PriceCategory}:
            raise InputError(None, f"prices.{cat}", f"unknown price category (expected one of: {', '.join(c.value for c in PriceCategory)})")
        if not isinstance(table, Mapping):
            raise InputError(None, f"prices.{cat}", "expected a table of period = CNY/kWh")
        for period, price in table.items():
            if period not in PERIODS:
                raise InputError(None, f"prices.{cat}.{period}", "unknown period")
            if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                raise InputError(None, f"prices.{cat}.{period}", f"expected CNY/kWh >= 0, got {price!r}")
        for period in sorted(used):
            if period not in table:
                raise InputError(None, f"prices.{cat}.{period}", "missing: the windows use this period")
        prices[cat] = {p: float(v) for p, v in table.items()}
    return Tariff(
        name=str(head.get("name", source or "tariff")), note=str(head.get("note", "")),
        currency=str(head.get("currency", "CNY")), service_fee_cny_per_kwh=float(fee), prices=prices,
        seasons=seasons, effective_from=head.get("effective_from"), effective_to=head.get("effective_to"),
        source=source,
    )


def load_tariff(ref: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> Tariff:
    """A preset by name (``yunnan-2024``, ``yunnan-pre2024``) or a TOML file (relative to ``base_dir``)."""
    from .station import read_toml
    import tomllib

    ref_s = str(ref)
    if ref_s in PRESETS:
        text = resources.files("hw_profiles").joinpath(PRESETS[ref_s]).read_text(encoding="utf-8")
        return tariff_from_toml(tomllib.loads(text), source=ref_s)
    path = Path(ref_s)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists() and path.suffix != ".toml" and os.sep not in ref_s:
        raise InputError(None, None, f"unknown tariff {ref_s!r} (presets: {', '.join(PRESETS)}; or a path to a TOML file)")
    doc = read_toml(path)
    try:
        return tariff_from_toml(doc, source=str(path))
    except InputError as e:
        raise e.within(str(path)) from None
