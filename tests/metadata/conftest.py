"""Fixtures for the metadata server tests: the real `beachhead metadata-server` on a
loopback port, a helper to publish through the real CLI, and HTTP clients that connect
from chosen loopback addresses (each one a different "guest")."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from beachhead.bootstrap.local_postgres import LocalPostgres
from tests.conftest import BEACHHEAD, beachhead

SYSTEM_PYTHON = "/usr/bin/python3"
CLOUDINIT_CLIENT = Path(__file__).with_name("cloudinit_client.py")
START_TIMEOUT_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class MetadataServer:
    """A running `beachhead metadata-server` and how to reach its admin API."""

    directory: Path
    port: int
    options: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    db: str | None = None  # a postgresql:// URL; None: metadata.sqlite in the directory
    process: subprocess.Popen[str] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "server.log"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def token_file(self) -> Path:
        """The admin token file."""
        return self.directory / "admin.token"

    @property
    def token(self) -> str:
        """The admin token."""
        return self.token_file.read_text().strip()

    @property
    def client_env(self) -> dict[str, str]:
        """The environment that points a ``beachhead run`` at this server."""
        return {"BEACHHEAD_METADATA_SERVER": self.url, "BEACHHEAD_METADATA_TOKEN_FILE": str(self.token_file)}

    def start(self) -> MetadataServer:
        """Start the server and wait (bounded) until it accepts connections."""
        command = [
            str(BEACHHEAD),
            "metadata-server",
            "--listen",
            f"{self.host}:{self.port}",
            "--db",
            self.db or str(self.directory / "metadata.sqlite"),
            "--admin-token-file",
            str(self.token_file),
            *self.options,
        ]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"metadata server exited: {self.log.read_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"metadata server not listening within {START_TIMEOUT_S}s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the server (SIGKILL: as if it crashed); its exit status."""
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=20)

    def publish(self, instance: str, *options: str, user_data: str = "#cloud-config\n") -> dict[str, Any]:
        """Publish through the CLI; the summary it prints."""
        path = self.directory / f"{instance}.user-data"
        path.write_text(user_data)
        done = beachhead(
            "metadata",
            "publish",
            "--server",
            self.url,
            "--token-file",
            str(self.token_file),
            "--instance",
            instance,
            "--user-data",
            str(path),
            *options,
        )
        assert done.returncode == 0, done.stderr
        summary: dict[str, Any] = json.loads(done.stdout)
        return summary

    def internal_errors(self) -> list[str]:
        """Lines of the server log that report a bug (a 5xx) or hold a traceback."""
        return [line for line in self.log.read_text().splitlines() if "internal_error" in line or "Traceback" in line]

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        """The server log's JSON lines for ``event``."""
        lines = []
        for line in self.log.read_text().splitlines():
            if f'"{event}"' in line:
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return [line for line in lines if line.get("event") == event]


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (each test gets its own database)."""
    with LocalPostgres(free_port(), fsync=False) as server:
        yield server


DATABASES = itertools.count()


def create_database(server: LocalPostgres, name: str) -> str:
    """Create the empty database ``name`` on ``server``; its URL."""
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.url(name)


@pytest.fixture
def postgres_url(postgres: LocalPostgres) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server; dropped after the test."""
    import psycopg

    name = f"test_{os.getpid()}_{next(DATABASES)}"
    yield create_database(postgres, name)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request: pytest.FixtureRequest) -> str | None:
    """Each store in turn: None (the SQLite default) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def default_db() -> str | None:
    """The store ``start_server`` uses: SQLite (a module overrides this with ``store_db``)."""
    return None


@pytest.fixture
def start_server(tmp_path: Path, default_db: str | None) -> Iterator[Callable[..., MetadataServer]]:
    """Starts metadata servers (with extra options); stops them after the test."""
    started: list[MetadataServer] = []

    def start(
        *options: str, directory: Path | None = None, port: int | None = None, db: str | None = None
    ) -> MetadataServer:
        server = MetadataServer(directory or tmp_path, port or free_port(), options, db=db or default_db).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.stop()
        assert server.internal_errors() == [], "the server answered a request with a 5xx"


@pytest.fixture
def server(start_server: Callable[..., MetadataServer]) -> MetadataServer:
    """One metadata server with default options."""
    return start_server()


@pytest.fixture
async def guest() -> AsyncIterator[Callable[[str], aiohttp.ClientSession]]:
    """HTTP sessions that connect from a given loopback address (a guest's address)."""
    sessions: list[aiohttp.ClientSession] = []

    def session(address: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
        made = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        sessions.append(made)
        return made

    yield session
    for made in sessions:
        await made.close()


def raw_request(server: MetadataServer, data: bytes, source: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is from ``source`` and return what the server answers until it
    closes the connection (``Connection: close`` in ``data``), within ``timeout``."""
    deadline = time.monotonic() + timeout
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect((server.host, server.port))
        sock.sendall(data)
        answer = b""
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    return answer


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 when there is none)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def cloudinit(kind: str, url: str, token: str | None = None, netns: str | None = None) -> dict[str, Any]:
    """Run cloud-init's own reader (Debian's package, system Python) against ``url``,
    inside network namespace ``netns`` when given (a lab guest's)."""
    command = [SYSTEM_PYTHON, str(CLOUDINIT_CLIENT), kind, url, *([token] if token else [])]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "*", "no_proxy": "*"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result
