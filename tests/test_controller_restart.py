"""``kill -9`` the controller mid-session, change things while it is down, start it again.

The controller runs as a real subprocess (``python -m evstack run``); the simulated piles run in
this process. Afterwards every session is in the store exactly once, and each closed session's
energy equals the pile's meter registers to the watt-hour.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import signal
import subprocess
import sys

from controller_helpers import clock_at, until, write_station
from hw_profiles.station import load_station
from sim_helpers import Master

from controller.store import Store
from firmware_sim.station import SimulatedStation

SPEED = 60


async def _start(path, db, clock):
    start = dt.datetime.fromtimestamp(clock.now_s()).isoformat(timespec="milliseconds")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evstack", "run", str(path), "--db", str(db), "--speed", str(SPEED),
        "--start", start, "--cycle-s", "2", "--timeout-s", "0.2", "--json-logs",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, (await proc.stderr.read()).decode()
        if line.startswith(b"evstack run: controlling"):
            return proc


async def _sessions(db):
    store = await Store.open(str(db))
    try:
        return await store.export_rows("sessions", None, None)
    finally:
        await store.close()


async def test_kill_9_mid_session_and_restart_loses_and_doubles_nothing(tmp_path):
    path = write_station(tmp_path, [("P1", "bus-dc-360"), ("P2", "bus-dc-360")], kind="distributed")
    db = tmp_path / "ev.db"
    clock = clock_at("2026-11-29T12:00", SPEED)
    async with SimulatedStation(load_station(path), clock=clock) as sim:
        sim.plug_in("P1", 1, soc_pct=20)
        sim.plug_in("P2", 1, soc_pct=20)
        m1, m2 = Master(sim.endpoints["P1"]), Master(sim.endpoints["P2"])
        async with m1, m2:
            proc = await _start(path, db, clock)
            try:
                async def charging():
                    g1, g2 = await m1.gun(1), await m2.gun(1)
                    return g1["energy_wh"] > 2000 and g2["energy_wh"] > 2000
                while not await charging():
                    await asyncio.sleep(0.1)
                assert len([r for r in await _sessions(db) if r["end"] in (None, "")]) == 2
            finally:
                proc.kill()  # SIGKILL: no clean-up of any kind
                await proc.wait()
            # While the controller is down: one session ends, another begins.
            sim.unplug("P1", 1)
            sim.plug_in("P2", 2, soc_pct=50)
            await asyncio.sleep(1.0)
            p1_end_wh = (await m1.gun(1))["energy_wh"]
            proc = await _start(path, db, clock)
            try:
                async def settled():
                    rows = await _sessions(db)
                    return len(rows) == 3 and any(r["gun_id"] == "P1-1" and r["end"] not in (None, "") for r in rows)
                deadline = asyncio.get_running_loop().time() + 20
                while not await settled():
                    assert asyncio.get_running_loop().time() < deadline, await _sessions(db)
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # a few more cycles: nothing may be opened twice
                # Stop P2-1's session cleanly through the pile and let the controller bill it.
                sim.unplug("P2", 1)
                await asyncio.sleep(1.0)
                p2_end_wh = (await m2.gun(1))["energy_wh"]
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 20)
            assert rc == 0, (await proc.stderr.read()).decode()[-2000:]
            p2_2 = await m2.gun(2)
    rows = await _sessions(db)
    by_gun = {}
    for r in rows:
        by_gun.setdefault(r["gun_id"], []).append(r)
    assert sorted(by_gun) == ["P1-1", "P2-1", "P2-2"], rows
    assert all(len(v) == 1 for v in by_gun.values()), "a session was recorded twice"
    p1, p21, p22 = by_gun["P1-1"][0], by_gun["P2-1"][0], by_gun["P2-2"][0]
    print("P1-1", p1["meter_start_wh"], p1["meter_end_wh"], p1["energy_wh"], "pile meter", p1_end_wh)
    print("P2-1", p21["meter_start_wh"], p21["meter_end_wh"], p21["energy_wh"], "pile meter", p2_end_wh)
    assert int(p1["meter_start_wh"]) == 0 and int(p1["meter_end_wh"]) == p1_end_wh
    assert int(p1["energy_wh"]) == p1_end_wh
    assert int(p21["meter_end_wh"]) == p2_end_wh and int(p21["energy_wh"]) == p2_end_wh
    # The session that began while the controller was down starts at the pile's own meter start.
    assert abs(int(p22["meter_start_wh"]) - (p2_2["energy_wh"] - p2_2["session_energy_wh"])) <= 1
    # And the export shows them too (CSV, one line per session).
    out = subprocess.run([sys.executable, "-m", "evstack", "export", "--db", str(db), "--what", "sessions"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    exported = list(csv.DictReader(io.StringIO(out.stdout)))
    assert sorted(r["gun_id"] for r in exported) == ["P1-1", "P2-1", "P2-2"]
