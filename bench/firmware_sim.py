"""Bench: one `evstack sim` process serving 200 piles (400 guns), polled at 1 Hz per gun block.

Starts `evstack sim` on a generated station of 200 dual-gun bus piles (each on its own port),
plugs a vehicle into every other gun and gives those guns a setpoint, then polls every gun
block (one FC3 of 50 registers per gun, 400 requests/s) from this process at 1 Hz each, spread
evenly over the second. Prints the sim process's CPU share (from /proc, over the measured
window) and the read latency p50/p99 with the targets beside them.

    python bench/firmware_sim.py [--piles 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pymodbus.client import AsyncModbusTcpClient

from hw_profiles import registers as rm

ROOT = Path(__file__).resolve().parent.parent


def station_text(piles: int) -> str:
    out = ['[station]', 'name = "bench depot"', 'kind = "bus_depot"', f"site_limit_kw = {piles * 400}",
           'price_category = "large_industrial"', 'tariff = "yunnan-2024"', "public = false", ""]
    for i in range(piles):
        out += ["[[piles]]", f'id = "B{i + 1:03d}"', 'profile = "bus-dc-360"', "port = 0", ""]
    return "\n".join(out)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def poll_gun(client, gun_no: int, offset_s: float, t_end: float, lat: list[float], errors: list[int]):
    await asyncio.sleep(offset_s)
    base = rm.gun_base(gun_no)
    nxt = time.monotonic()
    while nxt < t_end:
        t0 = time.perf_counter()
        try:
            rr = await client.read_holding_registers(base, count=rm.GUN_STRIDE, device_id=1)
            if rr.isError():
                errors.append(1)
            else:
                lat.append(time.perf_counter() - t0)
        except Exception:
            errors.append(1)
        nxt += 1.0
        await asyncio.sleep(max(0.0, nxt - time.monotonic()))


async def loop_jitter_ms(seconds: float = 5.0) -> tuple[float, float]:
    """Baseline of this machine: how late an idle asyncio loop wakes from a 5 ms sleep (p50, p99)."""
    lags = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - t0 - 0.005) * 1000)
    lags.sort()
    return statistics.median(lags), lags[int(0.99 * (len(lags) - 1))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--piles", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args()

    jitter50, jitter99 = await loop_jitter_ms()
    tmp = Path(tempfile.mkdtemp(prefix="evstack-bench-"))
    station = tmp / "bench.toml"
    station.write_text(station_text(args.piles))
    proc = subprocess.Popen([sys.executable, "-m", "evstack.cli", "sim", str(station), "--http", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    t_start = time.monotonic()
    while True:
        line = proc.stdout.readline()
        if not line:
            sys.exit(f"evstack sim exited: {proc.wait()}")
        lines.append(line.rstrip())
        if line.strip() == "evstack sim: ready":
            break
    startup_s = time.monotonic() - t_start
    text = "\n".join(lines)
    url = re.search(r"control API: (http://\S+)", text).group(1)
    ports = [int(m.group(1)) for m in re.finditer(r"^B\d+\s+127\.0\.0\.1\s+(\d+)", text, re.M)]
    assert len(ports) == args.piles, (len(ports), args.piles)
    try:
        clients = []
        for port in ports:
            c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0, reconnect_delay=0.1,
                                     reconnect_delay_max=2)
            await c.connect()
            clients.append(c)
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for i, c in enumerate(clients):  # every other gun charges: a vehicle and a setpoint
                gun = 1 + i % 2
                await http.post(f"/piles/B{i + 1:03d}/guns/{gun}/plug-in", json={"soc_pct": 20})
                await c.write_register(rm.gun_address(gun, "validity_s"), 3600, device_id=1)
                await c.write_register(rm.gun_address(gun, "setpoint_kw"), 900, device_id=1)
        n_guns = 2 * len(clients)
        lat: list[float] = []
        errors: list[int] = []
        warm_end = time.monotonic() + args.warmup
        t_end = warm_end + args.seconds
        tasks = [asyncio.create_task(poll_gun(c, g, (2 * i + g - 1) / n_guns, t_end, lat, errors))
                 for i, c in enumerate(clients) for g in (1, 2)]
        await asyncio.sleep(max(0.0, warm_end - time.monotonic()))
        lat.clear()
        errors.clear()
        cpu0, wall0, me0 = cpu_seconds(proc.pid), time.monotonic(), time.process_time()
        await asyncio.gather(*tasks)
        cpu1, wall1, me1 = cpu_seconds(proc.pid), time.monotonic(), time.process_time()
        for c in clients:
            c.close()
    finally:
        proc.terminate()
        rc = proc.wait(30)
    share = (cpu1 - cpu0) / (wall1 - wall0) * 100
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[int(0.99 * (len(lat_ms) - 1))]
    print(f"evstack sim bench: {args.piles} piles, {2 * args.piles} guns, each gun block polled at 1 Hz "
          f"({2 * args.piles} FC3 reads/s of {rm.GUN_STRIDE} registers), half the guns charging; "
          f"{args.seconds:g} s measured after {args.warmup:g} s warm-up; startup to ready {startup_s:.1f} s")
    print(f"  reads: {len(lat_ms)} ok, {len(errors)} failed; achieved {len(lat_ms) / (wall1 - wall0):.0f} reads/s")
    print(f"  sim process CPU: {share:.1f} % of one core   (target < 50 %)")
    print(f"  polling client (this process) CPU: {(me1 - me0) / (wall1 - wall0) * 100:.1f} % of one core")
    print(f"  read latency p50: {p50:.2f} ms   (median)")
    print(f"  read latency p99: {p99:.2f} ms   (target < 20 ms)")
    print(f"  baseline, same run: an idle asyncio loop on this machine wakes late by p50 {jitter50:.2f} ms, "
          f"p99 {jitter99:.2f} ms (VM scheduling noise, a floor under any p99 above)")
    print(f"  sim exit code on SIGTERM: {rc}")


if __name__ == "__main__":
    asyncio.run(main())
