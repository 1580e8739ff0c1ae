"""`evstack check`: every rule passes on the examples and fails, with its reason, when broken."""

import json
from pathlib import Path

import pytest

from evstack.cli import main
from helpers import EXAMPLES
from hw_profiles.compliance import check
from hw_profiles.station import load_station

HEAD = """
[station]
name = "t"
kind = "{kind}"
site_limit_kw = {limit}
price_category = "general_commercial"
tariff = "yunnan-2024"
public = true
"""


def station_file(tmp_path: Path, kind: str, piles: list[tuple[str, str]], limit: float = 1000, extra: str = "") -> Path:
    text = HEAD.format(kind=kind, limit=limit) + extra
    for i, (profile, guns) in enumerate(piles, start=1):
        text += f'\n[[piles]]\nid = "P{i}"\nprofile = "{profile}"\nport = {16000 + i}\n' + (f"guns = {guns}\n" if guns else "")
    p = tmp_path / "s.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name,fleet", [("bus-depot.toml", "bus-fleet.csv"), ("logistics-station.toml", None),
                                        ("public-car-park.toml", None)])
def test_examples_are_compliant(name, fleet, capsys):
    argv = ["check", str(EXAMPLES / name)] + (["--fleet", str(EXAMPLES / fleet)] if fleet else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "Result: compliant" in out


DC80 = """
[profiles.piles.dc80]
class = "distributed_dc"
source = "test"
module_kw = 20
module_count = 4
guns = [{ kind = "DC", rated_kw = 80, voltage_min_v = 200, voltage_max_v = 750, current_max_a = 200 }]
"""

FAILING = [
    # (station kind, piles, site limit, expected FAIL line)
    ("distributed", [("ac-1p-7", '[{ rated_kw = 11, current_max_a = 50 }]')], 100,
     "FAIL  pile P1 gun 1: AC single-phase 11 kW exceeds the 7 kW cap"),
    ("distributed", [("ac-3p-21", '[{ rated_kw = 40, current_max_a = 63 }]')], 100,
     "FAIL  pile P1 gun 1: AC three-phase 40 kW exceeds the 30 kW cap"),
    ("distributed", [("dc80", "")], 100, "FAIL  pile P1 gun 1: distributed DC 80 kW exceeds the 60 kW cap"),
    ("bus_depot", [("bus-dc-360", '[{ rated_kw = 150 }, {}]')], 1000,
     "FAIL  pile P1 gun 1: bus DC 150 kW is below the 180 kW per-gun minimum"),
    ("logistics_station", [("logistics-dc-120", '[{ rated_kw = 40 }, {}]')] + [("logistics-dc-120", "")] * 9, 1000,
     "FAIL  pile P1 gun 1: logistics DC 40 kW is below the 60 kW per-gun minimum"),
    ("logistics_station", [("logistics-dc-120", "")] * 9, 1000,
     "FAIL  station 't': 18 guns is below the 20-gun minimum"),
    ("logistics_station", [("logistics-dc-120", "")] * 10, 250,
     "FAIL  station 't': 250 kW (site limit; installed 1200 kW, site limit 250 kW) is below the 300 kW minimum"),
    ("logistics_station", [("logistics-dc-120", "")] * 10 + [("ac-1p-7", "")], 1000,
     "FAIL  station 't': piles P11 are not logistics DC piles"),
    ("bus_depot", [("logistics-dc-120", "")], 1000, "FAIL  station 't': a bus depot without bus DC piles"),
    ("bus_depot", [("bus-dc-360", '[{ min_kw = 70 }, {}]')], 1000,
     "FAIL  pile P1 gun 1: gun range 70-180 kW cannot run in the 30-60 kW valley band"),
]


@pytest.mark.parametrize("kind,piles,limit,line", FAILING, ids=[f[3].split(": ", 1)[1][:50] for f in FAILING])
def test_broken_rule_fails_with_its_reason(tmp_path, capsys, kind, piles, limit, line):
    path = station_file(tmp_path, kind, piles, limit, extra=DC80)
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert line in out.splitlines()
    assert "Result: NOT compliant" in out


def test_two_guns_that_cannot_combine_fail_the_bus_rule(tmp_path, capsys):
    extra = """
[profiles.piles.split]
class = "bus_dc"
source = "test"
module_kw = 30
module_count = 12
guns = [
  { kind = "DC", rated_kw = 180, voltage_min_v = 200, voltage_max_v = 750, current_max_a = 300 },
  { kind = "DC", rated_kw = 180, voltage_min_v = 200, voltage_max_v = 750, current_max_a = 300 },
]
"""
    path = station_file(tmp_path, "bus_depot", [("split", "")], extra=extra)
    assert main(["check", str(path)]) == 1
    assert "FAIL  pile P1: two guns cannot combine on one vehicle; 360 kW on two guns is required" in capsys.readouterr().out


def fleet_file(tmp_path: Path, buses: int) -> Path:
    rows = ["vehicle_id,profile,arrival,departure,arrival_soc_pct"]
    rows += [f"B{i},bus-12m,21:00,07:00+1,40" for i in range(buses)]
    p = tmp_path / "fleet.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_one_bus_one_gun_fails_with_more_buses_than_guns(tmp_path, capsys):
    path = station_file(tmp_path, "bus_depot", [("bus-dc-360", "")] * 2, limit=1000)
    assert main(["check", str(path), "--fleet", str(fleet_file(tmp_path, 5))]) == 1
    out = capsys.readouterr().out
    assert "FAIL  station 't': at most 5 buses parked at once (21:00) for 4 bus guns: 1 bus(es) without a gun" in out
    assert main(["check", str(path), "--fleet", str(fleet_file(tmp_path, 4))]) == 0


def test_site_limit_must_give_every_parked_bus_30_kw(tmp_path, capsys):
    path = station_file(tmp_path, "bus_depot", [("bus-dc-360", "")] * 3, limit=100)
    assert main(["check", str(path), "--fleet", str(fleet_file(tmp_path, 4))]) == 1
    assert "site limit 100 kW is below 30 kW x 4 parked buses = 120 kW; raise it by 20 kW" in capsys.readouterr().out


def test_subsidy_estimate(tmp_path, capsys):
    path = station_file(tmp_path, "distributed", [("dc-distributed-60", ""), ("ac-3p-21", ""), ("ac-1p-7", "")], limit=200)
    rep = check(load_station(path))
    assert rep.subsidy.total_cny == 60 * 500 + (21 + 7) * 200
    assert rep.subsidy.province_cny == rep.subsidy.city_cny == rep.subsidy.total_cny / 2
    main(["check", str(path)])
    assert "= 35,600 CNY (province 17,800, city 17,800)" in capsys.readouterr().out


def test_no_subsidy_for_a_private_depot():
    rep = check(load_station(EXAMPLES / "bus-depot.toml"))
    assert not rep.subsidy.public and rep.subsidy.total_cny == 0 and rep.subsidy.dc_kw == 3600


def test_json_report(capsys):
    assert main(["check", str(EXAMPLES / "public-car-park.toml"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["compliant"] is True and doc["failed"] == 0
    assert all({"rule", "subject", "passed", "reason"} <= set(r) for r in doc["rules"])
    assert doc["subsidy"]["total_cny"] == doc["subsidy"]["province_cny"] * 2
    assert doc["tariff"]["note"] == "as reported, verify before billing"


def test_a_dc_class_pile_with_an_ac_gun_fails(tmp_path, capsys):
    extra = """
[profiles.piles.odd]
class = "distributed_dc"
source = "test"
guns = [{ kind = "AC", phases = 3, rated_kw = 21, voltage_min_v = 187, voltage_max_v = 253, current_max_a = 32 }]
"""
    path = station_file(tmp_path, "distributed", [("odd", "")], limit=100, extra=extra)
    assert main(["check", str(path)]) == 1
    assert "FAIL  pile P1 gun 1: a distributed DC pile needs distributed DC guns, got AC 3-phase" in capsys.readouterr().out
