"""The store's contract, on each store (SQLite and PostgreSQL), through the Store
interface itself; and, for PostgreSQL, a second store on the same database following
the first one's writes (index and wake-ups), and finding in the database a write whose
notification has not arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from beachhead.metadata_server import store_postgres
from beachhead.metadata_server.errors import Conflict
from beachhead.metadata_server.records import Instance, PostedPassword, Status
from beachhead.metadata_server.store import Store, _row, open_store
from tests.conftest import beachhead

FOLLOW_TIMEOUT_S = 10.0
Opener = Callable[[], Awaitable[Store]]


@pytest.fixture
def db(store_db: str | None, tmp_path: Path) -> str:
    """The ``--db`` value of each store in turn."""
    return store_db or str(tmp_path / "metadata.sqlite")


@pytest.fixture
async def opened(db: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Opens stores on ``db``; closes them after the test."""
    stores: list[Store] = []

    async def make() -> Store:
        store = open_store(db)
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


def _instance(instance_id: str, ip: str | None = "127.0.0.5", mac: str | None = None, **kw: object) -> Instance:
    now = time.time()
    return Instance(instance_id, ip, mac, "host", b"#cloud-config\n", created=now, updated=now, **kw)  # type: ignore[arg-type]


async def test_put_get_replace_and_delete(opened: Opener) -> None:
    store = await opened()
    assert await store.put(_instance("i-a", meta_data={"k": [1, "v"]}, vendor_data=b"\x00\xff")) is True
    assert await store.put(_instance("i-b", ip=None, mac="00:50:56:00:00:0b")) is True
    got = store.get("i-a")
    assert got is not None and got.meta_data == {"k": [1, "v"]} and got.vendor_data == b"\x00\xff"
    assert store.by_ip("127.0.0.5") == got and store.by_mac("00:50:56:00:00:0b") == store.get("i-b")
    assert [instance.instance_id for instance in store.all()] == ["i-a", "i-b"]
    assert await store.put(_instance("i-a", ip="127.0.0.6")) is False  # replaced: moved address
    assert store.by_ip("127.0.0.5") is None and store.by_ip("127.0.0.6") is not None
    assert await store.delete("i-a") is True and await store.delete("i-a") is False
    assert store.get("i-a") is None and store.by_ip("127.0.0.6") is None


async def test_addresses_and_macs_are_unique(opened: Opener) -> None:
    store = await opened()
    await store.put(_instance("i-a", mac="00:50:56:00:00:0a"))
    with pytest.raises(Conflict) as clash:
        await store.put(_instance("i-b"))
    assert clash.value.field == "ip" and "i-a" in clash.value.reason
    with pytest.raises(Conflict) as clash:
        await store.put(_instance("i-c", ip="127.0.0.9", mac="00:50:56:00:00:0a"))
    assert clash.value.field == "mac"
    assert [instance.instance_id for instance in store.all()] == ["i-a"]


async def test_status_and_a_password_written_once(opened: Opener) -> None:
    store = await opened()
    await store.put(_instance("i-a"))
    fetched = await store.set_status("i-a", Status(fetched_at=1.0))
    assert fetched is not None and fetched.status.fetched_at == 1.0
    done = await store.set_status("i-a", Status(1.0, 2.0, {"hostname": "h"}))
    assert done is not None and done.status == Status(1.0, 2.0, {"hostname": "h"})
    kept = await store.set_password("i-a", PostedPassword("c2VjcmV0", 3.0))
    assert kept is not None and kept.password == PostedPassword("c2VjcmV0", 3.0)
    with pytest.raises(Conflict):
        await store.set_password("i-a", PostedPassword("b3RoZXI=", 4.0))
    await store.put(_instance("i-a"))  # published again: status cleared, password kept
    again = store.get("i-a")
    assert again is not None and again.status == Status() and again.password == PostedPassword("c2VjcmV0", 3.0)
    cleared = await store.clear_password("i-a")
    assert cleared is not None and cleared.password is None
    assert await store.set_status("i-gone", Status(fetched_at=1.0)) is None
    assert await store.set_password("i-gone", PostedPassword("eA==", 1.0)) is None
    assert await store.clear_password("i-gone") is None


async def test_records_survive_reopening(opened: Opener) -> None:
    store = await opened()
    await store.put(_instance("i-a", client_certs=("PEM",)))
    await store.set_status("i-a", Status(1.0, 2.0, {"a": "b"}))
    await store.close()
    again = await opened()
    got = again.get("i-a")
    assert got is not None and got.client_certs == ("PEM",) and got.status == Status(1.0, 2.0, {"a": "b"})


async def test_a_second_postgres_store_follows_the_first(postgres_url: str) -> None:
    first, second = open_store(postgres_url), open_store(postgres_url)
    await first.open()
    await second.open()
    woken = asyncio.Event()

    async def changed() -> None:
        woken.set()

    second.subscribe(changed)
    try:
        assert first.token_key is not None and first.token_key == second.token_key
        await first.put(_instance("i-a"))
        async with asyncio.timeout(FOLLOW_TIMEOUT_S):
            await woken.wait()
        assert second.by_ip("127.0.0.5") is not None
        with pytest.raises(Conflict):  # the database decides, whichever server asks
            await second.put(_instance("i-b"))
        woken.clear()
        await first.delete("i-a")
        async with asyncio.timeout(FOLLOW_TIMEOUT_S):
            await woken.wait()
        assert second.get("i-a") is None and second.by_ip("127.0.0.5") is None
    finally:
        await first.close()
        await second.close()


async def test_concurrent_fetch_and_phone_home_on_two_postgres_stores(postgres_url: str) -> None:
    first, second = open_store(postgres_url), open_store(postgres_url)
    await first.open()
    await second.open()
    try:
        await first.put(_instance("i-a"))
        await first.set_status("i-a", Status(fetched_at=1.0))
        # The second store records a phone home from its view, which may predate the fetch.
        await second.set_status("i-a", Status(None, 2.0, {"x": "y"}))
        third = open_store(postgres_url)
        await third.open()
        got = third.get("i-a")
        await third.close()
        assert got is not None and got.status == Status(1.0, 2.0, {"x": "y"})
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    "url", ["postgresql://admin:s3cr3t-pw@127.0.0.1/metadata", "postgresql://127.0.0.1/metadata?password=s3cr3t-pw"]
)
def test_a_database_url_with_a_password_is_refused_exit_2(url: str, tmp_path: Path) -> None:
    token = tmp_path / "admin.token"
    done = beachhead("metadata-server", "--listen", "127.0.0.1:9", "--db", url, "--admin-token-file", str(token))
    assert done.returncode == 2 and "--db" in done.stderr and "PGPASSWORD" in done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout


async def test_a_miss_for_an_unpublished_address_finds_nothing(opened: Opener) -> None:
    store = await opened()
    await store.put(_instance("i-a", mac="00:50:56:00:00:0a"))
    assert await store.look_up("127.0.0.77") is False
    assert await store.look_up("127.0.0.78", ["00:50:56:00:00:0f"]) is False
    assert store.by_ip("127.0.0.77") is None and [instance.instance_id for instance in store.all()] == ["i-a"]


def _written_elsewhere(url: str, *instances: Instance) -> None:
    """Rows as another server's publish writes them, without its notification: what a
    server sees of that publish until the notification arrives."""
    with psycopg.connect(url, autocommit=True) as db:
        for instance in instances:
            db.execute(store_postgres.UPSERT, _row(instance))


async def test_a_postgres_store_finds_in_the_database_what_was_not_notified(postgres_url: str) -> None:
    store = open_store(postgres_url)
    await store.open()
    try:
        by_ip, by_mac = _instance("i-ip", ip="127.0.0.7"), _instance("i-mac", ip=None, mac="00:50:56:00:00:0c")
        _written_elsewhere(postgres_url, by_ip, by_mac)
        assert store.by_ip("127.0.0.7") is None and store.by_mac("00:50:56:00:00:0c") is None
        assert await store.look_up("127.0.0.7") is True
        found = store.by_ip("127.0.0.7")
        assert found is not None and found.instance_id == "i-ip" and found.user_data == by_ip.user_data
        assert await store.look_up("127.0.0.8", ["00:50:56:00:00:0c"]) is True
        assert store.by_mac("00:50:56:00:00:0c") is not None
        assert await store.look_up("127.0.0.9", ["00:50:56:00:00:0d"]) is False
    finally:
        await store.close()


def test_the_postgres_look_up_is_one_indexed_query(postgres_url: str) -> None:
    # Enough rows that a sequential scan would cost more than the unique indexes.
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(store_postgres.SCHEMA)
        db.execute(
            "INSERT INTO instances (instance_id, ip, mac, hostname, meta_data, user_data, created, updated) "
            "SELECT 'i-' || n, '127.1.' || (n / 250) || '.' || (n % 250), "
            "'00:50:56:00:' || lpad(to_hex(n / 256), 2, '0') || ':' || lpad(to_hex(n % 256), 2, '0'), "
            "'h', '{}', '\\x00'::bytea, 0, 0 FROM generate_series(1, 5000) AS n"
        )
        db.execute("ANALYZE instances")
        cursor = psycopg.ClientCursor(db)
        for query, parameters, indexes in (
            (store_postgres.LOOK_UP, ("127.0.0.254",), {"instances_ip"}),
            (store_postgres.LOOK_UP_BY_MAC, ("127.0.0.254", ["00:50:56:ff:00:01"]), {"instances_ip", "instances_mac"}),
        ):
            plan = "\n".join(row[0] for row in cursor.execute(f"EXPLAIN {query}", parameters).fetchall())
            assert "Seq Scan" not in plan, plan
            assert all(index in plan for index in indexes), plan
