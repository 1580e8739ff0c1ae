"""Controller bench: 100 simulated piles (200 guns) in another process, the control loop at 1 Hz.

Prints, with the targets beside them:
* control cycle p50/p99 (read all piles, allocate, write what changed or needs renewing);
* the controller process's CPU share at 1 Hz;
* the raw floor: one pymodbus read per pile issued concurrently with nothing else done
  (the same number of requests as a cycle's reads), and the ratio cycle / floor;
* where a cycle's time goes (read / decide / write / store, p50 and p99), the cycle minus its
  read time (what the controller adds on top of the reads), writes per cycle, and the CPU
  share of the simulator process (one process serves all piles: when it is near 100 % the
  figures measure the simulator, not the controller).

Usage: ``python bench/controller.py [--piles 100] [--cycles 30]``. Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_files(tmp: Path, n: int) -> tuple[Path, Path]:
    from helpers import free_port

    lines = ["[station]", 'name = "bench depot"', 'kind = "distributed"', f"site_limit_kw = {n * 150}",
             'price_category = "large_industrial"', 'tariff = "yunnan-pre2024"', ""]
    ports: set[int] = set()
    while len(ports) < n:  # free_port() may hand out the same port twice
        ports.add(free_port())
    for i, port in enumerate(sorted(ports)):
        lines += ["[[piles]]", f'id = "P{i:03d}"', 'profile = "bus-dc-360"', 'host = "127.0.0.1"',
                  f"port = {port}", ""]
    station = tmp / "station.toml"
    station.write_text("\n".join(lines))
    rows = ["at,pile,gun,profile,soc_pct"]
    for i in range(n):
        for g in (1, 2):
            if (i + g) % 4:  # three guns in four busy
                rows.append(f"+0,P{i:03d},{g},bus-12m,{20 + (i * 7 + g) % 50}")
    scenario = tmp / "scenario.csv"
    scenario.write_text("\n".join(rows) + "\n")
    return station, scenario


async def raw_floor(station, rounds: int) -> list[float]:
    from pymodbus.client import AsyncModbusTcpClient

    from hw_profiles.registers import read_plan

    clients = []
    for p in station.piles:
        c = AsyncModbusTcpClient(p.host, port=p.port, timeout=2, retries=0)
        await c.connect()
        clients.append(c)
    (start, count), = read_plan(2)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await asyncio.gather(*(c.read_holding_registers(start, count=count, device_id=1) for c in clients))
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.2)
    for c in clients:
        c.close()
    return out


async def control(station, cycles: int, sim_pid: int):
    from hw_profiles.clock import ScaledClock
    from hw_profiles.tariff import load_tariff

    from controller.coordinator import Coordinator
    from controller.drivers import PileDriver, quiet_pymodbus
    from controller.loop import ControlLoop
    from controller.policy import ValleyPolicy

    quiet_pymodbus()
    clock = ScaledClock(1.0)
    drivers = {p.id: PileDriver(p, timeout_s=1.0) for p in station.piles}
    coord = Coordinator(station, drivers, clock, read_deadline_s=1.0)
    loop = ControlLoop(station, coord, clock, policy=ValleyPolicy(load_tariff(station.tariff), station.kind),
                       cycle_s=1.0, validity_s=10, write_deadline_s=1.0, slow_cycle_s=10, keep_history=10_000)
    for _ in range(3):  # warm up: connect, first writes
        await loop.cycle()
    loop.stats.history.clear()
    loop.stats.phases.clear()
    writes = 0
    stop = asyncio.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sim0 = proc_cpu_s(sim_pid)

    async def count():
        nonlocal writes
        while not stop.is_set():
            await asyncio.sleep(0.999)
            writes += loop.stats.writes

    counter = asyncio.create_task(count())
    await loop.run(stop, until_s=clock.now_s() + cycles)
    stop.set()
    await counter
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sim1 = proc_cpu_s(sim_pid)
    sim_share = (sim1 - sim0) / wall if sim0 is not None and sim1 is not None else None
    hist = list(loop.stats.history)
    phases = list(loop.stats.phases)
    online = sum(ps.controllable for ps in loop.snapshot.piles.values())
    charging = sum(g.power_kw > 0 for g in loop.snapshot.guns())
    await loop.close()
    return hist, phases, cpu / wall, sim_share, online, charging, sum(d.requests for d in drivers.values())


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--piles", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=30)
    args = ap.parse_args()

    from hw_profiles.station import load_station

    with tempfile.TemporaryDirectory() as tmp:
        station_path, scenario = write_files(Path(tmp), args.piles)
        sim = subprocess.Popen([sys.executable, "-m", "evstack", "sim", str(station_path), "--scenario", str(scenario)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            for line in sim.stdout:
                if line.strip() == "evstack sim: ready":
                    break
            else:
                raise SystemExit(f"evstack sim did not start: {sim.stderr.read()[-2000:]}")
            station = load_station(station_path)
            floor = await raw_floor(station, 30)
            hist, phases, cpu_share, sim_share, online, charging, requests = await control(station, args.cycles, sim.pid)
        finally:
            sim.terminate()
            sim.wait(10)
    n = args.piles
    c50, c99 = pct(hist, 50) * 1e3, pct(hist, 99) * 1e3
    f50, f99 = pct(floor, 50) * 1e3, pct(floor, 99) * 1e3
    print(f"controller bench: {n} piles ({2 * n} guns) in an `evstack sim` subprocess, {online} online, "
          f"{charging} guns charging, {len(hist)} cycles at 1 Hz, {requests} Modbus requests in all")
    print(f"  control cycle (read all, allocate, write): p50 {c50:6.1f} ms   p99 {c99:6.1f} ms   (target p99 <= 100 ms)")
    print(f"  controller CPU at 1 Hz:                    {cpu_share * 100:5.1f} % of one core         (target < 25 %)")
    print(f"  raw floor ({n} concurrent pymodbus reads):  p50 {f50:6.1f} ms   p99 {f99:6.1f} ms")
    print(f"  cycle / floor (p50):                       {c50 / f50:5.2f}x                     (target <= 2x)")
    print(f"  cycle / floor (p99):                       {c99 / f99:5.2f}x")
    cols = list(zip(*phases))
    for name, xs in zip(("read", "decide", "write", "store"), cols):
        print(f"  {name + ':':7s} p50 {pct(xs, 50) * 1e3:6.1f} ms   p99 {pct(xs, 99) * 1e3:6.1f} ms")
    beyond = [h - p[0] for h, p in zip(hist, phases)]
    print(f"  cycle minus its read time: p50 {pct(beyond, 50) * 1e3:6.1f} ms   p99 {pct(beyond, 99) * 1e3:6.1f} ms")
    wc = cols[4]
    print(f"  writes per cycle: median {statistics.median(wc):.0f}, max {max(wc)}")
    if sim_share is not None:
        print(f"  simulator process CPU: {sim_share * 100:5.1f} % of one core (all {n} piles in one process)")
    print(f"  median cycle of all: {statistics.median(hist) * 1e3:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
