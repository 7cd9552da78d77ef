"""Where published instances live: an interface, SQLite behind it for one server, and
PostgreSQL (:mod:`store_postgres`) for several servers sharing one set of instances.

Every store serves reads from an in-memory index (:class:`IndexedInstances`), so
recognising a guest never waits on a database; writes go to the database first.

:class:`SqliteStore` keeps every record in one SQLite file in WAL mode with full
synchronous commits, so a record the admin API acknowledged survives a crash or a
restart. Reads come from an in-memory index rebuilt from the file at start, so serving
a guest never waits on the disk; writes go to the file first (on one worker thread, as
sqlite3 connections belong to a thread) and then to the index.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from beachhead.metadata_server.errors import Conflict
from beachhead.metadata_server.records import Instance, PostedPassword, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id    TEXT PRIMARY KEY,
    ip             TEXT,
    mac            TEXT,
    hostname       TEXT NOT NULL,
    meta_data      TEXT NOT NULL,
    user_data      BLOB NOT NULL,
    vendor_data    BLOB,
    network_config BLOB,
    created        REAL NOT NULL,
    updated        REAL NOT NULL,
    fetched_at     REAL,
    phoned_home_at REAL,
    phone_home     TEXT NOT NULL DEFAULT '{}',
    client_certs   TEXT NOT NULL DEFAULT '[]',
    password       TEXT,
    password_at    REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS instances_ip ON instances (ip) WHERE ip IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS instances_mac ON instances (mac) WHERE mac IS NOT NULL;
"""
# Columns added after the first release, added to an older file when it is opened.
ADDED_COLUMNS = {
    "client_certs": "TEXT NOT NULL DEFAULT '[]'",
    "password": "TEXT",
    "password_at": "REAL",
}
COLUMNS = (
    "instance_id, ip, mac, hostname, meta_data, user_data, vendor_data, network_config, "
    "created, updated, fetched_at, phoned_home_at, phone_home, client_certs, password, password_at"
)
SELECT_ALL = f"SELECT {COLUMNS} FROM instances"  # noqa: S608 - constant text
PLACEHOLDERS = ", ".join("?" for _ in COLUMNS.split(","))
UPSERT = f"INSERT OR REPLACE INTO instances ({COLUMNS}) VALUES ({PLACEHOLDERS})"  # noqa: S608 - constant text


Changed = Callable[[], Awaitable[None]]


class Store(Protocol):
    """What the server needs from a store: SQLite for one server, PostgreSQL for several."""

    async def open(self) -> None:
        """Connect and load what is needed to serve."""

    async def close(self) -> None:
        """Release the store."""

    async def ping(self) -> None:
        """A cheap query against the database itself (not the index), raising when it
        cannot be reached: the server's ``/healthz``."""

    @property
    def token_key(self) -> bytes | None:
        """The IMDSv2 token signing key every server on this store shares (None: each
        server makes its own at start)."""

    def subscribe(self, changed: Changed) -> None:
        """Have ``changed`` awaited after another server changed an instance (its new
        state is in the index by then), so waiters here look again."""

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id."""

    def by_ip(self, ip: str) -> Instance | None:
        """The instance published for this address."""

    def by_mac(self, mac: str) -> Instance | None:
        """The instance published for this MAC address."""

    def all(self) -> list[Instance]:
        """Every instance, by id."""

    async def look_up(self, ip: str, macs: Sequence[str] = ()) -> bool:
        """After the index had no instance for this address or MACs: bring what the
        database itself holds for them into the index (another server may have just
        written it), at the cost of one indexed query; whether anything was found."""

    async def look_up_id(self, instance_id: str) -> bool:
        """The same for an instance id the index does not know (an admin request reaching
        this server before another's publication was notified)."""

    async def put(self, instance: Instance) -> bool:
        """Create or replace; True when it was created. Raises :class:`Conflict` when
        another instance has the same address or MAC."""

    async def delete(self, instance_id: str) -> bool:
        """Remove; False when there was none."""

    async def set_status(self, instance_id: str, status: Status) -> Instance | None:
        """Record what the guest did; the updated instance (None when it is gone)."""

    async def set_password(self, instance_id: str, password: PostedPassword) -> Instance | None:
        """Keep the password the guest posted; the updated instance (None when it is
        gone). Raises :class:`Conflict` when one is already kept: it is written once."""

    async def clear_password(self, instance_id: str) -> Instance | None:
        """Forget the posted password, so the guest may post again; the updated
        instance (None when it is gone)."""


def _row(instance: Instance) -> tuple[Any, ...]:
    return (
        instance.instance_id,
        instance.ip,
        instance.mac,
        instance.hostname,
        json.dumps(instance.meta_data),
        instance.user_data,
        instance.vendor_data,
        instance.network_config,
        instance.created,
        instance.updated,
        instance.status.fetched_at,
        instance.status.phoned_home_at,
        json.dumps(instance.status.phone_home),
        json.dumps(instance.client_certs),
        instance.password.encrypted if instance.password else None,
        instance.password.posted_at if instance.password else None,
    )


def _instance(row: tuple[Any, ...]) -> Instance:
    status = Status(row[10], row[11], json.loads(row[12]))
    return Instance(
        instance_id=row[0],
        ip=row[1],
        mac=row[2],
        hostname=row[3],
        meta_data=json.loads(row[4]),
        user_data=bytes(row[5]),
        vendor_data=None if row[6] is None else bytes(row[6]),
        network_config=None if row[7] is None else bytes(row[7]),
        created=row[8],
        updated=row[9],
        status=status,
        client_certs=tuple(json.loads(row[13])),
        password=None if row[14] is None else PostedPassword(row[14], row[15]),
    )


def is_database_url(db: str | Path) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_store(db: str | Path) -> Store:
    """The store ``--db`` names: a ``postgresql://`` URL, else a SQLite file (not opened yet)."""
    if is_database_url(db):
        from beachhead.metadata_server.store_postgres import PostgresStore

        return PostgresStore(str(db))
    return SqliteStore(Path(db))


class IndexedInstances:
    """The in-memory index every store serves reads from: instances by id, address and MAC."""

    def __init__(self) -> None:
        self._by_id: dict[str, Instance] = {}
        self._by_ip: dict[str, str] = {}
        self._by_mac: dict[str, str] = {}

    def _index(self, instance: Instance) -> None:
        self._unindex(instance.instance_id)
        self._by_id[instance.instance_id] = instance
        if instance.ip:
            self._by_ip[instance.ip] = instance.instance_id
        if instance.mac:
            self._by_mac[instance.mac] = instance.instance_id

    def _unindex(self, instance_id: str) -> None:
        old = self._by_id.pop(instance_id, None)
        if old is not None:
            if old.ip and self._by_ip.get(old.ip) == instance_id:
                del self._by_ip[old.ip]
            if old.mac and self._by_mac.get(old.mac) == instance_id:
                del self._by_mac[old.mac]

    def _reindex(self, instances: list[Instance]) -> None:
        """Index exactly ``instances``, forgetting every other."""
        self._by_id.clear()
        self._by_ip.clear()
        self._by_mac.clear()
        for instance in instances:
            self._index(instance)

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id."""
        return self._by_id.get(instance_id)

    def by_ip(self, ip: str) -> Instance | None:
        """The instance published for this address."""
        instance_id = self._by_ip.get(ip)
        return None if instance_id is None else self._by_id.get(instance_id)

    def by_mac(self, mac: str) -> Instance | None:
        """The instance published for this MAC address."""
        instance_id = self._by_mac.get(mac)
        return None if instance_id is None else self._by_id.get(instance_id)

    def all(self) -> list[Instance]:
        """Every instance, by id."""
        return [self._by_id[key] for key in sorted(self._by_id)]


class SqliteStore(IndexedInstances):
    """The default store: one SQLite file (WAL), indexed in memory."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="metadata-sqlite")
        self._db: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _connect(self) -> list[tuple[Any, ...]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)  # it holds user-data: not for other users
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        present = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in present:
                db.execute(f"ALTER TABLE instances ADD COLUMN {name} {kind}")
        self._db = db
        return list(db.execute(SELECT_ALL))

    async def open(self) -> None:
        """Open (creating) the file and load the index."""
        self._reindex([_instance(row) for row in await self._call(self._connect)])

    async def close(self) -> None:
        """Close the file and the worker thread."""
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    @property
    def token_key(self) -> bytes | None:
        """None: one server per file, so a key made at start (a restart retires its tokens)."""
        return None

    def subscribe(self, changed: Changed) -> None:
        """Nothing to do: no other server writes this file."""

    async def look_up(self, ip: str, macs: Sequence[str] = ()) -> bool:
        """False, at no cost: no other server writes this file, so the index holds every
        record."""
        return False

    async def look_up_id(self, instance_id: str) -> bool:
        """False, at no cost, for the same reason."""
        return False

    def _probe(self) -> None:
        # A connection of its own, opened read-only by path: the file the server would
        # open after a restart must still be there, readable, and hold the table.
        probe = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            probe.execute("SELECT 1 FROM instances LIMIT 1").fetchall()
        finally:
            probe.close()

    async def ping(self) -> None:
        """Read the file through a new read-only connection (raises when it is gone or
        unreadable)."""
        await self._call(self._probe)

    def _check_unique(self, instance: Instance) -> None:
        for field, owner in (("ip", self._by_ip.get(instance.ip or "")), ("mac", self._by_mac.get(instance.mac or ""))):
            if owner is not None and owner != instance.instance_id:
                raise Conflict(field, f"{getattr(instance, field)} is already published for instance {owner}")

    def _write(self, sql: str, parameters: tuple[Any, ...]) -> int:
        assert self._db is not None, "store not open"
        with self._db:
            return self._db.execute(sql, parameters).rowcount

    async def put(self, instance: Instance) -> bool:
        """Create or replace; True when it was created. A replaced record keeps the
        password its guest posted (only :meth:`clear_password` and :meth:`delete` drop it)."""
        async with self._write_lock:
            self._check_unique(instance)
            current = self._by_id.get(instance.instance_id)
            created = current is None
            instance = replace(instance, password=current.password if current else None)
            await self._call(self._write, UPSERT, _row(instance))
            self._index(instance)
            return created

    async def delete(self, instance_id: str) -> bool:
        """Remove; False when there was none."""
        async with self._write_lock:
            removed = await self._call(self._write, "DELETE FROM instances WHERE instance_id = ?", (instance_id,))
            self._unindex(instance_id)
            return bool(removed)

    async def set_status(self, instance_id: str, status: Status) -> Instance | None:
        """Record what the guest did."""
        return await self._update(
            instance_id,
            "UPDATE instances SET fetched_at = ?, phoned_home_at = ?, phone_home = ? WHERE instance_id = ?",
            (status.fetched_at, status.phoned_home_at, json.dumps(status.phone_home), instance_id),
            lambda current: current.with_status(status),
        )

    async def set_password(self, instance_id: str, password: PostedPassword) -> Instance | None:
        """Keep the posted password (written once: :class:`Conflict` when one is kept)."""

        def kept(current: Instance) -> Instance:
            if current.password is not None:
                raise Conflict("password", "already posted")
            return replace(current, password=password)

        return await self._update(
            instance_id,
            "UPDATE instances SET password = ?, password_at = ? WHERE instance_id = ?",
            (password.encrypted, password.posted_at, instance_id),
            kept,
        )

    async def clear_password(self, instance_id: str) -> Instance | None:
        """Forget the posted password."""
        return await self._update(
            instance_id,
            "UPDATE instances SET password = NULL, password_at = NULL WHERE instance_id = ?",
            (instance_id,),
            lambda current: replace(current, password=None),
        )

    async def _update(
        self, instance_id: str, sql: str, parameters: tuple[Any, ...], change: Callable[[Instance], Instance]
    ) -> Instance | None:
        """Under the write lock: the known instance as ``change`` makes it (``change`` may
        refuse by raising, before anything is written), its row written with ``sql`` and
        indexed; None for an unknown instance."""
        async with self._write_lock:
            current = self._by_id.get(instance_id)
            if current is None:
                return None
            updated = change(current)
            await self._call(self._write, sql, parameters)
            self._index(updated)
            return updated
