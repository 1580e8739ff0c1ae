"""Fleet and tariff files, the catalog, and `evstack profiles`."""

import datetime as dt
import json

import numpy as np
import pytest

from evstack.cli import main
from helpers import EXAMPLES
from hw_profiles.catalog import default_catalog
from hw_profiles.compliance import hardware_rules
from hw_profiles.errors import InputError
from hw_profiles.fleet import load_fleet, parse_clock
from hw_profiles.specs import PileClass, PileInstance, StationKind, StationSpec
from hw_profiles.tariff import PERIODS, load_tariff

# ------------------------------------------------------------------ catalog


def test_catalog_has_the_five_classes_each_with_a_source():
    cat = default_catalog()
    assert {p.pile_class for p in cat.piles.values()} == set(PileClass)
    assert {v.vehicle_class.value for v in cat.vehicles.values()} == {"bus", "logistics", "taxi", "car"}
    for spec in list(cat.piles.values()) + list(cat.vehicles.values()):
        assert len(spec.source) > 30


def test_every_catalog_pile_is_compliant_with_its_class():
    cat = default_catalog()
    piles = tuple(PileInstance(n, s, port=1000 + i) for i, (n, s) in enumerate(cat.piles.items()))
    st = StationSpec("all", StationKind.DISTRIBUTED, 10_000, "general_commercial", "yunnan-2024", piles)
    results = hardware_rules(st)
    assert results and all(r.passed for r in results), [r.line() for r in results if not r.passed]


def test_bus_pile_shares_a_module_pool():
    bus = default_catalog().pile("bus-dc-360")
    assert (bus.module_count, bus.module_kw, bus.pool_kw, bus.combined_max_kw) == (12, 30, 360, 360)
    assert bus.derate_fraction(20) == 1.0 and bus.derate_fraction(60) == pytest.approx(0.75) and bus.derate_fraction(90) == 0.0


def test_profiles_json(capsys):
    assert main(["profiles", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    bus = next(p for p in doc["piles"] if p["name"] == "bus-dc-360")
    assert bus["class"] == "bus_dc" and bus["rated_kw_per_gun"] == [180, 180] and bus["combined_kw"] == 360
    ac1 = next(p for p in doc["piles"] if p["class"] == "ac_single_phase")
    assert ac1["kind"] == "AC" and ac1["phases"] == 1 and max(ac1["rated_kw_per_gun"]) <= 7
    assert main(["profiles"]) == 0
    assert "bus-dc-360" in capsys.readouterr().out


# ------------------------------------------------------------------ fleet


def test_example_fleets_load():
    buses = load_fleet(EXAMPLES / "bus-fleet.csv")
    assert len(buses) == 18 and all(v.is_bus for v in buses)
    assert all(v.departure_min > v.arrival_min for v in buses)
    vans = load_fleet(EXAMPLES / "logistics-fleet.csv")
    van = vans[0]  # kwh_used: arrival SoC = target - used
    assert van.arrival_soc_pct < van.target_soc_pct and len(van.vin) == 17


def test_clock_format():
    assert parse_clock("07:30+1", "x") == 1440 + 450 and parse_clock("23:59", "x") == 1439


BAD_FLEET = [
    ("unknown profile", "B1,bus-18m,21:00,07:00+1,40", "line 2: profile: unknown vehicle profile 'bus-18m' (known: bus-12m, car, logistics-van, taxi)"),
    ("departure before arrival", "B1,bus-12m,21:00,07:00,40", "line 2: departure: 07:00 is not after arrival 21:00 (write HH:MM+1 for the next day)"),
    ("SoC above 100", "B1,bus-12m,21:00,07:00+1,140", "line 2: arrival_soc_pct: 140 is outside 0..100"),
    ("SoC below 0", "B1,bus-12m,21:00,07:00+1,-3", "line 2: arrival_soc_pct: -3 is outside 0..100"),
    ("SoC not a number", "B1,bus-12m,21:00,07:00+1,half", "line 2: arrival_soc_pct: expected a number, got 'half'"),
    ("bad time", "B1,bus-12m,25:00,07:00+1,40", "line 2: arrival: '25:00' is not a time of day"),
    ("duplicate id", "B1,bus-12m,21:00,07:00+1,40\nB1,bus-12m,21:00,07:00+1,40", "line 3: vehicle_id: duplicate 'B1' (also line 2)"),
]


@pytest.mark.parametrize("what,row,message", BAD_FLEET, ids=[b[0] for b in BAD_FLEET])
def test_bad_fleet_is_one_line_and_exit_2(tmp_path, capsys, what, row, message):
    p = tmp_path / "fleet.csv"
    p.write_text("vehicle_id,profile,arrival,departure,arrival_soc_pct\n" + row + "\n")
    with pytest.raises(InputError) as e:
        load_fleet(p)
    assert e.value.line() == f"{p}: {message}"
    assert main(["check", str(EXAMPLES / "bus-depot.toml"), "--fleet", str(p)]) == 2
    assert capsys.readouterr().err == f"evstack check: {p}: {message}\n"


def test_fleet_missing_column(tmp_path):
    p = tmp_path / "fleet.csv"
    p.write_text("vehicle_id,profile,arrival\nB1,bus-12m,21:00\n")
    with pytest.raises(InputError, match="line 1: missing column"):
        load_fleet(p)


# ------------------------------------------------------------------ tariffs


def test_yunnan_pre2024_periods():
    t = load_tariff("yunnan-pre2024")
    at = lambda h, m=0: t.period_at(dt.datetime(2023, 6, 1, h, m))  # noqa: E731
    assert [at(h) for h in (0, 6, 7, 9, 11, 12, 17, 18, 22, 23)] == [
        "valley", "valley", "flat", "peak", "peak", "flat", "flat", "peak", "peak", "valley"]
    prices = t.prices["large_industrial"]
    assert prices["peak"] / prices["flat"] == pytest.approx(1.5) and prices["valley"] / prices["flat"] == pytest.approx(0.5)
    assert "verify before billing" in t.note
    night = t.windows_of("valley", dt.date(2023, 6, 1))
    assert night == [(dt.datetime(2023, 6, 1, 23), dt.datetime(2023, 6, 2, 7))]


def test_yunnan_2024_has_two_valleys():
    t = load_tariff("yunnan-2024")
    assert t.windows_of("valley", dt.date(2024, 3, 1)) == [
        (dt.datetime(2024, 3, 1, 2), dt.datetime(2024, 3, 1, 6)),
        (dt.datetime(2024, 3, 1, 12), dt.datetime(2024, 3, 1, 16)),
    ]
    table = t.minute_table(dt.date(2024, 3, 1))
    assert PERIODS[table[23 * 60 + 59]] == "peak" and PERIODS[table[0]] == "flat"


def test_energy_split_by_period_across_midnight():
    t = load_tariff("yunnan-pre2024")
    start = dt.datetime(2023, 6, 1, 22, 0)
    split = t.energy_by_period_kwh(start, np.ones(120))  # 22:00-24:00, 1 kWh a minute
    assert split["peak"] == 60 and split["valley"] == 60


TARIFF = """
[tariff]
name = "t"
service_fee_cny_per_kwh = 0.5
[prices.large_industrial]
peak = 1.0
flat = 0.6
valley = 0.3
[[seasons]]
windows = [
  {{ period = "valley", start = "22:00", end = "06:00" }},
  {{ period = "flat", start = "06:00", end = "{flat_end}" }},
  {{ period = "peak", start = "{peak_start}", end = "22:00" }},
]
"""


@pytest.mark.parametrize("flat_end,peak_start,message", [
    ("18:00", "17:00", "seasons[0].windows[2]: overlaps windows[1] at 17:00"),
    ("17:00", "18:00", "seasons[0].windows: gap: no window covers 17:00-18:00"),
    ("17:70", "17:00", "seasons[0].windows[1].end: '17:70' is not a time of day"),
])
def test_bad_tariff_windows(tmp_path, flat_end, peak_start, message):
    p = tmp_path / "t.toml"
    p.write_text(TARIFF.format(flat_end=flat_end, peak_start=peak_start))
    with pytest.raises(InputError) as e:
        load_tariff(p)
    assert e.value.line() == f"{p}: {message}"


def test_good_custom_tariff_crossing_midnight(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text(TARIFF.format(flat_end="17:00", peak_start="17:00"))
    t = load_tariff(p)
    assert t.period_at(dt.datetime(2025, 1, 1, 3)) == "valley" and t.service_fee_cny_per_kwh == 0.5


def test_tariff_missing_price_for_a_used_period(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text(TARIFF.format(flat_end="17:00", peak_start="17:00").replace("peak = 1.0\n", ""))
    with pytest.raises(InputError, match="prices.large_industrial.peak: missing"):
        load_tariff(p)
