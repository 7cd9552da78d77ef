"""Cheap start: `beachhead --version` and a run over SSH load neither pyVmomi nor
aiohttp (a fresh process each, as a user starts them); a vsphere:// target does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import write_plan

HEAVY = ("pyVmomi", "pyVim", "aiohttp", "asyncssh")
PROBE = """
import json, sys
heavy = set(json.loads(sys.argv[2]))
sys.argv = ["beachhead", *json.loads(sys.argv[1])]
from beachhead.agent.cli import main
try:
    main()
except SystemExit:
    pass
print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""


def loaded_by(*args: str) -> tuple[int | None, set[str]]:
    """Run the CLI with ``args`` in a fresh interpreter; which heavy packages it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    [line] = [line for line in done.stdout.splitlines() if line.startswith("MODULES ")]
    return done.returncode, set(json.loads(line.removeprefix("MODULES ")))


def test_version_loads_no_client_library() -> None:
    status, loaded = loaded_by("--version")
    assert status == 0 and loaded == set()


def test_a_run_over_ssh_loads_neither_pyvmomi_nor_aiohttp(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    plan = write_plan(tmp_path, f"name: p\nsteps:\n  - run: touch {guest_dir}/ran\n")
    status, loaded = loaded_by("run", str(plan), "--target", sshd.uri())
    assert status == 0 and (guest_dir / "ran").exists()  # the run did happen
    assert loaded == {"asyncssh"}


def test_a_vsphere_target_loads_pyvmomi(tmp_path: Path, runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARTUP_VC_PASSWORD", "not-used")
    plan = write_plan(tmp_path, "name: p\nsteps:\n  - run: 'true'\n")
    target = "vsphere://u@vcenter.invalid/vm?password_env=STARTUP_VC_PASSWORD&insecure=1&connect_timeout=2"
    _, loaded = loaded_by("run", str(plan), "--target", target, "--retries", "0")
    assert "pyVmomi" in loaded  # the check above would notice a lazy import that never happens
