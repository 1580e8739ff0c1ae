"""The one clock abstraction: time is injected, never read directly.

``now_s()`` is simulated wall time in POSIX seconds; ``sleep(s)`` waits ``s`` simulated
seconds. :class:`ScaledClock` runs real time (speed 1) or accelerated (speed 60, 3600) and can
change speed while running; :class:`ManualClock` only moves when a test advances it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float:
        """Simulated wall time, POSIX seconds."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of simulated time."""

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""


class ScaledClock:
    """Real time, optionally accelerated; ``start_s`` sets where simulated time begins."""

    def __init__(self, speed: float = 1.0, start_s: float | None = None,
                 monotonic=time.monotonic, wall=time.time) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self._monotonic = monotonic
        self._speed = float(speed)
        self._t0_real = monotonic()
        self._t0_sim = wall() if start_s is None else float(start_s)

    def now_s(self) -> float:
        return self._t0_sim + (self._monotonic() - self._t0_real) * self._speed

    def now(self) -> dt.datetime:
        """Simulated local (naive) time."""
        return dt.datetime.fromtimestamp(self.now_s())

    @property
    def speed(self) -> float:
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change speed from now on, without a jump in simulated time."""
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        now = self.now_s()
        self._t0_real, self._t0_sim, self._speed = self._monotonic(), now, float(speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = float(start_s)

    def now_s(self) -> float:
        return self._now

    @property
    def speed(self) -> float:
        return 1.0

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        await asyncio.sleep(0)
