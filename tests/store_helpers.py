"""Helpers for the store and billing tests: local times, and a database per test.

``store_url`` is a fixture (import it into a test module) giving a fresh database URL: an SQLite
file in the test's tmp dir, and, when ``EVSTACK_TEST_DATABASE_URL`` is set (``.ci/run`` sets it
when PostgreSQL answers), the same tests again on PostgreSQL in a schema of their own
(``?schema=evstack_test_<random>``), dropped afterwards, so reruns and parallel runs never meet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid

import pytest

PG_URL = os.environ.get("EVSTACK_TEST_DATABASE_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="EVSTACK_TEST_DATABASE_URL is not set (no PostgreSQL to test against)")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=needs_pg)]


def local_ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: float = 0) -> float:
    """POSIX seconds of a naive local wall time (as the tariff reads it)."""
    return dt.datetime(year, month, day, hour, minute).timestamp() + second


def pg_url_with_schema(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


def _drop(url: str) -> None:
    from controller.store import Store

    async def drop():
        store = await Store.open(url)
        try:
            await store.drop_all()
        finally:
            await store.close()

    asyncio.run(drop())


@pytest.fixture(params=BACKENDS)
def store_url(request, tmp_path):
    """A fresh database URL per test (SQLite file; PostgreSQL schema when configured)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'evstack.db'}"
        return
    url = pg_url_with_schema(f"evstack_test_{uuid.uuid4().hex[:12]}")
    yield url
    _drop(url)  # sync test or async test, the loop of the test is gone by now
