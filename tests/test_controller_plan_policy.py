"""Pure parts of the controller: plan files, demands, bounds, setpoint registers; and bad input."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from controller_helpers import local_s, write_station
from helpers import EXAMPLES
from hw_profiles.catalog import default_catalog
from hw_profiles.errors import InputError
from hw_profiles.fleet import vin_for
from hw_profiles.registers import FaultBits, GunState
from hw_profiles.specs import GunKind, PileClass, StationKind
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff

from controller.coordinator import GunSnapshot, PileSnapshot, Snapshot
from controller.plan import load_plan
from controller.policy import Demand, ValleyPolicy, build_problem, gun_bounds, reservations, setpoint_register
from controller.allocation import allocate


def _plan(tmp_path, text):
    p = tmp_path / "plan.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_plan_kw_at_and_warnings(tmp_path):
    st = load_station(EXAMPLES / "bus-depot.toml")
    p = _plan(tmp_path, "vehicle_id,gun_id,start,end,kw\n"
                        "BUS1,B01-1,2026-11-29T23:00,2026-11-30T01:00,45\n"
                        "BUS1,B01-1,2026-11-30T02:00,2026-11-30T03:00,30\n"
                        "BUS2,B01-1+2,2026-11-29T23:00,2026-11-30T00:00,400\n"
                        "BUS3,Z99-1,2026-11-29T23:00,2026-11-30T00:00,30\n")
    plan, warnings = load_plan(p, st)
    assert plan.kw_at("BUS1", local_s("2026-11-29T23:30")) == 45
    assert plan.kw_at("BUS1", local_s("2026-11-30T01:30")) == 0
    assert plan.kw_at("BUS1", local_s("2026-11-30T02:00")) == 30
    assert plan.kw_at("BUS1", local_s("2026-11-30T03:00")) == 0  # end is exclusive
    assert plan.kw_at("NOBODY", local_s("2026-11-30T02:00")) == 0
    assert plan.kw_at("BUS2", local_s("2026-11-29T23:30")) == 360  # capped at the pair's rating
    assert plan.planned_kwh("BUS1") == pytest.approx(120)
    assert not plan.has("BUS3")
    assert any("line 4" in w and "400 kW exceeds gun B01-1+2's rating of 360 kW" in w for w in warnings)
    assert any("line 5" in w and "unknown gun 'Z99-1'" in w for w in warnings)
    assert plan.vin_map()[vin_for("BUS1")] == "BUS1"
    assert plan.vehicle_for_gun("B01-1", local_s("2026-11-29T22:50")) == "BUS1"
    assert plan.vehicle_for_gun("B01-1", local_s("2026-11-29T22:50"), exclude={"BUS1"}) is None


@pytest.mark.parametrize("text, where", [
    ("vehicle_id,gun_id,start,kw\nA,B01-1,2026-11-29T23:00,3\n", "line 1: missing column(s) end"),
    ("vehicle_id,gun_id,start,end,kw\nA,B01-1,tonight,2026-11-29T23:00,3\n", "line 2: start: expected an ISO datetime"),
    ("vehicle_id,gun_id,start,end,kw\nA,B01-1,2026-11-29T23:00,2026-11-29T22:00,3\n", "line 2: end 2026-11-29T22:00 is not after start"),
    ("vehicle_id,gun_id,start,end,kw\nA,B01-1,2026-11-29T23:00,2026-11-30T01:00,-3\n", "line 2: kw: must be a finite number >= 0"),
    ("vehicle_id,gun_id,start,end,kw\nA,B01-1,2026-11-29T23:00,2026-11-30T01:00,lots\n", "line 2: kw: expected a number"),
])
def test_bad_plan_names_file_line_and_reason(tmp_path, text, where):
    st = load_station(EXAMPLES / "bus-depot.toml")
    with pytest.raises(InputError) as e:
        load_plan(_plan(tmp_path, text), st)
    assert str(tmp_path / "plan.csv") in e.value.line() and where in e.value.line()


def _gun(**kw):
    base = dict(pile_id="B01", gun_no=1, gun_id="B01-1", kind=GunKind.DC, stale=False, state=GunState.CHARGING,
                fault_code=FaultBits.NONE, setpoint_kw=0.0, setpoint_a=0.0, applied_limit_kw=0.0, failsafe_kw=0.0,
                failsafe_a=0.0, validity_s=10, remaining_s=10.0, setpoint_accepted=1, heartbeat=0, command=0,
                voltage_v=600.0, current_a=0.0, power_kw=0.0, energy_wh=0, session_energy_wh=0, soc_pct=50.0,
                bms_demand_voltage_v=650.0, bms_demand_current_a=100.0, bms_mode=2, bms_remaining_min=60, vin="",
                temperature_c=30.0, max_available_kw=65.0, paired_gun=0, id_token="", min_kw=2.0, rated_kw=180.0)
    base.update(kw)
    return GunSnapshot(**base)


def test_gun_bounds_from_telemetry():
    # BMS asks 650 V x 100 A = 65 kW: rounded up to whole 30 kW modules.
    assert gun_bounds(_gun(), 30.0) == (90.0, 2.0)
    assert gun_bounds(_gun(state=GunState.AVAILABLE), 30.0) == (0.0, 0.0)
    assert gun_bounds(_gun(state=GunState.FINISHING), 30.0) == (0.0, 0.0)
    assert gun_bounds(_gun(fault_code=FaultBits.INSULATION), 30.0) == (0.0, 0.0)
    assert gun_bounds(_gun(stale=True), 30.0) == (0.0, 0.0)
    # Derating: what the pile can deliver now bounds the gun.
    assert gun_bounds(_gun(fault_code=FaultBits.DERATING, max_available_kw=40.0), 30.0)[0] == 60.0
    # Preparing without a BMS demand yet: hold the rating ready.
    assert gun_bounds(_gun(state=GunState.PREPARING, bms_demand_current_a=0.0), 30.0)[0] == 180.0


def test_setpoint_registers_dc_and_ac():
    cat = default_catalog()
    dc = cat.pile("bus-dc-360").guns[0]
    ac3 = cat.pile("ac-3p-21").guns[0]
    assert setpoint_register(_gun(), 59.99, dc) == ("setpoint_kw", 59.9)
    assert setpoint_register(_gun(kind=GunKind.AC), 11.0, ac3) == ("setpoint_a", 16.6)  # 11 kW / (3 x 220 V)
    assert setpoint_register(_gun(kind=GunKind.AC), ac3.kw_from_amps(6.0), ac3) == ("setpoint_a", 6.0)
    assert setpoint_register(_gun(kind=GunKind.AC), 3.0, ac3) == ("setpoint_a", 0.0)  # below 6 A: off
    assert setpoint_register(_gun(kind=GunKind.AC), 100.0, ac3) == ("setpoint_a", 32.0)


def test_valley_policy_demands():
    tariff = load_tariff("yunnan-pre2024")
    pol = ValleyPolicy(tariff, StationKind.BUS_DEPOT)
    assert pol.demand(local_s("2026-11-29T22:00"), _gun()).source == "wait"
    d = pol.demand(local_s("2026-11-29T23:05"), _gun(), None, PileClass.BUS_DC)
    assert (d.source, d.ask_kw) == ("valley", 60.0)
    assert pol.valley_end_s(local_s("2026-11-30T03:00")) == local_s("2026-11-30T07:00")

    class V:  # a fleet entry: 350 kWh bus at 90 % wants little, at 10 % more than the band
        spec = default_catalog().vehicle("bus-12m")
        target_soc_pct = 100.0
    low = pol.demand(local_s("2026-11-30T03:00"), _gun(soc_pct=10.0), V(), PileClass.BUS_DC)
    high = pol.demand(local_s("2026-11-30T03:00"), _gun(soc_pct=90.0), V(), PileClass.BUS_DC)
    assert low.ask_kw > 60.0  # full by the end of the valley beats the band
    assert high.ask_kw == 30.0
    assert math.isinf(ValleyPolicy(tariff, StationKind.DISTRIBUTED).demand(0.0, _gun()).ask_kw)


def test_problem_reserves_what_unreachable_piles_may_draw(tmp_path):
    st = load_station(write_station(tmp_path, [("A", "bus-dc-360"), ("B", "bus-dc-360")], site_limit_kw=200))
    t = local_s("2026-11-30T01:00")
    guns_a = (_gun(pile_id="A", gun_id="A-1", bms_demand_current_a=400.0),
              _gun(pile_id="A", gun_no=2, gun_id="A-2", state=GunState.AVAILABLE))
    guns_b = tuple(_gun(pile_id="B", gun_no=n, gun_id=f"B-{n}", stale=True, applied_limit_kw=60.0, power_kw=50.0)
                   for n in (1, 2))
    header = {"pile_max_kw": 360.0, "module_kw": 30.0}
    snap = Snapshot(t, {"A": PileSnapshot("A", "online", t, 0, None, header, guns_a),
                        "B": PileSnapshot("B", "stale", t - 2, 1, "timeout", header, guns_b)})
    res = reservations(st, snap, {})
    assert res == {"B": 120.0}
    pm = build_problem(st, snap, {"A-1": Demand(math.inf, "immediate")}, res)
    alloc = allocate(pm.problem)
    assert [g.gun_id for g in pm.guns] == ["A-1", "A-2"]
    assert alloc.setpoint_kw.tolist() == [60.0, 0.0]  # 200 - 120 reserved = 80, in 30 kW modules
    off = Snapshot(t, {"A": snap.piles["A"], "B": PileSnapshot("B", "offline", None, 3, "timeout")})
    assert reservations(st, off, {"B": 0.0}) == {"B": 0.0}
    alloc = allocate(build_problem(st, off, {"A-1": Demand(math.inf, "immediate")}, {"B": 0.0}).problem)
    assert alloc.setpoint_kw.tolist() == [180.0, 0.0]  # the offline pile's share goes to A


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "evstack", "run", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_run_refuses_when_no_pile_answers(tmp_path):
    path = write_station(tmp_path, [("B01", "bus-dc-360"), ("B02", "bus-dc-360")])
    out = _run(str(path), "--db", str(tmp_path / "ev.db"), "--timeout-s", "0.1")
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()[-1]
    assert err.startswith(f"evstack run: {path}: no pile can be controlled: B01:") and "B02" in err
    assert "offline" in out.stdout and "Traceback" not in out.stderr


def test_run_bad_database_and_bad_plan(tmp_path):
    path = write_station(tmp_path, [("B01", "bus-dc-360")])
    out = _run(str(path), "--db", str(tmp_path / "no" / "such" / "dir.db"))
    assert out.returncode == 2 and "evstack run: --db:" in out.stderr and "does not exist" in out.stderr
    bad = _plan(tmp_path, "vehicle_id,gun_id,start,end,kw\nA,B01-1,2026-11-29T23:00,later,5\n")
    out = _run(str(path), "--plan", str(bad), "--db", str(tmp_path / "ev.db"))
    assert out.returncode == 2 and f"{bad}: line 2: end: expected an ISO datetime" in out.stderr
    out = _run(str(path), "--start", "yesterday")
    assert out.returncode == 2 and "--start: expected an ISO datetime" in out.stderr
