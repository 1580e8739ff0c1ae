"""The vehicle / BMS model: taper, target, batched form equal to the scalar one."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_profiles.catalog import default_catalog
from hw_profiles.registers import BmsMode
from hw_profiles.vehicle import (VehicleBatch, acceptance_kw, bms_demand, charge_step, charge_step_batch,
                                 energy_to_target_kwh)

CAT = default_catalog()
BUS = CAT.vehicle("bus-12m")


def test_acceptance_tapers_near_full_and_stops_at_target():
    assert acceptance_kw(BUS, 50) == pytest.approx(330 / BUS.charge_efficiency)
    assert acceptance_kw(BUS, 97) < acceptance_kw(BUS, 90) < acceptance_kw(BUS, 50)
    assert acceptance_kw(BUS, 80, target_soc_pct=80) == 0.0
    assert acceptance_kw(BUS, 100) == 0.0


def test_bms_demand_cc_then_cv():
    cc = bms_demand(BUS, 40)
    cv = bms_demand(BUS, 90)
    assert cc.mode is BmsMode.CONSTANT_CURRENT and cv.mode is BmsMode.CONSTANT_VOLTAGE
    assert cc.voltage_v == BUS.pack_voltage_max_v
    assert cc.current_a > cv.current_a > 0
    assert bms_demand(BUS, 100).current_a == 0 and bms_demand(BUS, 100).mode is BmsMode.NONE


def test_energy_to_full_matches_integration():
    soc, total = 30.0, 0.0
    for _ in range(24 * 60):
        soc, e = charge_step(BUS, soc, 60.0, 60.0)
        total += e
    assert soc == pytest.approx(100.0)
    assert total == pytest.approx(energy_to_target_kwh(BUS, 30, 100))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(CAT.vehicles)), st.floats(0, 100), st.floats(0, 400),
                          st.floats(0, 100)), min_size=1, max_size=12),
       st.sampled_from([1.0, 60.0, 600.0]))
def test_batch_step_equals_scalar_step_and_never_overshoots(rows, dt_s):
    specs = [CAT.vehicle(r[0]) for r in rows]
    soc = np.array([r[1] for r in rows])
    kw = np.array([r[2] for r in rows])
    target = np.array([r[3] for r in rows])
    new_soc, e = charge_step_batch(VehicleBatch.of(specs), soc, kw, dt_s, target)
    for i, spec in enumerate(specs):
        s1, e1 = charge_step(spec, soc[i], kw[i], dt_s, target[i])
        assert new_soc[i] == pytest.approx(s1, abs=1e-9) and e[i] == pytest.approx(e1, abs=1e-9)
        assert new_soc[i] <= max(target[i], soc[i]) + 1e-9
        assert e[i] <= kw[i] * dt_s / 3600 + 1e-12
