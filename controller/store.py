"""The controller's store: stations, piles, guns, tariffs and prices, charging sessions, meter
samples, faults and events. The only module of evstack that imports SQLAlchemy.

SQLite file by default (WAL, so an exporter can read while the controller writes), PostgreSQL
by URL. All times are POSIX seconds given by the caller (the store never reads a clock);
energies are the pile's meter register in Wh (integers, exact).

Nothing lost, nothing counted twice:
- every call is its own committed transaction, so after a ``kill -9`` an opened session is in
  the file and :meth:`Store.open_sessions` finds it;
- a gun has at most one open session (a partial unique index); :meth:`Store.open_session`
  replayed with the same start returns the same id;
- :meth:`Store.close_session` is idempotent and stores ``energy_wh = meter_end - meter_start``;
- meter samples are keyed by (station, gun, t_s): adding one again does nothing.

See docs/store.md for the schema, retention and sizing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from sqlalchemy import (
    BigInteger, Boolean, Column, Date, Double, ForeignKey, Index, Integer, MetaData,
    PrimaryKeyConstraint, String, Table, Text, UniqueConstraint, and_, cast, delete, event, exists,
    func, insert, inspect, select, text, true, update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from hw_profiles.errors import InputError
from hw_profiles.specs import StationSpec
from hw_profiles.tariff import PERIODS, Tariff

from .billing import Bill

SCHEMA_VERSION = 1
DEFAULT_URL = "sqlite+aiosqlite:///evstack.db"
DEFAULT_STATION = "default"
"""Station name used for writes made before :meth:`Store.sync_station` binds the store."""
EXPORT_KINDS = ("sessions", "meter", "prices", "events", "faults")
OPEN_TIMEOUT_S = 30.0

metadata = MetaData()

tariffs = Table(
    "tariffs", metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(300), nullable=False, unique=True),  # name|effective_from
    Column("name", String(200), nullable=False),
    Column("source", String(500)),
    Column("note", Text),
    Column("currency", String(8), nullable=False),
    Column("service_fee_cny_per_kwh", Double, nullable=False),
    Column("effective_from", Date),
    Column("effective_to", Date),
    Column("seasons_json", Text, nullable=False),  # seasons and their windows, for exports
)

prices = Table(
    "prices", metadata,
    Column("id", Integer, primary_key=True),
    Column("tariff_id", Integer, ForeignKey("tariffs.id", ondelete="CASCADE"), nullable=False),
    Column("category", String(40), nullable=False),
    Column("period", String(20), nullable=False),
    Column("cny_per_kwh", Double, nullable=False),
    Column("effective_from", Date),
    Column("effective_to", Date),
    UniqueConstraint("tariff_id", "category", "period"),
)

stations = Table(
    "stations", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("kind", String(40)),
    Column("site_limit_kw", Double),
    Column("price_category", String(40)),
    Column("public", Boolean),
    Column("tariff_id", Integer, ForeignKey("tariffs.id")),
)

piles = Table(
    "piles", metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("pile_id", String(64), nullable=False),
    Column("model", String(200)),
    Column("pile_class", String(40)),
    Column("host", String(200)),
    Column("port", Integer),
    Column("unit_id", Integer),
    Column("feeder", String(64)),
    Column("max_output_kw", Double),
    UniqueConstraint("station_id", "pile_id"),
)

guns = Table(
    "guns", metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("pile_id", String(64), nullable=False),
    Column("gun_id", String(64), nullable=False),
    Column("gun_no", Integer, nullable=False),
    Column("kind", String(4)),
    Column("rated_kw", Double),
    Column("min_kw", Double),
    UniqueConstraint("station_id", "gun_id"),
)

sessions = Table(
    "sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("gun_id", String(64), nullable=False),
    Column("start_s", Double, nullable=False),
    Column("end_s", Double),  # NULL while open
    Column("meter_start_wh", BigInteger, nullable=False),
    Column("meter_end_wh", BigInteger),
    Column("energy_wh", BigInteger),  # meter_end_wh - meter_start_wh, exactly
    Column("vin", String(32)),
    Column("id_token", String(200)),
    Column("vehicle_id", String(200)),
    Column("price_category", String(40)),
    Column("tariff_id", Integer, ForeignKey("tariffs.id")),
    Column("electricity_cny", Double),
    Column("service_cny", Double),
    Column("total_cny", Double),
    Column("bill_json", Text),  # the whole Bill, by-period maps included
    Index("ix_sessions_start", "start_s"),
    Index("uq_sessions_open_gun", "station_id", "gun_id", unique=True,
          sqlite_where=text("end_s IS NULL"), postgresql_where=text("end_s IS NULL")),
)

meter_samples = Table(
    "meter_samples", metadata,
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("gun_id", String(64), nullable=False),
    Column("t_s", Double, nullable=False),
    Column("energy_wh", BigInteger, nullable=False),
    Column("power_kw", Double),
    Column("soc_pct", Double),
    PrimaryKeyConstraint("station_id", "gun_id", "t_s"),
    Index("ix_meter_samples_t", "t_s"),
    sqlite_with_rowid=False,
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("t_s", Double, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("detail_json", Text),
    Index("ix_events_t", "t_s"),
)

faults = Table(
    "faults", metadata,
    Column("id", Integer, primary_key=True),
    Column("station_id", Integer, ForeignKey("stations.id"), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("code", String(64), nullable=False),
    Column("start_s", Double, nullable=False),
    Column("end_s", Double),  # NULL while active
    Column("detail_json", Text),
    Index("ix_faults_start", "start_s"),
)

store_meta = Table(
    "evstack_meta", metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)


@dataclass(frozen=True)
class MeterSample:
    """One reading of a gun's meter: ``energy_wh`` is the register (Wh), ``t_s`` POSIX seconds."""

    gun_id: str
    t_s: float
    energy_wh: int
    power_kw: float
    soc_pct: float | None = None


@dataclass(frozen=True)
class SessionRecord:
    """An open charging session as the store holds it (times POSIX s, meter Wh)."""

    id: int
    gun_id: str
    start_s: float
    meter_start_wh: int
    vin: str | None
    id_token: str | None
    vehicle_id: str | None


class StoreError(Exception):
    """A call that the store's invariants refuse (a caller's bug, not a user's input)."""


class OpenSessionExists(StoreError, ValueError):
    """The gun already has an open session that started at another time or meter reading."""

    def __init__(self, gun_id: str, session_id: int) -> None:
        self.gun_id = gun_id
        self.session_id = session_id
        super().__init__(f"gun {gun_id} already has open session {session_id}; close it first")


class UnknownSession(StoreError, LookupError):
    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id}")


def iso_local(t_s: float | None) -> str:
    """POSIX seconds as an ISO local datetime (the tariff's wall time), to the second."""
    if t_s is None:
        return ""
    return dt.datetime.fromtimestamp(t_s).isoformat(timespec="seconds")


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _reason(exc: BaseException) -> str:
    """The useful one-line reason of a driver error, without SQLAlchemy's wrapping."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"no answer within {OPEN_TIMEOUT_S:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() and exc.strerror[1:2].islower() else exc.strerror
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # asyncpg puts the class in front of the text: keep just the text
    return msg.split("> ", 1)[-1] if msg.startswith("<class") else msg


def _normalize_url(url: str | os.PathLike | None) -> tuple[URL, str | None]:
    """The async SQLAlchemy URL for ``url`` and the PostgreSQL schema asked for (``?schema=``)."""
    raw = DEFAULT_URL if url is None else os.fspath(url)
    if not raw.strip():
        raise InputError("--db", None, "empty database URL")
    if "://" not in raw:  # a plain path: an SQLite file
        return URL.create("sqlite+aiosqlite", database=raw), None
    try:
        u = make_url(raw)
    except ArgumentError:
        raise InputError("--db", None, f"{raw!r} is not a database URL (e.g. evstack.db, "
                         "sqlite:///path.db, postgresql://user@host:5432/db)") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql", "postgres"):
        raise InputError("--db", None, f"unsupported database kind {backend!r} in {u.render_as_string(hide_password=True)!r} "
                         "(use an SQLite file or a postgresql:// URL)")
    if backend == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres") and "+" not in u.drivername:  # no driver named: asyncpg
        u = u.set(drivername="postgresql+asyncpg")
    schema = u.query.get("schema")
    if schema is not None:
        if isinstance(schema, tuple):
            schema = schema[-1]
        if backend == "sqlite":
            raise InputError("--db", None, "?schema= is for PostgreSQL URLs, not SQLite")
        u = u.difference_update_query(["schema"])
    return u, schema


class Store:
    """Async access to the evstack database. Open with ``await Store.open(url)``.

    A store is bound to one station by :meth:`sync_station`; sessions, samples and events are
    then that station's (several controllers may share one PostgreSQL database). Before the
    first sync, writes go to a station named ``default`` and reads see every station.
    """

    def __init__(self, engine: AsyncEngine, shown_url: str, schema: str | None) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self.url = shown_url
        self.schema = schema
        self._station_id: int | None = None
        self._station_name: str | None = None
        self._tariff_id: int | None = None
        self._price_category: str | None = None

    # ---- opening and closing -------------------------------------------------------------
    @classmethod
    async def open(cls, url: str | os.PathLike | None = None, *, create: bool = True) -> "Store":
        """Open (and with ``create``, make) the database at ``url``.

        ``url``: ``None`` -> ``sqlite+aiosqlite:///evstack.db``; a plain path -> that SQLite
        file; ``sqlite:///...`` and ``postgresql://...`` get their async drivers
        (aiosqlite, asyncpg); ``?schema=NAME`` on a PostgreSQL URL keeps the tables in that
        schema (created if missing). ``create=False`` (exports) refuses a missing SQLite file
        or a database without evstack's tables instead of making them.
        Raises ``InputError("--db", None, reason)`` when the database cannot be opened.
        """
        u, schema = _normalize_url(url)
        shown = u.render_as_string(hide_password=True) + (f" (schema {schema})" if schema else "")
        backend = u.get_backend_name()
        kwargs: dict[str, Any] = {}
        if backend == "sqlite":
            db = u.database or ""
            if db in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared connection, or each would see its own empty DB
            else:
                path = Path(db)
                if not create and not path.exists():
                    raise InputError("--db", None, f"{db}: no such database file")
                if path.is_dir():
                    raise InputError("--db", None, f"{db}: is a directory, expected a database file")
                if not path.parent.exists():
                    raise InputError("--db", None, f"{db}: directory {str(path.parent)!r} does not exist")
        elif u.drivername == "postgresql+asyncpg" and "timeout" not in u.query:
            kwargs["connect_args"] = {"timeout": 10}
        try:
            engine = create_async_engine(u, **kwargs)
        except NoSuchModuleError:
            raise InputError("--db", None, f"{shown}: unknown database kind {u.drivername!r} "
                             "(use an SQLite file or postgresql://...)") from None
        except (ArgumentError, ImportError, TypeError, ValueError) as e:
            raise InputError("--db", None, f"{shown}: {_reason(e)}") from None
        if backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        store = cls(engine, shown, schema)
        try:
            await asyncio.wait_for(store._prepare(create), OPEN_TIMEOUT_S)
        except InputError:
            await engine.dispose()
            raise
        except Exception as e:  # noqa: BLE001 - any failure to open is the URL's problem, said in one line
            await engine.dispose()
            raise InputError("--db", None, f"cannot open {shown}: {_reason(e)}") from None
        return store

    async def _prepare(self, create: bool) -> None:
        async with self._engine.begin() as conn:
            if self.schema:
                quoted = conn.dialect.identifier_preparer.quote_schema(self.schema)
                if create:
                    await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            if create:
                await conn.run_sync(metadata.create_all)
                await conn.execute(_upsert(self._dialect, store_meta, {"key": "schema_version", "value": str(SCHEMA_VERSION)}, ["key"], ["value"]))
            else:
                names = await conn.run_sync(lambda c: set(inspect(c).get_table_names(schema=self.schema)))
                missing = sorted(t.name for t in metadata.sorted_tables if t.name not in names)
                if missing:
                    raise InputError("--db", None, f"{self.url}: not an evstack database (missing tables: {', '.join(missing)})")

    async def close(self) -> None:
        await self._engine.dispose()

    async def drop_all(self) -> None:
        """Drop evstack's tables (and the ``?schema=`` schema, if any): for tests and scratch databases."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            if self.schema:
                quoted = conn.dialect.identifier_preparer.quote_schema(self.schema)
                await conn.execute(text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))

    async def __aenter__(self) -> "Store":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- station, tariff, prices ---------------------------------------------------------
    async def sync_station(self, station: StationSpec, tariff: Tariff) -> None:
        """Upsert the station, its piles and guns, its tariff and the tariff's prices, and bind
        this store to the station. Piles and guns no longer in the station file are dropped
        (sessions and samples keep their gun ids)."""
        async with self._engine.begin() as conn:
            tariff_id = await self._upsert_tariff(conn, tariff)
            values = {"kind": station.kind.value, "site_limit_kw": station.site_limit_kw,
                      "price_category": station.price_category.value, "public": station.public,
                      "tariff_id": tariff_id}
            sid = await conn.scalar(select(stations.c.id).where(stations.c.name == station.name))
            if sid is None:
                res = await conn.execute(insert(stations).values(name=station.name, **values))
                sid = res.inserted_primary_key[0]
            else:
                await conn.execute(update(stations).where(stations.c.id == sid).values(**values))
            await conn.execute(delete(guns).where(guns.c.station_id == sid))
            await conn.execute(delete(piles).where(piles.c.station_id == sid))
            await conn.execute(insert(piles), [
                {"station_id": sid, "pile_id": p.id, "model": p.spec.model, "pile_class": p.spec.pile_class.value,
                 "host": p.host, "port": p.port, "unit_id": p.unit_id, "feeder": p.feeder,
                 "max_output_kw": p.spec.max_output_kw}
                for p in station.piles])
            await conn.execute(insert(guns), [
                {"station_id": sid, "pile_id": p.id, "gun_id": p.gun_id(no), "gun_no": no,
                 "kind": g.kind.value, "rated_kw": g.rated_kw, "min_kw": g.min_kw}
                for p, no, g in station.guns()])
        self._station_id = sid
        self._station_name = station.name
        self._tariff_id = tariff_id
        self._price_category = station.price_category.value

    async def _upsert_tariff(self, conn: AsyncConnection, tariff: Tariff) -> int:
        key = f"{tariff.name}|{tariff.effective_from.isoformat() if tariff.effective_from else ''}"
        seasons = [{"name": s.name, "months": sorted(s.months),
                    "windows": [{"period": w.period, "start": _hhmm(w.start_min), "end": _hhmm(w.end_min)}
                                for w in s.windows]} for s in tariff.seasons]
        values = {"name": tariff.name, "source": tariff.source, "note": tariff.note, "currency": tariff.currency,
                  "service_fee_cny_per_kwh": tariff.service_fee_cny_per_kwh,
                  "effective_from": tariff.effective_from, "effective_to": tariff.effective_to,
                  "seasons_json": json.dumps(seasons)}
        tid = await conn.scalar(select(tariffs.c.id).where(tariffs.c.key == key))
        if tid is None:
            tid = (await conn.execute(insert(tariffs).values(key=key, **values))).inserted_primary_key[0]
        else:
            await conn.execute(update(tariffs).where(tariffs.c.id == tid).values(**values))
            await conn.execute(delete(prices).where(prices.c.tariff_id == tid))
        await conn.execute(insert(prices), [
            {"tariff_id": tid, "category": cat, "period": period, "cny_per_kwh": price,
             "effective_from": tariff.effective_from, "effective_to": tariff.effective_to}
            for cat, table in tariff.prices.items() for period, price in table.items()])
        return tid

    async def _station(self, conn: AsyncConnection) -> int:
        """The bound station's id; before a sync, the ``default`` station (made on first use)."""
        if self._station_id is not None:
            return self._station_id
        sid = await conn.scalar(select(stations.c.id).where(stations.c.name == DEFAULT_STATION))
        if sid is None:  # insert-or-ignore: another writer may be making it at the same moment
            await conn.execute(_insert_ignore(self._dialect, stations).values(name=DEFAULT_STATION))
            sid = await conn.scalar(select(stations.c.id).where(stations.c.name == DEFAULT_STATION))
        return sid

    def _scope(self, column):
        """Restrict reads to the bound station (all stations before a sync)."""
        return column == self._station_id if self._station_id is not None else true()

    # ---- sessions ------------------------------------------------------------------------
    async def open_session(self, gun_id: str, start_s: float, meter_start_wh: int, vin: str | None,
                           id_token: str | None, vehicle_id: str | None = None) -> int:
        """Record a session start (committed before returning) and give its id.

        Replaying the same start (same gun, ``start_s`` and ``meter_start_wh``) returns the
        same id. Raises :class:`OpenSessionExists` if the gun has another open session.
        """
        start_s = float(start_s)
        if not math.isfinite(start_s):
            raise ValueError(f"start_s must be finite, got {start_s!r}")
        meter_start_wh = _wh(meter_start_wh, "meter_start_wh")
        try:
            async with self._engine.begin() as conn:
                sid = await self._station(conn)
                res = await conn.execute(insert(sessions).values(
                    station_id=sid, gun_id=gun_id, start_s=start_s, meter_start_wh=meter_start_wh, vin=vin,
                    id_token=id_token, vehicle_id=vehicle_id, price_category=self._price_category,
                    tariff_id=self._tariff_id))
                return int(res.inserted_primary_key[0])
        except IntegrityError:
            pass
        for rec in await self.open_sessions():
            if rec.gun_id == gun_id:
                if rec.start_s == start_s and rec.meter_start_wh == meter_start_wh:
                    return rec.id
                raise OpenSessionExists(gun_id, rec.id)
        raise StoreError(f"could not open a session on gun {gun_id} (integrity error, no open session found)")

    async def close_session(self, session_id: int, end_s: float, meter_end_wh: int, bill: Bill) -> bool:
        """Record a session's end and bill. Idempotent: closing a closed session changes nothing
        and returns False (True when this call closed it).

        Refuses (``ValueError``) a meter end below the start, an end before the start, or a bill
        whose ``energy_wh`` is not ``meter_end_wh - meter_start_wh``. Unknown id:
        :class:`UnknownSession`.
        """
        end_s = float(end_s)
        meter_end_wh = _wh(meter_end_wh, "meter_end_wh")
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(sessions.c.start_s, sessions.c.end_s, sessions.c.meter_start_wh)
                                      .where(sessions.c.id == session_id))).first()
            if row is None:
                raise UnknownSession(session_id)
            if row.end_s is not None:
                return False
            energy_wh = meter_end_wh - row.meter_start_wh
            if energy_wh < 0:
                raise ValueError(f"session {session_id}: meter end {meter_end_wh} Wh is below its start "
                                 f"{row.meter_start_wh} Wh")
            if not math.isfinite(end_s) or end_s < row.start_s:
                raise ValueError(f"session {session_id}: end {end_s} is before its start {row.start_s}")
            if bill.energy_wh != energy_wh:
                raise ValueError(f"session {session_id}: bill has {bill.energy_wh} Wh but the meter says "
                                 f"{meter_end_wh} - {row.meter_start_wh} = {energy_wh} Wh")
            res = await conn.execute(update(sessions).where(sessions.c.id == session_id, sessions.c.end_s.is_(None))
                                     .values(end_s=end_s, meter_end_wh=meter_end_wh, energy_wh=energy_wh,
                                             electricity_cny=bill.electricity_cny, service_cny=bill.service_cny,
                                             total_cny=bill.total_cny, bill_json=json.dumps(bill.as_dict())))
            return res.rowcount == 1

    async def open_sessions(self) -> list[SessionRecord]:
        """Sessions not yet closed (of the bound station), oldest first."""
        c = sessions.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(c.id, c.gun_id, c.start_s, c.meter_start_wh, c.vin, c.id_token, c.vehicle_id)
                .where(c.end_s.is_(None), self._scope(c.station_id)).order_by(c.start_s, c.id))).all()
        return [SessionRecord(r.id, r.gun_id, r.start_s, int(r.meter_start_wh), r.vin, r.id_token, r.vehicle_id)
                for r in rows]

    async def get_session(self, session_id: int) -> dict | None:
        """One session as a dict (its columns, ``bill`` as a :class:`Bill` or None while open)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).mappings().first()
        if row is None:
            return None
        out = dict(row)
        bill = out.pop("bill_json")
        out["bill"] = Bill.from_dict(json.loads(bill)) if bill else None
        return out

    # ---- meter samples -------------------------------------------------------------------
    async def add_meter_samples(self, rows: Sequence[MeterSample]) -> None:
        """Add one cycle's samples in one insert. A (gun, t_s) already stored is skipped."""
        if not rows:
            return
        async with self._engine.begin() as conn:
            sid = await self._station(conn)
            stmt = _insert_ignore(self._dialect, meter_samples)
            await conn.execute(stmt, [
                {"station_id": sid, "gun_id": r.gun_id, "t_s": float(r.t_s), "energy_wh": int(r.energy_wh),
                 "power_kw": None if r.power_kw is None else float(r.power_kw),
                 "soc_pct": None if r.soc_pct is None else float(r.soc_pct)}
                for r in rows])

    async def meter_samples(self, gun_id: str, from_s: float, to_s: float) -> list[MeterSample]:
        """A gun's samples with ``from_s <= t_s <= to_s`` (both ends included), in time order."""
        c = meter_samples.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(c.gun_id, c.t_s, c.energy_wh, c.power_kw, c.soc_pct)
                .where(c.gun_id == gun_id, c.t_s >= from_s, c.t_s <= to_s, self._scope(c.station_id))
                .order_by(c.t_s))).all()
        return [MeterSample(r.gun_id, r.t_s, int(r.energy_wh), r.power_kw, r.soc_pct) for r in rows]

    # ---- events and faults ---------------------------------------------------------------
    async def add_event(self, t_s: float, kind: str, subject: str, detail: dict | None = None) -> None:
        """Record an event (``kind``: fault, fault_cleared, offline, online, auth_refused,
        session_start, session_stop, recovered, ...; ``subject``: a gun, pile or station id).

        ``fault`` opens a row in the faults table for (subject, ``detail["code"]``) unless one is
        open; ``fault_cleared`` closes the subject's open faults (only that code if given).
        The store records no events by itself.
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"event kind must be a non-empty string, got {kind!r}")
        t_s = float(t_s)
        code = str((detail or {}).get("code", "")) if isinstance(detail, dict) else ""
        async with self._engine.begin() as conn:
            sid = await self._station(conn)
            await conn.execute(insert(events).values(station_id=sid, t_s=t_s, kind=kind, subject=str(subject),
                                                     detail_json=_json(detail)))
            f = faults.c
            if kind == "fault":
                open_id = await conn.scalar(select(f.id).where(f.station_id == sid, f.subject == str(subject),
                                                               f.code == code, f.end_s.is_(None)))
                if open_id is None:
                    await conn.execute(insert(faults).values(station_id=sid, subject=str(subject), code=code,
                                                             start_s=t_s, detail_json=_json(detail)))
            elif kind == "fault_cleared":
                cond = [f.station_id == sid, f.subject == str(subject), f.end_s.is_(None)]
                if code:
                    cond.append(f.code == code)
                await conn.execute(update(faults).where(*cond).values(end_s=t_s))

    # ---- retention -----------------------------------------------------------------------
    async def compact(self, now_s: float, full_resolution_s: float = 86400, bucket_s: float = 60,
                      retention_s: float = 2 * 366 * 86400) -> dict:
        """Downsample and expire.

        Meter samples older than ``full_resolution_s`` keep one per ``bucket_s`` bucket (buckets
        aligned to POSIX multiples of ``bucket_s``): the last of the bucket, so the meter
        register at each kept time is the real one and session energy stays exact. Anything
        older than ``retention_s`` is deleted: samples, events, closed faults, closed sessions,
        and tariffs (with their prices) that ended before then and nothing references. Open
        sessions and open faults are never deleted. Returns the counts of deleted rows.
        Samples that arrive later than an earlier compaction's cutoff are left at full
        resolution (nothing is lost; they just take room).
        """
        if bucket_s <= 0 or full_resolution_s < 0 or retention_s <= 0:
            raise ValueError("bucket_s and retention_s must be > 0, full_resolution_s >= 0")
        cutoff_s = math.floor((now_s - full_resolution_s) / bucket_s) * bucket_s
        expire_s = now_s - retention_s
        counts = {}
        async with self._engine.begin() as conn:
            scope_key = f"compacted_until:{self._station_id if self._station_id is not None else '*'}"
            done = await conn.scalar(select(store_meta.c.value).where(store_meta.c.key == scope_key))
            lo_s = float(done) if done is not None else -math.inf
            ms, later = meter_samples, meter_samples.alias("later")
            bucket_end = (self._floor(ms.c.t_s / bucket_s) + 1) * bucket_s
            has_later = exists().where(later.c.station_id == ms.c.station_id, later.c.gun_id == ms.c.gun_id,
                                       later.c.t_s > ms.c.t_s, later.c.t_s < bucket_end)
            cond = [ms.c.t_s < cutoff_s, self._scope(ms.c.station_id), has_later]
            if math.isfinite(lo_s):
                cond.append(ms.c.t_s >= lo_s)
            counts["downsampled_samples"] = (await conn.execute(delete(ms).where(*cond))).rowcount
            if cutoff_s > lo_s:
                await conn.execute(_upsert(self._dialect, store_meta, {"key": scope_key, "value": repr(float(cutoff_s))},
                                           ["key"], ["value"]))
            counts["expired_samples"] = (await conn.execute(
                delete(ms).where(ms.c.t_s < expire_s, self._scope(ms.c.station_id)))).rowcount
            counts["expired_events"] = (await conn.execute(
                delete(events).where(events.c.t_s < expire_s, self._scope(events.c.station_id)))).rowcount
            counts["expired_faults"] = (await conn.execute(
                delete(faults).where(faults.c.end_s.is_not(None), faults.c.end_s < expire_s,
                                     self._scope(faults.c.station_id)))).rowcount
            counts["expired_sessions"] = (await conn.execute(
                delete(sessions).where(sessions.c.end_s.is_not(None), sessions.c.end_s < expire_s,
                                       self._scope(sessions.c.station_id)))).rowcount
            expire_day = dt.datetime.fromtimestamp(expire_s).date() if expire_s > 0 else dt.date.min
            old = select(tariffs.c.id).where(
                tariffs.c.effective_to.is_not(None), tariffs.c.effective_to < expire_day,
                ~exists().where(stations.c.tariff_id == tariffs.c.id),
                ~exists().where(sessions.c.tariff_id == tariffs.c.id))
            old_ids = list((await conn.execute(old)).scalars())
            counts["expired_prices"] = 0
            if old_ids:
                counts["expired_prices"] = (await conn.execute(delete(prices).where(prices.c.tariff_id.in_(old_ids)))).rowcount
                await conn.execute(delete(tariffs).where(tariffs.c.id.in_(old_ids)))
        return counts

    def _floor(self, expr):
        # SQLite has no floor() unless built with math functions; times are positive, so
        # truncation is floor. PostgreSQL's CAST rounds, so it gets floor().
        if self._dialect == "sqlite":
            return cast(expr, Integer)
        return func.floor(expr)

    # ---- export --------------------------------------------------------------------------
    async def export_rows(self, what: str, from_s: float | None, to_s: float | None) -> list[dict]:
        """All rows of one export (``what`` in sessions|meter|prices|events|faults) with
        ``from_s <= t < to_s`` (either bound may be None). Columns: :func:`export_columns`."""
        out: list[dict] = []
        async for chunk in self.iter_export(what, from_s, to_s):
            out.extend(chunk)
        return out

    async def iter_export(self, what: str, from_s: float | None, to_s: float | None,
                          chunk_rows: int = 5000) -> AsyncIterator[list[dict]]:
        """Like :meth:`export_rows`, in chunks, without holding the whole export in memory."""
        if what not in EXPORT_KINDS:
            raise ValueError(f"unknown export {what!r} (expected one of: {', '.join(EXPORT_KINDS)})")
        if what == "prices":
            yield await self._price_rows(from_s, to_s)
            return
        stmt, to_row = self._export_query(what, from_s, to_s)
        async with self._engine.connect() as conn:
            result = await conn.stream(stmt)
            async for part in result.mappings().partitions(chunk_rows):
                yield [to_row(r) for r in part]

    def _export_query(self, what: str, from_s, to_s):
        def window(col):
            cond = [self._scope_for(what)]
            if from_s is not None:
                cond.append(col >= from_s)
            if to_s is not None:
                cond.append(col < to_s)
            return and_(*cond)

        if what == "meter":
            c = meter_samples.c
            stmt = (select(stations.c.name.label("station"), c.gun_id, c.t_s, c.energy_wh, c.power_kw, c.soc_pct)
                    .join_from(meter_samples, stations, stations.c.id == c.station_id)
                    .where(window(c.t_s)).order_by(c.t_s, stations.c.name, c.gun_id))
            return stmt, lambda r: {"station": r["station"], "gun_id": r["gun_id"], "t": iso_local(r["t_s"]),
                                    "t_s": r["t_s"], "energy_wh": r["energy_wh"], "power_kw": r["power_kw"],
                                    "soc_pct": r["soc_pct"]}
        if what == "events":
            c = events.c
            stmt = (select(c.id, stations.c.name.label("station"), c.t_s, c.kind, c.subject, c.detail_json)
                    .join_from(events, stations, stations.c.id == c.station_id)
                    .where(window(c.t_s)).order_by(c.t_s, c.id))
            return stmt, lambda r: {"event_id": r["id"], "station": r["station"], "t": iso_local(r["t_s"]),
                                    "t_s": r["t_s"], "kind": r["kind"], "subject": r["subject"],
                                    "detail": r["detail_json"] or ""}
        if what == "faults":
            c = faults.c
            stmt = (select(c.id, stations.c.name.label("station"), c.subject, c.code, c.start_s, c.end_s, c.detail_json)
                    .join_from(faults, stations, stations.c.id == c.station_id)
                    .where(window(c.start_s)).order_by(c.start_s, c.id))
            return stmt, lambda r: {"fault_id": r["id"], "station": r["station"], "subject": r["subject"],
                                    "code": r["code"], "start": iso_local(r["start_s"]), "start_s": r["start_s"],
                                    "end": iso_local(r["end_s"]), "end_s": r["end_s"], "detail": r["detail_json"] or ""}
        c = sessions.c
        stmt = (select(sessions, stations.c.name.label("station"), tariffs.c.name.label("tariff"))
                .join_from(sessions, stations, stations.c.id == c.station_id)
                .outerjoin(tariffs, tariffs.c.id == c.tariff_id)
                .where(window(c.start_s)).order_by(c.start_s, c.id))
        return stmt, _session_row

    def _scope_for(self, what: str):
        table = {"meter": meter_samples, "events": events, "faults": faults, "sessions": sessions}[what]
        return self._scope(table.c.station_id)

    async def _price_rows(self, from_s, to_s) -> list[dict]:
        """One row per tariff, category and period whose effective dates overlap the window."""
        from_day = dt.datetime.fromtimestamp(from_s).date() if from_s is not None else None
        to_day = dt.datetime.fromtimestamp(to_s).date() if to_s is not None else None
        c, t = prices.c, tariffs.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(
                select(t.name, t.currency, t.service_fee_cny_per_kwh, t.seasons_json, t.source, t.note,
                       c.category, c.period, c.cny_per_kwh, c.effective_from, c.effective_to)
                .join_from(prices, tariffs, t.id == c.tariff_id)
                .order_by(t.name, c.effective_from, c.category, c.period))).mappings().all()
        out = []
        for r in rows:
            if to_day is not None and r["effective_from"] is not None and r["effective_from"] > to_day:
                continue
            if from_day is not None and r["effective_to"] is not None and r["effective_to"] < from_day:
                continue
            windows = []
            for season in json.loads(r["seasons_json"]):
                spans = " ".join(f"{w['start']}-{w['end']}" for w in season["windows"] if w["period"] == r["period"])
                if spans:
                    windows.append(spans if len(json.loads(r["seasons_json"])) == 1 else f"{season['name']}: {spans}")
            out.append({"tariff": r["name"], "category": r["category"], "period": r["period"],
                        "cny_per_kwh": r["cny_per_kwh"], "service_fee_cny_per_kwh": r["service_fee_cny_per_kwh"],
                        "currency": r["currency"],
                        "effective_from": r["effective_from"].isoformat() if r["effective_from"] else "",
                        "effective_to": r["effective_to"].isoformat() if r["effective_to"] else "",
                        "windows": "; ".join(windows), "source": r["source"] or "", "note": r["note"] or ""})
        return out


def _session_row(r) -> dict:
    bill = json.loads(r["bill_json"]) if r["bill_json"] else None
    row = {"session_id": r["id"], "station": r["station"], "gun_id": r["gun_id"], "status": "closed" if bill else "open",
           "start": iso_local(r["start_s"]), "start_s": r["start_s"], "end": iso_local(r["end_s"]), "end_s": r["end_s"],
           "meter_start_wh": r["meter_start_wh"], "meter_end_wh": r["meter_end_wh"], "energy_wh": r["energy_wh"],
           "vin": r["vin"] or "", "id_token": r["id_token"] or "", "vehicle_id": r["vehicle_id"] or "",
           "price_category": r["price_category"] or "", "tariff": r["tariff"] or ""}
    for p in PERIODS:
        row[f"energy_kwh_{p}"] = round(bill["energy_kwh_by_period"].get(p, 0.0), 4) if bill else None
    for p in PERIODS:
        row[f"electricity_cny_{p}"] = round(bill["electricity_cny_by_period"].get(p, 0.0), 4) if bill else None
    row["electricity_cny"] = r["electricity_cny"]
    row["service_cny"] = r["service_cny"]
    row["total_cny"] = r["total_cny"]
    return row


EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "sessions": ("session_id", "station", "gun_id", "status", "start", "start_s", "end", "end_s", "meter_start_wh",
                 "meter_end_wh", "energy_wh", "vin", "id_token", "vehicle_id", "price_category", "tariff",
                 *(f"energy_kwh_{p}" for p in PERIODS), *(f"electricity_cny_{p}" for p in PERIODS),
                 "electricity_cny", "service_cny", "total_cny"),
    "meter": ("station", "gun_id", "t", "t_s", "energy_wh", "power_kw", "soc_pct"),
    "prices": ("tariff", "category", "period", "cny_per_kwh", "service_fee_cny_per_kwh", "currency",
               "effective_from", "effective_to", "windows", "source", "note"),
    "events": ("event_id", "station", "t", "t_s", "kind", "subject", "detail"),
    "faults": ("fault_id", "station", "subject", "code", "start", "start_s", "end", "end_s", "detail"),
}


def export_columns(what: str) -> tuple[str, ...]:
    """The CSV columns of an export, in order (the same with or without rows)."""
    return EXPORT_COLUMNS[what]


# ---- helpers -----------------------------------------------------------------------------
def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL: readers (exports) do not block the controller's writes. synchronous=NORMAL in WAL
    # keeps every committed transaction across a process kill (-9); only an OS crash or power
    # loss can drop the last few commits.
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=10000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _insert_ignore(dialect: str, table: Table):
    """INSERT that skips rows whose key is already there (replays)."""
    if dialect == "sqlite":
        return sqlite_dialect.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return pg_dialect.insert(table).on_conflict_do_nothing()
    raise StoreError(f"unsupported database {dialect!r}")


def _upsert(dialect: str, table: Table, values: dict, keys: list[str], set_cols: list[str]):
    mod = sqlite_dialect if dialect == "sqlite" else pg_dialect
    stmt = mod.insert(table).values(**values)
    return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in set_cols})


def _wh(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} is the meter register in whole Wh, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 Wh, got {value}")
    return value


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
