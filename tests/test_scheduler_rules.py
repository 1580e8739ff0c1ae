"""Each rule checked on the simulated output itself: plan.csv read back and compared with the
station file, the tariff and the fleet file, independently of the scheduler's own bookkeeping."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest

from evstack.cli import main
from hw_profiles.fleet import load_fleet
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff
from scheduler.runner import run_schedule
from scheduler_helpers import DAY0

BANDS = {"bus": (30.0, 60.0), "other": (15.0, 30.0)}


def _run_cli(examples, tmp_path_factory, station, fleet, tariff, policy="valley"):
    out = tmp_path_factory.mktemp(f"{policy}-{tariff}")
    rc = main(["schedule", "--station", str(examples / station), "--fleet", str(examples / fleet), "--tariff", tariff,
               "--policy", policy, "--date", DAY0.isoformat(), "--out", str(out), "--no-plot"])
    with open(out / "plan.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rc, json.loads((out / "report.json").read_text()), rows


SCENARIOS = [("bus-depot.toml", "bus-fleet.csv", "yunnan-pre2024"), ("bus-depot.toml", "bus-fleet.csv", "yunnan-2024"),
             ("logistics-station.toml", "logistics-fleet.csv", "yunnan-2024")]


@pytest.fixture(scope="module", params=SCENARIOS, ids=lambda p: f"{p[0]}-{p[2]}")
def valley_run(request, tmp_path_factory):
    from helpers import EXAMPLES
    station, fleet, tariff = request.param
    rc, doc, rows = _run_cli(EXAMPLES, tmp_path_factory, station, fleet, tariff)
    st = load_station(EXAMPLES / station)
    return dict(rc=rc, doc=doc, rows=rows, station=st, fleet=load_fleet(EXAMPLES / fleet, st.catalog),
                tariff=load_tariff(tariff))


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _minutes(rows):
    """Per plan row: start/end as minutes from the first plan minute, and the base time."""
    base = min(_t(r["start"]) for r in rows)
    out = [(r, int((_t(r["start"]) - base).total_seconds() // 60), int((_t(r["end"]) - base).total_seconds() // 60))
           for r in rows]
    return base, out


def _valley_windows(tariff, day0):
    """Valley windows (datetimes) of day0 and the next day."""
    w = tariff.windows_of("valley", day0) + tariff.windows_of("valley", day0 + dt.timedelta(days=1))
    return w


def test_every_vehicle_met_every_rule_exit_0(valley_run):
    doc = valley_run["doc"]
    assert valley_run["rc"] == 0
    assert doc["full_by_valley_end_share"] == 1.0 and doc["started_within_30min_share"] == 1.0
    assert doc["unmet_kwh"] == 0.0
    assert all(not v["missed"] for v in doc["vehicles"])


def test_start_within_30_min_of_later_of_valley_start_and_arrival(valley_run):
    rows, fleet, tariff = valley_run["rows"], valley_run["fleet"], valley_run["tariff"]
    first = {}
    for r in rows:
        first[r["vehicle_id"]] = min(first.get(r["vehicle_id"], _t(r["start"])), _t(r["start"]))
    midnight = dt.datetime.combine(DAY0, dt.time())
    windows = _valley_windows(tariff, DAY0)
    for v in fleet:
        arrival = midnight + dt.timedelta(minutes=v.arrival_min)
        departure = midnight + dt.timedelta(minutes=v.departure_min)
        starts = [max(a, arrival) for a, b in windows if b > arrival and a < departure]
        assert v.vehicle_id in first, v.vehicle_id
        assert first[v.vehicle_id] <= min(starts) + dt.timedelta(minutes=30), v.vehicle_id
        assert first[v.vehicle_id] >= arrival


def test_power_band_in_the_valley(valley_run):
    rows, fleet, tariff = valley_run["rows"], valley_run["fleet"], valley_run["tariff"]
    by_id = {v.vehicle_id: v for v in fleet}
    windows = _valley_windows(tariff, DAY0)
    checked = 0
    last_row = {}
    for r in rows:
        last_row[r["vehicle_id"]] = max(last_row.get(r["vehicle_id"], r["start"]), r["start"])
    for r in rows:
        lo, hi = BANDS["bus" if by_id[r["vehicle_id"]].is_bus else "other"]
        s, e, kw = _t(r["start"]), _t(r["end"]), float(r["kw"])
        if any(s < b and e > a for a, b in windows):
            checked += 1
            assert kw <= hi + 1e-9, r
            # below the band only in the battery's final taper (the vehicle's last row)
            assert kw >= lo - 1e-9 or r["start"] == last_row[r["vehicle_id"]], r
    assert checked >= len(fleet)


def test_limits_never_exceeded_at_any_minute(valley_run):
    rows, st = valley_run["rows"], valley_run["station"]
    base, spans = _minutes(rows)
    horizon = max(e for _, _, e in spans) + 1
    pile_of_gun = {pile.gun_id(n): pile for pile in st.piles for n in range(1, len(pile.spec.guns) + 1)}
    load = {"site": np.zeros(horizon)}
    for f in st.feeders:
        load["feeder:" + f.id] = np.zeros(horizon)
    for p in st.piles:
        load["pile:" + p.id] = np.zeros(horizon)
    for r, s, e in spans:
        pile = pile_of_gun[r["gun_id"].split("+")[0]]
        n_guns = 2 if "+" in r["gun_id"] else 1
        kw = float(r["kw"])
        assert kw <= n_guns * pile.spec.guns[0].rated_kw + 1e-9
        assert e > s
        load["site"][s:e] += kw
        load["pile:" + pile.id][s:e] += kw
        if pile.feeder:
            load["feeder:" + pile.feeder][s:e] += kw
    limits = {n.id: n.limit_kw for n in st.limit_tree()}
    for node, series in load.items():
        assert series.max() <= limits[node] + 1e-6, node
    assert valley_run["doc"]["peak_site_kw"] == pytest.approx(load["site"].max())


def test_one_vehicle_one_gun_no_gun_shared_at_once(valley_run):
    rows = valley_run["rows"]
    base, spans = _minutes(rows)
    busy = {}
    for r, s, e in spans:
        for g in r["gun_id"].split("+"):
            gid = g if "-" in g else r["gun_id"].split("-")[0] + "-" + g
            for (s2, e2, vid) in busy.get(gid, []):
                assert vid == r["vehicle_id"] or e <= s2 or s >= e2, (gid, vid, r)
            busy.setdefault(gid, []).append((s, e, r["vehicle_id"]))


def test_costs_recomputed_from_the_plan(valley_run):
    rows, tariff, st, doc = valley_run["rows"], valley_run["tariff"], valley_run["station"], valley_run["doc"]
    cat = st.price_category.value
    electricity = energy = 0.0
    slack_kwh = 0.0
    for r in rows:
        t, e, kw = _t(r["start"]), _t(r["end"]), float(r["kw"])
        while t < e:
            electricity += kw / 60 * tariff.price_cny_per_kwh(cat, t)
            energy += kw / 60
            t += dt.timedelta(minutes=1)
    # the plan holds setpoints; a vehicle that gets full mid-minute takes less in that minute
    slack_kwh = sum(float(r["kw"]) / 60 for r in rows)
    assert doc["energy_kwh"] <= energy + 1e-6
    assert energy - doc["energy_kwh"] <= slack_kwh
    per_vehicle_last = {}
    for r in rows:
        per_vehicle_last[r["vehicle_id"]] = float(r["kw"])
    assert energy - doc["energy_kwh"] <= sum(per_vehicle_last.values()) / 60 + 1e-6
    max_price = max(max(p.values()) for p in tariff.prices.values())
    assert abs(electricity - doc["cost_cny"]["electricity"]) <= (energy - doc["energy_kwh"]) * max_price + 0.01
    assert doc["cost_cny"]["service"] == pytest.approx(doc["energy_kwh"] * tariff.service_fee_cny_per_kwh, abs=0.01)
    assert doc["cost_cny"]["total"] == pytest.approx(doc["cost_cny"]["electricity"] + doc["cost_cny"]["service"], abs=0.011)
    assert sum(doc["energy_kwh_by_period"].values()) == pytest.approx(doc["energy_kwh"], abs=0.05)


def test_full_by_valley_end_on_simulated_soc(valley_run):
    doc, fleet = valley_run["doc"], valley_run["fleet"]
    by_id = {v["vehicle_id"]: v for v in doc["vehicles"]}
    for v in fleet:
        rep = by_id[v.vehicle_id]
        assert rep["final_soc_pct"] >= rep["full_soc_pct"] - 1e-6
        assert rep["full_soc_pct"] >= 96.0  # the taper no module step can serve is small
        energy = (rep["final_soc_pct"] - v.arrival_soc_pct) / 100 * v.spec.battery_kwh / v.spec.charge_efficiency
        assert energy == pytest.approx(rep["energy_kwh"], abs=0.02)


@pytest.mark.parametrize("station,fleet,tariff", SCENARIOS)
def test_valley_never_cheaper_than_optimal(examples, station, fleet, tariff):
    st = load_station(examples / station)
    fl = load_fleet(examples / fleet, st.catalog)
    tar = load_tariff(tariff)
    cost = {}
    for policy in ("valley", "optimal", "uncontrolled"):
        run = run_schedule(st, fl, tar, policy=policy, day0=DAY0)
        kwh = run.result.minute_kwh
        cost[policy] = float((kwh * run.scenario.price).sum() + kwh.sum() * tar.service_fee_cny_per_kwh)
        if policy == "optimal":
            lp = run.plan.lp
            assert lp["status"] == "optimal" and lp["unmet_kwh"] < 1e-6
            bound = lp["cost_cny"]
    assert cost["valley"] >= bound - 1e-6
    assert cost["valley"] <= bound * 1.01  # the bench's target, kept here for the examples
    assert cost["uncontrolled"] > cost["valley"]


def test_uncontrolled_breaks_the_band_and_says_so(examples, tmp_path_factory):
    rc, doc, rows = _run_cli(examples, tmp_path_factory, "bus-depot.toml", "bus-fleet.csv", "yunnan-pre2024",
                             policy="uncontrolled")
    assert rc == 1
    assert doc["rules"]["power_band"]["met"] < doc["rules"]["power_band"]["applies"]
    assert any(m["rule"] == "power_band" for v in doc["vehicles"] for m in v["missed"])
    assert max(float(r["kw"]) for r in rows) == 180.0
