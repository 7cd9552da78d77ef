"""Guests are recognised by the address they connect from and get only their own
instance's data; IMDSv2 tokens are bound to that address; phone home and the admin
long-poll report what guests did; a forwarded-for header counts only from a trusted
proxy; a dnsmasq lease file maps addresses to published MACs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import await_until, tcp_connections
from tests.metadata.conftest import MetadataServer

TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
TOKEN = "X-aws-ec2-metadata-token"
GUEST_PATHS = (
    "/meta-data",
    "/user-data",
    "/latest/meta-data/",
    "/latest/meta-data/instance-id",
    "/latest/user-data",
    "/2016-09-02/meta-data/local-ipv4",
    "/openstack/latest/meta_data.json",
    "/openstack/latest/user_data",
)
Guest = Callable[[str], aiohttp.ClientSession]


async def _get(session: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, str]:
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.text()


async def test_each_guest_gets_its_own_data_and_an_unknown_guest_nothing(server: MetadataServer, guest: Guest) -> None:
    server.publish("i-two", "--ip", "127.0.0.2", user_data="#cloud-config\n# two\n")
    server.publish("i-three", "--ip", "127.0.0.3", user_data="#cloud-config\n# three\n")
    for address, instance, marker in (("127.0.0.2", "i-two", "# two"), ("127.0.0.3", "i-three", "# three")):
        session = guest(address)
        for path in GUEST_PATHS:
            status, text = await _get(session, server.url + path)
            assert status == 200, (address, path, text)
            assert "i-two" not in text.replace(instance, "") and "i-three" not in text.replace(instance, "")
        assert (await _get(session, server.url + "/user-data"))[1].endswith(f"{marker}\n")
        assert (await _get(session, server.url + "/latest/meta-data/instance-id"))[1] == instance
    stranger = guest("127.0.0.4")
    for path in GUEST_PATHS:
        status, text = await _get(stranger, server.url + path)
        assert status == 404 and "i-" not in text, (path, text)


async def test_imdsv2_tokens_are_bound_to_the_address_and_checked(server: MetadataServer, guest: Guest) -> None:
    server.publish("i-two", "--ip", "127.0.0.2")
    server.publish("i-three", "--ip", "127.0.0.3")
    two, three = guest("127.0.0.2"), guest("127.0.0.3")
    async with two.put(server.url + "/latest/api/token", headers=TTL) as response:
        assert response.status == 200 and response.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "60"
        token = await response.text()
    url = server.url + "/latest/meta-data/instance-id"
    assert await _get(two, url, headers={TOKEN: token}) == (200, "i-two")
    assert (await _get(three, url, headers={TOKEN: token}))[0] == 401  # borrowed
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert (await _get(two, url, headers={TOKEN: forged}))[0] == 401
    assert (await _get(two, url, headers={TOKEN: "not-a-token"}))[0] == 401
    assert (await _get(two, url, headers={TOKEN: "x" * 5000}))[0] in (400, 401, 431)
    for ttl in ("0", "21601", "soon", ""):
        async with two.put(
            server.url + "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        ) as r:
            assert r.status == 400, ttl
    async with two.put(server.url + "/latest/api/token") as response:
        assert response.status == 400
    async with two.put(server.url + "/latest/api/token", headers={**TTL, "X-Forwarded-For": "127.0.0.3"}) as r:
        assert r.status == 403
    async with two.put(server.url + "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "1"}) as r:
        short = await r.text()
    deadline = time.monotonic() + 5  # a 1s token is expired within about a second
    while (answer := await _get(two, url, headers={TOKEN: short})) == (200, "i-two"):
        assert time.monotonic() < deadline, "a 1s token still accepted after 5s"
        await asyncio.sleep(0.05)
    status, text = answer
    assert (status, text.strip()) == (401, "token expired")
    # Without --require-token, IMDSv1 (no token) is still served.
    assert await _get(two, url) == (200, "i-two")


async def test_require_token_refuses_imdsv1(start_server: Callable[..., MetadataServer], guest: Guest) -> None:
    server = start_server("--require-token")
    server.publish("i-two", "--ip", "127.0.0.2")
    two = guest("127.0.0.2")
    assert (await _get(two, server.url + "/latest/meta-data/instance-id"))[0] == 401
    async with two.put(server.url + "/latest/api/token", headers=TTL) as response:
        token = await response.text()
    assert await _get(two, server.url + "/latest/meta-data/instance-id", headers={TOKEN: token}) == (200, "i-two")


async def test_fetch_and_phone_home_are_recorded_and_waited_for(server: MetadataServer, guest: Guest) -> None:
    server.publish("i-two", "--ip", "127.0.0.2")
    admin = guest("127.0.0.1")
    auth = {"Authorization": f"Bearer {server.token}"}
    wait_url = server.url + "/admin/instances/i-two/wait"

    async def wait(event: str, timeout: float) -> dict[str, object]:
        async with admin.get(wait_url, params={"event": event, "timeout": str(timeout)}, headers=auth) as response:
            assert response.status == 200
            answer: dict[str, object] = await response.json()
            return answer

    assert (await wait("fetched", 0))["happened"] is False
    fetch_waiter = asyncio.create_task(wait("fetched", 20))
    phone_waiter = asyncio.create_task(wait("phoned_home", 20))
    # Both long-polls are in the server (connected, and a later request answered) and
    # still unanswered before the guest fetches.
    await await_until(
        lambda: sum(remote == server.port for _, remote in tcp_connections(os.getpid()).values()) >= 2,
        what="the two waits connected",
    )
    assert (await wait("fetched", 0))["happened"] is False
    assert not fetch_waiter.done() and not phone_waiter.done()
    two = guest("127.0.0.2")
    before = time.time()
    assert (await _get(two, server.url + "/user-data"))[0] == 200
    fetched = await asyncio.wait_for(fetch_waiter, 5)
    assert fetched["happened"] is True and isinstance(fetched["at"], float) and fetched["at"] >= before
    assert not phone_waiter.done()
    form = {"instance_id": "i-two", "hostname": "two", "pub_key_ed25519": "ssh-ed25519 AAAA"}
    async with two.post(server.url + "/phone-home/i-two", data=form) as response:
        assert response.status == 200
    phoned = await asyncio.wait_for(phone_waiter, 5)
    assert phoned["happened"] is True
    async with admin.get(server.url + "/admin/instances/i-two", headers=auth) as response:
        summary = await response.json()
    assert summary["fetched_at"] == fetched["at"] and summary["phoned_home_at"] == phoned["at"]
    # Another guest cannot phone home for i-two.
    server.publish("i-three", "--ip", "127.0.0.3")
    async with guest("127.0.0.3").post(server.url + "/phone-home/i-two", data=form) as response:
        assert response.status == 404
    # Publishing again means new data: not fetched yet.
    server.publish("i-two", "--ip", "127.0.0.2", user_data="#cloud-config\n# v2\n")
    assert (await wait("fetched", 0))["happened"] is False


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
    start_server: Callable[..., MetadataServer], guest: Guest
) -> None:
    server = start_server("--trusted-proxy", "127.0.0.9/32")
    server.publish("i-two", "--ip", "127.0.0.2")
    forwarded = {"X-Forwarded-For": "127.0.0.77, 127.0.0.2"}
    url = server.url + "/latest/meta-data/instance-id"
    assert await _get(guest("127.0.0.9"), url, headers=forwarded) == (200, "i-two")
    assert (await _get(guest("127.0.0.5"), url, headers=forwarded))[0] == 404  # not a proxy: its own address counts
    assert (await _get(guest("127.0.0.9"), url, headers={"X-Forwarded-For": "nonsense"}))[0] == 400


async def test_a_lease_file_maps_addresses_to_published_macs(
    start_server: Callable[..., MetadataServer], guest: Guest, tmp_path: Path
) -> None:
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text("1800000000 00:50:56:aa:00:06 127.0.0.6 guest6 *\n")
    server = start_server("--leases", str(leases))
    server.publish("i-six", "--mac", "00:50:56:AA:00:06")
    url = server.url + "/latest/meta-data/instance-id"
    assert await _get(guest("127.0.0.6"), url) == (200, "i-six")
    assert (await _get(guest("127.0.0.7"), url))[0] == 404
    # The address moved to another machine: the guest behind it is no longer i-six.
    leases.write_text("1800000000 00:50:56:aa:00:99 127.0.0.6 other *\n")
    assert (await _get(guest("127.0.0.6"), url))[0] == 404
