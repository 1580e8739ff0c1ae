"""Simulated piles over real loopback Modbus TCP: transitions, refusals, fail-safe, faults,
persistence, audit, fuzz. Everything is observed by reading registers."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
import time

import pytest
from pymodbus.exceptions import ModbusException
from sim_helpers import Master, station_of, wait_for

from firmware_sim.station import SimulatedStation
from hw_profiles import registers as rm
from hw_profiles.clock import ScaledClock
from hw_profiles.registers import Command, FaultBits, GunState

SPEED = 20.0  # preparing 8 s -> 0.4 s real; validity 10 s -> 0.5 s real


def station():
    return station_of(("P1", "bus-dc-360"), ("A1", "ac-3p-21"))


async def state_is(m: Master, gun: int, state: GunState):
    async def check():
        g = await m.gun(gun)
        return g if g["state"] == state else None
    return await wait_for(check, 5.0)


async def test_every_state_transition_in_registers():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        assert (await m.header())["map_version"] == rm.MAP_VERSION
        assert await m.write(1, "validity_s", 3600) is None
        assert (await m.gun(1))["state"] == GunState.AVAILABLE
        sim.plug_in("P1", 1, profile="bus-12m", vin="LVIN0000000000042", soc_pct=40, target_soc_pct=95, id_token="CARD-7")
        g = await m.gun(1)
        assert g["state"] == GunState.PREPARING
        assert g["vin"] == "LVIN0000000000042" and g["id_token"] == "CARD-7" and g["soc_pct"] == pytest.approx(40)
        g = await state_is(m, 1, GunState.SUSPENDED_PILE)  # prepared, but setpoint 0
        assert g["power_kw"] == 0 and g["bms_demand_current_a"] > 0 and g["bms_mode"] == 2
        assert await m.write(1, "setpoint_kw", 100) is None
        g = await state_is(m, 1, GunState.CHARGING)
        await wait_for(lambda: _power_is(m, 1, 100), 5)
        sim.set_paused("P1", 1, True)
        await state_is(m, 1, GunState.SUSPENDED_EV)
        sim.set_paused("P1", 1, False)
        await state_is(m, 1, GunState.CHARGING)
        assert await m.write(1, "command", Command.STOP) is None
        g = await state_is(m, 1, GunState.FINISHING)
        assert g["power_kw"] == 0 and g["session_energy_wh"] > 0
        assert await m.write(1, "command", Command.START) is None
        g = await m.gun(1)
        assert g["state"] == GunState.PREPARING and g["session_energy_wh"] == 0
        await state_is(m, 1, GunState.CHARGING)
        sim.inject_fault("P1", 1, "insulation")
        await state_is(m, 1, GunState.FAULTED)
        sim.clear_faults("P1", 1)
        await state_is(m, 1, GunState.PREPARING)
        await state_is(m, 1, GunState.CHARGING)
        sim.unplug("P1", 1)
        await state_is(m, 1, GunState.AVAILABLE)
        sim.set_in_service("P1", 2, False)
        await state_is(m, 2, GunState.UNAVAILABLE)


async def _power_is(m: Master, gun: int, kw: float):
    return abs((await m.gun(gun))["power_kw"] - kw) < 0.15


async def test_vehicle_reaches_target_soc_and_stops():
    async with SimulatedStation(station(), clock=ScaledClock(400)) as sim, Master(sim.endpoints["P1"]) as m:
        await m.write(1, "validity_s", 3600)
        await m.write(1, "setpoint_kw", 180)
        sim.plug_in("P1", 1, soc_pct=50, target_soc_pct=53)
        g = await state_is(m, 1, GunState.FINISHING)
        assert g["soc_pct"] == pytest.approx(53, abs=0.1)
        assert g["power_kw"] == 0 and g["bms_demand_current_a"] == 0
        assert g["session_energy_wh"] == pytest.approx(3 / 100 * 350 / 0.97 * 1000, rel=0.02)


@pytest.mark.parametrize("name, raw, code", [
    ("setpoint_kw", [(-50) & 0xFFFF], 3),        # -5.0 kW written as a 16-bit two's complement
    ("setpoint_kw", [1801], 3),                  # 180.1 kW above the gun's 180 kW
    ("failsafe_kw", [1801], 3),
    ("command", [9], 3),                         # unknown command
    ("validity_s", [0], 3),
    ("power_kw", [10], 2),                       # read-only
    ("setpoint_a", [100], 2),                    # AC register on a DC gun
])
async def test_refused_writes_are_not_applied(name, raw, code):
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        before = await m.gun(1)
        addr = rm.gun_address(1, name)
        assert await m.write_raw(addr, raw, single=True) == code  # FC6
        assert await m.write_raw(addr, raw) == code  # FC16
        after = await m.gun(1)
        assert after[name] == before[name]
        assert after["setpoint_accepted"] == before["setpoint_accepted"]


async def test_unknown_addresses_and_units():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        span = rm.pile_span(2)[1]
        assert await m.read_error(span, 1) == 2
        assert await m.read_error(5000, 4) == 2
        assert await m.write_raw(span + 3, [1]) == 2
        assert await m.write_raw(rm.PILE_REGISTER["gun_count"].offset, [4], single=True) == 2  # header is read-only
        assert await m.write_raw(12, [1], single=True) == 2  # reserved header word
        # a whole-pile FC16 across setpoint and read-only registers: refused as a whole
        assert await m.write_raw(rm.gun_address(1, "setpoint_kw"), [500, 0, 0]) == 2
        assert (await m.gun(1))["setpoint_kw"] == 0
        rr = await m.client.read_holding_registers(0, count=1, device_id=9)
        assert rr.isError() and rr.exception_code == 0x0B
        # accepted writes read back as written (masters compare FC6 echoes)
        rr = await m.client.write_register(rm.gun_address(1, "setpoint_kw"), 1234, device_id=1)
        assert not rr.isError() and rr.registers == [1234]


async def test_ac_gun_amps():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["A1"], 1) as m:
        assert await m.write(1, "setpoint_kw", 10) == 2
        assert await m.write(1, "setpoint_a", 5.9) == 3
        assert await m.write(1, "setpoint_a", 32.1) == 3
        assert await m.write(1, "validity_s", 3600) is None
        assert await m.write(1, "setpoint_a", 10) is None
        sim.plug_in("A1", 1, profile="car", soc_pct=20)
        await state_is(m, 1, GunState.CHARGING)
        await wait_for(lambda: _power_is(m, 1, 6.6), 5)
        g = await m.gun(1)
        assert g["current_a"] == pytest.approx(10, abs=0.1) and g["voltage_v"] == pytest.approx(220)


async def test_combined_guns_over_modbus():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await m.write(1, "validity_s", 3600)
        sim.plug_in("P1", 2, combined=True, soc_pct=20)
        a, b = (await m.read_pile())[1]
        assert a["paired_gun"] == 2 and a["rated_kw"] == 360 and b["paired_gun"] == 1
        assert b["state"] == GunState.UNAVAILABLE
        assert await m.write(1, "setpoint_kw", 360) is None
        await wait_for(lambda: _power_is(m, 1, 330 / 0.97), 10)
        b = await m.gun(2)
        assert b["power_kw"] == 0 and b["energy_wh"] == 0


async def test_failsafe_applies_within_a_second_and_resumes():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        g = await m.gun(1)
        assert g["validity_s"] == 10 and g["failsafe_kw"] == 0
        assert await m.write(1, "failsafe_kw", 20) is None
        assert await m.write(1, "setpoint_kw", 120) is None
        sim.plug_in("P1", 1, soc_pct=20)
        t_end = time.monotonic() + 1.5  # the controller keeps writing for 30 simulated seconds
        while time.monotonic() < t_end:
            assert await m.write(1, "heartbeat", 1) is None
            g = await m.gun(1)
            assert g["setpoint_accepted"] == 1 and not g["fault_code"] & FaultBits.FAILSAFE
            await asyncio.sleep(0.1)
        assert g["state"] == GunState.CHARGING
        silent_at = time.monotonic()  # the controller goes silent
        validity_real = 10 / SPEED

        async def failsafe():
            g = await m.gun(1)
            return g if g["setpoint_accepted"] == 0 else None
        g = await wait_for(failsafe, validity_real + 2, interval_s=0.02)
        assert time.monotonic() - silent_at <= validity_real + 1.0
        assert g["fault_code"] & FaultBits.FAILSAFE and g["applied_limit_kw"] == pytest.approx(20)
        assert g["power_kw"] <= 20 + 1e-6 and g["remaining_s"] == 0
        assert await m.write(1, "setpoint_kw", 120) is None  # the next valid write resumes
        g = await m.gun(1)
        assert g["setpoint_accepted"] == 1 and g["applied_limit_kw"] == pytest.approx(120)
        assert not g["fault_code"] & FaultBits.FAILSAFE


async def _charging_pile(sim, m, setpoint=120):
    await m.write(1, "validity_s", 3600)
    await m.write(2, "validity_s", 3600)
    await m.write(1, "setpoint_kw", setpoint)
    sim.plug_in("P1", 1, soc_pct=20)
    await state_is(m, 1, GunState.CHARGING)


async def test_over_temperature_derates_then_trips_and_resets():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await _charging_pile(sim, m, 180)
        sim.inject_fault("P1", 1, "over_temperature", temperature_c=60)

        async def derated():
            g = await m.gun(1)
            return g if g["fault_code"] & FaultBits.DERATING and g["power_kw"] <= 135 + 0.1 else None
        g = await wait_for(derated)
        assert g["temperature_c"] == pytest.approx(60) and g["applied_limit_kw"] == pytest.approx(135)
        assert g["state"] == GunState.CHARGING
        sim.inject_fault("P1", 1, "over_temperature", temperature_c=80)
        g = await state_is(m, 1, GunState.FAULTED)
        assert g["fault_code"] & FaultBits.OVER_TEMPERATURE and g["power_kw"] == 0
        assert await m.write(1, "command", Command.RESET) is None  # still hot: the fault stays
        g = await m.gun(1)
        assert g["state"] == GunState.FAULTED and g["fault_code"] & FaultBits.OVER_TEMPERATURE
        sim.clear_faults("P1", 1)
        g = await m.gun(1)
        assert not g["fault_code"] & (FaultBits.OVER_TEMPERATURE | FaultBits.DERATING)
        await state_is(m, 1, GunState.CHARGING)


async def test_emergency_stop_faults_the_pile():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await _charging_pile(sim, m)
        sim.inject_fault("P1", None, "emergency_stop")
        hdr, guns = await m.read_pile()
        assert hdr["pile_fault_code"] & FaultBits.EMERGENCY_STOP
        assert all(g["state"] == GunState.FAULTED and g["fault_code"] & FaultBits.EMERGENCY_STOP for g in guns)
        assert await m.write(1, "command", Command.RESET) is None  # button still pressed
        assert (await m.gun(1))["state"] == GunState.FAULTED
        sim.clear_faults("P1")
        hdr, guns = await m.read_pile()
        assert hdr["pile_fault_code"] == 0 and guns[1]["state"] == GunState.AVAILABLE
        await state_is(m, 1, GunState.CHARGING)


async def test_meter_failure_freezes_meter_registers():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await _charging_pile(sim, m)
        await wait_for(lambda: _power_is(m, 1, 120), 5)
        sim.inject_fault("P1", 1, "meter_failure")
        g0 = await m.gun(1)
        assert g0["fault_code"] & FaultBits.METER_FAILURE
        await asyncio.sleep(0.5)  # 10 simulated seconds at 120 kW
        g1 = await m.gun(1)
        for k in ("energy_wh", "session_energy_wh", "power_kw", "current_a", "voltage_v"):
            assert g1[k] == g0[k], k
        assert g1["state"] == GunState.CHARGING and g1["soc_pct"] > g0["soc_pct"]  # the vehicle still charges
        sim.clear_faults("P1", 1)
        await asyncio.sleep(0.3)
        g2 = await m.gun(1)
        assert not g2["fault_code"] & FaultBits.METER_FAILURE and g2["energy_wh"] > g1["energy_wh"]


async def test_module_loss_shrinks_the_pool():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await _charging_pile(sim, m, 180)
        sim.inject_fault("P1", None, "module_loss", modules=8)
        hdr, guns = await m.read_pile()
        assert hdr["modules_online"] == 4 and hdr["pile_max_kw"] == pytest.approx(120)
        assert hdr["pile_fault_code"] & FaultBits.MODULE_LOSS and guns[0]["fault_code"] & FaultBits.MODULE_LOSS
        assert guns[0]["applied_limit_kw"] == pytest.approx(120) and guns[0]["power_kw"] <= 120 + 1e-6
        sim.clear_faults("P1")
        hdr = await m.header()
        assert hdr["modules_online"] == 12 and hdr["pile_fault_code"] == 0


async def test_insulation_fault_found_at_plug_in():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        sim.inject_fault("P1", 2, "insulation")
        assert (await m.gun(2))["state"] == GunState.AVAILABLE  # nothing connected to test yet
        sim.plug_in("P1", 2)
        g = await m.gun(2)
        assert g["state"] == GunState.FAULTED and g["fault_code"] & FaultBits.INSULATION
        sim.clear_faults("P1", 2)
        g = await m.gun(2)
        assert g["state"] == GunState.PREPARING and g["fault_code"] & FaultBits.INSULATION == 0


async def test_comm_drop_silences_the_server_then_recovers():
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim, Master(sim.endpoints["P1"]) as m:
        await m.write(1, "validity_s", 3600)
        sim.inject_fault("P1", None, "comm_drop", duration_s=30)  # 1.5 s real
        t0 = time.monotonic()
        with pytest.raises(ModbusException):  # no answer: the client times out
            await m.client.read_holding_registers(0, count=10, device_id=1)
        with pytest.raises(ModbusException):
            await m.client.write_register(rm.gun_address(1, "setpoint_kw"), 500, device_id=1)

        async def answers():
            try:
                rr = await m.client.read_holding_registers(0, count=116, device_id=1)
            except Exception:
                return None
            return rr if not rr.isError() else None
        await wait_for(answers, 6, interval_s=0.2)
        assert time.monotonic() - t0 >= 1.2
        assert (await m.gun(1))["setpoint_kw"] == 0  # the write during the drop never arrived


async def test_meter_survives_restart_and_session_continues(tmp_path):
    state = tmp_path / "state.json"
    st = station()
    async with SimulatedStation(st, clock=ScaledClock(SPEED), state_path=state) as sim, Master(sim.endpoints["P1"]) as m:
        await _charging_pile(sim, m)
        await asyncio.sleep(0.6)
        before = await m.gun(1)
        assert before["energy_wh"] > 0
    assert json.loads(state.read_text())["piles"]["P1"]["guns"][0]["meter_wh"] >= before["energy_wh"]
    async with SimulatedStation(st, clock=ScaledClock(SPEED), state_path=state) as sim, Master(sim.endpoints["P1"]) as m:
        after = await m.gun(1)
        assert after["energy_wh"] >= before["energy_wh"]
        assert after["session_energy_wh"] >= before["session_energy_wh"]
        assert after["vin"] == before["vin"] and after["state"] == GunState.PREPARING


async def test_audit_log_records_each_write(tmp_path):
    audit = tmp_path / "audit.jsonl"
    async with SimulatedStation(station(), clock=ScaledClock(SPEED), audit_path=audit) as sim, \
            Master(sim.endpoints["P1"]) as m:
        assert await m.write(2, "setpoint_kw", 55.5) is None
        assert await m.write(1, "command", 7) == 3
        assert await m.write_raw(4000, [1]) == 2
    rows = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(r["gun"], r["register"], r["accepted"], r["exception"]) for r in rows] == [
        (2, "setpoint_kw", True, None), (1, "command", False, 3), (None, None, False, 2)]
    assert rows[0]["value"] == pytest.approx(55.5) and rows[0]["pile"] == "P1" and rows[0]["time"]


async def test_fuzzed_frames_never_crash_the_server(caplog):
    rnd = random.Random(1234)
    async with SimulatedStation(station(), clock=ScaledClock(SPEED)) as sim:
        host, port, unit = sim.endpoints["P1"]
        frames = []
        for i in range(3000):
            kind = i % 3
            if kind == 0:  # random bytes
                frames.append(rnd.randbytes(rnd.randint(1, 40)))
            else:  # a well-formed MBAP header around a random (often invalid) PDU, sometimes truncated
                fc = rnd.choice([1, 2, 3, 4, 5, 6, 15, 16, 22, 23, 43, rnd.randint(0, 255)])
                pdu = bytes([fc]) + rnd.randbytes(rnd.randint(0, 20))
                if fc in (6, 16):
                    pdu = bytes([fc]) + struct.pack(">HH", rnd.randint(0, 200), rnd.randint(0, 0xFFFF)) + \
                        (rnd.randbytes(rnd.randint(0, 10)) if fc == 16 else b"")
                frame = struct.pack(">HHHB", i & 0xFFFF, 0, len(pdu) + 1, rnd.choice([unit, 0, 9])) + pdu
                if kind == 2:
                    frame = frame[: rnd.randint(1, len(frame))]
                frames.append(frame)
        with caplog.at_level(logging.ERROR):
            for start in range(0, len(frames), 100):
                reader, writer = await asyncio.open_connection(host, port)
                for f in frames[start: start + 100]:
                    writer.write(f)
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.close()
        assert not [r for r in caplog.records if r.name.startswith("firmware_sim")]
        async with Master((host, port, unit)) as m:
            hdr, guns = await m.read_pile()
            assert hdr["map_version"] == rm.MAP_VERSION and len(guns) == 2
            assert await m.write(1, "setpoint_kw", 10) is None
