"""Station files: the examples load; every kind of bad input ends as one line and exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from evstack.cli import main
from helpers import EXAMPLES
from hw_profiles.errors import InputError
from hw_profiles.specs import GunKind, StationKind
from hw_profiles.station import load_station

BASE = """
[station]
name = "t"
kind = "bus_depot"
site_limit_kw = 1000
price_category = "large_industrial"
tariff = "yunnan-2024"

[[feeders]]
id = "T1"
limit_kw = 500

[[piles]]
id = "P1"
profile = "bus-dc-360"
port = 15001
feeder = "T1"

[[piles]]
id = "P2"
profile = "bus-dc-360"
port = 15002
"""


@pytest.mark.parametrize("name", ["bus-depot.toml", "logistics-station.toml", "public-car-park.toml"])
def test_examples_load(name):
    st = load_station(EXAMPLES / name)
    assert st.piles and st.gun_count >= len(st.piles)
    ids = [n.id for n in st.limit_tree()]
    assert ids[0] == "site" and len(ids) == len(set(ids))
    # parents always come before children, so a tree walk in order is valid
    seen = set()
    for n in st.limit_tree():
        assert n.parent is None or n.parent in seen
        seen.add(n.id)


def test_logistics_example_meets_its_size():
    st = load_station(EXAMPLES / "logistics-station.toml")
    assert st.kind is StationKind.LOGISTICS_STATION
    assert st.gun_count >= 20 and st.installed_kw >= 300


def test_public_car_park_has_ac_piles():
    st = load_station(EXAMPLES / "public-car-park.toml")
    assert {g.phases for _, _, g in st.guns() if g.kind is GunKind.AC} == {1, 3}


def test_limit_tree_carries_module_steps_and_feeders():
    st = load_station(EXAMPLES / "bus-depot.toml")
    nodes = {n.id: n for n in st.limit_tree()}
    assert nodes["pile:B01"].limit_kw == 360 and nodes["pile:B01"].step_kw == 30
    assert nodes["pile:B01"].parent == "feeder:T1" and nodes["feeder:T1"].parent == "site"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "station.toml"
    p.write_text(text, encoding="utf-8")
    return p


BAD = [
    # (what, edit applied to BASE, expected key path, expected words in the reason)
    ("bad TOML", lambda s: s + "\n[[piles]\n", None, "invalid TOML"),
    ("unknown station kind", lambda s: s.replace('"bus_depot"', '"bus_garage"'), "station.kind", "unknown value"),
    ("unknown pile profile", lambda s: s.replace('profile = "bus-dc-360"\nport = 15002', 'profile = "bus-dc-999"\nport = 15002'),
     "piles[1].profile", "unknown pile profile"),
    ("unknown pile class", lambda s: s + '\n[profiles.piles.x]\nclass = "tram"\nsource = "s"\nguns = []\n',
     "profiles.piles.x.class", "unknown value"),
    ("negative site limit", lambda s: s.replace("site_limit_kw = 1000", "site_limit_kw = -5"), "station.site_limit_kw", "> 0"),
    ("negative feeder limit", lambda s: s.replace("limit_kw = 500", "limit_kw = -1"), "feeders[0].limit_kw", "> 0"),
    ("negative gun rating", lambda s: s.replace('port = 15002', 'port = 15002\nguns = [{ rated_kw = -180 }, {}]'),
     "piles[1].guns[0].rated_kw", "> 0"),
    ("duplicate address", lambda s: s.replace("port = 15002", "port = 15001"), "piles[1].unit_id", "duplicate Modbus address"),
    ("duplicate pile id", lambda s: s.replace('id = "P2"', 'id = "P1"'), "piles[1].id", "duplicate pile id"),
    ("AC single-phase gun rated 11 kW", lambda s: s + '\n[[piles]]\nid = "A1"\nprofile = "ac-1p-7"\nport = 15003\nguns = [{ rated_kw = 11 }]\n',
     "piles[2].guns[0].rated_kw", "11 kW exceeds what 1 phase(s) x 220 V x 32 A can deliver"),
    ("site limit below a gun's minimum", lambda s: s.replace("site_limit_kw = 1000", "site_limit_kw = 1"),
     "station.site_limit_kw", "below the 2 kW minimum of pile P1 gun 1"),
    ("module pool smaller than a gun", lambda s: s + '\n[profiles.piles.small]\nclass = "bus_dc"\nsource = "s"\nmodule_kw = 30\nmodule_count = 4\n'
     'guns = [{ kind = "DC", rated_kw = 180, voltage_min_v = 200, voltage_max_v = 750, current_max_a = 300 }]\n',
     "profiles.piles.small.module_count", "module pool 4 x 30 kW = 120 kW is smaller than gun 1's rating of 180 kW"),
    ("unknown feeder", lambda s: s.replace('feeder = "T1"', 'feeder = "T9"'), "piles[0].feeder", "unknown feeder"),
    ("feeder cycle", lambda s: s.replace("limit_kw = 500", 'limit_kw = 500\nparent = "T1"'), "feeders[0].parent", "cycle"),
    ("unknown key", lambda s: s.replace("port = 15001", "port = 15001\nportt = 3"), "piles[0].portt", "unknown key"),
    ("port out of range", lambda s: s.replace("port = 15001", "port = 70000"), "piles[0].port", "0..65535"),
    ("missing station table", lambda s: s.replace("[station]", "[statio]"), "statio", "unknown table"),
    ("kW given as text", lambda s: s.replace("site_limit_kw = 1000", 'site_limit_kw = "1000"'), "station.site_limit_kw", "expected a number"),
]


@pytest.mark.parametrize("what,edit,key,reason", BAD, ids=[b[0] for b in BAD])
def test_bad_station_file_is_one_line_and_exit_2(tmp_path, capsys, what, edit, key, reason):
    path = write(tmp_path, edit(BASE))
    with pytest.raises(InputError) as e:
        load_station(path)
    assert e.value.source == str(path)
    if key:
        assert e.value.where == key
    assert reason in e.value.reason
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and reason in err
    assert "Traceback" not in err


def test_base_of_the_bad_cases_is_itself_good(tmp_path):
    assert load_station(write(tmp_path, BASE)).gun_count == 4


def test_missing_file_and_bad_tariff_reference(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err
    path = write(tmp_path, BASE.replace('"yunnan-2024"', '"yunnan-1999"'))
    assert main(["check", str(path)]) == 2
    assert "unknown tariff 'yunnan-1999'" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path):
    path = write(tmp_path, BASE + "\n[[piles]\n")
    r = subprocess.run([sys.executable, "-m", "evstack", "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("evstack check: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
