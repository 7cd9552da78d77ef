"""The rdp keys backend on the lab: win-01's console is xrdp at its address, port 3389,
whose session is the Windows stand-in's cmd.exe, and FreeRDP's shadow server at port
3390, showing an X display whose xterm runs the same. A ``type`` step to
``vsphere://…/win-01?console=rdp`` (address from VMware Tools, the Windows login from
the target; ``&rdp_port=3390`` for the shadow) types 1 KiB of mixed text into
``findstr "^" > typed.txt``, which copies it byte for byte to the guest's drive, and a
``<waitFor>`` reads cmd.exe's output off the RDP screen."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import beachhead
from tests.console.test_rdp_console import mixed_text
from tests.lab.conftest import Vc, listening, wait_for

GUESTS = lab_dir() / "guests"


def _type_1kib_into_win01(tmp_path: Path, vc: Vc, target: str) -> None:
    """Type 1 KiB into win-01's cmd.exe over ``target`` (an rdp console) and check that
    ``typed.txt`` on its drive got exactly those bytes."""
    vm = vc.vm("win-01")
    wait_for(lambda: vm.guest.guestOperationsReady, what="win-01 booted")
    typed = GUESTS / "win-01" / "C" / "Users" / "Administrator" / "typed.txt"
    typed.unlink(missing_ok=True)
    text = mixed_text()
    steps = [
        {"type": {"text": '<waitFor "Microsoft Corporation" 60s>findstr "^" <gt> typed.txt<enter>'}},
        {"type": {"text": text.replace("<", "<lt>") + "<leftCtrlOn>d<leftCtrlOff>"}},
        # %USERNAME% expands in cmd.exe's output only, not in the line as typed. (OCR
        # loses the first word of the screen's last line here: wait for the words after.)
        {"type": {"text": 'echo READY %USERNAME% DONE<enter><waitFor "Administrator DONE" 30s>'}},
    ]
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "rdp", "steps": steps}, sort_keys=False))
    done = beachhead("run", str(plan), "--target", target, "--json", timeout=180)
    assert done.returncode == 0, done.stderr + done.stdout
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [step.get("channel") for step in result["steps"]] == ["keys"] * 3
    # A pty's line discipline turns the Return key's CR into LF; findstr keeps line ends.
    assert typed.read_bytes() == text.encode("ascii")


@pytest.mark.timeout(240, func_only=True)  # not the wait for the lab lock
def test_1kib_into_win01_over_rdp(tmp_path: Path, lab: dict[str, Any], vc: Vc, vsphere_uri: Callable[..., str]) -> None:
    [win] = [vm for vm in lab["vms"] if vm["name"] == "win-01"]
    assert win["rdp_port"] == 3389
    _type_1kib_into_win01(tmp_path, vc, vsphere_uri("win-01", console="rdp"))


@pytest.mark.timeout(240, func_only=True)
def test_1kib_into_win01_over_freerdp_shadow(
    tmp_path: Path, lab: dict[str, Any], vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    [win] = [vm for vm in lab["vms"] if vm["name"] == "win-01"]
    assert win["rdp_shadow_port"] == 3390
    assert all(vm["rdp_shadow_port"] is None for vm in lab["vms"] if vm["os"] == "linux")
    wait_for(lambda: listening(win["ip"], 3390), timeout=60, what="FreeRDP's shadow server on win-01:3390")
    _type_1kib_into_win01(tmp_path, vc, vsphere_uri("win-01", console="rdp", rdp_port="3390"))
