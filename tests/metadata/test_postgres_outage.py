"""A PostgreSQL outage, for real: the tests stop the database server (one of their own,
not the session's) under a store and under a running `beachhead metadata-server`. The
store's health probe fails and recovers; requests that need the database get 503 with
Retry-After (guest and admin alike), ``/healthz`` says the store is unreachable, what
the index holds is still served, and everything works again once the database is back."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest

from beachhead.bootstrap.local_postgres import LocalPostgres
from beachhead.metadata_server.errors import StoreUnavailable
from beachhead.metadata_server.store import open_store
from tests.metadata.conftest import MetadataServer, create_database, free_port

Guest = Callable[[str], aiohttp.ClientSession]
RECOVER_TIMEOUT_S = 30.0
DATABASES = itertools.count()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server these tests may stop (each test leaves it running)."""
    with LocalPostgres(free_port(), fsync=False) as server:
        yield server


@pytest.fixture
def outage_url(own_postgres: LocalPostgres) -> Iterator[str]:
    """A fresh database on that server; the server is running again after the test."""
    yield create_database(own_postgres, f"outage_{next(DATABASES)}")
    if own_postgres.pid() is None:
        own_postgres.start()


async def test_ping_while_the_database_is_up_down_and_up_again(own_postgres: LocalPostgres, outage_url: str) -> None:
    store = open_store(outage_url)
    await store.open()
    try:
        await store.ping()
        own_postgres.stop()
        for _ in range(2):  # the broken connection, then a refused new one
            with pytest.raises(StoreUnavailable):
                await store.ping()
        own_postgres.start()
        await store.ping()  # a new connection
    finally:
        await store.close()


async def _answer(session: aiohttp.ClientSession, method: str, url: str, **kw: object) -> tuple[int, str, str | None]:
    async with session.request(method, url, **kw) as response:  # type: ignore[arg-type]
        return response.status, await response.text(), response.headers.get("Retry-After")


async def test_an_outage_answers_503_and_healthz_says_unreachable(
    start_server: Callable[..., MetadataServer], own_postgres: LocalPostgres, outage_url: str, guest: Guest
) -> None:
    server = start_server(db=outage_url)
    server.publish("i-known", "--ip", "127.0.0.2")
    admin = {"Authorization": f"Bearer {server.token}"}
    document = {"ip": "127.0.0.5", "user_data": base64.b64encode(b"#cloud-config\n").decode()}
    known, stranger, anyone = guest("127.0.0.2"), guest("127.0.0.3"), guest("127.0.0.1")
    own_postgres.stop()

    status, body, _ = await _answer(anyone, "GET", server.url + "/healthz")
    assert status == 503 and body == '{"status": "unavailable", "store": "unreachable"}'
    # The first fetch is recorded in the database: it cannot be answered now.
    status, body, retry = await _answer(known, "GET", server.url + "/user-data")
    assert status == 503 and retry is not None and int(retry) > 0 and "internal" not in body
    # A guest the index does not know must be looked for in the database.
    status, _, retry = await _answer(stranger, "GET", server.url + "/meta-data")
    assert status == 503 and retry is not None
    status, body, retry = await _answer(
        anyone, "PUT", server.url + "/admin/instances/i-new", json=document, headers=admin
    )
    assert status == 503 and retry is not None and '"field": "store"' in body
    # What the index holds and nothing needs to write is still served.
    status, body, _ = await _answer(known, "GET", server.url + "/meta-data")
    assert status == 200 and "i-known" in body
    status, _, _ = await _answer(anyone, "GET", server.url + "/admin/instances/i-known", headers=admin)
    assert status == 200

    own_postgres.start()
    deadline = time.monotonic() + RECOVER_TIMEOUT_S
    while (await _answer(anyone, "GET", server.url + "/healthz"))[0] != 200:
        assert time.monotonic() < deadline, "the store did not recover"
        await asyncio.sleep(0.1)
    status, body, _ = await _answer(known, "GET", server.url + "/user-data")
    assert status == 200 and body == "#cloud-config\n"
    status, _, _ = await _answer(anyone, "PUT", server.url + "/admin/instances/i-new", json=document, headers=admin)
    assert status == 201
    assert server.log_lines("metadata.store_unavailable") and server.log_lines("metadata.unhealthy")
