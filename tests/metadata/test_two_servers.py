"""Two real `beachhead metadata-server` processes on one PostgreSQL database serve one
set of instances: publish through one, cloud-init fetches through the other; a phone
home reaching one answers a long-poll held by the other; an IMDSv2 token issued by one
is accepted by the other (and a forged one by neither); a guest asking the other before
the publication's notification reached it is found in the database."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psycopg
import pytest

from beachhead.metadata_server import store_postgres
from beachhead.metadata_server.records import Instance
from beachhead.metadata_server.store import _row
from tests.metadata.conftest import MetadataServer, cloudinit

Guest = Callable[[str], aiohttp.ClientSession]
SEEN_TIMEOUT_S = 10.0
USER_DATA = "#cloud-config\n# served by the other server\n"


@pytest.fixture
def pair(start_server: Callable[..., MetadataServer], postgres_url: str, tmp_path: Path) -> tuple[MetadataServer, ...]:
    """Servers A and B on the same database and the same admin token."""
    first = start_server(db=postgres_url, directory=tmp_path)
    second = start_server(db=postgres_url, directory=tmp_path)  # same directory: same admin token file
    return first, second


async def _seen(server: MetadataServer, instance: str, guest: Guest) -> None:
    """Wait (bounded) until ``server`` lists ``instance``: another server's write has
    reached its index."""
    deadline = time.monotonic() + SEEN_TIMEOUT_S
    headers = {"Authorization": f"Bearer {server.token}"}
    while time.monotonic() < deadline:
        async with guest("127.0.0.1").get(f"{server.url}/admin/instances/{instance}", headers=headers) as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{server.url} did not see {instance} within {SEEN_TIMEOUT_S}s")


async def test_published_on_one_fetched_by_cloud_init_through_the_other(
    pair: tuple[MetadataServer, MetadataServer], guest: Guest
) -> None:
    first, second = pair
    first.publish("i-shared", "--ip", "127.0.0.1", "--hostname", "shared-01", user_data=USER_DATA)
    await _seen(second, "i-shared", guest)
    got = cloudinit("nocloud", second.url + "/")
    assert got["meta_data"]["instance-id"] == "i-shared"
    assert base64.b64decode(got["user_data"]["base64"]).decode() == USER_DATA
    # The fetch recorded by the second server shows on the first.
    headers = {"Authorization": f"Bearer {first.token}"}
    deadline = time.monotonic() + SEEN_TIMEOUT_S
    fetched_at = None
    while fetched_at is None and time.monotonic() < deadline:
        async with guest("127.0.0.1").get(f"{first.url}/admin/instances/i-shared", headers=headers) as response:
            fetched_at = (await response.json())["fetched_at"]
        await asyncio.sleep(0.05)
    assert fetched_at is not None


async def test_a_phone_home_on_one_wakes_a_waiter_on_the_other(
    pair: tuple[MetadataServer, MetadataServer], guest: Guest
) -> None:
    first, second = pair
    first.publish("i-wait", "--ip", "127.0.0.2")
    await _seen(second, "i-wait", guest)
    headers = {"Authorization": f"Bearer {second.token}"}
    url = f"{second.url}/admin/instances/i-wait/wait?event=phoned_home&timeout=60"
    waiting = asyncio.ensure_future(guest("127.0.0.1").get(url, headers=headers))
    await asyncio.sleep(0.5)  # let the request reach the second server and park there
    assert not waiting.done()  # nothing happened yet: the waiter is still waiting
    async with guest("127.0.0.2").post(first.url + "/phone-home", data={"instance_id": "i-wait"}) as response:
        assert response.status == 200
    async with asyncio.timeout(30):
        response = await waiting
    body = await response.json()
    response.release()
    assert body["event"] == "phoned_home" and body["happened"] is True and body["at"] is not None


async def test_an_imdsv2_token_from_one_is_accepted_by_the_other(
    pair: tuple[MetadataServer, MetadataServer], guest: Guest
) -> None:
    first, second = pair
    first.publish("i-token", "--ip", "127.0.0.1", user_data=USER_DATA)
    await _seen(second, "i-token", guest)
    request = urllib.request.Request(
        first.url + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = answer.read().decode()
    got = cloudinit("ec2", second.url, token)
    assert got["meta_data"]["instance-id"] == "i-token"
    for server in (first, second):
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        headers = {"X-aws-ec2-metadata-token": tampered}
        async with guest("127.0.0.1").get(server.url + "/latest/meta-data/", headers=headers) as response:
            assert response.status == 401


def _publish_unnotified(postgres_url: str, instance_id: str, ip: str, hostname: str) -> None:
    """Write an instance as a server's publish writes it, its notification withheld: the
    other servers can only find it in the database."""
    now = time.time()
    published = Instance(instance_id, ip, None, hostname, USER_DATA.encode(), created=now, updated=now)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(store_postgres.UPSERT, _row(published))


async def test_a_guest_asking_the_other_before_the_notification_arrives_is_served(
    pair: tuple[MetadataServer, MetadataServer], postgres_url: str, guest: Guest
) -> None:
    first, second = pair
    _publish_unnotified(postgres_url, "i-early", "127.0.0.3", "early-01")
    async with guest("127.0.0.3").get(second.url + "/user-data") as response:
        assert response.status == 200
        assert await response.read() == USER_DATA.encode()
    async with guest("127.0.0.4").get(second.url + "/meta-data") as response:
        assert response.status == 404  # nothing published for this one, in the index or the database
    # The fetch recorded by the second server is notified: the first learns the instance from it.
    await _seen(first, "i-early", guest)


async def test_an_admin_request_before_the_notification_arrives_finds_the_instance(
    pair: tuple[MetadataServer, MetadataServer], postgres_url: str, guest: Guest
) -> None:
    _, second = pair
    _publish_unnotified(postgres_url, "i-admin-early", "127.0.0.5", "early-02")
    headers = {"Authorization": f"Bearer {second.token}"}
    async with guest("127.0.0.1").get(f"{second.url}/admin/instances/i-admin-early", headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["hostname"] == "early-02"
    async with guest("127.0.0.1").get(f"{second.url}/admin/instances/i-nobody", headers=headers) as response:
        assert response.status == 404  # in neither the index nor the database
