"""`evstack sim` as a subprocess: ready line, control API, scenario, signals, kill -9, mbpoll."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import EXAMPLES, station_on_free_ports
from sim_helpers import Master, wait_for

from hw_profiles import registers as rm
from hw_profiles.registers import FaultBits, GunState

EVSTACK = [sys.executable, "-m", "evstack.cli"]


class SimProcess:
    """`evstack sim` in a subprocess, parsed from its ready output."""

    def __init__(self, station: Path, *args: str) -> None:
        self.proc = subprocess.Popen([*EVSTACK, "sim", str(station), "--http", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"evstack sim exited early: {self.proc.wait()} {self.proc.stderr.read()}")
            self.lines.append(line.rstrip("\n"))
            if line.rstrip("\n") == "evstack sim: ready":
                break
        else:
            raise AssertionError("no ready line")
        self.url = re.search(r"control API: (http://\S+)", "\n".join(self.lines)).group(1)
        self.ports = {m.group(1): int(m.group(2)) for m in
                      re.finditer(r"^(\S+)\s+127\.0\.0\.1\s+(\d+)\s+\d+\s+\d+", "\n".join(self.lines), re.M)}

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture
def depot(tmp_path) -> Path:
    # port 0: the sim picks free ports itself (no race with other tests for a port found free earlier)
    path = station_on_free_ports(EXAMPLES / "bus-depot.toml", tmp_path)
    path.write_text(re.sub(r"(?m)^port\s*=\s*\d+", "port = 0", path.read_text()))
    return path


def test_bad_station_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[station]\nname = "x"\n')
    r = subprocess.run([*EVSTACK, "sim", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bad.toml" in r.stderr
    r = subprocess.run([*EVSTACK, "sim", str(EXAMPLES / "bus-depot.toml"), "--speed", "-1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--speed" in r.stderr


async def test_control_api_drives_a_running_sim(depot, tmp_path):
    state = tmp_path / "state.json"
    audit = tmp_path / "audit.jsonl"
    sim = SimProcess(depot, "--speed", "30", "--state", str(state), "--audit", str(audit),
                     "--start", "2024-05-01T22:00:00")
    try:
        assert len(sim.ports) == 10 and "B01" in sim.ports
        async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
            assert (await http.get("/openapi.json")).status_code == 200
            piles = (await http.get("/piles")).json()
            assert [p["pile"] for p in piles][:2] == ["B01", "B02"] and piles[0]["port"] == sim.ports["B01"]
            r = await http.post("/piles/B01/guns/1/plug-in", json={"profile": "bus-12m", "soc_pct": 35,
                                                                   "target_soc_pct": 90, "vin": "LBUS0000000000001"})
            assert r.status_code == 200 and r.json()["guns"][0]["state_name"] == "PREPARING"
            assert r.json()["sim_time"].startswith("2024-05-01T22:0")
            # mistakes: 4xx naming the field
            r = await http.post("/piles/B01/guns/1/plug-in", json={})
            assert r.status_code == 409 and r.json()["detail"][0]["field"] == "gun_no"
            r = await http.post("/piles/B01/guns/2/plug-in", json={"soc_pct": 120})
            assert r.status_code == 422 and "soc_pct" in r.text
            r = await http.post("/piles/B01/guns/2/plug-in", json={"profile": "tractor"})
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "profile"
            assert (await http.get("/piles/NOPE")).status_code == 404
            r = await http.post("/piles/B01/faults", json={"kind": "module_loss"})
            assert r.status_code == 422 and r.json()["detail"][0]["field"] == "modules"
            r = await http.post("/piles/B01/faults", json={"kind": "melted"})
            assert r.status_code == 422 and "kind" in r.text
            # a controller writes over Modbus; the API shows the pile reacting
            async with Master(("127.0.0.1", sim.ports["B01"], 1)) as m:
                assert await m.write(1, "validity_s", 3600) is None
                assert await m.write(1, "setpoint_kw", 90) is None

                async def charging():
                    g = (await http.get("/piles/B01")).json()["guns"][0]
                    return g if g["state_name"] == "CHARGING" and abs(g["power_kw"] - 90) < 0.2 else None
                await wait_for(charging, 10)
                r = await http.post("/piles/B01/faults", json={"kind": "emergency_stop"})
                assert r.json()["header"]["pile_faults"] == ["EMERGENCY_STOP"]
                assert (await m.gun(1))["state"] == GunState.FAULTED
                r = await http.delete("/piles/B01/faults")
                assert r.status_code == 200 and r.json()["header"]["pile_fault_code"] == 0
                g = await m.gun(1)
                assert g["state"] != GunState.FAULTED and not g["fault_code"] & FaultBits.EMERGENCY_STOP
            r = await http.put("/clock", json={"speed": 120})
            assert r.json()["speed"] == 120
            assert (await http.put("/clock", json={"speed": 0})).status_code == 422
            r = await http.post("/piles/B01/guns/1/unplug")
            assert r.json()["guns"][0]["state_name"] == "AVAILABLE"
    finally:
        assert sim.stop() == 0
    saved = json.loads(state.read_text())
    assert saved["piles"]["B01"]["guns"][0]["meter_wh"] > 0
    writes = [json.loads(x) for x in audit.read_text().splitlines()]
    assert {(w["pile"], w["gun"], w["register"], w["accepted"]) for w in writes} >= {
        ("B01", 1, "validity_s", True), ("B01", 1, "setpoint_kw", True)}


async def test_meter_never_goes_backwards_across_kill_9(depot, tmp_path):
    state = tmp_path / "state.json"
    sim = SimProcess(depot, "--speed", "60", "--state", str(state))
    port = sim.ports["B02"]
    seen = 0
    try:
        async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
            await http.post("/piles/B02/guns/2/plug-in", json={"soc_pct": 10})
        async with Master(("127.0.0.1", port, 1)) as m:
            await m.write(2, "validity_s", 3600)
            await m.write(2, "setpoint_kw", 180)
            t_end = time.monotonic() + 1.5
            while time.monotonic() < t_end:
                e = (await m.gun(2))["energy_wh"]
                assert e >= seen
                seen = e
        assert seen > 0
    finally:
        sim.stop(signal.SIGKILL)
    sim = SimProcess(depot, "--speed", "60", "--state", str(state))
    try:
        async with Master(("127.0.0.1", sim.ports["B02"], 1)) as m:
            g = await m.gun(2)
            assert g["energy_wh"] >= seen
            assert g["state"] in (GunState.PREPARING, GunState.SUSPENDED_PILE)  # the vehicle is still there
    finally:
        assert sim.stop(signal.SIGINT) == 0


async def test_scenario_plugs_vehicles_at_their_times(depot, tmp_path):
    csv = tmp_path / "arrivals.csv"
    csv.write_text("at,pile,gun,profile,soc_pct,target_soc_pct,vin,combined,leave\n"
                   "+0,B01,1,bus-12m,20,90,LSCEN000000000001,,\n"
                   "+120,B02,1,bus-12m,40,,,true,+240\n"
                   "23:00,B03,2,logistics-van,50,80,,,\n")
    sim = SimProcess(depot, "--speed", "60", "--scenario", str(csv), "--start", "2024-05-01T22:59:00")
    try:
        async with Master(("127.0.0.1", sim.ports["B01"], 1)) as b1, Master(("127.0.0.1", sim.ports["B02"], 1)) as b2, \
                Master(("127.0.0.1", sim.ports["B03"], 1)) as b3:
            assert (await b1.gun(1))["vin"] == "LSCEN000000000001"
            assert (await b2.gun(1))["state"] == GunState.AVAILABLE  # not yet: 2 simulated minutes
            await wait_for(lambda: _paired(b2), 5)
            await wait_for(lambda: _soc(b3, 2, 50), 5)
            await wait_for(lambda: _state(b2, 2, GunState.AVAILABLE), 5)  # left at +240 s
    finally:
        assert sim.stop() == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("at,pile,gun\n+0,B99,1\n")
    r = subprocess.run([*EVSTACK, "sim", str(depot), "--scenario", str(bad)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "line 2" in r.stderr and "B99" in r.stderr


async def _paired(m):
    return (await m.gun(1))["paired_gun"] == 2


async def _soc(m, gun, soc):
    return (await m.gun(gun))["soc_pct"] == pytest.approx(soc, abs=0.1)


async def _state(m, gun, state):
    return (await m.gun(gun))["state"] == state


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll (Debian package mbpoll) is not installed")
async def test_mbpoll_reads_state_and_writes_a_setpoint(depot, tmp_path):
    """A Modbus master nobody here wrote (libmodbus' mbpoll) drives a simulated pile."""
    sim = SimProcess(depot, "--speed", "30")
    port = str(sim.ports["B01"])

    async def mbpoll(*args: str) -> str:
        p = await asyncio.create_subprocess_exec("mbpoll", "-m", "tcp", "-p", port, "-a", "1", "-t", "4",
                                                 "-0", "-1", *args, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(p.communicate(), 20)
        assert p.returncode == 0, (out, err)
        return out.decode()

    def value(out: str, address: int) -> int:
        return int(re.search(rf"^\[{address}\]:\s+(-?\d+)", out, re.M).group(1))

    try:
        async with httpx.AsyncClient(base_url=sim.url, timeout=5) as http:
            await http.post("/piles/B01/guns/1/plug-in", json={"soc_pct": 25})
        state_addr = rm.gun_address(1, "state")
        out = await mbpoll("-r", str(state_addr), "-c", "15", "127.0.0.1")
        assert value(out, state_addr) in (GunState.PREPARING, GunState.SUSPENDED_PILE)
        # validity 3600 s, then a 75.0 kW setpoint (raw 750), each with FC6 from mbpoll
        await mbpoll("-r", str(rm.gun_address(1, "validity_s")), "127.0.0.1", "3600")
        await mbpoll("-r", str(rm.gun_address(1, "setpoint_kw")), "127.0.0.1", "750")
        deadline = time.monotonic() + 10
        while True:
            out = await mbpoll("-r", str(state_addr), "-c", "15", "127.0.0.1")
            if value(out, state_addr) == GunState.CHARGING and value(out, rm.gun_address(1, "power_kw")) == 750:
                break
            assert time.monotonic() < deadline, out
            await asyncio.sleep(0.2)
        assert value(out, rm.gun_address(1, "setpoint_kw")) == 750
        assert value(out, rm.gun_address(1, "applied_limit_kw")) == 750
        # a refused write: mbpoll reports the exception and exits non-zero
        p = await asyncio.create_subprocess_exec("mbpoll", "-m", "tcp", "-p", port, "-a", "1", "-t", "4", "-0", "-1",
                                                 "-r", str(rm.gun_address(1, "setpoint_kw")), "127.0.0.1", "1900",
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(p.communicate(), 20)
        assert p.returncode != 0 and b"Illegal data value" in out
    finally:
        assert sim.stop() == 0
