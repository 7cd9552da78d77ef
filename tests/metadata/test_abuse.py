"""The metadata server under abuse: half-sent requests are closed after the header or
body timeout, connections are capped overall and per source address (refused at once
past a cap), repeated errors are logged at a bounded rate, running out of file
descriptors neither spins nor floods the log, and a legitimate guest is answered
throughout. Every connection opened here is closed at the end, every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.conftest import wait_until
from tests.metadata.conftest import MetadataServer, raw_request, status_of

HALF_SENT = b"GET /user-data HTTP/1.1\r\nHost: metadata\r\n"  # the blank line never comes
FETCH = b"GET /user-data HTTP/1.1\r\nHost: metadata\r\nConnection: close\r\n\r\n"


@contextlib.contextmanager
def connections(
    server: MetadataServer, source: str, count: int, data: bytes = HALF_SENT
) -> Iterator[list[socket.socket]]:
    """``count`` connections from ``source``, each having sent ``data``; all closed at the end."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            opened.append(sock)
            sock.bind((source, 0))
            sock.settimeout(5)
            sock.connect((server.host, server.port))
            with contextlib.suppress(OSError):  # a refused one may be closed already
                sock.sendall(data)
            sock.setblocking(False)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def closing_times(socks: list[socket.socket], within: float) -> dict[socket.socket, tuple[float, bytes]]:
    """When (seconds from now) the server closed each connection, and what it sent
    before; connections still open after ``within`` seconds are left out."""
    start = time.monotonic()
    received = {sock: b"" for sock in socks}
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    while len(closed) < len(socks) and (left := within - (time.monotonic() - start)) > 0:
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], min(left, 0.1))
        for sock in readable:
            try:
                chunk = sock.recv(65536)
            except OSError:  # reset: closed unread
                chunk = b""
            if chunk:
                received[sock] += chunk
            else:
                closed[sock] = (time.monotonic() - start, received[sock])
    return closed


def fetch(server: MetadataServer, source: str) -> tuple[int, float]:
    """A guest's user-data fetch: its status and how long it took."""
    start = time.monotonic()
    answer = raw_request(server, FETCH, source, timeout=5)
    return status_of(answer), time.monotonic() - start


def rss_kib(pid: int) -> tuple[int, int]:
    """Resident memory now and at its peak (VmRSS, VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_slowloris_from_one_source_is_capped_and_timed_out_while_guests_are_served(
    start_server: Callable[..., MetadataServer],
) -> None:
    server = start_server("--header-timeout", "2", "--error-log-interval", "60")
    server.publish("i-guest", "--ip", "127.0.0.3", user_data="#cloud-config\n# guest\n")
    assert server.process is not None
    with connections(server, "127.0.0.2", 200) as slow:
        refused = closing_times(slow, within=0.5)
        assert len(refused) == 200 - 64, "past --max-connections-per-source (64), refused at once"
        assert all(data == b"" or data.startswith(b"HTTP/1.1 503 ") for _, data in refused.values())
        status, took = fetch(server, "127.0.0.3")
        assert status == 200 and took < 2, (status, took)
        rss, peak = rss_kib(server.process.pid)
        held = [sock for sock in slow if sock not in refused]
        timed_out = closing_times(held, within=5)
        assert len(timed_out) == 64, "a half-sent request is closed after --header-timeout"
        assert all(1.0 <= at <= 3.5 and data == b"" for at, data in timed_out.values()), sorted(timed_out.values())
    print(f"RSS with 64 half-sent connections held and 136 refused: {rss} KiB (peak {peak} KiB)")
    assert peak < 200 * 1024
    assert server.stop() == 0
    refusals = server.log_lines("metadata.connection_refused")
    assert len(refusals) == 2, refusals  # one at once, one with the count held back
    assert refusals[1]["suppressed"] == 200 - 64 - 1 and refusals[1]["source"] == "127.0.0.2"


def test_timeouts_alone_close_half_sent_trickled_and_idle_connections(
    start_server: Callable[..., MetadataServer],
) -> None:
    server = start_server("--header-timeout", "2", "--max-connections-per-source", "1000", "--body-timeout", "1")
    server.publish("i-guest", "--ip", "127.0.0.3")
    with connections(server, "127.0.0.2", 200) as slow, connections(server, "127.0.0.4", 1, b"") as idle:
        with connections(server, "127.0.0.5", 1, HALF_SENT + b"X-Slow: ") as trickle:
            deadline = time.monotonic() + 6
            start = time.monotonic()
            while time.monotonic() < deadline:  # a byte every 0.3 s does not keep it open
                try:
                    trickle[0].send(b"a")
                except OSError:
                    break
                time.sleep(0.3)
            assert 1.5 <= time.monotonic() - start <= 3.5
        assert fetch(server, "127.0.0.3")[0] == 200
        closed = closing_times(slow + idle, within=4)
        assert len(closed) == 201 and all(at <= 3.5 for at, _ in closed.values())


def test_a_slow_body_gets_408_and_the_connection_closed(start_server: Callable[..., MetadataServer]) -> None:
    server = start_server("--body-timeout", "1")
    server.publish("i-guest", "--ip", "127.0.0.3")
    heads = {
        "127.0.0.1": f"PUT /admin/instances/i-slow HTTP/1.1\r\nAuthorization: Bearer {server.token}\r\n",
        "127.0.0.3": "POST /phone-home HTTP/1.1\r\n",
    }
    for source, head in heads.items():
        data = f"{head}Host: m\r\nContent-Length: 100\r\n\r\n0123456789".encode()
        with connections(server, source, 1, data) as (sock,):
            (at, answer), *_ = closing_times([sock], within=15).values()
            assert status_of(answer) == 408 and b"Connection: close" in answer, answer
            assert 0.8 <= at <= 2.5, at  # answered and closed after --body-timeout
    assert fetch(server, "127.0.0.3")[0] == 200
    check = f"GET /admin/instances/i-slow HTTP/1.1\r\nHost: m\r\nAuthorization: Bearer {server.token}\r\n"
    check += "Connection: close\r\n\r\n"
    assert status_of(raw_request(server, check.encode())) == 404, "nothing stored"


def test_connection_caps_overall_per_source_and_for_trusted_proxies(
    start_server: Callable[..., MetadataServer], tmp_path: Path
) -> None:
    server = start_server(
        "--header-timeout",
        "3",
        "--max-connections",
        "8",
        "--max-connections-per-source",
        "4",
        "--error-log-interval",
        "60",
    )
    server.publish("i-guest", "--ip", "127.0.0.3")
    with connections(server, "127.0.0.2", 5) as first:
        assert len(closing_times(first, within=0.5)) == 1, "the 5th from one source is refused"
        assert fetch(server, "127.0.0.3")[0] == 200
        with connections(server, "127.0.0.4", 4) as second:
            assert closing_times(second, within=0.5) == {}
            status, took = fetch(server, "127.0.0.3")
            assert status in (503, 0) and took < 1, "past --max-connections: 503 (or closed) at once"
            wait_until(lambda: fetch(server, "127.0.0.3")[0] == 200, timeout=6, what="served after the header timeout")
    (tmp_path / "proxy").mkdir()
    proxy = start_server(
        "--max-connections-per-source", "2", "--trusted-proxy", "127.0.0.6/32", directory=tmp_path / "proxy"
    )
    with connections(proxy, "127.0.0.6", 6) as through_proxy, connections(proxy, "127.0.0.7", 3) as direct:
        assert closing_times(through_proxy, within=0.5) == {}, "a trusted proxy counts only towards the overall cap"
        assert len(closing_times(direct, within=0.5)) == 1


def test_out_of_file_descriptors_on_accept_neither_spins_nor_floods_the_log(
    start_server: Callable[..., MetadataServer],
) -> None:
    server = start_server("--header-timeout", "30", "--error-log-interval", "60")
    server.publish("i-guest", "--ip", "127.0.0.3")
    assert server.process is not None
    pid = server.process.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (40, 40))  # as if something else had taken the rest
    with contextlib.ExitStack() as stack:
        for index in range(4):
            stack.enter_context(connections(server, f"127.0.0.{10 + index}", 25))
        wait_until(lambda: server.log_lines("metadata.accept_failed"), timeout=5, what="accept() failing")
        before = cpu_seconds(pid)
        time.sleep(3)
        assert cpu_seconds(pid) - before < 0.5, "accept() retried in a busy loop"
        assert len(server.log_lines("metadata.accept_failed")) == 1
    wait_until(lambda: fetch(server, "127.0.0.3")[0] == 200, timeout=5, what="accepting again")
    assert server.stop() == 0
    failures = server.log_lines("metadata.accept_failed")
    assert len(failures) == 2 and failures[1]["suppressed"] >= 1 and "Too many open files" in failures[0]["error"]
    assert server.log_lines("metadata.library_error") == []


def test_the_connection_cap_is_fitted_to_the_file_descriptor_limit() -> None:
    code = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))\n"
        "from beachhead.metadata_server.limits import fit_fd_limit\n"
        "print(fit_fd_limit(1024), fit_fd_limit(100), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["236", "100", "300"]
