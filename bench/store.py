"""Store bench: one control cycle's meter samples (200 guns) in one batched insert, and billing.

    .venv/bin/python bench/store.py            # SQLite file (+ PostgreSQL if EVSTACK_TEST_DATABASE_URL is set)

Prints medians with the target beside them, and the ratio to a baseline measured in the same
run: the same 200 rows written with the stdlib sqlite3 module (executemany + commit, same
pragmas, same table), i.e. what SQLAlchemy + aiosqlite cost on top of SQLite itself.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.billing import bill_session  # noqa: E402
from controller.store import MeterSample, Store  # noqa: E402
from hw_profiles.tariff import load_tariff  # noqa: E402

GUNS = 200
CYCLES = 300
T0 = 1_700_000_000.0
TARGET_MS = 5.0


def _rows(cycle: int) -> list[MeterSample]:
    return [MeterSample(f"P{g // 2:03d}-{g % 2 + 1}", T0 + cycle, 1_000_000 + 50 * cycle + g, 180.0, 50.0)
            for g in range(GUNS)]


async def bench_store(url: str) -> float:
    store = await Store.open(url)
    try:
        await store.add_meter_samples(_rows(-1))  # warm-up: tables, station row, statement cache
        times = []
        for c in range(CYCLES):
            rows = _rows(c)
            t = time.perf_counter()
            await store.add_meter_samples(rows)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000
    finally:
        if "schema=" in url:
            await store.drop_all()
        await store.close()


def bench_sqlite3(path: Path) -> float:
    con = sqlite3.connect(path)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        con.execute(f"PRAGMA {pragma}")
    con.execute("CREATE TABLE meter_samples (station_id INTEGER NOT NULL, gun_id VARCHAR(64) NOT NULL, "
                "t_s FLOAT NOT NULL, energy_wh BIGINT NOT NULL, power_kw FLOAT, soc_pct FLOAT, "
                "PRIMARY KEY (station_id, gun_id, t_s)) WITHOUT ROWID")
    con.execute("CREATE INDEX ix_t ON meter_samples (t_s)")
    times = []
    for c in range(CYCLES):
        rows = [(1, r.gun_id, r.t_s, r.energy_wh, r.power_kw, r.soc_pct) for r in _rows(c)]
        t = time.perf_counter()
        con.executemany("INSERT INTO meter_samples VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", rows)
        con.commit()
        times.append(time.perf_counter() - t)
    con.close()
    return statistics.median(times) * 1000


def bench_bill() -> float:
    tariff = load_tariff("yunnan-pre2024")
    samples = [(T0 + i, 1_000_000 + 17 * i) for i in range(8 * 3600)]  # 8 h at 1 Hz
    times = []
    for _ in range(7):
        t = time.perf_counter()
        bill_session(tariff, "large_industrial", samples)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = bench_sqlite3(Path(tmp) / "baseline.db")
        ours = asyncio.run(bench_store(f"sqlite+aiosqlite:///{tmp}/evstack.db"))
        print(f"add_meter_samples, {GUNS} rows, SQLite file (WAL): median {ours:.2f} ms "
              f"(target < {TARGET_MS:g} ms; 1 Hz cycle budget 1000 ms)")
        print(f"  baseline stdlib sqlite3 executemany+commit, same rows: median {base:.2f} ms; ratio {ours / base:.1f}x")
    pg = os.environ.get("EVSTACK_TEST_DATABASE_URL")
    if pg:
        url = f"{pg}{'&' if '?' in pg else '?'}schema=evstack_bench_{uuid.uuid4().hex[:8]}"
        ours_pg = asyncio.run(bench_store(url))
        print(f"add_meter_samples, {GUNS} rows, PostgreSQL (asyncpg, loopback): median {ours_pg:.2f} ms "
              f"(target < {2 * TARGET_MS:g} ms)")
    else:
        print("PostgreSQL: skipped (EVSTACK_TEST_DATABASE_URL not set)")
    print(f"bill_session, 8 h at 1 Hz (28,800 samples): median {bench_bill():.1f} ms (target < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
