"""`evstack export`: CSV content checked cell by cell; bad input is one line and exit 2."""

from __future__ import annotations

import dataclasses

import asyncio
import csv
import io

import pytest

from controller.billing import bill_session
from controller.store import MeterSample, Store, export_columns
from evstack.cli import main
from helpers import EXAMPLES
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff
from store_helpers import local_ts, store_url  # noqa: F401  (fixture)

# Sessions of 2023: billed under the tariff in force then (the example depot now uses yunnan-2024).
BUS = dataclasses.replace(load_station(EXAMPLES / "bus-depot.toml"), tariff="yunnan-pre2024")
TARIFF = load_tariff(BUS.tariff)


async def _fill(url: str) -> dict:
    store = await Store.open(url)
    try:
        await store.sync_station(BUS, TARIFF)
        t0 = local_ts(2023, 11, 6, 22, 40)  # 30 kWh to 23:10: 20 peak, 10 valley
        s1 = await store.open_session("B01-1", t0, 1_000_000, "LZYTBGBW0N1000001", "CARD-7", "bus-101")
        samples = [(t0, 1_000_000), (t0 + 1800, 1_030_000)]
        await store.add_meter_samples([MeterSample("B01-1", t, e, 60.0, 55.5) for t, e in samples])
        bill = bill_session(TARIFF, BUS.price_category.value, samples)
        await store.close_session(s1, t0 + 1800, 1_030_000, bill)
        s2 = await store.open_session("B02-1", local_ts(2023, 11, 7, 1, 0), 42, None, None)  # still open
        await store.open_session("B03-1", local_ts(2023, 11, 8, 1, 0), 7, None, None)  # outside --to
        await store.add_event(t0, "auth_refused", "B04-1", {"id_token": "CARD-X", "reason": "not on the list"})
        return {"t0": t0, "s1": s1, "s2": s2, "bill": bill}
    finally:
        await store.close()


def _read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_sessions_csv_carries_the_bill_split(store_url, tmp_path):
    info = asyncio.run(_fill(store_url))
    out = tmp_path / "sessions.csv"
    code = main(["export", "--db", store_url, "--what", "sessions", "--from", "2023-11-06", "--to", "2023-11-08",
                 "--format", "csv", "--out", str(out)])
    assert code == 0
    rows = _read(out)
    assert list(rows[0]) == list(export_columns("sessions"))
    assert [int(r["session_id"]) for r in rows] == [info["s1"], info["s2"]]
    closed, open_ = rows
    assert closed["status"] == "closed" and open_["status"] == "open"
    assert closed["start"] == "2023-11-06T22:40:00" and float(closed["start_s"]) == info["t0"]
    assert closed["end"] == "2023-11-06T23:10:00" and float(closed["end_s"]) == info["t0"] + 1800
    assert (closed["meter_start_wh"], closed["meter_end_wh"], closed["energy_wh"]) == ("1000000", "1030000", "30000")
    assert (closed["vin"], closed["id_token"], closed["vehicle_id"]) == ("LZYTBGBW0N1000001", "CARD-7", "bus-101")
    assert closed["tariff"] == "Yunnan before 2024" and closed["price_category"] == "large_industrial"
    # by hand: 20 kWh peak x 0.675 = 13.5, 10 kWh valley x 0.225 = 2.25; service 30 x 0.60 = 18
    assert float(closed["energy_kwh_peak"]) == pytest.approx(20.0)
    assert float(closed["energy_kwh_valley"]) == pytest.approx(10.0)
    assert float(closed["energy_kwh_flat"]) == 0.0 and float(closed["energy_kwh_critical_peak"]) == 0.0
    assert float(closed["electricity_cny_peak"]) == pytest.approx(13.5)
    assert float(closed["electricity_cny_valley"]) == pytest.approx(2.25)
    assert (closed["electricity_cny"], closed["service_cny"], closed["total_cny"]) == ("15.75", "18.0", "33.75")
    assert open_["end"] == "" and open_["energy_wh"] == "" and open_["total_cny"] == ""


def test_meter_events_and_prices_csv(store_url, tmp_path, capsys):
    info = asyncio.run(_fill(store_url))
    assert main(["export", "--db", store_url, "--what", "meter"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [(r["gun_id"], r["t"], r["energy_wh"], r["soc_pct"]) for r in rows] == [
        ("B01-1", "2023-11-06T22:40:00", "1000000", "55.5"), ("B01-1", "2023-11-06T23:10:00", "1030000", "55.5")]
    assert "2 meter row(s)" in captured.err

    out = tmp_path / "events.csv"
    assert main(["export", "--db", store_url, "--what", "events", "--from", str(info["t0"]), "--out", str(out)]) == 0
    [ev] = _read(out)
    assert (ev["kind"], ev["subject"], ev["station"]) == ("auth_refused", "B04-1", "Qujing Xiping bus depot")
    assert ev["detail"] == '{"id_token": "CARD-X", "reason": "not on the list"}'

    assert main(["export", "--db", store_url, "--what", "prices", "--out", str(out)]) == 0
    prices = {(r["category"], r["period"]): r for r in _read(out)}
    assert len(prices) == 9
    assert prices[("large_industrial", "peak")]["cny_per_kwh"] == "0.675"
    assert prices[("large_industrial", "peak")]["windows"] == "09:00-12:00 18:00-23:00"
    # a window with no price in force: the pre-2024 tariff ended 2023-12-31
    assert main(["export", "--db", store_url, "--what", "prices", "--from", "2024-06-01", "--out", str(out)]) == 0
    assert _read(out) == []
    assert out.read_text().startswith("tariff,category,period,")  # the header even with no rows


@pytest.mark.parametrize("argv, message", [
    (["--db", "{tmp}/missing.db", "--what", "sessions"], "--db: {tmp}/missing.db: no such database file"),
    (["--db", "postgresql://postgres@127.0.0.1:1/x", "--what", "meter"], "--db: cannot open postgresql+asyncpg://"),
    (["--db", "{tmp}/ok.db", "--what", "meter", "--from", "yesterday"], "--from: 'yesterday' is not a time"),
    (["--db", "{tmp}/ok.db", "--what", "meter", "--from", "2024-02-01", "--to", "2024-01-01"], "--to: '2024-01-01' is not after"),
    (["--db", "{tmp}/ok.db", "--what", "meter", "--out", "{tmp}/no/such/dir.csv"], "cannot write"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    asyncio.run(_fill(f"{tmp_path}/ok.db"))
    code = main(["export", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert err.count("\n") == 1 and "Traceback" not in err
