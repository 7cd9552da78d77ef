"""The examples under examples/ run as documented, against the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import Vc

pytestmark = [pytest.mark.lab, pytest.mark.root]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_clone_and_customize_clones_with_pyvmomi_and_customizes_the_clone(
    vc: Vc, lab: dict[str, Any], runs_dir: Path
) -> None:
    source = vc.guest("lin-02")
    env = {
        **os.environ,
        "BEACHHEAD_VCENTER_PASSWORD": lab["vcenter"]["password"],
        "BEACHHEAD_GUEST_PASSWORD": source["guest_password"],
    }
    argv = [sys.executable, str(EXAMPLES / "clone_and_customize.py"), "--vcenter", "127.0.0.1"]
    argv += ["--user", lab["vcenter"]["username"], "--ca-file", lab["vcenter"]["ca_file"]]
    argv += ["--source", "lin-02", "--name", "example-01", "--guest-user", source["guest_username"]]
    argv += ["--runs-dir", str(runs_dir), "--destroy"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cloned lin-02 into example-01 (vm-")
    assert "plan wait for tools running: ok" in lines and "step 1 upload: ok" in lines and "step 2 run: ok" in lines
    assert lines[-1] == "destroyed example-01"
    [result] = [json.loads(line) for line in lines if line.startswith("{")]
    assert result["target"] == "example-01" and result["status"] == "ok" and result["channel"] == "ssh"
    [run] = [step for step in result["steps"] if step["number"] == 2]
    assert run["stdout"] == "example-01\nprovisioned by clone_and_customize.py\n"
    assert source["guest_password"] not in done.stdout + done.stderr
    assert all(vm.name != "example-01" for vm in vc.content.rootFolder.childEntity[0].vmFolder.childEntity)
