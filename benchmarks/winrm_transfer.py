"""WinRM file transfer: upload and download of 32 MiB to ``win-01``, Beachhead's ``winrm``
channel beside the per-chunk ``echo >>`` method of Packer's winrmcp, on the same
endpoint in the same run, interleaved run by run so that machine noise falls on both.

- ``beachhead``: :class:`~beachhead.plugins.winrm_session.WinrmSession` as the ``winrm``
  channel opens it (``open_session`` of a ``winrm://`` target), ``put_file`` then
  ``get_file`` (:mod:`beachhead.plugins.winrm_transfer`): base64 over the WinRS shell's
  stdin in Sends sized to the endpoint's ``MaxEnvelopeSizekb``, ``certutil -decode``,
  the guest's ``certutil -hashfile`` compared before the file is moved into place;
  back with ``certutil -encode`` and ``type`` streamed through Receives of up to the
  envelope size, checked against the guest's sha256.
- ``winrmcp`` (upload): Packer's method (packer-community/winrmcp, ``winrmcp/cp.go``,
  ``uploadChunks`` and ``appendContent``) written here on pywinrm's
  ``winrm.protocol.Protocol``: the file's base64 in pieces, one
  ``echo PIECE >> "%TEMP%\\winrmcp-UUID.tmp"`` command per piece, a new shell every 15
  commands (``MaxOperationsPerShell: 15``, which Packer's communicator sets). The piece
  is ``(8000 - len(path)) / 4 * 3`` bytes (cp.go keeps 191 characters of cmd.exe's
  8,191 for the rest of the line): 5,958 bytes, 7,944 base64 characters, for the
  55-character ``%TEMP%\\winrmcp-UUID.tmp``. Each command is a Command, a Receive and
  a Signal; shells are closed with ``close_session=False``, keeping the one
  authenticated connection (pywinrm's default authenticates again after each shell).
  winrmcp then restores the file with a PowerShell script reading the base64 line by
  line; there is no PowerShell in the lab, so ``certutil -f -decode
  TMP DEST`` in a shell of its own does that step here (cmd only, the same one
  command), then ``del`` of the temporary file in another (winrmcp's cleanup step).
- ``winrmcp`` (download): winrmcp has none; this is the naive pywinrm way, one
  ``certutil -f -encode SRC TMP >nul && type TMP & del TMP`` in a fresh shell with
  ``run_command`` and ``get_command_output`` (all of stdout collected in memory, each
  Receive limited to pywinrm's default ``MaxEnvelopeSize`` of 150 KiB), then the
  base64 decoded locally.

Round trips are the HTTP POSTs to ``/wsman`` each side's connection sends during the
transfer, counted on the requests adapter of that connection (NTLM's authentication
exchange included, which happens once, when the connection opens, before any timing).
Each side's connection is opened and authenticated before its first timed run. Every
run checks the bytes afterwards: the guest file's sha256 read from the guest's root on
this machine, the downloaded file's locally; a transfer that did not deliver the bytes
fails the benchmark.

The echo method takes about 60 ms per 5,958 bytes on the stand-in (about 6 minutes per
32 MiB); so the baseline upload moves ``--baseline-size-mib`` (default 4) and its
figures are per MiB: its cost is linear in the size (one command per piece; a
``--baseline-size-mib 32`` run gave the same MiB/s and round trips per MiB). Both
downloads move the whole ``--size-mib``: the naive one has fixed costs that a smaller
size would not amortise.

Targets: by default ``win-01`` in the vSphere lab, at its lab address over http 5985
with NTLM and its guest login (the benchmark holds the lab lock, brings the default
lab up if it is not running, and down again if it started it; root needed).
``--loopback``: the lab's WS-Management endpoint started on 127.0.0.1 with a temporary
guest root instead (no lab, no root). Both are the Python stand-in, not Windows. Run
from the repository root:

    .venv/bin/python -m benchmarks.winrm_transfer [--loopback] [--size-mib 32] [--baseline-size-mib 4] \
        [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from winrm.protocol import Protocol

from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.logs import configure_logging
from beachhead.agent.plans import Plan
from beachhead.agent.registry import default_plugins
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import parse_target
from beachhead.plugins.winrm_session import WinrmSession, open_session

MIB = 1024 * 1024
PASSWORD_ENV = "BENCH_WINRM_PASSWORD"
WSMAN_MODULE = "beachhead.bootstrap.lab.windows.wsman"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 60.0
# winrmcp (winrmcp/cp.go): the command line budget its chunk size is computed from, and
# Packer's MaxOperationsPerShell.
WINRMCP_LINE_BUDGET = 8000
WINRMCP_OPERATIONS_PER_SHELL = 15
WINRMCP_TEMP = r"%TEMP%\winrmcp-{uuid}.tmp"  # its tempFileName, in %TEMP%
BENCH_DIR = "winrm-bench"


class BenchmarkFailed(RuntimeError):
    """An implementation did not deliver the bytes; its figures would mean nothing."""


# -- the endpoint ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """A WinRM endpoint over http with NTLM, its guest login, and where the guest's drive
    C is on this machine (for checking the bytes independently of either transfer)."""

    where: str
    host: str
    port: int
    user: str
    password: str
    drive_c: Path

    @property
    def url(self) -> str:
        """``http://HOST:PORT/wsman``."""
        return f"http://{self.host}:{self.port}/wsman"

    def uri(self) -> str:
        """The ``winrm://`` target for Beachhead, its password in this process's environment."""
        os.environ[PASSWORD_ENV] = self.password
        return f"winrm://{quote(self.user, safe='')}@{self.host}:{self.port}?transport=ntlm&password_env={PASSWORD_ENV}"

    def guest_dir(self) -> str:
        """The guest folder the benchmark works in (Windows path)."""
        return rf"C:\Users\{self.user}\{BENCH_DIR}"

    def host_dir(self) -> Path:
        """The same folder on this machine."""
        return self.drive_c / "Users" / self.user / BENCH_DIR


def _ready_line(process: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    """The endpoint's ready line, waited for at most READY_TIMEOUT_S."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_S)
    line = process.stdout.readline() if readable else ""
    if not line:
        detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise BenchmarkFailed(f"the wsman endpoint printed no ready line in {READY_TIMEOUT_S:g}s: {detail}")
    ready: dict[str, Any] = json.loads(line)
    return ready


@contextlib.contextmanager
def loopback_endpoint(scratch: Path) -> Iterator[Endpoint]:
    """The lab's WS-Management endpoint on 127.0.0.1 (http, NTLM, 500 KB envelopes as
    current Windows), a temporary guest root and login; stopped with SIGTERM after."""
    user, password = "Administrator", "Bench-" + secrets.token_urlsafe(12)
    root = scratch / "guest"
    for folder in (f"C/Users/{user}", "C/Windows/Temp"):
        (root / folder).mkdir(parents=True)
    users = scratch / "users"
    users.touch(mode=0o600)
    users.write_text(f"{user}:{password}\n")
    log = scratch / "wsman.log"
    argv = [
        sys.executable, "-m", WSMAN_MODULE, "--root", str(root), "--users", str(users),
        "--http", "127.0.0.1:0", "--log", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        ready = _ready_line(process, log)
        host, _, port = ready["http"][0].rpartition(":")
        yield Endpoint("loopback stand-in (127.0.0.1)", host, int(port), user, password, root / "C")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()


def wait_for_port(host: str, port: int) -> None:
    """Wait (at most READY_TIMEOUT_S) until ``host:port`` takes connections: the guest's
    WinRM service starts with the VM, a moment after the lab reports it powered on."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"{host}:{port} took no connection in {READY_TIMEOUT_S:g}s: {exc}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def lab_endpoint() -> Iterator[Endpoint]:
    """``win-01`` of the vSphere lab at its lab address (port 5985), holding the lab lock;
    the default lab brought up if none runs and down again after if this started it."""
    from beachhead.bootstrap.lab.config import load_config
    from beachhead.bootstrap.lab.lab import down, lab_dir, up
    from beachhead.bootstrap.lab.lock import lab_lock

    with lab_lock():
        state, started = up(load_config(None), progress=lambda message: print(f"lab: {message}", file=sys.stderr))
        try:
            windows = [vm for vm in state.public()["vms"] if vm["os"] == "windows"]
            if not windows:
                raise BenchmarkFailed("the lab has no Windows VM")
            vm = next((vm for vm in windows if vm["name"] == "win-01"), windows[0])
            drive_c = lab_dir() / "guests" / vm["name"] / "C"
            wait_for_port(vm["ip"], 5985)
            yield Endpoint(
                f"lab {vm['name']} ({vm['ip']})", vm["ip"], 5985, vm["guest_username"], vm["guest_password"], drive_c
            )
        finally:
            if started:
                down()


# -- counting round trips -----------------------------------------------------------------------
@dataclass
class Meter:
    """HTTP POSTs to /wsman on one connection (counted on its requests adapters, so
    NTLM's exchanges are in) and the WS-Management messages by action."""

    posts: int = 0
    actions: Counter[str] = field(default_factory=Counter)

    def attach(self, protocol: Any) -> None:
        """Count what ``protocol`` (pywinrm's Protocol, or Beachhead's subclass) sends
        from now on. Its requests session is built (and authenticated) here if it is
        not yet, so that no adapter is replaced later."""
        session = protocol.transport.build_session()
        for adapter in session.adapters.values():
            adapter.send = self._counting_send(adapter.send)
        protocol.send_message = self._counting_message(protocol.send_message)

    def _counting_send(self, send: Callable[..., Any]) -> Callable[..., Any]:
        def counted(request: Any, *args: Any, **kwargs: Any) -> Any:
            if request.method == "POST" and urlsplit(request.url).path == "/wsman":
                self.posts += 1
            return send(request, *args, **kwargs)

        return counted

    def _counting_message(self, send_message: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
        def counted(message: Any) -> bytes:
            text = message.decode() if isinstance(message, bytes) else str(message)
            start = text.find("Action")
            action = text[text.find(">", start) + 1 : text.find("<", start + 7)] if start >= 0 else "?"
            self.actions[action.rpartition("/")[2] or "?"] += 1
            return send_message(message)

        return counted

    def take(self) -> tuple[int, dict[str, int]]:
        """The counts since the last take, and start again."""
        counts = self.posts, dict(self.actions)
        self.posts = 0
        self.actions.clear()
        return counts


# -- the baseline: Packer winrmcp's method on pywinrm --------------------------------------------
def winrmcp_chunk_size(temp_path: str) -> int:
    """winrmcp's upload piece in bytes: ``((8000 - len(filePath)) / 4) * 3``."""
    return (WINRMCP_LINE_BUDGET - len(temp_path)) // 4 * 3


class WinrmcpClient:
    """Uploads as winrmcp does them, downloads as a naive pywinrm script does, on one
    pywinrm ``Protocol`` (one authenticated connection)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.protocol = Protocol(
            endpoint.url, transport="ntlm", username=endpoint.user, password=endpoint.password, proxy=None
        )

    def command(self, shell: str, line: str) -> tuple[int, bytes, bytes]:
        """One command in ``shell`` (through cmd.exe, pywinrm's default): Command, Receive
        until done, Signal; its exit status and output."""
        command_id = self.protocol.run_command(shell, line)
        try:
            out, err, status = self.protocol.get_command_output(shell, command_id)
        finally:
            self.protocol.cleanup_command(shell, command_id)
        return int(status), bytes(out), bytes(err)

    def in_new_shell(self, line: str) -> tuple[int, bytes, bytes]:
        """``line`` in a shell of its own, as winrmcp runs its restore and cleanup steps."""
        shell = self.protocol.open_shell()
        try:
            return self.command(shell, line)
        finally:
            self.protocol.close_shell(shell, close_session=False)

    def upload(self, data: bytes, destination: str) -> None:
        """``data`` to ``destination``: ``echo`` of each base64 piece appended to a
        temporary file (a new shell every 15), decoded into place, the file deleted."""
        temp = WINRMCP_TEMP.format(uuid=uuid.uuid4())
        size = winrmcp_chunk_size(temp)
        offset, done = 0, False
        while not done:  # winrmcp's uploadContent / uploadChunks
            shell = self.protocol.open_shell()
            try:
                for _ in range(WINRMCP_OPERATIONS_PER_SHELL):
                    piece = data[offset : offset + size]
                    if not piece:
                        done = True
                        break
                    line = f'echo {base64.b64encode(piece).decode("ascii")} >> "{temp}"'
                    status, out, err = self.command(shell, line)
                    if status != 0:
                        raise BenchmarkFailed(f"winrmcp: echo >> {temp} exited {status}: {(err or out)[:200]!r}")
                    offset += len(piece)
            finally:
                self.protocol.close_shell(shell, close_session=False)
        status, out, err = self.in_new_shell(f'certutil -f -decode "{temp}" "{destination}"')
        if status != 0:
            raise BenchmarkFailed(f"winrmcp: certutil -decode exited {status}: {(err or out)[:300]!r}")
        self.in_new_shell(f'del /f /q "{temp}"')

    def download(self, source: str) -> bytes:
        """``source``'s bytes: ``certutil -encode`` to a temporary file and ``type`` of it in
        one command, its whole stdout collected, the base64 decoded here."""
        temp = rf"%TEMP%\download-{uuid.uuid4()}.b64"
        line = f'certutil -f -encode "{source}" "{temp}" >nul && type "{temp}" & del /f /q "{temp}"'
        status, out, err = self.in_new_shell(line)
        if status != 0:
            raise BenchmarkFailed(f"naive download: exited {status}: {(err or out)[:300]!r}")
        body = b"".join(line for line in out.splitlines() if not line.startswith(b"-----"))
        return base64.b64decode(body)

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self.protocol.transport.close_session()


# -- measuring -------------------------------------------------------------------------------------
@dataclass
class Direction:
    """One implementation's runs in one direction: seconds, size, round trips."""

    name: str
    size: int = 0
    seconds: list[float] = field(default_factory=list)
    posts: list[int] = field(default_factory=list)
    actions: dict[str, int] = field(default_factory=dict)

    def rates(self) -> list[float]:
        """MiB/s of each run."""
        return [self.size / MIB / s for s in self.seconds]

    def rate(self) -> float:
        """Median MiB/s."""
        return statistics.median(self.rates())

    def trips_per_mib(self) -> float:
        """Median HTTP POSTs per MiB moved."""
        return statistics.median(self.posts) / (self.size / MIB)


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def check_file(path: Path, expected: bytes, who: str) -> None:
    """``path`` must hold exactly ``expected``."""
    try:
        actual = path.read_bytes()
    except OSError as exc:
        raise BenchmarkFailed(f"{who}: {path} cannot be read: {exc}") from None
    if sha256(actual) != sha256(expected):
        raise BenchmarkFailed(f"{who}: {path} has {len(actual)} bytes, sha256 {sha256(actual)}, not the payload's")


async def timed(meter: Meter, figures: Direction, work: Callable[[], Any]) -> Any:
    """Await ``work()``; add its seconds and round trips to ``figures``."""
    meter.take()
    started = time.perf_counter()
    result = await work()
    figures.seconds.append(time.perf_counter() - started)
    posts, actions = meter.take()
    figures.posts.append(posts)
    figures.actions = actions
    return result


async def measure(endpoint: Endpoint, options: argparse.Namespace, scratch: Path) -> dict[str, Direction]:
    """Both implementations, both directions, ``options.runs`` times interleaved."""
    size, baseline_size = options.size_mib * MIB, options.baseline_size_mib * MIB
    figures = {
        key: Direction(name, baseline_size if key == "upload winrmcp" else size)
        for key, name in (
            ("upload beachhead", "beachhead"),
            ("upload winrmcp", "winrmcp"),
            ("download beachhead", "beachhead"),
            ("download winrmcp", "winrmcp"),
        )
    }
    host_dir = endpoint.host_dir()
    shutil.rmtree(host_dir, ignore_errors=True)
    host_dir.mkdir(parents=True)
    guest_dir = endpoint.guest_dir()
    local = scratch / "payload.bin"
    back = scratch / "back.bin"

    context = RunContext(default_plugins(), RunSettings(connect_timeout=CONNECT_TIMEOUT_S, retries=0))
    baseline = WinrmcpClient(endpoint)
    ours_meter, base_meter = Meter(), Meter()
    try:
        session: WinrmSession = await open_session(
            TargetContext(context, Plan("winrm-transfer-benchmark", ()), parse_target(endpoint.uri()))
        )
        try:
            ours_meter.attach(session.protocol)
            await asyncio.to_thread(base_meter.attach, baseline.protocol)
            piece = winrmcp_chunk_size(WINRMCP_TEMP.format(uuid=uuid.uuid4()))
            print(
                f"{endpoint.where}: beachhead sends stdin in pieces of {session.send_limit} bytes "
                f"(MaxEnvelopeSizekb {session.max_envelope // 1024}); winrmcp echoes {piece} bytes per command",
                file=sys.stderr,
            )
            for run in range(options.runs):
                payload = os.urandom(size)
                local.write_bytes(payload)
                part = payload[:baseline_size]
                # Download sources written here, so downloads depend on no upload.
                (host_dir / "source.bin").write_bytes(payload)

                await timed(
                    ours_meter,
                    figures["upload beachhead"],
                    lambda: session.put_file(local, rf"{guest_dir}\up-beachhead.bin", None),
                )
                check_file(host_dir / "up-beachhead.bin", payload, "beachhead upload")
                await timed(
                    base_meter,
                    figures["upload winrmcp"],
                    partial(asyncio.to_thread, baseline.upload, part, rf"{guest_dir}\up-winrmcp.bin"),
                )
                check_file(host_dir / "up-winrmcp.bin", part, "winrmcp upload")

                back.unlink(missing_ok=True)
                await timed(
                    ours_meter,
                    figures["download beachhead"],
                    lambda: session.get_file(rf"{guest_dir}\source.bin", back),
                )
                check_file(back, payload, "beachhead download")
                got = await timed(
                    base_meter,
                    figures["download winrmcp"],
                    lambda: asyncio.to_thread(baseline.download, rf"{guest_dir}\source.bin"),
                )
                if sha256(got) != sha256(payload):
                    raise BenchmarkFailed(f"naive download: got {len(got)} bytes, not the payload's")
                for name in ("up-beachhead.bin", "up-winrmcp.bin"):
                    (host_dir / name).unlink()
                print(
                    f"run {run + 1}/{options.runs}: MiB/s "
                    + ", ".join(f"{key} {f.rates()[-1]:.2f}" for key, f in figures.items()),
                    file=sys.stderr,
                )
        finally:
            await session.close()
    finally:
        await asyncio.to_thread(baseline.close)
        await context.close()
        shutil.rmtree(host_dir, ignore_errors=True)
    return figures


# -- report ------------------------------------------------------------------------------------------
def report(endpoint: Endpoint, figures: dict[str, Direction], options: argparse.Namespace) -> None:
    """Print the figures beside the baseline's, with ratios."""
    directions = {
        "upload": (figures["upload beachhead"], figures["upload winrmcp"]),
        "download": (figures["download beachhead"], figures["download winrmcp"]),
    }
    result: dict[str, Any] = {
        "endpoint": endpoint.where,
        "nproc": os.cpu_count(),
        "runs": options.runs,
        "size_mib": options.size_mib,
        "baseline_size_mib": options.baseline_size_mib,
    }
    for direction, pair in directions.items():
        result[direction] = {
            f.name: {
                "mib_per_s": {"median": round(f.rate(), 3), "min": round(min(f.rates()), 3)},
                "seconds_median": round(statistics.median(f.seconds), 3),
                "round_trips_per_mib": round(f.trips_per_mib(), 2),
                "round_trips_median": statistics.median(f.posts),
                "wsman_messages_last_run": f.actions,
            }
            for f in pair
        }
        ours, base = pair
        result[direction]["ratios"] = {
            "mib_per_s beachhead/winrmcp": round(ours.rate() / base.rate(), 2),
            "round_trips_per_mib beachhead/winrmcp": round(ours.trips_per_mib() / max(base.trips_per_mib(), 1e-9), 4),
        }
    if options.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\nWinRM transfer on {endpoint.where}, nproc {os.cpu_count()}, {options.runs} runs, medians")
    scaled = options.baseline_size_mib != options.size_mib
    print(
        f"each moves {options.size_mib} MiB, except the winrmcp upload: {options.baseline_size_mib} MiB"
        + (" (per MiB figures: its cost is linear in the size)" if scaled else "")
    )
    print(f"{'direction':<9} {'implementation':<26} {'MiB/s':>8} {'min':>8} {'trips/MiB':>10}  beachhead / it")
    labels = {"upload": "winrmcp echo >>", "download": "naive certutil + type"}
    for direction, (ours, base) in directions.items():
        print(
            f"{direction:<9} {'beachhead':<26} {ours.rate():>8.2f} {min(ours.rates()):>8.2f} "
            f"{ours.trips_per_mib():>10.1f}"
        )
        print(
            f"{'':<9} {labels[direction]:<26} {base.rate():>8.2f} {min(base.rates()):>8.2f} "
            f"{base.trips_per_mib():>10.1f}  {ours.rate() / base.rate():.1f}x MiB/s, "
            f"{ours.trips_per_mib() / base.trips_per_mib():.3f}x trips"
        )


def main() -> int:
    """Parse options, start or hold the endpoint, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loopback", action="store_true", help="a wsman endpoint on 127.0.0.1 instead of the lab")
    parser.add_argument("--size-mib", type=int, default=32, help="what beachhead moves each way")
    parser.add_argument(
        "--baseline-size-mib", type=int, default=4, help="what the winrmcp upload moves (at most --size-mib)"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    if options.size_mib < 1 or options.baseline_size_mib < 1 or options.runs < 1:
        parser.error("--size-mib, --baseline-size-mib and --runs must be at least 1")
    options.baseline_size_mib = min(options.baseline_size_mib, options.size_mib)
    if not options.loopback and os.geteuid() != 0:
        print("the lab needs root (or use --loopback)", file=sys.stderr)
        return 1
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch:
        where = loopback_endpoint(Path(scratch)) if options.loopback else lab_endpoint()
        try:
            with where as endpoint:
                figures = asyncio.run(measure(endpoint, options, Path(scratch)))
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    report(endpoint, figures, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
