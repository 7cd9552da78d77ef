"""Fixtures: a real OpenSSH sshd on loopback (key and password accounts), run
directories, and helpers to run the ``beachhead`` CLI as a user would and to wait
(bounded) for what it does; the markers every test gets (see pyproject.toml)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from beachhead.agent.secrets import REDACTOR
from beachhead.bootstrap.local_sshd import LocalSshd

BEACHHEAD = Path(sys.executable).with_name("beachhead")
PASSWORD_ENV = "BEACHHEAD_TEST_PASSWORD"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the isolated sshd accounts need root")
T = TypeVar("T")

TESTS = Path(__file__).parent
ROOT_ONLY_FIXTURES = {"password_env", "lab_session", "xrdp_peer"}  # they skip the test without root
OWN_SSHD_MODULES = {TESTS / "test_demo.py"}  # start a LocalSshd of their own, not the fixture


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by what it needs: ``lab`` (tests/lab/), ``metadata``
    (tests/metadata/), ``windows`` (tests/windows/: the Windows stand-in on loopback),
    ``sshd`` (a real sshd), ``root``, and ``unit`` for the rest."""
    for item in items:
        path = item.path
        fixtures = set(getattr(item, "fixturenames", ()))
        marks = set()
        if path.is_relative_to(TESTS / "lab"):
            marks |= {"lab", "root"}
        if path.is_relative_to(TESTS / "metadata"):
            marks.add("metadata")
        if path.is_relative_to(TESTS / "windows"):
            marks.add("windows")
        if path.is_relative_to(TESTS / "console"):
            marks.add("console")
        if "sshd" in fixtures or path in OWN_SSHD_MODULES:
            marks.add("sshd")
        if fixtures & ROOT_ONLY_FIXTURES or needs_root.mark in item.iter_markers("skipif"):
            marks.add("root")
        if not marks & {"lab", "metadata", "windows", "sshd", "console"}:
            marks.add("unit")
        for name in sorted(marks):
            item.add_marker(name)


LAB_LOCK = pytest.StashKey[contextlib.ExitStack]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Wait for the machine's one lab (another session or a benchmark may hold it) here,
    before any test starts: a wait inside the first lab test's setup counted against
    that test's timeout. Held until the session ends (see ``tests/lab/conftest.py``)."""
    if os.geteuid() != 0 or not any(item.get_closest_marker("lab") for item in session.items):
        return
    from beachhead.bootstrap.lab.lock import lab_lock

    held = contextlib.ExitStack()
    held.enter_context(lab_lock())
    session.config.stash[LAB_LOCK] = held


def pytest_unconfigure(config: pytest.Config) -> None:
    """Let the lab go (taken by :func:`pytest_collection_finish`)."""
    held = config.stash.get(LAB_LOCK, None)
    if held is not None:
        held.close()


def wait_until(condition: Callable[[], T], timeout: float = 10, what: str = "condition", interval: float = 0.02) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return result


async def await_until(
    condition: Callable[[], T], timeout: float = 10, what: str = "condition", interval: float = 0.02
) -> T:
    """:func:`wait_until` for async tests: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)
    return result


def processes_mentioning(text: str) -> list[int]:
    """The processes (on this machine, which the test guests share) whose command line
    contains ``text``; e.g. the shell of a guest command that would create a marker file."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def tcp_connections(pid: int) -> dict[int, tuple[int, int]]:
    """The established TCP connections process ``pid`` holds: socket inode -> (local
    port, remote port). Empty when the process is gone."""
    sockets = set()
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return {}
    for descriptor in descriptors:
        try:
            link = os.readlink(descriptor)
        except OSError:  # closed meanwhile (such as the one that listed the directory)
            continue
        if link.startswith("socket:["):
            sockets.add(int(link[len("socket:[") : -1]))
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            _, local, remote, state, *_, inode = row.split()[:10]
            if state == "01" and int(inode) in sockets:  # 01: ESTABLISHED
                found[int(inode)] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return found


def held_connection(
    process: subprocess.Popen[str], port: int, exclude: int | None = None, timeout: float = 20, what: str = ""
) -> int:
    """Wait until ``process`` keeps a connection to ``port`` open (the same one seen on
    two looks 0.1s apart, e.g. a long-poll, not a quick request); its socket inode. Fails
    at once when the process exits. ``exclude``: a connection seen before, not counted."""
    earlier: set[int] = set()

    def held() -> int | None:
        assert process.poll() is None, f"{what or 'the process'}: it exited instead"
        now = {inode for inode, (_, remote) in tcp_connections(process.pid).items() if remote == port} - {exclude}
        kept = earlier & now
        earlier.clear()
        earlier.update(now)
        return min(kept) if kept else None

    return wait_until(held, timeout, what or f"a connection to port {port} held open", interval=0.1)


@pytest.fixture(autouse=True)
def forget_secrets() -> Iterator[None]:
    """Secret values a test registers in this process (a target's password, a run's env
    values) are forgotten after it, so that a test taking $HOME as a password does not
    mask "/root" in every later test's output."""
    before = REDACTOR.registered()
    yield
    REDACTOR.forget(REDACTOR.registered() - before)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    """One sshd for the session: key login (root) and a sudo-capable password login."""
    server = LocalSshd(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh runs directory, also exported for CLI subprocesses."""
    path = tmp_path / "runs"
    monkeypatch.setenv("BEACHHEAD_RUNS_DIR", str(path))
    return path


@pytest.fixture
def password_env(sshd: LocalSshd, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment variable holding the sudo account's password."""
    account = sshd.sudo_account
    if account is None or account.password is None:
        pytest.skip("the password account needs root")
    monkeypatch.setenv(PASSWORD_ENV, account.password)
    return PASSWORD_ENV


@pytest.fixture
def guest_dir(tmp_path: Path) -> Path:
    """A directory the guest (same machine, reached over SSH) writes into."""
    path = tmp_path / "guest"
    path.mkdir()
    path.chmod(0o777)
    return path


def write_plan(directory: Path, text: str, name: str = "plan.yaml") -> Path:
    """Write a plan file (dedented) and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def beachhead(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI, as a user would, and capture its output."""
    return subprocess.run(
        [str(BEACHHEAD), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the demo (``bootstrap/demo.sh`` without its install step) with ``home`` as
    $HOME, where it puts the reports it downloads."""
    return subprocess.run(
        [sys.executable, "-m", "beachhead.bootstrap.run_demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(home)},
        check=False,
    )
