"""Retention: old meter samples thinned to one a minute (the last), old rows expired, open kept."""

from __future__ import annotations

import dataclasses
import datetime as dt

from controller.billing import bill_session
from controller.store import MeterSample, Store
from helpers import EXAMPLES
from hw_profiles.station import load_station
from hw_profiles.tariff import load_tariff
from store_helpers import local_ts, store_url  # noqa: F401  (fixture)

# Sessions of 2023: billed under the tariff in force then (the example depot now uses yunnan-2024).
BUS = dataclasses.replace(load_station(EXAMPLES / "bus-depot.toml"), tariff="yunnan-pre2024")
TARIFF = load_tariff(BUS.tariff)
HOUR = 3600.0


async def test_downsampling_keeps_the_last_sample_of_each_minute_and_recent_ones_whole(store_url):
    store = await Store.open(store_url)
    await store.sync_station(BUS, TARIFF)
    try:
        t0 = 1_699_999_980.0  # a multiple of 60 s: minutes of POSIX time start here
        # 3 h of a 36 kW session sampled every 2 s (10 Wh per sample), plus a second gun
        rows = [MeterSample("B01-1", t0 + 2 * i, 500_000 + 20 * i, 36.0, 20 + i / 540) for i in range(5400)]
        rows += [MeterSample("B02-1", t0 + 30 * i, 9_000 + i, 1.0) for i in range(360)]
        for k in range(0, len(rows), 1000):
            await store.add_meter_samples(rows[k:k + 1000])
        sid = await store.open_session("B01-1", t0, 500_000, None, None)
        end = rows[5399]
        await store.close_session(sid, end.t_s, end.energy_wh,
                                  bill_session(TARIFF, "large_industrial", [(t0, 500_000), (end.t_s, end.energy_wh)]))
        now = t0 + 3 * HOUR
        counts = await store.compact(now, full_resolution_s=HOUR, bucket_s=60)
        kept = await store.meter_samples("B01-1", t0, now)
        old = [s for s in kept if s.t_s < now - HOUR]
        recent = [s for s in kept if s.t_s >= now - HOUR]
        assert len(old) == 120  # two hours, one per minute
        assert [s.t_s for s in old] == [t0 + 60 * m + 58 for m in range(120)]  # the last sample of each minute
        by_t = {r.t_s: r for r in rows}
        assert all(s == by_t[s.t_s] for s in old)  # real readings, not averages
        assert len(recent) == 1800  # the last hour untouched
        other = await store.meter_samples("B02-1", t0, now)
        assert len(other) == 120 + 120  # 2 per minute: thinned to 1 for the first 2 h, whole for the last
        assert counts["downsampled_samples"] == (3600 - 120) + (240 - 120)
        # the session's energy is still exactly meter_end - meter_start, and the samples agree
        assert (await store.get_session(sid))["energy_wh"] == end.energy_wh - 500_000 == kept[-1].energy_wh - 500_000
        again = await store.compact(now, full_resolution_s=HOUR, bucket_s=60)
        assert again["downsampled_samples"] == 0
        later = await store.compact(now + HOUR, full_resolution_s=HOUR, bucket_s=60)  # the next hour, incrementally
        assert later["downsampled_samples"] == 1800 - 60 + 120 - 60
        assert len(await store.meter_samples("B01-1", t0, now)) == 180
    finally:
        await store.close()


async def test_retention_expires_old_rows_but_never_open_sessions_or_young_prices(store_url):
    store = await Store.open(store_url)
    await store.sync_station(BUS, TARIFF)
    old_tariff = dataclasses.replace(TARIFF, name="Yunnan 2010", effective_from=dt.date(2010, 1, 1),
                                     effective_to=dt.date(2015, 12, 31))
    other = await Store.open(store_url)
    try:
        # a tariff that ended long ago, referenced by nothing: synced by a station that then moved on
        await other.sync_station(dataclasses.replace(BUS, name="old depot"), old_tariff)
        await other.sync_station(dataclasses.replace(BUS, name="old depot"), TARIFF)
        now = local_ts(2026, 1, 1)
        ancient = now - 3 * 366 * 86400
        fresh = now - 10 * 86400
        old_open = await store.open_session("B01-1", ancient, 0, None, None)  # never closed: kept
        old_done = await store.open_session("B02-1", ancient, 0, None, None)
        await store.close_session(old_done, ancient + 60, 100,
                                  bill_session(TARIFF, "large_industrial", [(ancient, 0), (ancient + 60, 100)]))
        young = await store.open_session("B03-1", fresh, 0, None, None)
        await store.close_session(young, fresh + 60, 100,
                                  bill_session(TARIFF, "large_industrial", [(fresh, 0), (fresh + 60, 100)]))
        await store.add_meter_samples([MeterSample("B01-1", ancient, 0, 1.0), MeterSample("B01-1", fresh, 5, 1.0)])
        await store.add_event(ancient, "offline", "B01")
        await store.add_event(fresh, "online", "B01")
        await store.add_event(ancient, "fault", "B01-1", {"code": "E1"})
        await store.add_event(ancient + 5, "fault_cleared", "B01-1", {"code": "E1"})
        await store.add_event(ancient, "fault", "B02-1", {"code": "E2"})  # still active: kept
        counts = await store.compact(now)
        assert counts["expired_sessions"] == 1 and counts["expired_samples"] == 1 and counts["expired_events"] == 4
        assert counts["expired_faults"] == 1
        assert {r["session_id"] for r in await store.export_rows("sessions", None, None)} == {old_open, young}
        assert [r.id for r in await store.open_sessions()] == [old_open]
        assert [e["kind"] for e in await store.export_rows("events", None, None)] == ["online"]
        assert [f["code"] for f in await store.export_rows("faults", None, None)] == ["E2"]
        # prices of the tariff that ended in 2015 are gone; the station's current ones stay
        assert counts["expired_prices"] == 9
        tariffs = {r["tariff"] for r in await store.export_rows("prices", None, None)}
        assert tariffs == {"Yunnan before 2024"}
    finally:
        await store.close()
        await other.close()
