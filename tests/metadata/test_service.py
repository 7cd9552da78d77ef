"""The metadata server as a service: its systemd unit verifies and its command line
runs, ``/healthz`` follows the store, ``/metrics`` moves with real requests (parsed
with prometheus_client's own parser), and the access log names each request without
a secret."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BEACHHEAD, beachhead
from tests.metadata.conftest import MetadataServer, free_port
from tests.secret_search import hits

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "bootstrap" / "systemd" / "beachhead-metadata.service"
INSTALLED_AT = "/usr/local/bin/beachhead"  # where the unit expects the CLI (README)
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
Guest = Callable[[str], aiohttp.ClientSession]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter not counted yet)."""
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(url: str, token: str | None) -> Samples:
    """GET /metrics (with the admin token when given), parsed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return samples(await response.text())


async def _status(session: aiohttp.ClientSession, url: str, **kwargs: object) -> int:
    async with session.get(url, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status


def render_unit(directory: Path) -> Path:
    """The shipped unit with ExecStart pointing at this venv's CLI, for verify."""
    text = UNIT.read_text()
    assert INSTALLED_AT in text
    rendered = directory / UNIT.name
    rendered.write_text(text.replace(INSTALLED_AT, str(BEACHHEAD)))
    return rendered


def exec_start(unit: Path) -> str:
    """The unit's ExecStart command line (continuation lines joined)."""
    text = unit.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1
    return lines[0].removeprefix("ExecStart=")


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    rendered = render_unit(tmp_path)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on an unknown key but says so: any message is a defect.
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    unshipped = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    if not Path(INSTALLED_AT).exists():  # the check is real: a missing binary fails it
        assert unshipped.returncode != 0 and INSTALLED_AT in unshipped.stderr
    text = UNIT.read_text()
    for setting in (
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=beachhead-metadata",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "NoNewPrivileges=yes",
        "LoadCredential=admin-token:/etc/beachhead/metadata-admin.token",
    ):
        assert setting in text, setting


def test_the_units_command_line_runs_the_server(tmp_path: Path) -> None:
    """ExecStart with systemd's substitutions made by hand (state and credentials
    directories, the environment) starts a server that answers /healthz."""
    state, credentials = tmp_path / "state", tmp_path / "credentials"
    (state / "beachhead-metadata").mkdir(parents=True)
    credentials.mkdir()
    (credentials / "admin-token").write_text("a-token-of-at-least-16-characters\n")
    port = free_port()
    line = exec_start(UNIT)
    line = line.replace("%S", str(state)).replace("%d", str(credentials))
    line = line.replace("${BEACHHEAD_LISTEN}", f"127.0.0.1:{port}").replace("$BEACHHEAD_OPTIONS", "")
    command = shlex.split(line)
    assert command[0] == INSTALLED_AT
    command[0] = str(BEACHHEAD)
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        answer = b""
        while time.monotonic() < deadline and process.poll() is None:
            done = subprocess.run(
                ["curl", "-s", "--noproxy", "*", f"http://127.0.0.1:{port}/healthz"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            if done.returncode == 0:
                answer = done.stdout
                break
            time.sleep(0.1)
        assert b'"status": "ok"' in answer, (tmp_path / "server.log").read_text()
        assert (state / "beachhead-metadata" / "metadata.sqlite").exists()
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


async def test_metrics_move_with_real_requests(
    start_server: Callable[..., MetadataServer], guest: Guest, tmp_path: Path
) -> None:
    metrics_port = free_port()
    server = start_server("--metrics-listen", f"127.0.0.1:{metrics_port}")
    management = f"http://127.0.0.1:{metrics_port}"
    before = await scrape(management, None)
    assert value(before, "beachhead_metadata_instances") == 0

    server.publish("web-01", "--ip", "127.0.0.21")
    known, stranger = guest("127.0.0.21"), guest("127.0.0.99")
    assert await _status(known, server.url + "/meta-data") == 200
    assert await _status(known, server.url + "/openstack/latest/meta_data.json") == 200
    assert await _status(stranger, server.url + "/meta-data") == 404

    after = await scrape(server.url, server.token)  # on the guests' listener: with the admin token
    total = "beachhead_metadata_requests_total"
    assert value(after, total, route="nocloud", status="200") - value(before, total, route="nocloud", status="200") == 1
    assert value(after, total, route="nocloud", status="404") - value(before, total, route="nocloud", status="404") == 1
    assert value(after, total, route="openstack", status="200") == 1
    assert value(after, total, route="admin", status="201") == 1
    assert value(after, "beachhead_metadata_unrecognised_guests_total") == 1
    assert value(after, "beachhead_metadata_instances") == 1
    assert value(after, "beachhead_metadata_waiters") == 0
    assert value(after, "beachhead_metadata_store_duration_seconds_count", operation="put") == 1
    assert value(after, "beachhead_metadata_store_duration_seconds_count", operation="set_status") == 0
    assert value(after, "beachhead_metadata_request_duration_seconds_count", route="nocloud") == 2

    # A long-poll is a waiter while it waits.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {server.token}"}) as admin:

        async def wait() -> bool:
            url = server.url + "/admin/instances/web-01/wait?event=phoned_home&timeout=60"
            async with admin.get(url) as response:
                happened: bool = (await response.json())["happened"]
                return happened

        waiter = asyncio.create_task(wait())
        deadline = time.monotonic() + 20
        while value(await scrape(management, None), "beachhead_metadata_waiters") != 1:
            assert time.monotonic() < deadline and not waiter.done(), "the long-poll never counted as a waiter"
            await asyncio.sleep(0.05)
        async with known.post(server.url + "/phone-home", data={"instance_id": "web-01"}) as posted:
            assert posted.status == 200
        assert await asyncio.wait_for(waiter, 20) is True
    done = await scrape(management, None)
    assert value(done, "beachhead_metadata_waiters") == 0
    assert value(done, "beachhead_metadata_store_duration_seconds_count", operation="set_status") == 1
    assert value(done, total, route="phone_home", status="200") == 1

    # Without the token, the guests' listener refuses /metrics; the management one needs none.
    async with aiohttp.ClientSession() as session:
        assert await _status(session, server.url + "/metrics") == 401
        assert await _status(known, server.url + "/metrics") == 401


async def test_healthz_follows_the_store(server: MetadataServer, guest: Guest) -> None:
    session = guest("127.0.0.50")  # anyone may ask: no instance data in it
    async with session.get(server.url + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    database = server.directory / "metadata.sqlite"
    moved = server.directory / "moved-away.sqlite"
    database.rename(moved)  # the file the server would reopen is gone
    try:
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 503
            body = await response.json()
            assert body["status"] == "unavailable" and body["store"]
    finally:
        moved.rename(database)
    async with session.get(server.url + "/healthz") as response:
        assert response.status == 200
    assert server.log_lines("metadata.unhealthy")


async def test_the_access_log_names_requests_and_no_secret(server: MetadataServer, guest: Guest) -> None:
    user_data = "#cloud-config\n# user-data-body-marker-31337\n"
    server.publish("web-01", "--ip", "127.0.0.21", user_data=user_data)
    known, stranger = guest("127.0.0.21"), guest("127.0.0.99")
    async with known.put(server.url + "/latest/api/token", headers=TTL) as response:
        assert response.status == 200
        imds_token = await response.text()
    headers = {"X-aws-ec2-metadata-token": imds_token}
    assert await _status(known, server.url + "/latest/meta-data/instance-id", headers=headers) == 200
    assert await _status(known, server.url + "/latest/user-data", headers=headers) == 200
    query_secret = "query-secret-value-4242"
    assert await _status(known, server.url + f"/meta-data?token={query_secret}") == 200
    assert await _status(stranger, server.url + "/user-data") == 404
    assert beachhead("metadata", "list", "--server", server.url, "--token-file", str(server.token_file)).returncode == 0

    lines = server.log_lines("metadata.request")
    by_path = {(line["method"], line["path"], line["remote"]): line for line in lines}
    fetch = by_path[("GET", "/latest/meta-data/instance-id", "127.0.0.21")]
    assert fetch["status"] == 200 and fetch["instance"] == "web-01" and fetch["duration_ms"] >= 0
    assert by_path[("GET", "/meta-data", "127.0.0.21")]["instance"] == "web-01"  # path without its query
    unknown = by_path[("GET", "/user-data", "127.0.0.99")]
    assert unknown["status"] == 404 and "instance" not in unknown
    publish = by_path[("PUT", "/admin/instances/web-01", "127.0.0.1")]
    assert publish["status"] == 201
    assert by_path[("GET", "/admin/instances", "127.0.0.1")]["status"] == 200

    secrets: dict[str, str | bytes] = {
        "admin token": server.token,
        "IMDSv2 token": imds_token,
        "query string": query_secret,
        "user-data": "user-data-body-marker-31337",
    }
    assert hits(server.log.read_bytes(), secrets) == []


async def test_no_access_log_when_switched_off(start_server: Callable[..., MetadataServer], guest: Guest) -> None:
    server = start_server("--no-access-log")
    server.publish("web-01", "--ip", "127.0.0.21")
    assert await _status(guest("127.0.0.21"), server.url + "/meta-data") == 200
    assert server.log_lines("metadata.published")  # the server logs, just not each request
    assert server.log_lines("metadata.request") == []
    assert os.path.getsize(server.log) > 0
