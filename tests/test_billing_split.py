"""Session bills: energy split by tariff period (recomputed by hand), service fee, rounding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.billing import Authorizer, Bill, bill_session, period_segments, round_cny
from hw_profiles.tariff import load_tariff
from store_helpers import local_ts

PRE2024 = load_tariff("yunnan-pre2024")  # flat 07-09, peak 09-12, flat 12-18, peak 18-23, valley 23-07
Y2024 = load_tariff("yunnan-2024")  # ... valley 12-16, flat 16-18, peak 18-24, flat 00-02, valley 02-06
LI = "large_industrial"  # peak 0.675, flat 0.45, valley 0.225 CNY/kWh; service 0.60 CNY/kWh


def test_night_session_crossing_peak_valley_flat_is_split_by_hand():
    # 60 kW steadily from 22:00 to 08:00 next day, a sample every 30 minutes (30 kWh each).
    start = local_ts(2023, 11, 6, 22, 0)
    samples = [(start + i * 1800, 5_000_000 + i * 30_000) for i in range(21)]
    bill = bill_session(PRE2024, LI, samples)
    # by hand: 22-23 peak 60 kWh, 23-07 valley 480 kWh, 07-08 flat 60 kWh
    assert bill.energy_wh == 600_000
    assert bill.energy_kwh_by_period == pytest.approx({"peak": 60.0, "flat": 60.0, "valley": 480.0})
    assert bill.electricity_cny_by_period == pytest.approx({"peak": 40.5, "flat": 27.0, "valley": 108.0})
    assert bill.electricity_cny == 175.5  # 60*0.675 + 480*0.225 + 60*0.45
    assert bill.service_cny == 360.0  # 600 kWh * 0.60, shown separately
    assert bill.total_cny == 535.5


def test_energy_between_two_samples_is_spread_evenly_across_the_boundary():
    # 30 kWh between 22:40 and 23:10: 20 minutes of it in peak, 10 in valley.
    bill = bill_session(PRE2024, LI, [(local_ts(2023, 5, 2, 22, 40), 1000), (local_ts(2023, 5, 2, 23, 10), 31_000)])
    assert bill.energy_kwh_by_period["peak"] == pytest.approx(20.0)
    assert bill.energy_kwh_by_period["valley"] == pytest.approx(10.0)
    assert bill.electricity_cny == 15.75  # 20*0.675 + 10*0.225
    assert bill.service_cny == 18.0
    assert bill.total_cny == 33.75


def test_uneven_power_uses_the_meter_not_the_clock():
    # 50 kWh in the peak half hour, 10 kWh in the valley half hour: samples on the boundary.
    t0 = local_ts(2023, 5, 2, 22, 30)
    samples = [(t0, 0), (t0 + 1800, 50_000), (t0 + 3600, 60_000)]
    bill = bill_session(PRE2024, "general_commercial", samples)  # peak 0.81, valley 0.27
    assert bill.energy_kwh_by_period == pytest.approx({"peak": 50.0, "flat": 0.0, "valley": 10.0})
    assert bill.electricity_cny == round(50 * 0.81 + 10 * 0.27, 2) == 43.2


def test_two_valleys_a_day_in_the_2024_tariff():
    # 11:00-17:00 at a steady 20 kW: 11-12 flat, 12-16 valley, 16-17 flat.
    t0 = local_ts(2024, 7, 1, 11, 0)
    samples = [(t0 + 60 * m, 20_000 * m // 60) for m in range(0, 361, 15)]
    bill = bill_session(Y2024, LI, samples)
    assert bill.energy_wh == 120_000
    assert bill.energy_kwh_by_period == pytest.approx({"peak": 0.0, "flat": 40.0, "valley": 80.0})
    assert bill.electricity_cny == 36.0  # 40*0.45 + 80*0.225
    assert bill.service_cny == 72.0
    assert list(bill.energy_kwh_by_period) == ["peak", "flat", "valley"]  # PERIODS order, every used period


def test_session_starting_exactly_on_a_boundary_is_all_in_the_new_period():
    t0 = local_ts(2023, 1, 10, 23, 0)
    bill = bill_session(PRE2024, LI, [(t0, 0), (t0, 400), (t0 + 600, 10_400)])
    assert bill.energy_kwh_by_period["valley"] == pytest.approx(10.4)
    assert bill.energy_kwh_by_period["peak"] == 0.0
    segs = period_segments(PRE2024, t0, t0 + 600)
    assert [s[2] for s in segs] == ["valley"]


def test_a_lone_sample_is_an_empty_bill():
    bill = bill_session(PRE2024, LI, [(local_ts(2023, 1, 1, 12), 123)])
    assert bill.energy_wh == 0 and bill.total_cny == 0.0
    assert set(bill.energy_kwh_by_period) == {"peak", "flat", "valley"}


def test_rounding_is_half_up_at_the_end_and_the_bill_adds_up():
    assert round_cny(2.675) == 2.68  # banker's/binary rounding would give 2.67
    assert round_cny(0.125) == 0.13
    # 1.5 kWh flat at 0.45 = 0.675 -> 0.68; service 1.5 * 0.6 = 0.9
    t0 = local_ts(2023, 3, 3, 13, 0)
    bill = bill_session(PRE2024, LI, [(t0, 0), (t0 + 3600, 1500)])
    assert bill.electricity_cny_by_period["flat"] == pytest.approx(0.675)  # not rounded per period
    assert (bill.electricity_cny, bill.service_cny, bill.total_cny) == (0.68, 0.9, 1.58)


@pytest.mark.parametrize("samples, message", [
    ([], "at least one"),
    ([(100.0, 0), (50.0, 10)], "back in time"),
    ([(100.0, 50), (200.0, 10)], "meter register goes back"),
])
def test_bad_samples_are_refused(samples, message):
    with pytest.raises(ValueError, match=message):
        bill_session(PRE2024, LI, samples)


def test_unknown_price_category_is_refused():
    with pytest.raises(ValueError, match="no prices for category 'space_station'"):
        bill_session(PRE2024, "space_station", [(0.0, 0)])


def test_bill_round_trips_through_a_dict():
    bill = bill_session(PRE2024, LI, [(local_ts(2023, 5, 2, 22, 40), 0), (local_ts(2023, 5, 2, 23, 10), 30_000)])
    assert Bill.from_dict(bill.as_dict()) == bill


@settings(max_examples=60, deadline=None)
@given(
    start_min=st.integers(0, 3 * 1440),
    steps=st.lists(st.tuples(st.integers(0, 7200), st.integers(0, 50_000)), min_size=1, max_size=40),
)
def test_split_always_adds_up_to_the_meter(start_min, steps):
    t = local_ts(2023, 6, 1) + start_min * 60
    e = 10_000
    samples = [(t, e)]
    for dt_s, de in steps:
        t, e = t + dt_s, e + de
        samples.append((t, e))
    bill = bill_session(PRE2024, LI, samples)
    assert bill.energy_wh == samples[-1][1] - samples[0][1]
    assert sum(bill.energy_kwh_by_period.values()) == pytest.approx(bill.energy_wh / 1000, abs=1e-6)
    assert all(v >= -1e-9 for v in bill.energy_kwh_by_period.values())
    assert bill.total_cny == round_cny(bill.electricity_cny + bill.service_cny)
    assert bill.service_cny == round_cny(bill.energy_wh / 1000 * 0.60)


def test_authorizer_allow_list():
    auth = Authorizer(["CARD-001", " qr:abc "])
    assert auth.check("CARD-001") and auth.check("qr:abc") and auth.check(" CARD-001 ")
    assert not auth.check("CARD-002") and not auth.check("card-001") and not auth.check(None) and not auth.check("")
    assert not auth.open


def test_authorizer_without_a_list_accepts_any_and_an_empty_list_none():
    assert Authorizer(None).check("anything") and Authorizer(None).check(None) and Authorizer(None).open
    assert not Authorizer([]).check("CARD-001")
    with pytest.raises(TypeError):
        Authorizer("CARD-001")
