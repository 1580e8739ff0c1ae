"""The controller against simulated piles over loopback Modbus TCP, in one event loop.

Accelerated clocks (shared by the simulator and the controller) keep each test to seconds.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from controller_helpers import clock_at, controller, until, write_station
from hw_profiles.fleet import vin_for
from hw_profiles.registers import FaultBits, GunState
from hw_profiles.station import load_station

from controller.runner import RunConfig
from controller.store import Store
from firmware_sim.station import SimulatedStation


def _cfg(path, tmp_path, **kw):
    base = dict(station=str(path), db=str(tmp_path / "ev.db"), cycle_s=2, timeout_s=0.2, offline_after=2)
    base.update(kw)
    return RunConfig(**base)


async def test_plan_across_peak_and_valley_is_billed_by_period(tmp_path):
    """A planned vehicle (known by its default VIN) follows its plan; its bill splits at 23:00."""
    path = write_station(tmp_path, [("B01", "bus-dc-360"), ("B02", "bus-dc-360")])
    plan = tmp_path / "plan.csv"
    plan.write_text("vehicle_id,gun_id,start,end,kw\n"
                    "BUS7,B01-1,2026-11-29T22:50,2026-11-29T23:10,60\n", encoding="utf-8")
    clock = clock_at("2026-11-29T22:49", 120)
    async with SimulatedStation(load_station(path), clock=clock) as sim:
        sim.plug_in("B01", 1, vin=vin_for("BUS7"), soc_pct=20)
        sim.plug_in("B02", 1, soc_pct=20)  # no plan: the valley policy waits until 23:00
        async with controller(_cfg(path, tmp_path, plan=str(plan)), clock) as loop:
            sess = loop.sessions
            await until(lambda: sess.vehicle_on("B01-1") == "BUS7")
            await until(lambda: loop.demands.get("B01-1") is not None and loop.demands["B01-1"].source == "plan")
            await until(lambda: clock.now().minute >= 55)
            assert clock.now().hour == 22
            b02 = loop.snapshot.piles["B02"].guns[0]
            assert loop.demands["B02-1"].source == "wait" and b02.power_kw == 0.0, \
                "a vehicle without a plan waits for the valley"
            assert loop.snapshot.piles["B01"].guns[0].power_kw == pytest.approx(60.0)
            await until(lambda: clock.now().minute >= 12 and clock.now().hour == 23, timeout_s=30)
            sim.unplug("B01", 1)
            closed = await until(lambda: [b for b in sess.bills.values()], timeout_s=10)
    bill = closed[0]
    print("bill", bill.energy_kwh_by_period, bill.electricity_cny, bill.service_cny)
    # 60 kW for 10 min before and 10 min after 23:00 (ramp and module steps aside): ~10 kWh each.
    assert bill.energy_kwh_by_period["peak"] == pytest.approx(10.0, abs=1.0)
    assert bill.energy_kwh_by_period["valley"] == pytest.approx(10.0, abs=1.0)
    assert bill.electricity_cny == pytest.approx(bill.energy_kwh_by_period["peak"] * 0.675
                                                 + bill.energy_kwh_by_period["valley"] * 0.225, abs=0.011)
    assert bill.service_cny == pytest.approx(bill.energy_wh / 1000 * 0.60, abs=0.011)
    store = await Store.open(str(tmp_path / "ev.db"))
    try:
        rows = await store.export_rows("sessions", None, None)
    finally:
        await store.close()
    b01 = [r for r in rows if r["gun_id"] == "B01-1"]
    assert len(b01) == 1 and b01[0]["energy_wh"] == bill.energy_wh
    assert b01[0]["vehicle_id"] == "BUS7"


async def test_offline_pile_share_goes_to_the_other_pile(tmp_path):
    """Two piles share 120 kW; when one stops answering, the other gets the whole site."""
    path = write_station(tmp_path, [("P1", "bus-dc-360"), ("P2", "bus-dc-360")], site_limit_kw=120,
                         kind="distributed")
    clock = clock_at("2026-11-29T10:00", 30)
    async with SimulatedStation(load_station(path), clock=clock) as sim:
        sim.plug_in("P1", 1, soc_pct=20)
        sim.plug_in("P2", 1, soc_pct=20)
        async with controller(_cfg(path, tmp_path), clock) as loop:
            def sp(pile):
                ps = loop.snapshot.piles[pile]
                return ps.guns[0].setpoint_kw if ps.controllable else None
            await until(lambda: sp("P1") == 60.0 and sp("P2") == 60.0)
            sim.inject_fault("P2", None, "comm_drop", duration_s=600)
            await until(lambda: loop.snapshot.piles["P2"].status == "offline", timeout_s=10)
            await until(lambda: sp("P1") == 120.0, timeout_s=5)
            assert loop.snapshot.piles["P2"].guns == ()
            sim.clear_faults("P2")
            await until(lambda: loop.snapshot.piles["P2"].status == "online", timeout_s=10)
            await until(lambda: sp("P1") == 60.0 and sp("P2") == 60.0, timeout_s=10)


async def test_stopped_controller_leaves_piles_in_failsafe_and_restart_resumes(tmp_path):
    path = write_station(tmp_path, [("B01", "bus-dc-360")], kind="distributed")
    clock = clock_at("2026-11-29T12:00", 30)
    st = load_station(path)
    async with SimulatedStation(st, clock=clock) as sim:
        sim.plug_in("B01", 1, soc_pct=30)
        from sim_helpers import Master  # a plain Modbus master, as a bench tester would watch registers

        async with Master(sim.endpoints["B01"], gun_count=2) as m:
            async with controller(_cfg(path, tmp_path, validity_s=10), clock) as loop:
                await until(lambda: loop.snapshot.piles["B01"].guns[0].state is GunState.CHARGING)
                g = await m.gun(1)
                assert g["setpoint_accepted"] == 1 and g["validity_s"] == 10
            t_stop = clock.now_s()
            # Within validity_s (plus the simulator's tick) the pile applies its fail-safe power.
            while True:
                g = await m.gun(1)
                if not g["setpoint_accepted"]:
                    break
                assert clock.now_s() - t_stop < 10 + 5, "pile still accepts the old setpoint after validity_s"
                await __import__("asyncio").sleep(0.02)
            assert g["fault_code"] & FaultBits.FAILSAFE
            assert g["applied_limit_kw"] == 0.0  # fail-safe power is 0 kW by default
            async with controller(_cfg(path, tmp_path, validity_s=10), clock) as loop:
                await until(lambda: loop.cycles >= 2)
                await until(lambda: loop.snapshot.piles["B01"].guns[0].setpoint_accepted == 1)
                g = await m.gun(1)
                assert g["setpoint_accepted"] == 1 and g["setpoint_kw"] > 0


async def test_authorization_refuses_unknown_tokens(tmp_path):
    path = write_station(tmp_path, [("D1", "bus-dc-360")], kind="distributed")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# depot cards\nCARD-OK\n", encoding="utf-8")
    clock = clock_at("2026-11-29T12:00", 30)
    async with SimulatedStation(load_station(path), clock=clock) as sim:
        sim.plug_in("D1", 1, soc_pct=30, id_token="CARD-BAD")
        sim.plug_in("D1", 2, soc_pct=30, id_token="CARD-OK")
        async with controller(_cfg(path, tmp_path, auth_tokens=str(tokens)), clock) as loop:
            await until(lambda: "D1-2" in loop.sessions.open)
            await until(lambda: loop.cycles >= 4)
            guns = loop.snapshot.piles["D1"].guns
            assert "D1-1" not in loop.sessions.open
            assert guns[0].setpoint_kw == 0.0 and guns[0].power_kw == 0.0
            assert loop.demands["D1-1"].source == "unauthorized"
            assert guns[1].setpoint_kw > 0


async def test_wrong_gun_count_is_reported_and_other_piles_still_run(tmp_path):
    """A pile whose registers do not match the station file is not controlled; the rest are."""
    path = write_station(tmp_path, [("GOOD", "bus-dc-360"), ("ODD", "bus-dc-360")], kind="distributed")
    st = load_station(path)
    from hw_profiles.catalog import default_catalog

    one_gun = dataclasses.replace(st.pile("ODD"), spec=default_catalog().pile("dc-distributed-60"))
    sim_station = dataclasses.replace(st, piles=(st.pile("GOOD"), one_gun))
    clock = clock_at("2026-11-29T12:00", 30)
    async with SimulatedStation(sim_station, clock=clock) as sim:
        sim.plug_in("GOOD", 1, soc_pct=30)
        async with controller(_cfg(path, tmp_path), clock) as loop:
            await until(lambda: loop.snapshot.piles["GOOD"].guns[0].setpoint_kw > 0)
            odd = loop.snapshot.piles["ODD"]
            assert odd.status == "incompatible"
            assert "gun" in odd.error


@pytest.mark.skipif(not os.environ.get("EVSTACK_TEST_DATABASE_URL"), reason="EVSTACK_TEST_DATABASE_URL is not set")
async def test_sessions_on_postgresql(tmp_path):
    """The same session bookkeeping against PostgreSQL (a fresh schema per run)."""
    url = os.environ["EVSTACK_TEST_DATABASE_URL"]
    url += ("&" if "?" in url else "?") + f"schema=ctl_{os.getpid()}_{int(time.time())}"
    path = write_station(tmp_path, [("D1", "bus-dc-360")], kind="distributed")
    clock = clock_at("2026-11-29T12:00", 60)
    async with SimulatedStation(load_station(path), clock=clock) as sim:
        sim.plug_in("D1", 1, soc_pct=30)
        async with controller(_cfg(path, tmp_path, db=url), clock) as loop:
            await until(lambda: loop.snapshot.piles["D1"].guns[0].energy_wh > 1000)
            sim.unplug("D1", 1)
            bills = await until(lambda: list(loop.sessions.bills.values()))
    store = await Store.open(url)
    try:
        rows = await store.export_rows("sessions", None, None)
    finally:
        await store.close()
    assert len(rows) == 1 and int(rows[0]["energy_wh"]) == bills[0].energy_wh > 1000
