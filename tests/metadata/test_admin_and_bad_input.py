"""The admin API and the CLI around it; bad input of every kind gets a clear 4xx with
nothing stored and nothing leaked; the store survives a restart and a crash."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import beachhead
from tests.metadata.conftest import DATABASES, MetadataServer, create_database, free_port

Guest = Callable[[str], aiohttp.ClientSession]


@pytest.fixture
def default_db(store_db: str | None) -> str | None:
    """Every test here runs on each store: SQLite and PostgreSQL."""
    return store_db


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def start_shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], MetadataServer]]:
    """Starts servers that many parametrized cases share (a server start costs seconds,
    a case milliseconds), each on a store of its own of the parameter's kind; the cases
    that use them change nothing stored. Stopped, and their databases dropped, after the
    module."""
    postgres = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    started: list[MetadataServer] = []
    databases: list[str] = []

    def start() -> MetadataServer:
        db = None
        if postgres is not None:
            databases.append(f"test_{os.getpid()}_{next(DATABASES)}")
            db = create_database(postgres, databases[-1])
        server = MetadataServer(tmp_path_factory.mktemp("shared-server"), free_port(), db=db).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    if postgres is not None:
        import psycopg

        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            for name in databases:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def shared_empty(start_shared: Callable[[], MetadataServer]) -> MetadataServer:
    """A shared server with nothing published."""
    return start_shared()


@pytest.fixture(scope="module")
def shared_two(start_shared: Callable[[], MetadataServer]) -> MetadataServer:
    """A shared server with guest i-two published at 127.0.0.2."""
    server = start_shared()
    server.publish("i-two", "--ip", "127.0.0.2")
    return server


@pytest.fixture
def empty_server(shared_empty: MetadataServer) -> Iterator[MetadataServer]:
    """The shared empty server; no 5xx in its log after the test."""
    yield shared_empty
    assert shared_empty.internal_errors() == [], "the server answered a request with a 5xx"


@pytest.fixture
def server_with_two(shared_two: MetadataServer) -> Iterator[MetadataServer]:
    """The shared server knowing i-two; no 5xx in its log after the test."""
    yield shared_two
    assert shared_two.internal_errors() == [], "the server answered a request with a 5xx"


async def _admin(
    session: aiohttp.ClientSession, server: MetadataServer, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {server.token if token is None else token}"}
    async with session.request(method, server.url + path, headers=headers, **kw) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


def _listed(server: MetadataServer) -> list[str]:
    done = beachhead("metadata", "list", "--server", server.url, "--token-file", str(server.token_file))
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["instance_id"] for line in done.stdout.splitlines()]


async def test_publish_list_update_and_revoke(server: MetadataServer, guest: Guest) -> None:
    created = server.publish("i-a", "--ip", "127.0.0.2", "--hostname", "alpha")
    assert (created["instance_id"], created["ip"], created["hostname"]) == ("i-a", "127.0.0.2", "alpha")
    assert created["user_data_bytes"] == len("#cloud-config\n")
    server.publish("i-b", "--mac", "00:50:56:00:00:0b")
    assert _listed(server) == ["i-a", "i-b"]
    updated = server.publish("i-a", "--ip", "127.0.0.2", user_data="#cloud-config\n# v2\n")
    assert updated["created"] == created["created"] and updated["updated"] > created["updated"]
    async with guest("127.0.0.2").get(server.url + "/user-data") as response:
        assert await response.text() == "#cloud-config\n# v2\n"
    revoked = beachhead(
        "metadata", "revoke", "--server", server.url, "--token-file", str(server.token_file), "--instance", "i-a"
    )
    assert revoked.returncode == 0, revoked.stderr
    async with guest("127.0.0.2").get(server.url + "/user-data") as response:
        assert response.status == 404
    again = beachhead(
        "metadata", "revoke", "--server", server.url, "--token-file", str(server.token_file), "--instance", "i-a"
    )
    assert again.returncode == 1 and "HTTP 404" in again.stderr
    assert _listed(server) == ["i-b"]


def test_the_store_survives_a_restart_and_a_crash(
    start_server: Callable[..., MetadataServer], tmp_path: Path, default_db: str | None
) -> None:
    server = start_server()
    server.publish("i-keep", "--ip", "127.0.0.2", user_data="#cloud-config\n# kept\n")
    assert server.stop() == 0
    again = start_server(port=server.port)
    assert _listed(again) == ["i-keep"]
    again.publish("i-crash", "--ip", "127.0.0.3")
    again.stop(signal.SIGKILL)  # acknowledged writes must be on disk already
    third = start_server(port=server.port)
    assert _listed(third) == ["i-crash", "i-keep"]
    if default_db is None:
        assert (tmp_path / "metadata.sqlite").stat().st_mode & 0o777 == 0o600


async def test_admin_needs_the_token(server: MetadataServer, guest: Guest) -> None:
    session = guest("127.0.0.1")
    assert (await _admin(session, server, "GET", "/admin/instances", token="wrong-token-of-some-length"))[0] == 401
    async with session.get(server.url + "/admin/instances") as response:
        assert response.status == 401
    async with session.get(server.url + "/admin/instances", headers={"Authorization": "Basic " + "x" * 20}) as r:
        assert r.status == 401
    status, body = await _admin(session, server, "GET", "/admin/instances")
    assert (status, body) == (200, {"instances": []})


def _body(**fields: Any) -> dict[str, Any]:
    return {"ip": "127.0.0.2", "user_data": base64.b64encode(b"#cloud-config\n").decode(), **fields}


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/admin/instances/i-x", "not json", 400, "body"),
        ("/admin/instances/i-x", [1, 2], 400, "body"),
        ("/admin/instances/i-x", _body(user_data="%%%"), 400, "user_data"),
        ("/admin/instances/i-x", _body(user_data=None), 400, "user_data"),
        ("/admin/instances/i-x", _body(ip="10.0.0.300"), 400, "ip"),
        ("/admin/instances/i-x", _body(ip=None), 400, "ip"),
        ("/admin/instances/i-x", _body(mac="zz:zz"), 400, "mac"),
        ("/admin/instances/i-x", _body(hostname="bad host!"), 400, "hostname"),
        ("/admin/instances/i-x", _body(colour="red"), 400, "colour"),
        ("/admin/instances/i-x", _body(meta_data=base64.b64encode(b"- a list").decode()), 400, "meta_data"),
        ("/admin/instances/i-x", _body(network_config=base64.b64encode(b"{oops").decode()), 400, "network_config"),
        ("/admin/instances/bad%20id", _body(), 400, "instance_id"),
        ("/admin/instances/..%2F..%2Fetc", _body(), 400, "instance_id"),
        ("/admin/instances/i-x%00", _body(), 400, "instance_id"),
    ],
)
async def test_bad_publishes_are_refused_and_store_nothing(
    empty_server: MetadataServer, guest: Guest, path: str, body: Any, status: int, field: str
) -> None:
    server = empty_server
    session = guest("127.0.0.1")
    payload = body if isinstance(body, str) else json.dumps(body)
    got, answer = await _admin(session, server, "PUT", path, data=payload)
    assert got == status and answer["field"] == field, answer
    assert (await _admin(session, server, "GET", "/admin/instances"))[1] == {"instances": []}


async def test_oversized_bodies_and_address_clashes(server: MetadataServer, guest: Guest) -> None:
    session = guest("127.0.0.1")
    huge = json.dumps(_body(user_data=base64.b64encode(b"x" * (9 * 1024 * 1024)).decode()))
    status, _ = await _admin(session, server, "PUT", "/admin/instances/i-huge", data=huge)
    assert status == 413
    server.publish("i-a", "--ip", "127.0.0.2", "--mac", "00:50:56:00:00:0a")
    status, answer = await _admin(session, server, "PUT", "/admin/instances/i-b", data=json.dumps(_body()))
    assert (status, answer["field"]) == (409, "ip") and "i-a" in answer["error"]
    clash = _body(ip="127.0.0.9", mac="00:50:56:00:00:0A")
    assert (await _admin(session, server, "PUT", "/admin/instances/i-b", data=json.dumps(clash)))[0] == 409
    assert [i["instance_id"] for i in (await _admin(session, server, "GET", "/admin/instances"))[1]["instances"]] == [
        "i-a"
    ]
    async with guest("127.0.0.2").post(server.url + "/phone-home", data=b"a=" + b"b" * 70000) as response:
        assert response.status == 413


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/../../admin/instances",
        "/latest/meta-data/%2e%2e/%2e%2e/etc/passwd",
        "/latest/meta-data/instance-id%00",
        "/latest/meta-data/%00",
        "/openstack/../../etc/passwd",
        "/openstack/latest/../../../etc/shadow",
        "/2099-01-01/meta-data/instance-id",
        "/latest/meta-data/public-keys/9/openssh-key",
        "/..%2f..%2fetc/passwd",
        "/%ff%fe",
        "/latest/meta-data/" + "a/" * 500,
    ],
)
async def test_odd_paths_get_a_4xx_and_nothing_else(server_with_two: MetadataServer, guest: Guest, path: str) -> None:
    server = server_with_two
    async with guest("127.0.0.2").get(server.url + path) as response:
        text = await response.text()
        assert 400 <= response.status < 500, (path, response.status, text)
    assert "root:" not in text and "i-two" not in text and "Traceback" not in text


def test_cli_bad_input_exits_2_naming_what(server: MetadataServer, tmp_path: Path) -> None:
    token = str(server.token_file)

    def publish(*options: str) -> subprocess.CompletedProcess[str]:
        return beachhead("metadata", "publish", "--server", server.url, "--token-file", token, *options)

    missing = publish("--instance", "i", "--ip", "127.0.0.2", "--user-data", str(tmp_path / "absent"))
    assert missing.returncode == 2 and str(tmp_path / "absent") in missing.stderr and "--user-data" in missing.stderr
    no_address = publish("--instance", "i", "--user-data", token)
    assert no_address.returncode == 2 and "--ip" in no_address.stderr
    refused = publish("--instance", "bad id", "--ip", "127.0.0.2", "--user-data", token)
    assert refused.returncode == 1 and "HTTP 400" in refused.stderr


def test_cli_bad_options_exit_2_naming_the_option(tmp_path: Path) -> None:
    """Refused before any server or store is reached: once, not once per store."""
    token_file = tmp_path / "admin.token"
    token_file.write_text("a-token-of-thirty-two-characters\n")
    token_file.chmod(0o600)
    token = str(token_file)
    bad_runs = [
        ("--server", ("metadata", "list", "--server", "ftp://x", "--token-file", token)),
        ("--listen", ("metadata-server", "--listen", "nowhere", "--admin-token-file", token)),
        (
            "--vcenter",
            ("metadata-server", "--listen", "127.0.0.1:1", "--admin-token-file", token, "--vcenter", "ssh://x"),
        ),
    ]
    for option, value in (
        ("--header-timeout", "0"),
        ("--header-timeout", "nan"),
        ("--body-timeout", "inf"),
        ("--max-connections", "0"),
        ("--max-connections-per-source", "-1"),
        ("--error-log-interval", "-5"),
    ):
        bad_runs.append(
            (option, ("metadata-server", "--listen", "127.0.0.1:1", "--admin-token-file", token, option, value))
        )
    # Independent CLI starts: run side by side, as each spends most of its time importing.
    with ThreadPoolExecutor(4) as pool:
        help_run = pool.submit(beachhead, "metadata-server", "--help")
        done = list(pool.map(lambda run: beachhead(*run[1]), bad_runs))
    for (option, args), bad in zip(bad_runs, done, strict=True):
        assert bad.returncode == 2 and option in bad.stderr, (args, bad.stderr)
    help_text = help_run.result().stdout
    for option in (
        "--listen",
        "--db",
        "--admin-token-file",
        "--require-token",
        "--trusted-proxy",
        "--leases",
        "--vcenter",
        "--header-timeout",
        "--body-timeout",
        "--max-connections",
        "--max-connections-per-source",
        "--error-log-interval",
    ):
        assert option in help_text
