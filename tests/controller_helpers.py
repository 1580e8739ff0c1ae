"""Helpers for the controller tests: small station files on free ports, a controller run in-process.

The controller meets the simulated piles only over Modbus TCP on loopback, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from pathlib import Path

from helpers import free_port

from hw_profiles.clock import ScaledClock


def write_station(tmp: Path, piles, *, site_limit_kw: float = 1500, kind: str = "bus_depot",
                  tariff: str = "yunnan-pre2024", name: str = "test depot", ports: dict | None = None) -> Path:
    """A station file; ``piles`` are (pile_id, profile) pairs, each on a free port (or ``ports[id]``)."""
    lines = ["[station]", f'name = "{name}"', f'kind = "{kind}"', f"site_limit_kw = {site_limit_kw}",
             'price_category = "large_industrial"' if kind != "distributed" else 'price_category = "general_commercial"',
             f'tariff = "{tariff}"', ""]
    for pid, profile in piles:
        port = (ports or {}).get(pid) or free_port()
        lines += ["[[piles]]", f'id = "{pid}"', f'profile = "{profile}"', 'host = "127.0.0.1"', f"port = {port}", ""]
    path = Path(tmp) / "station.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def local_s(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


@contextlib.asynccontextmanager
async def controller(cfg, clock):
    """Run ``controller.runner.run(cfg)`` in this event loop; yields the ControlLoop once ready."""
    from controller.runner import run

    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(cfg, stop=stop, clock=clock, ready=ready.set_result))
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the start-up error
    loop = ready.result()
    try:
        await until(lambda: loop.cycles >= 1 or task.done())
        if task.done():
            task.result()
        yield loop
    finally:
        stop.set()
        await task


async def until(pred, timeout_s: float = 10.0, every_s: float = 0.02):
    """Wait (real seconds) until ``pred()`` is truthy; returns its value or fails."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)


def clock_at(iso: str, speed: float) -> ScaledClock:
    return ScaledClock(speed, local_s(iso))
