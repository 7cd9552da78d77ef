"""One plan over a Linux and a Windows host at once: the real sshd over ``ssh`` and the
Windows stand-in's WinRM endpoint over ``winrm``, each step for one OS family run where
it belongs, skipped (with the reason) elsewhere, and undone on both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead, write_plan
from tests.windows.conftest import WsmanEndpoint

PASSWORD_ENV = "BEACHHEAD_TEST_MIXED_WINRM_PW"


def test_one_plan_over_a_linux_and_a_windows_host(
    sshd: LocalSshd,
    wsman_endpoint: WsmanEndpoint,
    guest_dir: Path,
    tmp_path: Path,
    runs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, wsman_endpoint.password)
    (tmp_path / "motd.txt").write_text("customized\n")
    plan = write_plan(
        tmp_path,
        rf"""
        name: mixed-fleet
        steps:
          - run: {{command: "echo on-%COMPUTERNAME%", shell: cmd}}
            os: windows
          - run: echo on-linux
            os: linux
          - upload: {{src: motd.txt, dest: 'C:\Users\Administrator\mixed\motd.txt'}}
            os: windows
          - upload: {{src: motd.txt, dest: {guest_dir}/mixed/motd.txt}}
            os: linux
        """,
    )
    port = urlsplit(wsman_endpoint.http_url).port
    win = f"winrm://{wsman_endpoint.user}@127.0.0.1:{port}?password_env={PASSWORD_ENV}&name=win"
    done = beachhead("run", str(plan), "--target", sshd.uri(name="lin"), "--target", win, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    results: dict[str, dict[str, Any]] = {
        record["target"]: record for record in map(json.loads, done.stdout.splitlines())
    }
    channels = {name: [step["channel"] for step in results[name]["steps"]] for name in results}
    assert channels == {"lin": [None, "ssh", None, "ssh"], "win": ["winrm", None, "winrm", None]}
    statuses = {name: [step["status"] for step in results[name]["steps"]] for name in results}
    assert statuses == {"lin": ["skipped", "ok", "skipped", "ok"], "win": ["ok", "skipped", "ok", "skipped"]}
    assert results["win"]["steps"][1]["skip_reason"] == "os: linux, and win is windows (declared by the target)"
    assert results["win"]["steps"][0]["stdout"].strip().startswith("on-")
    assert results["lin"]["steps"][1]["stdout"] == "on-linux\n"
    on_windows = wsman_endpoint.root / "C" / "Users" / "Administrator" / "mixed" / "motd.txt"
    assert on_windows.read_text() == "customized\n" and (guest_dir / "mixed" / "motd.txt").exists()

    undone = beachhead("undo", results["lin"]["run_id"])
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert not on_windows.parent.exists() and not (guest_dir / "mixed").exists()
