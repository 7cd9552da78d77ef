"""Beachhead as a library is quiet unless its caller asks: its events go through the
standard logging module (loggers ``beachhead.*``), so a provisioning tool's own logging
configuration decides what is shown. Run in a fresh interpreter, as a caller's program."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import write_plan

CALLER = """
import logging, sys
from beachhead import customize_sync

if sys.argv[3] == "configured":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s|%(levelname)s|%(message)s")
result = customize_sync(sys.argv[1], sys.argv[2])
print("ok" if result.ok else "failed", result.steps[-1].stdout.strip())
"""


def _call(sshd: LocalSshd, plan: Path, tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BEACHHEAD_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.run(
        [sys.executable, "-c", CALLER, sshd.uri(name="lib-guest"), str(plan), mode],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


@pytest.fixture
def plan(tmp_path: Path) -> tuple[Path, str]:
    token = "lib-" + secrets.token_hex(8)
    text = f'name: library\nsteps:\n  - run: {{command: "echo $TOKEN | cut -c1-4", env: {{TOKEN: "{token}"}}}}\n'
    return write_plan(tmp_path, text), token


def test_quiet_when_the_caller_configures_no_logging(sshd: LocalSshd, plan: tuple[Path, str], tmp_path: Path) -> None:
    done = _call(sshd, plan[0], tmp_path, "silent")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "lib-"]
    assert done.stderr == ""


def test_events_reach_the_callers_logging_with_secrets_masked(
    sshd: LocalSshd, plan: tuple[Path, str], tmp_path: Path
) -> None:
    path, token = plan
    done = _call(sshd, path, tmp_path, "configured")
    assert done.returncode == 0, done.stderr
    records = [line.split("|", 2) for line in done.stderr.splitlines() if line.count("|") >= 2]
    ours = [(name, level, message) for name, level, message in records if name.startswith("beachhead")]
    assert ours, done.stderr
    assert any(level == "DEBUG" for _, level, _ in ours)  # the caller's level decides
    assert any(message.startswith("event='run.command'") for _, _, message in ours)
    assert token not in done.stderr
