"""``evstack schedule``: outputs, feasibility said before the night, bad input, dates."""

from __future__ import annotations

import csv
import json
import re

import pytest

from evstack.cli import main
from hw_profiles.clock import ManualClock
from scheduler_helpers import DAY0, write_fleet, write_station


def schedule(tmp_path, station, fleet, *extra, out="out"):
    argv = ["schedule", "--station", str(station), "--fleet", str(fleet), "--out", str(tmp_path / out),
            "--date", DAY0.isoformat(), *extra]
    rc = main(argv)
    doc = json.loads((tmp_path / out / "report.json").read_text()) if (tmp_path / out / "report.json").exists() else None
    return rc, doc


def test_outputs_of_the_example_depot(examples, tmp_path, capsys):
    # one night valley (the pre-2024 tariff): all energy lands in the valley
    rc, doc = schedule(tmp_path, examples / "bus-depot.toml", examples / "bus-fleet.csv", "--tariff", "yunnan-pre2024")
    text = capsys.readouterr().out
    assert rc == 0
    for key in ("energy_kwh_by_period", "cost_cny", "avg_cny_per_kwh", "peak_site_kw", "site_limit_kw",
                "started_within_30min_share", "full_by_valley_end_share", "unmet_kwh", "vehicles"):
        assert key in doc
    assert set(doc["cost_cny"]) == {"electricity", "service", "total"}
    v = doc["vehicles"][0]
    for key in ("vehicle_id", "gun", "start", "energy_kwh", "final_soc_pct", "missed"):
        assert key in v
    assert doc["energy_kwh_by_period"]["valley"] == pytest.approx(doc["energy_kwh"])
    rows = list(csv.reader((tmp_path / "out" / "plan.csv").open()))
    assert rows[0] == ["vehicle_id", "gun_id", "start", "end", "kw"]
    for r in rows[1:]:
        assert re.fullmatch(r"BUS\d{3}", r[0]) and re.fullmatch(r"B\d\d-[12](\+2)?", r[1])
        assert re.fullmatch(r"2026-1[12]-\d\dT\d\d:\d\d", r[2]) and r[2] < r[3]
        assert float(r[4]) > 0
    assert (tmp_path / "out" / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Cost" in text and "every vehicle met every rule" in text


def test_default_date_is_tomorrow_from_the_injected_clock(examples, tmp_path):
    import argparse
    import datetime as dt

    from scheduler.cli import cmd_schedule

    clock = ManualClock(dt.datetime(2030, 3, 4, 15, 0).timestamp())
    args = argparse.Namespace(station=str(examples / "bus-depot.toml"), fleet=str(examples / "bus-fleet.csv"),
                              tariff=None, days=1, policy="valley", seed=0, date=None, out=str(tmp_path / "o"),
                              no_plot=True, json=False)
    assert cmd_schedule(args, clock=clock) == 0
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    assert doc["date"] == "2030-03-05"
    starts = sorted(r["start"] for r in csv.DictReader((tmp_path / "o" / "plan.csv").open()))
    # the night of day 0: buses arrive from 19:00 on 2030-03-05 and leave by 08:30 on 2030-03-06
    assert "2030-03-05T19:00" <= starts[0] and starts[-1] < "2030-03-06T08:30"


def test_more_buses_than_guns(tmp_path):
    st = write_station(tmp_path / "s.toml", piles=1, site_kw=1000)
    fl = write_fleet(tmp_path / "f.csv", [(f"BUS{i}", "bus-12m", f"20:0{i}", "07:00+1", 40) for i in range(3)])
    rc, doc = schedule(tmp_path, st, fl)
    assert rc == 1
    gun = [f for f in doc["feasibility"] if f["rule"] == "gun"]
    assert [f["vehicle_id"] for f in gun] == ["BUS2"]
    assert gun[0]["kwh"] == pytest.approx(0.6 * 350 / 0.97, abs=0.1) and "one more gun" in gun[0]["fix"]
    bus2 = next(v for v in doc["vehicles"] if v["vehicle_id"] == "BUS2")
    assert bus2["gun"] is None and {m["rule"] for m in bus2["missed"]} >= {"gun", "full_by_departure"}
    assert doc["unmet_kwh"] == pytest.approx(0.6 * 350 / 0.97, abs=0.1)
    others = [v for v in doc["vehicles"] if v["vehicle_id"] != "BUS2"]
    assert all(not v["missed"] for v in others)  # still the best plan for the rest


def test_site_limit_below_band_minimum(tmp_path):
    st = write_station(tmp_path / "s.toml", piles=3, site_kw=100)
    fl = write_fleet(tmp_path / "f.csv", [(f"BUS{i}", "bus-12m", "20:00", "07:00+1", 85) for i in range(5)])
    rc, doc = schedule(tmp_path, st, fl)
    assert rc == 1
    site = [f for f in doc["feasibility"] if f["rule"] == "site_limit"]
    assert len(site) == 1 and "+50 kW" in site[0]["fix"] and "5 plugged" in site[0]["reason"]
    assert doc["peak_site_kw"] <= 100
    late = [v["vehicle_id"] for v in doc["vehicles"] if any(m["rule"] == "start_within_30min" for m in v["missed"])]
    assert len(late) == 2  # 100 kW holds three buses at 30 kW
    assert doc["started_within_30min_share"] == pytest.approx(3 / 5)


def test_energy_above_band_times_valley_hours_and_late_plug_in(tmp_path):
    st = write_station(tmp_path / "s.toml", piles=2, site_kw=1000, tariff="yunnan-2024")
    fl = write_fleet(tmp_path / "f.csv", [("EARLY", "bus-12m", "20:00", "07:30+1", 10),
                                          ("LATE", "bus-12m", "04:00+1", "07:30+1", 40)])
    rc, doc = schedule(tmp_path, st, fl)
    found = {f["vehicle_id"]: f for f in doc["feasibility"] if f["rule"] == "energy_in_valley"}
    need_early = 0.9 * 350 / 0.97 - 240  # valley 02-06 at 60 kW holds 240 kWh
    assert found["EARLY"]["kwh"] == pytest.approx(need_early, abs=2.0)
    assert "cheapest other hours" in found["EARLY"]["fix"]
    assert "earlier" in found["LATE"]["fix"]
    early = next(v for v in doc["vehicles"] if v["vehicle_id"] == "EARLY")
    # the best plan it can: full by departure, the extra in the flat hours (00-02) before the valley
    assert not any(m["rule"] == "full_by_departure" for m in early["missed"])
    rows = list(csv.DictReader((tmp_path / "out" / "plan.csv").open()))
    assert all(r["end"] <= "2026-11-30T06:00" for r in rows if r["vehicle_id"] == "EARLY")
    assert any(r["start"] < "2026-11-30T02:00" for r in rows if r["vehicle_id"] == "EARLY")
    late = next(v for v in doc["vehicles"] if v["vehicle_id"] == "LATE")
    # 04:00-07:30 at 60 kW is 210 kWh of the 216.5 it needs: it says so, by how much
    missed = {m["rule"]: m["kwh"] for m in late["missed"]}
    assert set(missed) == {"full_by_valley_end", "full_by_departure"}
    assert 0 < missed["full_by_departure"] < 10


def test_departure_before_the_valley_ends(tmp_path):
    st = write_station(tmp_path / "s.toml", piles=1, site_kw=1000)
    fl = write_fleet(tmp_path / "f.csv", [("EARLYBIRD", "bus-12m", "21:00", "02:00+1", 30)])
    rc, doc = schedule(tmp_path, st, fl)
    dep = [f for f in doc["feasibility"] if f["rule"] == "departure"]
    assert dep and dep[0]["vehicle_id"] == "EARLYBIRD" and "07:00" in dep[0]["fix"]
    # 3 valley hours at 60 kW cannot hold 70 % of 350 kWh
    assert dep[0]["kwh"] == pytest.approx(0.7 * 350 / 0.97 - 180, abs=2.0)
    # the best it can: what the valley cannot hold before 02:00 goes to the hours before it
    assert rc == 0 and doc["unmet_kwh"] == 0
    assert doc["energy_kwh_by_period"]["peak"] == pytest.approx(dep[0]["kwh"], abs=10)


def test_daytime_emergency_top_up_on_two_guns(tmp_path):
    st = write_station(tmp_path / "s.toml", piles=2, site_kw=1000)
    fl = write_fleet(tmp_path / "f.csv", [("LOW", "bus-12m", "12:00", "13:00", 15), ("OK", "bus-12m", "12:00", "13:00", 50)])
    rc, doc = schedule(tmp_path, st, fl)
    rows = list(csv.DictReader((tmp_path / "out" / "plan.csv").open()))
    low = [r for r in rows if r["vehicle_id"] == "LOW"]
    assert low and low[0]["gun_id"].endswith("+2") and float(low[0]["kw"]) > 180.0  # two guns, first served
    assert all(r["start"] >= "2026-11-29T12:00" for r in rows)


def test_days_and_seed(examples, tmp_path):
    rc1, d1 = schedule(tmp_path, examples / "bus-depot.toml", examples / "bus-fleet.csv", "--days", "3", "--seed", "4",
                       "--no-plot", out="a")
    rc2, d2 = schedule(tmp_path, examples / "bus-depot.toml", examples / "bus-fleet.csv", "--days", "3", "--seed", "4",
                       "--no-plot", out="b")
    assert d1["days"] == 3 and len(d1["vehicles"]) == 54
    assert (tmp_path / "a" / "plan.csv").read_text() == (tmp_path / "b" / "plan.csv").read_text()
    assert d1["cost_cny"] == d2["cost_cny"]


BAD = [
    ("fleet", "vehicle_id,profile,arrival,departure,arrival_soc_pct\nX1,spaceship,20:00,07:00+1,40\n",
     r"f\.csv: line 2: profile: unknown vehicle profile 'spaceship'"),
    ("fleet", "vehicle_id,profile,arrival,departure,arrival_soc_pct\nX1,bus-12m,20:00,07:00,40\n",
     r"f\.csv: line 2: departure: 07:00 is not after arrival 20:00"),
    ("fleet", "vehicle_id,profile,arrival,departure,arrival_soc_pct\nX1,bus-12m,20:00,07:00+1,140\n",
     r"f\.csv: line 2: arrival_soc_pct: 140 is outside 0\.\.100"),
    ("tariff", "overlap", r"t\.toml: seasons\[0\]\.windows\[1\]: overlaps windows\[0\] at 06:00"),
    ("tariff", "gap", r"t\.toml: seasons\[0\]\.windows: gap: no window covers 07:00-08:00"),
]

TARIFF = """[tariff]
name = "t"
[prices.large_industrial]
peak = 1.0
valley = 0.3
[[seasons]]
windows = [{{ period = "valley", start = "23:00", end = "{valley_end}" }},
           {{ period = "peak", start = "{peak_start}", end = "23:00" }}]
"""


@pytest.mark.parametrize("what,content,message", BAD, ids=["profile", "departure", "soc", "overlap", "gap"])
def test_bad_input_one_line_exit_2(examples, tmp_path, capsys, what, content, message):
    station, fleet, extra = examples / "bus-depot.toml", examples / "bus-fleet.csv", []
    if what == "fleet":
        fleet = tmp_path / "f.csv"
        fleet.write_text(content)
    else:
        tariff = tmp_path / "t.toml"
        tariff.write_text(TARIFF.format(valley_end="07:00", peak_start="06:00" if content == "overlap" else "08:00"))
        extra = ["--tariff", str(tariff)]
    rc, _ = schedule(tmp_path, station, fleet, *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_bad_date_and_days(examples, tmp_path, capsys):
    assert main(["schedule", "--station", str(examples / "bus-depot.toml"), "--fleet", str(examples / "bus-fleet.csv"),
                 "--out", str(tmp_path), "--date", "29.11.2026"]) == 2
    assert "--date: expected YYYY-MM-DD" in capsys.readouterr().err
    assert main(["schedule", "--station", str(examples / "bus-depot.toml"), "--fleet", str(examples / "bus-fleet.csv"),
                 "--out", str(tmp_path), "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err


def test_progress_bar_only_for_long_runs():
    import io

    from scheduler.cli import Progress

    now = [0.0]
    out = io.StringIO()
    bar = Progress(out, after_s=2.0, monotonic=lambda: now[0])
    bar(0.3)
    assert out.getvalue() == ""  # a quick run shows nothing
    now[0] = 2.5
    bar(0.5)
    bar(0.5)
    assert out.getvalue().count("50%") == 1 and "#" * 12 in out.getvalue()
    bar.done()
    assert out.getvalue().endswith("\r")
