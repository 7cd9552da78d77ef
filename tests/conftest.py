"""Fixtures: a real OpenSSH sshd on loopback (key and password accounts), run
directories, and helpers to run the ``beachhead`` CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd

BEACHHEAD = Path(sys.executable).with_name("beachhead")
PASSWORD_ENV = "BEACHHEAD_TEST_PASSWORD"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the isolated sshd accounts need root")


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
