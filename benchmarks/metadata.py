"""Metadata server: user-data for 1,000 instances, from one server on SQLite and from two
servers sharing PostgreSQL, side by side with nginx serving the same bytes.

Every server answers the same requests in the same process run, interleaved run by run
(beachhead, beachhead-pg, nginx, nginx auto, beachhead, ...) after one untimed warm-up
each, so that machine noise spreads evenly:

- ``beachhead``: the real ``beachhead metadata-server`` (one Python process) on
  127.0.0.1, with a temporary SQLite store and admin token. ``--instances`` distinct
  instances are published through its admin API, each with its own loopback address
  (spread over 127.0.0.0/8, never 127.0.0.1, each checked to be assignable) and its
  own 1-4 KiB of user-data. A guest asks ``GET /user-data``; the server recognises it
  by its source address and answers that instance's user-data (and records the fetch).
- ``beachhead-pg``: two ``beachhead metadata-server`` processes on 127.0.0.1 sharing
  one PostgreSQL database (Debian's server, started by the benchmark in a temporary
  data directory on loopback, fsync on as deployed; ``--no-postgres`` leaves it out).
  The same instances are published half through each server, and each instance's
  guest asks the server that did not publish it, so the load is split across both
  and every answer comes from what the other server wrote. Its CPU and memory are the
  two servers' and PostgreSQL's processes together; the beachhead-pg / beachhead
  ratios compare it with the one-server SQLite run.
- ``nginx``: Debian's nginx with ``worker_processes 1`` (the metadata server is one
  process, so one worker is the fair match), serving the same bytes as static files,
  ``GET /<instance-id>/user-data``; access log off, everything in a temporary
  directory. ``nginx-auto`` is the same with ``worker_processes auto`` (one worker per
  core), as nginx is usually deployed.

The load: every instance in turn opens one keep-alive connection from its own source
address and sends ``--requests-per-instance`` GETs on it, one after the other; slots
take the next instance as soon as theirs is done, so ``--concurrency`` requests are in
flight at once. Every response is checked (status 200 and exactly that instance's
bytes); a wrong or missing body fails the benchmark. The load generator is the same
for every server: a small HTTP/1.1 client on raw asyncio transports (much cheaper per
request than aiohttp's client, so it steals less CPU from the server under test),
spread over ``--generator-processes`` worker processes (default 2, one per core here)
that share the concurrency and pull instances from one shared counter.

Per run it reports requests/s (all requests over the wall time from the first
connection to the last response), p50 and p99 request latency (from sending a request
to the last byte of its response; connection setup excluded), the servers' CPU time
per request (utime + stime of the server processes, from /proc) and the generator's
CPU use; the table shows medians over ``--runs`` runs and beachhead's ratios to each
baseline. Peak RSS is VmHWM from /proc/PID/status after the last run (for nginx, the
master and its workers summed).

On a 2-core machine the generator competes with the server for the CPUs. The metadata
server saturates one core well below the generator's capacity; nginx does not, so its
requests/s is partly bounded by the generator and understates the gap. The CPU time
per request does not depend on that and is the fairer comparison of the work done.

Run it from the repository root (nginx from ``bash bootstrap/install.sh bench``):

    .venv/bin/python -m benchmarks.metadata [--instances 1000] [--concurrency 256] \\
        [--requests-per-instance 20] [--runs 5] [--generator-processes 2] [--no-postgres] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import multiprocessing
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Barrier
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import aiohttp

from beachhead.bootstrap.local_postgres import LocalPostgres, PostgresMissing, postgres_binary

BEACHHEAD = Path(sys.executable).with_name("beachhead")
NGINX_INSTALL_HINT = "bash bootstrap/install.sh bench"
START_TIMEOUT_S = 20.0
SEEN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WORKER_STOP_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 600.0
BARRIER_TIMEOUT_S = 60.0
MIN_USER_DATA = 1024
MAX_USER_DATA = 4096
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
SERVER_HOST = "127.0.0.1"


class BenchmarkFailed(RuntimeError):
    """A server answered wrongly or not at all; its figures would mean nothing."""


# -- instances ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One published instance: its id, the loopback address it asks from, its user-data."""

    instance_id: str
    address: str
    user_data: bytes


def _assignable(address: str) -> bool:
    """True when a TCP socket can bind ``address`` here (it can be a source address)."""
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def instance_addresses(count: int) -> list[str]:
    """``count`` distinct loopback addresses spread evenly over 127.0.0.0/8, skipping
    127.0.0.1 (the servers'), network and broadcast-looking addresses (.0 and .255) and
    any address this machine will not bind."""
    first, size = int(LOOPBACK.network_address), LOOPBACK.num_addresses
    stride = size // (count + 1)
    taken: set[str] = set()
    addresses: list[str] = []
    for n in range(1, count + 1):
        candidate = first + n * stride
        limit = candidate + stride
        while candidate < limit:
            address = ipaddress.IPv4Address(candidate)
            text = str(address)
            if text != SERVER_HOST and address.packed[3] not in (0, 255) and text not in taken and _assignable(text):
                break
            candidate += 1
        else:
            raise BenchmarkFailed(f"no assignable loopback address near {ipaddress.IPv4Address(first + n * stride)}")
        taken.add(text)
        addresses.append(text)
    return addresses


def user_data(index: int) -> bytes:
    """Distinct, reproducible cloud-config of 1-4 KiB for instance number ``index``."""
    rng = random.Random(index)
    size = rng.randint(MIN_USER_DATA, MAX_USER_DATA)
    head = f"#cloud-config\n# benchmark instance {index}\nwrite_files:\n  - path: /etc/bench\n    content: |\n      "
    filler = rng.randbytes(size).hex()
    return (head + filler).encode()[:size]


def make_instances(count: int) -> list[Instance]:
    """The instances to publish, each with its own address and user-data."""
    return [
        Instance(f"bench-{index:04d}", address, user_data(index))
        for index, address in enumerate(instance_addresses(count))
    ]


# -- the servers --------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind((SERVER_HOST, 0))
        return int(sock.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkFailed(f"{name} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((SERVER_HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchmarkFailed(f"{name} not listening on {SERVER_HOST}:{port} within {START_TIMEOUT_S:.0f}s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, wait (bounded), then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_kib(pid: int) -> int:
    """VmHWM of one process, in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ServerProcess:
    """A server under test: how to start it, what to ask, and its processes."""

    name: str
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.directory / "server.log"

    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""
        raise NotImplementedError

    def path(self, instance: Instance) -> str:
        """The URL path at which ``instance`` gets its user-data."""
        raise NotImplementedError

    @property
    def ports(self) -> list[int]:
        """Where the load goes: instance number N asks port N modulo their number."""
        return [self.port]

    def start(self) -> None:
        """Start the server in its own session (Ctrl-C is ours to handle) and wait,
        bounded, until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        _wait_listening(self.process, self.port, self.log, self.name)

    def stop(self) -> None:
        """Stop the server (bounded)."""
        _stop(self.process)

    def pids(self) -> list[int]:
        """The server's processes: the one started and its children (nginx workers)."""
        assert self.process is not None, "not started"
        return [self.process.pid, *_children(self.process.pid)]

    def check_running(self) -> None:
        """Fail when the server has died."""
        if self.process is None or self.process.poll() is not None:
            raise BenchmarkFailed(f"{self.name} is not running: {self.log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by all the server's processes."""
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def peak_rss_kib(self) -> int:
        """Peak resident memory (VmHWM), summed over the server's processes."""
        return sum(_peak_rss_kib(pid) for pid in self.pids())


class BeachheadServer(ServerProcess):
    """``beachhead metadata-server`` with a temporary admin token and store: a SQLite
    file of its own, or the PostgreSQL database ``db`` names."""

    def __init__(
        self, directory: Path, name: str = "beachhead", db: str | None = None, token: str | None = None
    ) -> None:
        super().__init__(name, directory)
        self.db = db
        self.token = token or secrets.token_urlsafe(32)

    def command(self) -> list[str]:
        """The metadata server on 127.0.0.1."""
        token_file = self.directory / "admin.token"
        if not token_file.exists():
            with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
                stream.write(self.token + "\n")
        return [
            str(BEACHHEAD),
            "metadata-server",
            "--listen",
            f"{SERVER_HOST}:{self.port}",
            "--db",
            self.db or str(self.directory / "metadata.sqlite"),
            "--admin-token-file",
            str(token_file),
        ]

    def path(self, instance: Instance) -> str:
        """NoCloud's user-data: the same path for every guest."""
        return "/user-data"

    async def publish(self, instances: list[Instance], concurrency: int = 32) -> None:
        """Publish every instance through the admin API, ``concurrency`` at a time."""
        url = f"http://{SERVER_HOST}:{self.port}/admin/instances/"
        headers = {"Authorization": f"Bearer {self.token}"}
        limit = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=PUBLISH_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as http:

            async def one(instance: Instance) -> None:
                document = {"ip": instance.address, "user_data": base64.b64encode(instance.user_data).decode()}
                async with limit, http.put(url + instance.instance_id, json=document) as response:
                    if response.status not in (200, 201):
                        raise BenchmarkFailed(
                            f"publishing {instance.instance_id}: HTTP {response.status}: {await response.text()}"
                        )

            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await asyncio.gather(*(one(instance) for instance in instances))

    async def wait_listed(self, count: int) -> None:
        """Wait (bounded) until the admin API lists ``count`` instances: what other
        servers published has reached this one's index."""
        url = f"http://{SERVER_HOST}:{self.port}/admin/instances"
        headers = {"Authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        async with aiohttp.ClientSession(headers=headers) as http:
            while True:
                async with http.get(url) as response:
                    listed = len((await response.json())["instances"])
                if listed == count:
                    return
                if time.monotonic() > deadline:
                    raise BenchmarkFailed(f"{self.name} lists {listed} instances, not {count}")
                await asyncio.sleep(0.1)


class BeachheadOnPostgres:
    """Two metadata servers on one PostgreSQL database, measured as one: the load is
    split across them, their CPU time and memory are summed with PostgreSQL's."""

    def __init__(self, directory: Path, postgres: LocalPostgres, count: int = 2) -> None:
        self.name = "beachhead-pg"
        self.postgres = postgres
        first = BeachheadServer(directory / "a", "beachhead-pg-a", postgres.url())
        others = [
            BeachheadServer(
                directory / chr(ord("a") + n), f"beachhead-pg-{chr(ord('a') + n)}", postgres.url(), first.token
            )
            for n in range(1, count)
        ]
        self.members = [first, *others]

    @property
    def ports(self) -> list[int]:
        """One port per server."""
        return [member.port for member in self.members]

    def path(self, instance: Instance) -> str:
        """NoCloud's user-data, as for one server."""
        return "/user-data"

    def start(self) -> None:
        """Start the servers one after the other (the first creates the tables)."""
        for member in self.members:
            member.start()

    def stop(self) -> None:
        """Stop every server (bounded)."""
        for member in self.members:
            member.stop()

    async def publish(self, instances: list[Instance]) -> None:
        """Publish instance N through the server after the one its guest will ask, and
        wait until every server lists them all."""
        count = len(self.members)
        await asyncio.gather(
            *(member.publish(instances[(n + count - 1) % count :: count]) for n, member in enumerate(self.members))
        )
        for member in self.members:
            await member.wait_listed(len(instances))

    def postgres_pids(self) -> list[int]:
        """PostgreSQL's processes: the postmaster and its children (a backend per
        connection, the background workers)."""
        pid = self.postgres.pid()
        return [] if pid is None else [pid, *_children(pid)]

    def pids(self) -> list[int]:
        """The servers' processes and PostgreSQL's."""
        return [pid for member in self.members for pid in member.pids()] + self.postgres_pids()

    def check_running(self) -> None:
        """Fail when a server or PostgreSQL has died."""
        for member in self.members:
            member.check_running()
        if self.postgres.pid() is None:
            raise BenchmarkFailed(f"{self.name}: PostgreSQL is not running: {self.postgres.log}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the servers and PostgreSQL."""
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def peak_rss_kib(self) -> int:
        """Peak resident memory (VmHWM), summed over the servers and PostgreSQL's
        processes (its shared buffers counted in each process that touched them)."""
        return sum(_peak_rss_kib(pid) for pid in self.pids())

    def rss_parts_mib(self) -> dict[str, float]:
        """Peak RSS per server and for PostgreSQL's processes together."""
        parts = {member.name: round(member.peak_rss_kib() / 1024, 1) for member in self.members}
        parts["postgres"] = round(sum(_peak_rss_kib(pid) for pid in self.postgres_pids()) / 1024, 1)
        return parts


class UnderTest(Protocol):
    """What the load generator and the report need of a server (or a group of them)."""

    name: str

    @property
    def ports(self) -> list[int]:
        """Where the load goes."""

    def path(self, instance: Instance) -> str:
        """The URL path at which ``instance`` gets its user-data."""

    def pids(self) -> list[int]:
        """Its processes."""

    def check_running(self) -> None:
        """Fail when it has died."""

    def cpu_seconds(self) -> float:
        """CPU time used so far."""

    def peak_rss_kib(self) -> int:
        """Peak resident memory."""


def find_nginx() -> str | None:
    """Debian's nginx binary, or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


class NginxServer(ServerProcess):
    """Debian's nginx serving every instance's user-data as a static file."""

    def __init__(self, name: str, directory: Path, binary: str, workers: str, root: Path) -> None:
        super().__init__(name, directory)
        self.binary = binary
        self.workers = workers
        self.root = root

    def command(self) -> list[str]:
        """nginx in the foreground with a configuration confined to its directory."""
        conf = self.directory / "nginx.conf"
        temp = self.directory / "temp"
        temp.mkdir(exist_ok=True)
        conf.write_text(
            f"worker_processes {self.workers};\n"
            "daemon off;\n"
            f"pid {self.directory}/nginx.pid;\n"
            f"error_log {self.directory}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "    access_log off;\n"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            "    tcp_nodelay on;\n"
            "    keepalive_requests 100000;\n"
            "    keepalive_timeout 60s;\n"
            "    open_file_cache max=4096 inactive=60s;\n"
            f"    client_body_temp_path {temp}/client_body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            "    server {\n"
            f"        listen {SERVER_HOST}:{self.port};\n"
            f"        root {self.root};\n"
            "    }\n"
            "}\n"
        )
        return [self.binary, "-p", str(self.directory), "-c", str(conf), "-e", str(self.directory / "error.log")]

    def path(self, instance: Instance) -> str:
        """One static file per instance."""
        return f"/{instance.instance_id}/user-data"


def write_static_files(root: Path, instances: list[Instance]) -> None:
    """The same bytes as the metadata server serves, one file per instance, readable by
    nginx's unprivileged workers."""
    for instance in instances:
        directory = root / instance.instance_id
        directory.mkdir(parents=True)
        (directory / "user-data").write_bytes(instance.user_data)
        (directory / "user-data").chmod(0o644)
        directory.chmod(0o755)
    root.chmod(0o755)


# -- the load generator -------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One run for the generator processes: whom to ask, what, and how hard."""

    ports: list[int]  # instance number N asks ports[N % len(ports)]
    paths: list[str]
    requests_per_instance: int
    slots: int


class _HttpClient(asyncio.Protocol):
    """Just enough HTTP/1.1 for keep-alive GETs answered with a Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._head: tuple[int, int, int] | None = None  # status, body start, body end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head = _parse_head(bytes(self._buffer[:end]), end + 4)
            status, start, stop = self._head
            if len(self._buffer) < stop:
                return
            body = bytes(self._buffer[start:stop])
            del self._buffer[:stop]
            self._head = None
            waiter.set_result((status, body))
        except BenchmarkFailed as exc:
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection closed before the response ended ({exc})"))

    async def get(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; its status and body."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._waiter


def _parse_head(head: bytes, body_start: int) -> tuple[int, int, int]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BenchmarkFailed(f"not an HTTP response: {lines[0][:80]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" or (name == b"connection" and b"close" in value.lower()):
            raise BenchmarkFailed(f"unexpected {line.decode(errors='replace')!r}: want keep-alive and a length")
    if length is None:
        raise BenchmarkFailed("response without Content-Length")
    return int(parts[1]), body_start, body_start + length


async def _load(job: Job, instances: list[Instance], counter: Any, barrier: Barrier) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies = array("d")
    failures: list[str] = []
    requests = bytes_read = 0

    def next_index() -> int:
        with counter.get_lock():
            index = int(counter.value)
            counter.value = index + 1
        return index

    async def slot() -> None:
        nonlocal requests, bytes_read
        while (index := next_index()) < len(instances):
            instance = instances[index]
            port = job.ports[index % len(job.ports)]
            request = f"GET {job.paths[index]} HTTP/1.1\r\nHost: {SERVER_HOST}:{port}\r\n\r\n".encode()
            transport, client = await loop.create_connection(
                _HttpClient, SERVER_HOST, port, local_addr=(instance.address, 0)
            )
            try:
                for _ in range(job.requests_per_instance):
                    started = time.perf_counter()
                    status, body = await client.get(request)
                    latencies.append(time.perf_counter() - started)
                    requests += 1
                    bytes_read += len(body)
                    if status != 200 or body != instance.user_data:
                        if len(failures) < 5:
                            failures.append(
                                f"{instance.instance_id} from {instance.address}: HTTP {status}, "
                                f"{len(body)} bytes, expected 200 and its {len(instance.user_data)} bytes"
                            )
                        elif len(failures) == 5:
                            failures.append("...")
            finally:
                transport.close()

    barrier.wait(BARRIER_TIMEOUT_S)  # every generator process starts at once
    cpu_started, started = time.process_time(), time.monotonic()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await asyncio.gather(*(slot() for _ in range(job.slots)))
    return {
        "started": started,
        "ended": time.monotonic(),
        "cpu_s": time.process_time() - cpu_started,
        "requests": requests,
        "bytes": bytes_read,
        "failures": failures,
        "latencies": latencies.tobytes(),
    }


def _generator_main(connection: Connection, instances: list[Instance], counter: Any, barrier: Barrier) -> None:
    """A generator process: run jobs from the parent until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    parent = os.getppid()
    while os.getppid() == parent:
        if not connection.poll(1.0):
            continue
        job = connection.recv()
        if job is None:
            return
        try:
            connection.send(asyncio.run(_load(job, instances, counter, barrier)))
        except Exception as exc:
            connection.send({"error": f"{type(exc).__name__}: {exc}"})


@dataclass
class RunFigures:
    """One run against one server."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float
    generator_cpu_share: float  # of all cores, over the wall time


class LoadGenerator:
    """Worker processes (spawned, so they share nothing else with this one) that send
    the load together."""

    def __init__(self, instances: list[Instance], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.instances = instances
        self.counter = context.Value("l", 0)
        self.barrier = context.Barrier(processes)
        self.workers: list[tuple[SpawnProcess, Connection]] = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            worker = context.Process(
                target=_generator_main, args=(theirs, instances, self.counter, self.barrier), daemon=True
            )
            worker.start()
            theirs.close()
            self.workers.append((worker, ours))

    def close(self) -> None:
        """Stop the worker processes: ask, then (after an interrupted run) kill."""
        for _, connection in self.workers:
            with contextlib.suppress(OSError):
                connection.send(None)
        for worker, connection in self.workers:
            worker.join(WORKER_STOP_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
                worker.join(STOP_TIMEOUT_S)
            connection.close()

    def run(self, server: UnderTest, requests_per_instance: int, concurrency: int) -> RunFigures:
        """Load ``server`` once and check every answer; the run's figures."""
        server.check_running()
        with self.counter.get_lock():
            self.counter.value = 0
        paths = [server.path(instance) for instance in self.instances]
        share, extra = divmod(concurrency, len(self.workers))
        for number, (_, connection) in enumerate(self.workers):
            connection.send(Job(server.ports, paths, requests_per_instance, share + (number < extra)))
        cpu_before = server.cpu_seconds()
        results = []
        deadline = time.monotonic() + RUN_TIMEOUT_S + BARRIER_TIMEOUT_S
        for worker, connection in self.workers:
            while not connection.poll(1.0):
                if not worker.is_alive() or time.monotonic() > deadline:
                    raise BenchmarkFailed(f"{server.name}: a generator process died or hung")
            results.append(connection.recv())
        server_cpu = server.cpu_seconds() - cpu_before
        errors = [result["error"] for result in results if "error" in result]
        if errors:
            raise BenchmarkFailed(f"{server.name}: {errors[0]}")
        failures = [failure for result in results for failure in result["failures"]]
        if failures:
            raise BenchmarkFailed(f"{server.name}: wrong answers: {'; '.join(failures[:6])}")
        requests = sum(result["requests"] for result in results)
        expected = len(self.instances) * requests_per_instance
        if requests != expected:
            raise BenchmarkFailed(f"{server.name}: {requests} answers, expected {expected}")
        wall = max(result["ended"] for result in results) - min(result["started"] for result in results)
        latencies = array("d")
        for result in results:
            latencies.frombytes(result["latencies"])
        ordered = sorted(latencies)
        return RunFigures(
            requests_per_s=requests / wall,
            p50_ms=_percentile(ordered, 50) * 1000,
            p99_ms=_percentile(ordered, 99) * 1000,
            server_cpu_us_per_request=server_cpu / requests * 1e6,
            generator_cpu_share=sum(result["cpu_s"] for result in results) / wall / (os.cpu_count() or 1),
        )


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, round(percent / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- measuring and reporting --------------------------------------------------------------


@dataclass
class Results:
    """Every run of one server, and its peak memory."""

    server: UnderTest
    runs: list[RunFigures] = field(default_factory=list)
    peak_rss_kib: int = 0
    publish_s: float | None = None  # beachhead's: publishing every instance through the admin API

    def median(self, name: str) -> float:
        """Median of one figure over the runs."""
        return float(statistics.median(getattr(run, name) for run in self.runs))


FIGURES = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request", "generator_cpu_share")


def measure(
    servers: list[UnderTest], generator: LoadGenerator, runs: int, requests_per_instance: int, concurrency: int
) -> list[Results]:
    """One warm-up per server, then ``runs`` runs interleaved server by server."""
    results = [Results(server) for server in servers]
    for server in servers:
        generator.run(server, requests_per_instance, concurrency)
        print(f"warm-up {server.name}: done", file=sys.stderr)
    for run in range(runs):
        for result in results:
            figures = generator.run(result.server, requests_per_instance, concurrency)
            result.runs.append(figures)
            print(
                f"run {run + 1}/{runs} {result.server.name}: {figures.requests_per_s:,.0f} req/s, "
                f"p50 {figures.p50_ms:.2f} ms, p99 {figures.p99_ms:.2f} ms, "
                f"server CPU {figures.server_cpu_us_per_request:.0f} us/req, "
                f"generator CPU {figures.generator_cpu_share:.0%}",
                file=sys.stderr,
            )
    for result in results:
        result.peak_rss_kib = result.server.peak_rss_kib()
    return results


def _ratios(ours: Results, other: Results) -> dict[str, float]:
    figures = {name: round(ours.median(name) / other.median(name), 3) for name in FIGURES[:4]}
    figures["peak_rss"] = round(ours.peak_rss_kib / other.peak_rss_kib, 3)
    return figures


def report(results: list[Results], options: argparse.Namespace, instances: list[Instance], as_json: bool) -> None:
    """Print medians, beachhead's ratio to each nginx baseline and the PostgreSQL run's
    to the SQLite one, as a table or JSON."""
    ours = results[0]
    sizes = [len(instance.user_data) for instance in instances]
    requests = len(instances) * options.requests_per_instance
    # Each result but the first, with the one it is compared with.
    compared = [(result, result if isinstance(result.server, BeachheadOnPostgres) else ours) for result in results[1:]]

    def ratios(result: Results, other: Results) -> dict[str, float]:
        return _ratios(other, result) if other is ours else _ratios(result, ours)

    def label(result: Results, other: Results) -> str:
        return (
            f"{ours.server.name}/{result.server.name}" if other is ours else f"{result.server.name}/{ours.server.name}"
        )

    def extra(result: Results) -> dict[str, Any]:
        figures: dict[str, Any] = {}
        if result.publish_s is not None:
            figures["publish_s"] = round(result.publish_s, 2)
        if isinstance(result.server, BeachheadOnPostgres):
            figures["peak_rss_mib_parts"] = result.server.rss_parts_mib()
        return figures

    if as_json:
        document = {
            "instances": len(instances),
            "requests_per_instance": options.requests_per_instance,
            "requests_per_run": requests,
            "concurrency": options.concurrency,
            "generator_processes": options.generator_processes,
            "user_data_bytes": {"min": min(sizes), "max": max(sizes), "total": sum(sizes)},
            "nproc": os.cpu_count(),
            "runs": len(ours.runs),
            "results": {
                result.server.name: {
                    **{name: round(result.median(name), 3) for name in FIGURES},
                    "peak_rss_mib": round(result.peak_rss_kib / 1024, 1),
                    "processes": len(result.server.pids()),
                    **extra(result),
                    "each_run": [{name: round(getattr(run, name), 3) for name in FIGURES} for run in result.runs],
                }
                for result in results
            },
            "ratios": {label(result, other): ratios(result, other) for result, other in compared},
        }
        print(json.dumps(document, indent=2))
        return
    print(
        f"\n{len(instances)} instances x {options.requests_per_instance} user-data GETs "
        f"({min(sizes)}-{max(sizes)} bytes), {options.concurrency} in flight, "
        f"{options.generator_processes} generator processes, {len(ours.runs)} runs, nproc {os.cpu_count()}; medians"
    )
    print(
        f"{'server':<12} {'procs':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
        f"{'gen CPU':>7} {'peak RSS':>9}  ratio (req/s, p50, p99, CPU/req, RSS)"
    )
    for result in results:
        ratio = ""
        for this, other in compared:
            if this is result:
                r = ratios(result, other)
                ratio = (
                    f"{label(result, other)}: {r['requests_per_s']:.2f}x {r['p50_ms']:.1f}x {r['p99_ms']:.1f}x "
                    f"{r['server_cpu_us_per_request']:.1f}x {r['peak_rss']:.1f}x"
                )
        print(
            f"{result.server.name:<12} {len(result.server.pids()):>5} {result.median('requests_per_s'):>8,.0f} "
            f"{result.median('p50_ms'):>7.2f} {result.median('p99_ms'):>7.2f} "
            f"{result.median('server_cpu_us_per_request'):>10.0f} {result.median('generator_cpu_share'):>7.0%} "
            f"{result.peak_rss_kib / 1024:>6.1f} MiB  {ratio}"
        )
    for result in results:
        if result.publish_s is not None:
            print(f"{result.server.name}: published {len(instances)} instances in {result.publish_s:.1f}s")
        if isinstance(result.server, BeachheadOnPostgres):
            parts = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in result.server.rss_parts_mib().items())
            print(f"{result.server.name}: peak RSS {parts}")


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that the cleanup below runs, as on Ctrl-C."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    """Parse options, start the servers (and PostgreSQL) and the generator, measure,
    report, clean up."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--requests-per-instance", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--generator-processes", type=int, default=2)
    parser.add_argument("--no-postgres", action="store_true", help="leave out the two servers on PostgreSQL")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    if min(options.instances, options.concurrency, options.requests_per_instance, options.runs) < 1:
        parser.error("--instances, --concurrency, --requests-per-instance and --runs must be at least 1")
    if not 1 <= options.generator_processes <= options.concurrency:
        parser.error("--generator-processes must be between 1 and --concurrency")
    nginx = find_nginx()
    if nginx is None:
        print(f"nginx not found: install the benchmark's baselines with `{NGINX_INSTALL_HINT}`", file=sys.stderr)
        return 2
    if not options.no_postgres:
        try:
            postgres_binary("pg_ctl")
        except PostgresMissing as exc:
            print(f"{exc} (or leave the PostgreSQL run out with --no-postgres)", file=sys.stderr)
            return 2
    try:
        with (
            _terminate_on_sigterm(),
            tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch_dir,
            contextlib.ExitStack() as stack,
        ):
            scratch = Path(scratch_dir)
            scratch.chmod(0o711)  # nginx's workers (nobody) must reach the static files
            instances = make_instances(options.instances)
            ours = BeachheadServer(scratch / "beachhead")
            servers: list[UnderTest] = [ours]
            stack.callback(ours.stop)
            ours.start()
            if not options.no_postgres:
                postgres = stack.enter_context(LocalPostgres(free_port()))
                pair = BeachheadOnPostgres(scratch / "beachhead-pg", postgres)
                stack.callback(pair.stop)
                pair.start()
                servers.append(pair)
            publish_s: dict[str, float] = {}
            for server in list(servers):
                assert isinstance(server, BeachheadServer | BeachheadOnPostgres)
                started = time.monotonic()
                asyncio.run(server.publish(instances))
                publish_s[server.name] = time.monotonic() - started
                print(
                    f"{server.name}: published {len(instances)} instances in {publish_s[server.name]:.1f}s",
                    file=sys.stderr,
                )
            write_static_files(scratch / "www", instances)
            for name, workers in (("nginx", "1"), ("nginx-auto", "auto")):
                server = NginxServer(name, scratch / name, nginx, workers, scratch / "www")
                stack.callback(server.stop)
                server.start()
                servers.append(server)
            generator = LoadGenerator(instances, options.generator_processes)
            stack.callback(generator.close)
            results = measure(servers, generator, options.runs, options.requests_per_instance, options.concurrency)
            for result in results:
                result.publish_s = publish_s.get(result.server.name)
            report(results, options, instances, options.json)
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
