"""win-01 as a ``vsphere://`` target over the ``winrm`` channel: reached at the address
VMware Tools reports, with the guest login chained into the WinRM route, chosen before
guest operations by the default Windows order; the lab CA checks its https listener."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import beachhead, write_plan

GUESTS = lab_dir() / "guests"


def _result(stdout: str) -> dict[str, Any]:
    [line] = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(line)  # type: ignore[no-any-return]


def test_a_windows_vm_goes_over_winrm_at_its_reported_address(
    tmp_path: Path, runs_dir: Path, lab: dict[str, Any], vsphere_uri: Callable[..., str]
) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(payload)
    plan = write_plan(
        tmp_path,
        r"""
        name: windows-winrm
        wait: [ip_assigned]
        steps:
          - run: {command: "echo on-%COMPUTERNAME%", shell: cmd}
          - upload: {src: blob.bin, dest: 'C:\Users\Administrator\wr\blob.bin'}
          - download: {src: 'C:\Users\Administrator\wr\blob.bin', dest: "TMP/back.bin"}
        """.replace("TMP", str(tmp_path)),
    )
    uri = vsphere_uri("win-01", os="windows", winrm_scheme="https", winrm_ca_file=lab["vcenter"]["ca_file"])
    done = beachhead("run", str(plan), "--target", uri, "--json", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    result = _result(done.stdout)
    echo, upload, download = result["steps"][-3:]
    assert [step.get("channel") for step in (echo, upload, download)] == ["winrm"] * 3, result
    assert echo["stdout"].strip() == "on-WIN-01"
    assert (GUESTS / "win-01/C/Users/Administrator/wr/blob.bin").read_bytes() == payload
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
