"""Setpoint renewals: staggered by pile, never later than validity_s minus two cycles.

The pure schedule is checked over many cycle/validity combinations and jittered cycle times;
then the control loop against simulated piles over loopback Modbus TCP: renewals of idle guns
spread over the cycles and no gun ever reaches its fail-safe.
"""

from __future__ import annotations

import asyncio
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from controller_helpers import clock_at, controller, until, write_station
from hw_profiles.station import load_station

from controller.loop import RenewalSchedule
from controller.runner import RunConfig
from firmware_sim.station import SimulatedStation


def _simulate(sched: RenewalSchedule, pile_index: int, cycles: int, jitter, changes) -> list[float]:
    """Cycle ``n`` runs at ``n * cycle_s + jitter(n)``; a change (``n in changes``) forces a write.
    Returns the times of all writes of one gun (the first one at cycle 0)."""
    c, v = sched.cycle_s, sched.validity_s
    last = None
    out = []
    for n in range(cycles):
        t = n * c + jitter(n)
        if last is None or n in changes or sched.due(t - last, v - (t - last), sched.on_phase(n, pile_index)):
            last = t
            out.append(t)
    return out


@settings(max_examples=200, deadline=None)
@given(cycle_s=st.sampled_from([0.5, 1.0, 2.0, 5.0]), validity_cycles=st.integers(4, 40),
       pile_index=st.integers(0, 99), seed=st.integers(0, 2**32 - 1))
def test_renewal_never_later_than_validity_minus_two_cycles(cycle_s, validity_cycles, pile_index, seed):
    """Whatever the phase, the changes and a quarter cycle of jitter on each cycle's time (a
    cycle interval up to 1.5 cycles), no gap between two writes exceeds validity - 2 cycles."""
    sched = RenewalSchedule(cycle_s, validity_cycles * cycle_s)
    rng = random.Random(seed)
    jit = [rng.uniform(-0.25, 0.25) * cycle_s for _ in range(200)]
    changes = {n for n in range(200) if rng.random() < 0.1}
    times = _simulate(sched, pile_index, 200, lambda n: jit[n], changes)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= sched.validity_s - 2 * cycle_s + 1e-9, (gaps, sched)


def test_steady_state_renewals_are_spread_over_the_period():
    """100 piles written on the same cycle: after one period each cycle renews 1/k of them
    (the old rule renewed all of them on the same cycle), at validity / 2 intervals."""
    sched = RenewalSchedule(1.0, 10)
    k = sched.period_cycles
    assert k == 5
    writes_per_cycle = [0] * 40
    for i in range(100):
        for t in _simulate(sched, i, 40, lambda n: 0.0, set()):
            writes_per_cycle[int(t)] += 1
    assert writes_per_cycle[0] == 100
    assert max(writes_per_cycle[k + 2:]) == math.ceil(100 / k)
    # Each pile renews exactly once per period in steady state.
    assert sum(writes_per_cycle[10:10 + k]) == 100


def test_pile_watchdog_near_expiry_forces_a_renewal():
    """The pile's own remaining_s (e.g. after a pile restart) triggers a renewal off phase."""
    sched = RenewalSchedule(1.0, 10)
    assert not sched.due(1.0, 9.0, on_phase=False)
    assert sched.due(1.0, 3.0, on_phase=False)


def test_short_validity_renews_every_cycle():
    sched = RenewalSchedule(2.0, 10)  # validity 5 cycles: no room to stagger
    assert sched.period_cycles == 1
    assert sched.due(3.0, 7.0, on_phase=False)


async def test_idle_guns_are_renewed_staggered_and_never_reach_failsafe(tmp_path):
    """10 piles, nothing plugged: the only writes are renewals. They spread over the cycles
    (at most 2 of the 10 piles' guns per cycle) and every gun keeps its setpoint in force."""
    piles = [(f"P{i:02d}", "bus-dc-360") for i in range(10)]
    path = write_station(tmp_path, piles, kind="distributed", site_limit_kw=1000)
    clock = clock_at("2026-11-29T12:00", 10)
    cfg = RunConfig(station=str(path), db=str(tmp_path / "ev.db"), cycle_s=1, validity_s=10, timeout_s=0.5)
    async with SimulatedStation(load_station(path), clock=clock):
        async with controller(cfg, clock) as loop:
            loop.keep_history = 1000
            sched = loop.renewals
            seen: list[tuple[int, float, int]] = []  # (cycle, least remaining_s, guns not accepted)
            start = loop.cycles

            async def watch():
                last = -1
                while True:
                    if loop.cycles != last and loop.snapshot is not None:
                        last = loop.cycles
                        guns = list(loop.snapshot.guns())
                        seen.append((last, min(g.remaining_s for g in guns),
                                     sum(not g.setpoint_accepted for g in guns)))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            try:
                await until(lambda: loop.cycles >= start + 4 * sched.period_cycles + 20, timeout_s=30)
            finally:
                watcher.cancel()
            writes = [p[4] for p in loop.stats.phases]
    steady = writes[2 * sched.period_cycles:]
    print("writes per cycle", writes, "least remaining_s", min(s[1] for s in seen))
    assert len(steady) >= 20
    assert sched.period_cycles == 5
    assert max(steady) <= 4, steady  # 2 guns x 2 piles (the old rule: all 20 guns on one cycle)
    assert sum(steady) > 0
    assert all(s[2] == 0 for s in seen[2:]), "a gun fell back to its fail-safe"
    # Renewed with at least two cycles left on the pile's watchdog (less the read latency).
    assert min(s[1] for s in seen[2:]) >= 2 * cfg.cycle_s - 0.5


async def test_writes_skipped_on_a_busy_pile_are_retried(tmp_path):
    """A pile still busy with last cycle's writes is skipped; its values must not count as
    written, or a skipped renewal would let the watchdog run out."""
    path = write_station(tmp_path, [("B01", "bus-dc-360")], kind="distributed")
    clock = clock_at("2026-11-29T12:00", 10)
    cfg = RunConfig(station=str(path), db=str(tmp_path / "ev.db"), cycle_s=1, validity_s=10, timeout_s=0.5)
    async with SimulatedStation(load_station(path), clock=clock):
        async with controller(cfg, clock) as loop:
            await until(lambda: ("B01", 1) in loop._written)
            busy = asyncio.get_running_loop().create_future()  # a write task that never ends
            loop._write_tasks["B01"] = busy
            try:
                await until(lambda: ("B01", 1) not in loop._written, timeout_s=5)
            finally:
                loop._write_tasks.pop("B01", None)
                busy.cancel()
            await until(lambda: ("B01", 1) in loop._written, timeout_s=5)
            assert loop.snapshot.piles["B01"].guns[0].setpoint_accepted == 1
