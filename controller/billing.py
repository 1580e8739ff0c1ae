"""Session billing and start authorization: pure functions, no I/O, no clock.

A bill shows the electricity fee (split by tariff period) and the operator's service fee
separately, as DOMAIN.md requires of every bill. Energy comes from the pile's meter register
(Wh, monotonic): ``energy_wh = last sample - first sample`` exactly; the controller never
integrates power.

Splitting by period: between two meter samples the energy is spread evenly over time, and the
spread is cut at the tariff's period boundaries. The tariff speaks local wall time, so POSIX
seconds are turned into naive local datetimes with :func:`datetime.datetime.fromtimestamp`
(the machine's time zone; Qujing is UTC+8 without daylight saving).

Money: per-period amounts are kept unrounded; ``electricity_cny`` and ``service_cny`` are
rounded once (0.01 CNY, half up) at the end and ``total_cny`` is their sum, so the printed
bill adds up.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Sequence

import numpy as np

from hw_profiles.tariff import MINUTES_PER_DAY, PERIODS, Tariff


@dataclass(frozen=True)
class Bill:
    """One charging session's bill.

    ``energy_kwh_by_period`` and ``electricity_cny_by_period`` have one key per period the
    tariff uses (0.0 where nothing was charged), in ``PERIODS`` order; their values are not
    rounded. ``electricity_cny``, ``service_cny`` and ``total_cny`` are rounded to 0.01 CNY and
    ``total_cny == electricity_cny + service_cny``.
    """

    energy_wh: int
    energy_kwh_by_period: dict[str, float]
    electricity_cny_by_period: dict[str, float]
    electricity_cny: float
    service_cny: float
    total_cny: float

    def as_dict(self) -> dict:
        """A JSON-ready dict (the store keeps bills in this form)."""
        return {
            "energy_wh": self.energy_wh,
            "energy_kwh_by_period": dict(self.energy_kwh_by_period),
            "electricity_cny_by_period": dict(self.electricity_cny_by_period),
            "electricity_cny": self.electricity_cny,
            "service_cny": self.service_cny,
            "total_cny": self.total_cny,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Bill":
        return cls(
            energy_wh=int(d["energy_wh"]),
            energy_kwh_by_period={k: float(v) for k, v in d["energy_kwh_by_period"].items()},
            electricity_cny_by_period={k: float(v) for k, v in d["electricity_cny_by_period"].items()},
            electricity_cny=float(d["electricity_cny"]),
            service_cny=float(d["service_cny"]),
            total_cny=float(d["total_cny"]),
        )


def round_cny(amount: float) -> float:
    """Round to 0.01 CNY, half up (not banker's rounding), via the shortest decimal repr."""
    return float(Decimal(repr(float(amount))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _local(t_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t_s)


def period_segments(tariff: Tariff, start_s: float, end_s: float) -> list[tuple[float, float, str]]:
    """Spans of constant tariff period covering ``start_s``..``end_s`` (POSIX s), clipped to it.

    Each item is ``(from_s, to_s, period)``; consecutive spans touch. Boundaries are the
    tariff's minute-resolution window edges in local time.
    """
    if end_s < start_s:
        raise ValueError(f"end {end_s} is before start {start_s}")
    out: list[tuple[float, float, str]] = []
    day = _local(start_s).date()
    last_day = _local(end_s).date()
    while day <= last_day:
        table = tariff.minute_table(day)
        midnight = dt.datetime.combine(day, dt.time())
        # minute indices where the period changes, plus the day's two ends
        cuts = [0, *(np.flatnonzero(np.diff(table)) + 1).tolist(), MINUTES_PER_DAY]
        for a, b in zip(cuts, cuts[1:]):
            a_s = (midnight + dt.timedelta(minutes=a)).timestamp()
            b_s = (midnight + dt.timedelta(minutes=b)).timestamp()
            lo, hi = max(a_s, start_s), min(b_s, end_s)
            if hi < lo or (hi == lo and not (start_s == end_s and a_s <= start_s < b_s)):
                continue  # outside the session (a zero-length span only for a zero-length session)
            period = PERIODS[int(table[a])]
            if out and out[-1][2] == period and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi, period)
            else:
                out.append((lo, hi, period))
        day += dt.timedelta(days=1)
    return out


def bill_session(tariff: Tariff, price_category: str, samples: Sequence[tuple[float, int]]) -> Bill:
    """Bill a session from its meter samples.

    ``samples``: ``(t_s, energy_wh)`` pairs (POSIX seconds, the pile's meter register in Wh) in
    time order; the first is the session start, the last its end. Energy between two samples
    is spread evenly over the interval and cut at period boundaries. Samples sharing a time
    count as one (the last of them). Raises ``ValueError`` for no samples, times going back,
    a meter going back, or a price category the tariff does not price.
    """
    if not samples:
        raise ValueError("a bill needs at least one meter sample (the session start)")
    try:
        prices = tariff.prices[price_category]
    except KeyError:
        raise ValueError(f"tariff {tariff.name!r} has no prices for category {price_category!r} "
                         f"(has: {', '.join(tariff.prices)})") from None
    t = np.array([float(s[0]) for s in samples])
    e = np.array([int(s[1]) for s in samples], dtype=np.int64)
    if not np.all(np.isfinite(t)):
        raise ValueError("meter sample times must be finite")
    if np.any(np.diff(t) < 0):
        i = int(np.flatnonzero(np.diff(t) < 0)[0])
        raise ValueError(f"meter samples go back in time at sample {i + 1} ({t[i + 1]} < {t[i]})")
    if np.any(np.diff(e) < 0):
        i = int(np.flatnonzero(np.diff(e) < 0)[0])
        raise ValueError(f"meter register goes back at sample {i + 1} ({e[i + 1]} Wh < {e[i]} Wh)")
    energy_wh = int(e[-1] - e[0])
    used = tariff.used_periods
    wh_by_period = {p: 0.0 for p in used}

    # Samples at one instant: keep the last. A jump at the very first instant (nothing before
    # it to spread over) is booked to the period at that instant.
    keep = np.r_[np.diff(t) > 0, True]
    tk, ek = t[keep], e[keep].astype(float)
    start_jump_wh = float(ek[0] - e[0])
    segments = period_segments(tariff, float(t[0]), float(t[-1]))
    if start_jump_wh:
        p0 = segments[0][2]
        wh_by_period[p0] = wh_by_period.get(p0, 0.0) + start_jump_wh
    if len(tk) > 1:
        # Cumulative energy is piecewise linear through the samples: energy in a span is the
        # difference of the interpolated meter at its two ends (sums telescope to the total).
        edges = np.array([segments[0][0], *[s[1] for s in segments]])
        meter_at = np.interp(edges, tk, ek)
        for (_, _, period), wh in zip(segments, np.diff(meter_at)):
            wh_by_period[period] = wh_by_period.get(period, 0.0) + float(wh)

    kwh_by_period = {p: wh / 1000.0 for p, wh in _ordered(wh_by_period).items()}
    cny_by_period = {}
    for p, kwh in kwh_by_period.items():
        if kwh and (p not in prices or math.isnan(prices[p])):
            raise ValueError(f"tariff {tariff.name!r} has no {price_category} price for period {p!r}")
        cny_by_period[p] = kwh * prices.get(p, 0.0)
    electricity_cny = round_cny(sum(cny_by_period.values()))
    service_cny = round_cny(energy_wh / 1000.0 * tariff.service_fee_cny_per_kwh)
    return Bill(
        energy_wh=energy_wh,
        energy_kwh_by_period=kwh_by_period,
        electricity_cny_by_period=cny_by_period,
        electricity_cny=electricity_cny,
        service_cny=service_cny,
        total_cny=round_cny(electricity_cny + service_cny),
    )


def _ordered(by_period: dict[str, float]) -> dict[str, float]:
    return {p: by_period[p] for p in PERIODS if p in by_period}


class Authorizer:
    """Decides whether a start may go ahead, from a card id or a QR token.

    ``allowed_tokens=None`` means no authorization is configured: every start is accepted,
    with or without a token (a depot's own buses plugging in). A list (even an empty one)
    means only those tokens start a session; a missing or empty token is refused. Tokens are
    compared exactly after stripping surrounding blanks. A refusal is the caller's to record
    as an ``auth_refused`` event.
    """

    def __init__(self, allowed_tokens: Iterable[str] | None) -> None:
        if isinstance(allowed_tokens, str):
            raise TypeError("allowed_tokens is a list of tokens, not one string")
        self._allowed = None if allowed_tokens is None else frozenset(str(t).strip() for t in allowed_tokens)

    @property
    def open(self) -> bool:
        """True when no list is configured (everything accepted)."""
        return self._allowed is None

    def check(self, id_token: str | None) -> bool:
        if self._allowed is None:
            return True
        if not id_token:
            return False
        return id_token.strip() in self._allowed
