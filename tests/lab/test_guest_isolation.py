"""What a Linux guest writes outside its private directories stays in that guest: the
host's /etc, /opt, /srv, /usr/local and /var are overlaid with upper layers of its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from beachhead.bootstrap.lab.lab import lab_dir
from tests.lab.conftest import Vc

LAB_DIR = lab_dir()
PLACES = ("/etc/bh-isolation", "/opt/bh-isolation", "/usr/local/bh-isolation", "/var/lib/bh-isolation")


def _in_guest(name: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as root inside guest ``name``'s namespaces, as its processes run
    (the holder pids are in the lab's state, which only root reads)."""
    state = json.loads((LAB_DIR / "state.json").read_text())
    names = [vm["name"] for vm in state["vms"] if vm["console"] == "pty"]  # console VMs have no holder
    holder = dict(zip(names, state["holders"], strict=True))[name]
    return subprocess.run(
        ["nsenter", "--target", str(holder), "--mount", "--net", "--uts", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_writes_outside_private_directories_stay_in_the_guest(lab: dict[str, Any]) -> None:
    for place in PLACES:
        assert not Path(place).exists(), f"{place} exists on the host before the test"
    written = _in_guest("lin-01", " && ".join(f"echo lin-01 > {place}" for place in PLACES))
    assert written.returncode == 0, written.stderr
    try:
        seen = _in_guest("lin-01", f"cat {' '.join(PLACES)}")
        assert seen.stdout.split() == ["lin-01"] * len(PLACES)
        for place in PLACES:
            assert not Path(place).exists(), f"{place} written in a guest appeared on the host"
        other = _in_guest("lin-02", f"ls {' '.join(PLACES)}")
        assert other.returncode != 0 and other.stdout == "", "another guest sees lin-01's files"
    finally:
        _in_guest("lin-01", f"rm -f {' '.join(PLACES)}")


@pytest.mark.parametrize("name", ["lin-01", "lin-03"])
def test_a_guest_sees_its_own_accounts_and_the_hosts_other_configuration(vc: Vc, name: str) -> None:
    login = vc.guest(name)["guest_username"]
    looked = _in_guest(name, f"getent passwd {login} && cat /etc/hostname && test -f /etc/os-release")
    assert looked.returncode == 0, looked.stderr
    assert looked.stdout.splitlines()[-1] == name
