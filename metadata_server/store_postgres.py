"""The PostgreSQL store: several metadata servers serve one set of instances.

Each server keeps the same in-memory index as :class:`SqliteStore` (a guest is
recognised without a database round trip) and keeps it current with LISTEN/NOTIFY:
every write notifies the instance's id in the transaction that makes it, and every
server re-reads a notified instance and wakes its waiters (the admin API's long-polls),
so a phone home reaching one server answers a wait held by another. A write through
one server is seen by the others once its notification arrives (a round trip). Writes
are single SQL statements checked by the database itself (unique addresses and MACs,
a password written once), so two servers cannot both win. The IMDSv2 signing key is
made once and kept in the database, so a token from one server is good on all.

A guest whose address the index does not know may have been published through another
server a moment ago, its notification still on the way: before it is refused, one
query over the unique indexes looks for it in the database (:meth:`look_up`).

The listening connection is re-made when it breaks, and the whole index reloaded then:
notifications sent while it was away are lost, the rows are not. While the database
cannot be reached, every operation that needs it raises :class:`StoreUnavailable`
(the server answers 503); the write connection is made again on the next operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from beachhead.metadata_server.errors import Conflict, StoreUnavailable
from beachhead.metadata_server.records import Instance, PostedPassword, Status
from beachhead.metadata_server.store import COLUMNS, Changed, IndexedInstances, _instance, _row

log = structlog.get_logger("beachhead.metadata")
CHANNEL = "beachhead_metadata"
SCHEMA_LOCK = 0x6265616368  # pg_advisory_xact_lock key: servers starting together create the schema once
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id    TEXT PRIMARY KEY,
    ip             TEXT,
    mac            TEXT,
    hostname       TEXT NOT NULL,
    meta_data      TEXT NOT NULL,
    user_data      BYTEA NOT NULL,
    vendor_data    BYTEA,
    network_config BYTEA,
    created        DOUBLE PRECISION NOT NULL,
    updated        DOUBLE PRECISION NOT NULL,
    fetched_at     DOUBLE PRECISION,
    phoned_home_at DOUBLE PRECISION,
    phone_home     TEXT NOT NULL DEFAULT '{}',
    client_certs   TEXT NOT NULL DEFAULT '[]',
    password       TEXT,
    password_at    DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS instances_ip ON instances (ip) WHERE ip IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS instances_mac ON instances (mac) WHERE mac IS NOT NULL;
CREATE TABLE IF NOT EXISTS beachhead_settings (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
"""
TOKEN_KEY = "imds_token_key"  # noqa: S105 - a settings row's name
NAMES = [name.strip() for name in COLUMNS.split(",")]
SELECT = f"SELECT {COLUMNS} FROM instances"  # noqa: S608 - constant text
# An index miss: by address, and by the MACs a lease file or vCenter gave (the unique indexes).
LOOK_UP = f"{SELECT} WHERE ip = %s"
LOOK_UP_BY_MAC = f"{LOOK_UP} OR mac = ANY(%s)"
LOOK_UP_ID = f"{SELECT} WHERE instance_id = %s"
# A replaced record keeps its posted password and its first publication time.
KEPT_ON_REPLACE = {"instance_id", "created", "password", "password_at"}
UPSERT = (
    f"INSERT INTO instances ({COLUMNS}) VALUES ({', '.join('%s' for _ in NAMES)}) "  # noqa: S608 - constant text
    "ON CONFLICT (instance_id) DO UPDATE SET "
    + ", ".join(f"{name} = EXCLUDED.{name}" for name in NAMES if name not in KEPT_ON_REPLACE)
    + f" RETURNING (xmax = 0) AS created, {COLUMNS}"  # xmax 0: a new row
)
RECONNECT_MAX_S = 10.0
CONNECT_TIMEOUT_S = 5  # unless the URL says otherwise: an unreachable host must not hang a request


class PostgresStore(IndexedInstances):
    """Instances in a PostgreSQL database shared by several servers, indexed in memory."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._listening: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the write connection, index in step
        self._origin = secrets.token_hex(8)  # this server's notifications: no need to re-read them
        self._subscribers: list[Changed] = []
        self._token_key: bytes | None = None

    @property
    def token_key(self) -> bytes | None:
        """The signing key kept in the database, the same on every server."""
        return self._token_key

    def subscribe(self, changed: Changed) -> None:
        """Await ``changed`` after another server's write reached the index."""
        self._subscribers.append(changed)

    async def open(self) -> None:
        """Connect, create the schema when missing, listen, then load the index (in
        that order: a write made while loading is notified, not missed)."""
        self._db = await self._connect()
        async with self._db.transaction():
            await self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            await self._db.execute(SCHEMA)
            await self._db.execute(
                "INSERT INTO beachhead_settings (name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                (TOKEN_KEY, secrets.token_bytes(32)),
            )
            cursor = await self._db.execute("SELECT value FROM beachhead_settings WHERE name = %s", (TOKEN_KEY,))
            row = await cursor.fetchone()
        assert row is not None
        self._token_key = bytes(row[0])
        self._listener = await self._listen()
        await self._reload()
        self._listening = asyncio.create_task(self._follow(), name="metadata-postgres-listener")

    async def close(self) -> None:
        """Stop listening and close both connections."""
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        for connection in (self._listener, self._db):
            if connection is not None:
                await connection.close()
        self._listener = self._db = None

    async def ping(self) -> None:
        """``SELECT 1`` on the write connection, made again when it broke
        (:class:`StoreUnavailable` when the database cannot be reached)."""
        async with self._available(), self._lock:
            await (await self._connection()).execute("SELECT 1")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conninfo = self.url
        if "connect_timeout" not in conninfo_to_dict(conninfo):
            conninfo = make_conninfo(conninfo, connect_timeout=CONNECT_TIMEOUT_S)
        return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)

    @contextlib.asynccontextmanager
    async def _available(self) -> AsyncIterator[None]:
        """Turn a lost or refused connection into :class:`StoreUnavailable`."""
        try:
            yield
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the database cannot be reached: {str(exc).splitlines()[0][:200]}") from exc

    async def look_up(self, ip: str, macs: Sequence[str] = ()) -> bool:
        """Read the instances the database holds for this address or these MACs into
        the index: one query over the unique indexes, a miss costing no more. Under the
        lock, as a notified re-read: a removal notified meanwhile is applied after it."""
        async with self._available(), self._lock:
            db = await self._connection()
            cursor = await (db.execute(LOOK_UP_BY_MAC, (ip, list(macs))) if macs else db.execute(LOOK_UP, (ip,)))
            rows = await cursor.fetchall()
            for row in rows:
                self._index(_instance(row))
            return bool(rows)

    async def look_up_id(self, instance_id: str) -> bool:
        """The same for an instance id: one query over the primary key."""
        async with self._available(), self._lock:
            cursor = await (await self._connection()).execute(LOOK_UP_ID, (instance_id,))
            row = await cursor.fetchone()
            if row is not None:
                self._index(_instance(row))
            return row is not None

    # -- following other servers ------------------------------------------------------
    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        listener = await self._connect()
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        return listener

    async def _reload(self) -> None:
        """The whole index from the database."""
        async with self._lock:
            cursor = await (await self._connection()).execute(SELECT)
            self._reindex([_instance(row) for row in await cursor.fetchall()])

    async def _follow(self) -> None:
        """Apply other servers' notified writes; re-listen and reload after a break."""
        delay = 0.5
        while True:
            try:
                if self._listener is None or self._listener.closed:
                    self._listener = await self._listen()
                    await self._reload()
                    await self._wake()
                    log.info("metadata.store_listening_again")
                delay = 0.5
                async for notify in self._listener.notifies():
                    origin, _, instance_id = notify.payload.partition(":")
                    if origin != self._origin:
                        await self._refresh(instance_id)
                        await self._wake()
            except psycopg.Error as exc:
                log.warning("metadata.store_listener_lost", error=str(exc).splitlines()[0][:200], retry_s=delay)
                if self._listener is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._listener.close()
                self._listener = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def _refresh(self, instance_id: str) -> None:
        """One instance re-read into the index (removed when it is gone)."""
        async with self._lock:
            cursor = await (await self._connection()).execute(f"{SELECT} WHERE instance_id = %s", (instance_id,))
            row = await cursor.fetchone()
            if row is None:
                self._unindex(instance_id)
            else:
                self._index(_instance(row))

    async def _wake(self) -> None:
        for changed in self._subscribers:
            try:
                await changed()
            except Exception:  # a subscriber's bug must not stop the index following the database
                log.exception("metadata.store_subscriber_failed")

    # -- writes -----------------------------------------------------------------------
    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        """The write connection, made again when the last one broke."""
        if self._db is None or self._db.closed:
            self._db = await self._connect()
        return self._db

    async def _notify(self, db: psycopg.AsyncConnection[Any], instance_id: str) -> None:
        await db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{self._origin}:{instance_id}"))

    async def put(self, instance: Instance) -> bool:
        """Create or replace; True when it was created. A replaced record keeps its
        creation time and the password its guest posted; an address or MAC another
        instance holds is a :class:`Conflict`, decided by the database's unique indexes."""
        async with self._available(), self._lock:
            db = await self._connection()
            values = _row(replace(instance, password=None))
            try:
                async with db.transaction():
                    cursor = await db.execute(UPSERT, values)
                    row = await cursor.fetchone()
                    assert row is not None
                    await self._notify(db, instance.instance_id)
            except psycopg.errors.UniqueViolation as exc:
                raise await self._conflict(db, instance, exc.diag.constraint_name) from None
            self._index(_instance(row[1:]))
            return bool(row[0])

    async def _conflict(self, db: psycopg.AsyncConnection[Any], instance: Instance, index: str | None) -> Conflict:
        field = "mac" if index == "instances_mac" else "ip"
        value = getattr(instance, field)
        cursor = await db.execute(
            sql.SQL("SELECT instance_id FROM instances WHERE {} = %s").format(sql.Identifier(field)), (value,)
        )
        owner = await cursor.fetchone()
        return Conflict(field, f"{value} is already published for instance {owner[0] if owner else 'another'}")

    async def delete(self, instance_id: str) -> bool:
        """Remove; False when there was none."""
        async with self._available(), self._lock:
            db = await self._connection()
            async with db.transaction():
                cursor = await db.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))
                removed = cursor.rowcount
                await self._notify(db, instance_id)
            self._unindex(instance_id)
            return bool(removed)

    async def set_status(self, instance_id: str, status: Status) -> Instance | None:
        """Record what the guest did: only the parts ``status`` changes from this
        server's view of the instance, so a fetch recorded here and a phone home
        recorded on another server at the same time both stay."""
        current = self.get(instance_id)
        columns: dict[str, Any] = {}
        if current is None or status.fetched_at != current.status.fetched_at:
            columns["fetched_at"] = status.fetched_at
        if current is None or (status.phoned_home_at, status.phone_home) != (
            current.status.phoned_home_at,
            current.status.phone_home,
        ):
            columns["phoned_home_at"] = status.phoned_home_at
            columns["phone_home"] = json.dumps(status.phone_home)
        if not columns:
            return current
        return await self._update(instance_id, columns)

    async def set_password(self, instance_id: str, password: PostedPassword) -> Instance | None:
        """Keep the posted password: written once, by the database's own check (a
        :class:`Conflict` when one is kept, whichever server kept it)."""
        return await self._update(
            instance_id, {"password": password.encrypted, "password_at": password.posted_at}, once="password"
        )

    async def clear_password(self, instance_id: str) -> Instance | None:
        """Forget the posted password."""
        return await self._update(instance_id, {"password": None, "password_at": None})

    async def _update(self, instance_id: str, columns: dict[str, Any], once: str | None = None) -> Instance | None:
        """Set ``columns`` of the instance in one statement (only while ``once`` is
        null, when given) and index the row it leaves; None for an unknown instance."""
        query = sql.SQL("UPDATE instances SET {} WHERE instance_id = %s{} RETURNING {}").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(name)) for name in columns),
            sql.SQL(" AND {} IS NULL").format(sql.Identifier(once)) if once else sql.SQL(""),
            sql.SQL(COLUMNS),
        )
        async with self._available(), self._lock:
            db = await self._connection()
            async with db.transaction():
                cursor = await db.execute(query, (*columns.values(), instance_id))
                row = await cursor.fetchone()
                if row is None:
                    cursor = await db.execute("SELECT 1 FROM instances WHERE instance_id = %s", (instance_id,))
                    exists = await cursor.fetchone() is not None
                else:
                    await self._notify(db, instance_id)
            if row is None:
                if exists and once:
                    raise Conflict(once, "already posted")
                self._unindex(instance_id)
                return None
            updated = _instance(row)
            self._index(updated)
            return updated
