"""The store: sessions survive a kill -9, close is idempotent, samples are keyed, stations scope.

Every test runs on an SQLite file, and again on PostgreSQL when EVSTACK_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import dataclasses

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from controller.billing import bill_session
from controller.store import MeterSample, OpenSessionExists, SessionRecord, Store, UnknownSession
from helpers import EXAMPLES
from hw_profiles.errors import InputError
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff
from store_helpers import local_ts, store_url  # noqa: F401  (store_url is a fixture)

# Sessions of 2023: billed under the tariff in force then (the example depot now uses yunnan-2024).
BUS = dataclasses.replace(load_station(EXAMPLES / "bus-depot.toml"), tariff="yunnan-pre2024")
BUS_TARIFF = load_tariff(BUS.tariff)
T0 = local_ts(2023, 10, 9, 22, 30)


async def _synced(url: str, station=BUS, tariff=BUS_TARIFF) -> Store:
    store = await Store.open(url)
    await store.sync_station(station, tariff)
    return store


async def test_open_sessions_survive_closing_and_reopening_the_store(store_url):
    store = await _synced(store_url)
    a = await store.open_session("B01-1", T0, 1_000_000, "LZYTBGBW0N1000001", "CARD-7")
    b = await store.open_session("B02-2", T0 + 5, 2_000_000, None, None, vehicle_id="bus-12")
    await store.close()

    store = await _synced(store_url)
    try:
        found = await store.open_sessions()
        assert found == [
            SessionRecord(a, "B01-1", T0, 1_000_000, "LZYTBGBW0N1000001", "CARD-7", None),
            SessionRecord(b, "B02-2", T0 + 5, 2_000_000, None, None, "bus-12"),
        ]
    finally:
        await store.close()


KILL_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from controller.store import MeterSample, Store
    async def main(url, t0):
        store = await Store.open(url)
        sid = await store.open_session("B03-1", t0, 777_000, "VIN-KILLED", "CARD-1")
        await store.add_meter_samples([MeterSample("B03-1", t0 + i, 777_000 + 50 * i, 180.0, 40.0) for i in range(10)])
        print(sid, flush=True)
        await asyncio.sleep(60)   # killed here, store never closed
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
""")


async def test_an_open_session_is_found_after_kill_9(store_url):
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, store_url, repr(T0)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"child did not open a session: {line!r}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    store = await Store.open(store_url)
    try:
        [rec] = await store.open_sessions()
        assert (rec.id, rec.gun_id, rec.meter_start_wh, rec.vin) == (int(line), "B03-1", 777_000, "VIN-KILLED")
        samples = await store.meter_samples("B03-1", T0, T0 + 9)
        assert [s.energy_wh for s in samples] == [777_000 + 50 * i for i in range(10)]
        # and the session can be finished by the restarted controller
        bill = bill_session(BUS_TARIFF, "large_industrial", [(s.t_s, s.energy_wh) for s in samples])
        assert await store.close_session(rec.id, T0 + 9, 777_450, bill)
        assert await store.open_sessions() == []
    finally:
        await store.close()


async def test_close_is_idempotent_and_energy_is_meter_end_minus_start(store_url):
    store = await _synced(store_url)
    try:
        sid = await store.open_session("B01-2", T0, 12_345_678, None, "CARD-1")
        samples = [(T0, 12_345_678), (T0 + 3600, 12_345_678 + 61_234)]
        bill = bill_session(BUS_TARIFF, "large_industrial", samples)
        assert await store.close_session(sid, T0 + 3600, 12_345_678 + 61_234, bill) is True
        assert await store.close_session(sid, T0 + 3600, 12_345_678 + 61_234, bill) is False  # replay: no-op
        assert await store.close_session(sid, T0 + 9999, 99_999_999, bill) is False  # first close wins
        row = await store.get_session(sid)
        assert row["energy_wh"] == 61_234 and row["meter_end_wh"] == 12_345_678 + 61_234 and row["end_s"] == T0 + 3600
        assert row["bill"] == bill
        assert (row["electricity_cny"], row["service_cny"], row["total_cny"]) == (
            bill.electricity_cny, bill.service_cny, bill.total_cny)
        assert await store.open_sessions() == []
    finally:
        await store.close()


async def test_close_refuses_inconsistent_figures(store_url):
    store = await _synced(store_url)
    try:
        sid = await store.open_session("B01-1", T0, 1000, None, None)
        good = bill_session(BUS_TARIFF, "large_industrial", [(T0, 1000), (T0 + 60, 1500)])
        with pytest.raises(ValueError, match="bill has 500 Wh but the meter says 1600 - 1000 = 600 Wh"):
            await store.close_session(sid, T0 + 60, 1600, good)
        with pytest.raises(ValueError, match="below its start"):
            await store.close_session(sid, T0 + 60, 900, good)
        with pytest.raises(ValueError, match="before its start"):
            await store.close_session(sid, T0 - 60, 1500, good)
        with pytest.raises(UnknownSession):
            await store.close_session(sid + 100, T0 + 60, 1500, good)
        assert [r.id for r in await store.open_sessions()] == [sid]  # still open after the refusals
    finally:
        await store.close()


async def test_one_open_session_per_gun_and_a_replayed_open_gives_the_same_id(store_url):
    store = await _synced(store_url)
    try:
        sid = await store.open_session("B04-1", T0, 5000, "VIN", "CARD")
        assert await store.open_session("B04-1", T0, 5000, "VIN", "CARD") == sid
        with pytest.raises(OpenSessionExists) as e:
            await store.open_session("B04-1", T0 + 100, 5100, "VIN2", "CARD")
        assert e.value.session_id == sid
        assert len(await store.open_sessions()) == 1
        bill = bill_session(BUS_TARIFF, "large_industrial", [(T0, 5000), (T0 + 50, 5050)])
        await store.close_session(sid, T0 + 50, 5050, bill)
        second = await store.open_session("B04-1", T0 + 100, 5100, "VIN2", "CARD")  # the gun is free again
        assert second != sid
        with pytest.raises(ValueError, match="whole Wh"):
            await store.open_session("B05-1", T0, 10.5, None, None)
    finally:
        await store.close()


async def test_meter_samples_are_keyed_so_a_replay_adds_nothing(store_url):
    store = await _synced(store_url)
    try:
        rows = [MeterSample(f"B0{g}-1", T0 + i, 1000 * g + i, 60.0 + i, None if g == 2 else 50.0)
                for i in range(5) for g in (1, 2)]
        await store.add_meter_samples(rows)
        await store.add_meter_samples(rows)  # the same cycle written again after a retry
        await store.add_meter_samples(rows[:3] + [MeterSample("B01-1", T0 + 5, 1005, 65.0, 51.0)])
        got = await store.meter_samples("B01-1", T0 + 1, T0 + 5)  # both ends included
        assert [(s.t_s, s.energy_wh) for s in got] == [(T0 + i, 1000 + i) for i in range(1, 6)]
        assert (await store.meter_samples("B02-1", T0, T0))[0] == MeterSample("B02-1", T0, 2000, 60.0, None)
        assert len((await store.export_rows("meter", None, None))) == 11
        await store.add_meter_samples([])
    finally:
        await store.close()


async def test_stations_sharing_a_database_see_only_their_own(store_url):
    logistics = load_station(EXAMPLES / "logistics-station.toml")
    bus = await _synced(store_url)
    vans = await _synced(store_url, logistics, load_tariff(logistics.tariff))
    try:
        await bus.open_session("B01-1", T0, 10, None, None)
        gun = logistics.piles[0].gun_id(1)
        await vans.open_session(gun, T0, 20, None, None)
        assert [r.gun_id for r in await bus.open_sessions()] == ["B01-1"]
        assert [r.gun_id for r in await vans.open_sessions()] == [gun]
        await bus.sync_station(BUS, BUS_TARIFF)  # re-sync: idempotent
        prices = await bus.export_rows("prices", None, None)
        assert {(r["tariff"], r["category"], r["period"]) for r in prices} >= {
            ("Yunnan before 2024", "large_industrial", "valley"), ("Yunnan 2024", "large_industrial", "valley")}
        valley = [r for r in prices if r["tariff"] == "Yunnan before 2024" and r["category"] == "large_industrial"
                  and r["period"] == "valley"]
        assert len(valley) == 1 and valley[0]["cny_per_kwh"] == 0.225 and valley[0]["windows"] == "23:00-07:00"
        assert valley[0]["effective_to"] == "2023-12-31" and valley[0]["service_fee_cny_per_kwh"] == 0.6
    finally:
        await bus.close()
        await vans.close()


async def test_faults_open_and_clear_from_events(store_url):
    store = await _synced(store_url)
    try:
        await store.add_event(T0, "fault", "B01-1", {"code": "over_temperature", "temperature_c": 78.5})
        await store.add_event(T0 + 1, "fault", "B01-1", {"code": "over_temperature"})  # still the same fault
        await store.add_event(T0 + 2, "auth_refused", "B02-1", {"id_token": "CARD-X"})
        await store.add_event(T0 + 30, "fault_cleared", "B01-1", {"code": "over_temperature"})
        faults = await store.export_rows("faults", None, None)
        assert [(f["subject"], f["code"], f["start_s"], f["end_s"]) for f in faults] == [
            ("B01-1", "over_temperature", T0, T0 + 30)]
        evs = await store.export_rows("events", T0 + 1, T0 + 30)  # --to is exclusive
        assert [e["kind"] for e in evs] == ["fault", "auth_refused"]
        assert evs[1]["detail"] == '{"id_token": "CARD-X"}'
        with pytest.raises(ValueError):
            await store.add_event(T0, "", "B01-1")
    finally:
        await store.close()


async def test_writes_before_a_sync_go_to_a_default_station(tmp_path):
    store = await Store.open(tmp_path / "plain.db")  # a plain path is an SQLite file
    try:
        sid = await store.open_session("G1", T0, 0, None, None)
        await store.add_event(T0, "online", "G1")
        assert [r.id for r in await store.open_sessions()] == [sid]
        assert (await store.export_rows("events", None, None))[0]["station"] == "default"
    finally:
        await store.close()
    assert (tmp_path / "plain.db").exists()


@pytest.mark.parametrize("url, reason", [
    ("/nonexistent-dir/x.db", "directory '/nonexistent-dir' does not exist"),
    ("mysql://user@host/db", "unsupported database kind 'mysql'"),
    ("postgresql://postgres@127.0.0.1:1/nothing", "cannot open postgresql+asyncpg://postgres@127.0.0.1:1/nothing"),
    ("sqlite:///x.db?schema=a", "?schema= is for PostgreSQL"),
    ("", "empty database URL"),
])
async def test_a_database_that_cannot_be_opened_is_one_clear_line(url, reason):
    with pytest.raises(InputError) as e:
        await Store.open(url)
    assert e.value.source == "--db" and reason in e.value.line() and "\n" not in e.value.line()


async def test_a_file_that_is_not_a_database(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(InputError, match="file is not a database"):
        await Store.open(bad)
    with pytest.raises(InputError, match="no such database file"):
        await Store.open(tmp_path / "missing.db", create=False)
