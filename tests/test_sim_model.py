"""The pure pile model (no sockets): limits, ramp, vehicle, combined guns, AC amps, refusals."""

from __future__ import annotations

import pytest

from firmware_sim.model import EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, PileModel, SimError, Vehicle
from hw_profiles import registers as rm
from hw_profiles.catalog import default_catalog
from hw_profiles.registers import FaultBits, GunState

CAT = default_catalog()


def pile(profile: str = "bus-dc-360") -> PileModel:
    return PileModel("P", CAT.pile(profile))


def vehicle(profile: str = "bus-12m", soc: float = 30, target: float = 100) -> Vehicle:
    return Vehicle(profile, CAT.vehicle(profile), "LTEST000000000001", soc, target, "CARD1")


def charging(m: PileModel, gun: int = 1, setpoint: float | None = None, **kw) -> PileModel:
    m.write(gun, "validity_s", 3600)
    m.plug_in(gun, vehicle(**kw))
    if setpoint is not None:
        m.write(gun, "setpoint_a" if m.guns[gun - 1].ac else "setpoint_kw", setpoint)
    m.step(m.spec.preparing_s + 0.01)
    return m


def regs(m: PileModel, gun: int = 1) -> dict:
    header, guns = rm.decode_pile(m.read_pile_words())
    return guns[gun - 1]


def test_preparing_then_charging_follows_ramp():
    m = pile()
    m.write(1, "validity_s", 3600)
    m.write(1, "setpoint_kw", 150)
    m.plug_in(1, vehicle())
    assert regs(m)["state"] == GunState.PREPARING
    m.step(7.9)
    assert regs(m)["state"] == GunState.PREPARING and regs(m)["power_kw"] == 0
    m.step(0.2)
    m.step(1.0)
    r = regs(m)
    assert r["state"] == GunState.CHARGING
    assert 0 < r["power_kw"] <= 20.0 + 1e-6  # ramp 20 kW/s
    m.step(10)
    assert regs(m)["power_kw"] == pytest.approx(150, abs=0.1)


@pytest.mark.parametrize("setpoint, temp, modules_lost, expect_kw", [
    (180, None, 0, 180),   # rating
    (100, None, 0, 100),   # setpoint
    (180, 60.0, 0, 135),   # derating: 55 C -> 1.0, 65 C -> 0.5; 60 C -> 0.75 x 180
    (180, None, 7, 150),   # 5 modules x 30 kW left
])
def test_power_is_the_least_of_its_limits(setpoint, temp, modules_lost, expect_kw):
    m = charging(pile(), setpoint=setpoint)
    if temp is not None:
        m.inject_fault(1, "over_temperature", temperature_c=temp)
    if modules_lost:
        m.inject_fault(None, "module_loss", modules=modules_lost)
    m.step(30)
    r = regs(m)
    assert r["power_kw"] == pytest.approx(expect_kw, abs=0.1)
    assert r["applied_limit_kw"] == pytest.approx(expect_kw, abs=0.1)


def test_module_pool_is_shared_in_module_steps():
    m = pile()
    for g in (1, 2):
        charging(m, g, setpoint=180)
    m.inject_fault(None, "module_loss", modules=3)  # 9 modules = 270 kW for two guns wanting 6 each
    m.step(30)
    a, b = regs(m, 1), regs(m, 2)
    assert a["applied_limit_kw"] + b["applied_limit_kw"] <= 270 + 1e-6
    assert {a["applied_limit_kw"] % 30, b["applied_limit_kw"] % 30} == {0}
    assert a["power_kw"] + b["power_kw"] == pytest.approx(270, abs=0.2)
    hdr = rm.decode_pile(m.read_pile_words())[0]
    assert hdr["modules_online"] == 9 and hdr["pile_fault_code"] & FaultBits.MODULE_LOSS


def test_bms_demand_caps_power_and_tapers():
    m = charging(pile("logistics-dc-120"), setpoint=60, profile="taxi", soc=93, target=100)
    m.step(20)
    r = regs(m)
    accept = r["bms_demand_voltage_v"] * r["bms_demand_current_a"] / 1000
    assert r["power_kw"] <= 60
    assert r["power_kw"] == pytest.approx(min(60, accept), rel=0.05)
    assert r["bms_mode"] == 1  # constant voltage above cv_start


def test_vehicle_stops_at_target_and_soc_rises_with_energy():
    m = charging(pile(), setpoint=180, soc=50, target=55)
    e0 = regs(m)["energy_wh"]
    for _ in range(200):
        m.step(5)
    r = regs(m)
    assert r["state"] == GunState.FINISHING
    assert r["soc_pct"] == pytest.approx(55, abs=0.05)
    assert r["power_kw"] == 0
    kwh = (r["energy_wh"] - e0) / 1000
    spec = CAT.vehicle("bus-12m")
    assert kwh == pytest.approx(5 / 100 * spec.battery_kwh / spec.charge_efficiency, rel=0.02)


def test_meter_is_monotonic_and_session_counts_from_plug_in():
    m = charging(pile(), setpoint=100)
    last = -1
    for _ in range(50):
        m.step(3)
        e = regs(m)["energy_wh"]
        assert e >= last
        last = e
    assert regs(m)["session_energy_wh"] == last  # the meter started at 0 on this pile


def test_combined_guns_serve_one_vehicle():
    m = pile()
    m.write(1, "validity_s", 3600)
    m.plug_in(1, vehicle(), combined=True)
    assert m.write(1, "setpoint_kw", 360) is None
    assert m.write(2, "setpoint_kw", 181) == EXC_ILLEGAL_VALUE  # gun 2 keeps its own rating
    m.step(60)
    a, b = regs(m, 1), regs(m, 2)
    assert a["rated_kw"] == 360 and a["paired_gun"] == 2
    assert b["state"] == GunState.UNAVAILABLE and b["paired_gun"] == 1
    assert a["power_kw"] == pytest.approx(330 / 0.97, abs=0.5)  # the bus accepts 330 kW (battery side)
    assert b["energy_wh"] == 0 and b["power_kw"] == 0
    with pytest.raises(SimError):
        m.plug_in(2, vehicle())
    m.unplug(2)
    assert regs(m, 2)["state"] == GunState.AVAILABLE and regs(m, 1)["rated_kw"] == 180


def test_combined_needs_a_combinable_pile():
    with pytest.raises(SimError) as e:
        pile("dc-distributed-60").plug_in(1, vehicle(), combined=True)
    assert e.value.field == "combined"


def test_ac_gun_is_driven_in_amps():
    m = pile("ac-3p-21")
    assert m.write(1, "setpoint_kw", 10) == EXC_ILLEGAL_ADDRESS  # no kW register on AC
    assert m.write(1, "setpoint_a", 5) == EXC_ILLEGAL_VALUE  # below the 6 A minimum
    assert m.write(1, "setpoint_a", 33) == EXC_ILLEGAL_VALUE
    charging(m, setpoint=16, profile="car")
    m.step(10)
    r = regs(m)
    assert r["power_kw"] == pytest.approx(min(3 * 220 * 16 / 1000, 11), abs=0.05)
    assert r["current_a"] == pytest.approx(r["power_kw"] * 1000 / 660, abs=0.1)
    assert r["voltage_v"] == pytest.approx(220)
    assert r["soc_pct"] == 0 and r["vin"] == ""  # no GB/T 27930 on AC


@pytest.mark.parametrize("name, value, code", [
    ("setpoint_kw", 180.1, EXC_ILLEGAL_VALUE),
    ("setpoint_kw", 6553.5, EXC_ILLEGAL_VALUE),  # a negative number written as u16
    ("command", 4, EXC_ILLEGAL_VALUE),
    ("validity_s", 0, EXC_ILLEGAL_VALUE),
    ("failsafe_kw", 200, EXC_ILLEGAL_VALUE),
    ("power_kw", 10, EXC_ILLEGAL_ADDRESS),  # read-only
    ("setpoint_a", 10, EXC_ILLEGAL_ADDRESS),  # AC register on a DC gun
    ("setpoint_kw", 180, None),
])
def test_refusals_leave_the_gun_unchanged(name, value, code):
    m = pile()
    before = regs(m)
    assert m.write(1, name, value) == code
    if code is not None:
        assert regs(m) == before


def test_failsafe_after_validity_and_resume_on_heartbeat():
    m = charging(pile(), setpoint=100)
    m.write(1, "validity_s", 30)
    m.write(1, "failsafe_kw", 30)
    m.write(1, "heartbeat", 1)
    m.step(20)
    assert regs(m)["power_kw"] == pytest.approx(100, abs=0.1)
    m.write(1, "heartbeat", 1)
    m.step(29.5)
    assert regs(m)["setpoint_accepted"] == 1
    m.step(0.6)
    r = regs(m)
    assert r["setpoint_accepted"] == 0 and r["fault_code"] & FaultBits.FAILSAFE
    assert r["applied_limit_kw"] == pytest.approx(30) and r["power_kw"] == pytest.approx(30, abs=0.1)
    m.write(1, "heartbeat", 2)
    m.step(10)
    r = regs(m)
    assert r["setpoint_accepted"] == 1 and r["power_kw"] == pytest.approx(100, abs=0.1)


def test_write_block_is_all_or_nothing():
    m = pile()
    base = rm.gun_address(1, "setpoint_kw")
    # setpoint_kw ok, setpoint_a (AC only) not: nothing applied
    code, entries = m.write_block(base, [500, 10])
    assert code == EXC_ILLEGAL_ADDRESS and regs(m)["setpoint_kw"] == 0
    assert [e["register"] for e in entries] == ["setpoint_kw", "setpoint_a"]
    assert m.write_block(9999, [1])[0] == EXC_ILLEGAL_ADDRESS


def test_state_round_trip_keeps_meter_and_vehicle():
    m = charging(pile(), setpoint=150)
    m.step(100)
    state = m.to_state()
    m2 = pile()
    m2.load_state(state, CAT.vehicle)
    assert regs(m2)["energy_wh"] == regs(m)["energy_wh"]
    assert regs(m2)["state"] == GunState.PREPARING
    assert regs(m2)["soc_pct"] == pytest.approx(regs(m)["soc_pct"], abs=0.1)
