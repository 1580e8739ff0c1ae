"""The event-driven engine against a plain minute-by-minute simulation that calls the
allocation core on the whole limit tree every minute (tests/scheduler_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hw_profiles.fleet import load_fleet
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff
from scheduler.model import build_scenario
from scheduler.runner import run_scenario, run_schedule
from scheduler_helpers import DAY0, reference_minutes, write_fleet, write_station

CASES = [
    ("bus-depot.toml", "bus-fleet.csv", "yunnan-pre2024", "valley", 1),
    ("bus-depot.toml", "bus-fleet.csv", "yunnan-2024", "valley", 2),
    ("bus-depot.toml", "bus-fleet.csv", "yunnan-2024", "uncontrolled", 1),
    ("bus-depot.toml", "bus-fleet.csv", "yunnan-2024", "optimal", 1),
    ("logistics-station.toml", "logistics-fleet.csv", "yunnan-2024", "valley", 1),
    ("logistics-station.toml", "logistics-fleet.csv", "yunnan-2024", "uncontrolled", 2),
]


def _load(examples, station, fleet):
    st = load_station(examples / station)
    return st, load_fleet(examples / fleet, st.catalog)


@pytest.mark.parametrize("station,fleet,tariff,policy,days", CASES)
def test_engine_matches_minute_by_minute_whole_tree(examples, station, fleet, tariff, policy, days):
    st, fl = _load(examples, station, fleet)
    run = run_schedule(st, fl, load_tariff(tariff), policy=policy, day0=DAY0, days=days, seed=5)
    kw, energy, soc = reference_minutes(run)
    assert np.abs(kw - run.result.minute_kw).max() < 1e-6
    assert np.abs(energy - run.result.energy_kwh).max() < 1e-6
    assert np.abs(soc - run.result.final_soc).max() < 1e-6
    assert run.result.ticks < run.scenario.horizon_min  # it did skip minutes


def test_engine_matches_reference_when_limits_bind(tmp_path):
    """Feeders and site that bind (uncontrolled at 180 kW per bus), and a site that sheds minimums."""
    st = load_station(write_station(tmp_path / "s.toml", piles=4, site_kw=400, feeders=[250, 300]))
    rows = [(f"B{i}", "bus-12m", f"{19 + i % 4}:{(i * 7) % 60:02d}", "07:00+1", 20 + 5 * i) for i in range(8)]
    fl = load_fleet(write_fleet(tmp_path / "f.csv", rows), st.catalog)
    for policy in ("uncontrolled", "valley"):
        run = run_schedule(st, fl, load_tariff("yunnan-pre2024"), policy=policy, day0=DAY0)
        kw, energy, _ = reference_minutes(run)
        assert np.abs(kw - run.result.minute_kw).max() < 1e-6, policy
        assert np.abs(energy - run.result.energy_kwh).max() < 1e-6, policy
        assert run.result.minute_kw.max() <= 400 + 1e-6


def test_side_by_side_days_equal_days_in_sequence(examples):
    st, fl = _load(examples, "bus-depot.toml", "bus-fleet.csv")
    tar = load_tariff("yunnan-2024")
    a = run_scenario(build_scenario(st, fl, tar, day0=DAY0, days=3, seed=9, lanes=True), "valley")
    b = run_scenario(build_scenario(st, fl, tar, day0=DAY0, days=3, seed=9, lanes=False), "valley")
    assert a.scenario.lanes == 3 and b.scenario.lanes == 1
    assert np.allclose(a.result.energy_kwh, b.result.energy_kwh, atol=1e-9)
    assert np.isclose((a.result.minute_kwh * a.scenario.price).sum(), (b.result.minute_kwh * b.scenario.price).sum())


def test_same_seed_same_result_other_seed_other_days(examples):
    st, fl = _load(examples, "bus-depot.toml", "bus-fleet.csv")
    tar = load_tariff("yunnan-pre2024")
    r1 = run_schedule(st, fl, tar, day0=DAY0, days=4, seed=1)
    r2 = run_schedule(st, fl, tar, day0=DAY0, days=4, seed=1)
    r3 = run_schedule(st, fl, tar, day0=DAY0, days=4, seed=2)
    assert np.array_equal(r1.result.seg_kw, r2.result.seg_kw) and np.array_equal(r1.result.seg_start, r2.result.seg_start)
    assert not np.array_equal(r1.scenario.sessions.arrival, r3.scenario.sessions.arrival)
    # day 0 is the fleet file exactly
    s = r3.scenario.sessions
    d0 = s.day == 0
    assert np.array_equal(s.soc0[d0], [f.arrival_soc_pct for f in fl])


@pytest.mark.parametrize("policy", ["valley", "uncontrolled", "optimal"])
def test_engine_matches_reference_on_ac_and_dc_public_piles(examples, tmp_path, policy):
    """Unstepped AC guns (the taper followed minute by minute), daytime public vehicles."""
    st = load_station(examples / "public-car-park.toml")
    rows = [("CAR1", "car", "18:00", "08:00+1", 20), ("CAR2", "car", "09:00", "12:00", 30),
            ("TAXI1", "taxi", "22:00", "06:00+1", 10), ("VAN1", "logistics-van", "10:00", "11:00", 20),
            ("CAR3", "car", "19:00", "07:30+1", 5)] + [(f"C{i}", "car", "20:00", "07:00+1", 10 + i) for i in range(12)]
    fl = load_fleet(write_fleet(tmp_path / "f.csv", rows), st.catalog)
    run = run_schedule(st, fl, load_tariff("yunnan-2024"), policy=policy, day0=DAY0)
    kw, energy, _ = reference_minutes(run)
    assert np.abs(kw - run.result.minute_kw).max() < 1e-6
    assert np.abs(energy - run.result.energy_kwh).max() < 1e-6


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("SCHED_RANDOM_DEPOTS", "4"))))
def test_engine_matches_reference_on_random_depots(tmp_path, seed):
    """Random limits (often binding) and timetables: the component-wise re-allocation must give
    what the whole tree gives, minute by minute."""
    rng = np.random.default_rng(seed)
    piles = int(rng.integers(2, 6))
    feeders = [float(rng.integers(60, 400)) for _ in range(int(rng.integers(0, 3)))]
    st = load_station(write_station(tmp_path / "s.toml", piles=piles, site_kw=float(rng.integers(90, 700)),
                                    feeders=feeders or None))
    rows = []
    for i in range(int(rng.integers(piles, 2 * piles + 3))):
        a = int(rng.integers(10 * 60, 23 * 60 + 50))
        d = int(rng.integers(4 * 60, 9 * 60)) + 1440 if rng.random() < 0.8 else min(a + int(rng.integers(30, 300)), 1439)
        rows.append((f"V{i}", "bus-12m", f"{a // 60:02d}:{a % 60:02d}", f"{d % 1440 // 60:02d}:{d % 60:02d}" +
                     ("+1" if d >= 1440 else ""), int(rng.integers(5, 90))))
    fl = load_fleet(write_fleet(tmp_path / "f.csv", rows), st.catalog)
    for policy in ("valley", "uncontrolled"):
        run = run_schedule(st, fl, load_tariff(["yunnan-pre2024", "yunnan-2024"][seed % 2]), policy=policy, day0=DAY0)
        kw, energy, _ = reference_minutes(run)
        assert np.abs(kw - run.result.minute_kw).max() < 1e-6, policy
        assert np.abs(energy - run.result.energy_kwh).max() < 1e-6, policy
