"""The console recipe on the lab: con-01 (no network, no tools, no login) gets its
address and dropbear from ``linux/console-ssh`` typed over usb (PutUsbScanCodes); the
plan waits for port 22 and finishes over ssh, the host key pinned from the ready line
con-01 wrote to its serial console. Every channel decision is in the run's result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import yaml

from tests.conftest import beachhead
from tests.lab.test_keys_usb import _console_ready, _console_vm_uri


def _host_key(serial_log: Path) -> str:
    """The ``ssh-ed25519 KEY`` of con-01's ready line (its last boot's)."""
    from beachhead.bootstrap.lab.qemu_vm import READY_LINE

    line = [row for row in serial_log.read_text(errors="replace").splitlines() if row.startswith(READY_LINE)][-1]
    _name, algorithm, key = line[len(READY_LINE) :].split()[:3]
    return f"{algorithm} {key}"


def test_recipe_moves_a_console_only_vm_to_ssh(
    tmp_path: Path, lab: dict[str, Any], runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    guest = next(vm for vm in lab["vms"] if vm["name"] == "con-01")
    serial_log = _console_ready(lab, "con-01")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    (tmp_path / "known_hosts").write_text(f"{guest['ip']} {_host_key(serial_log)}\n")
    (tmp_path / "app.conf").write_text("recipe\n")
    plan = tmp_path / "plan.yaml"
    steps = [
        {"wait": {"powered_on": {"timeout": 60}}},
        {"type": {"recipe": "linux/console-ssh", "with": {"authorized_key": key.export_public_key().decode().strip()}}},
        {"wait": {"port": 22, "timeout": 60}},
        {"upload": {"src": "app.conf", "dest": "/root/app.conf"}},
        {"run": "cat /root/app.conf; ip -4 -o address show eth0"},
    ]
    plan.write_text(yaml.safe_dump({"name": "console-recipe", "steps": steps}, sort_keys=False))
    uri = (
        _console_vm_uri(vsphere_uri, "con-01")
        + "&"
        + "&".join(
            f"{k}={v}"
            for k, v in {
                "address": guest["ip"],
                "ssh_user": "root",
                "ssh_key": tmp_path / "id",
                "known_hosts": tmp_path / "known_hosts",
            }.items()
        )
    )
    done = beachhead("run", str(plan), "--target", uri, "--json", timeout=300)
    assert done.returncode == 0, done.stdout + serial_log.read_text(errors="replace")[-3000:]
    result = json.loads(done.stdout)
    _, typed, _, upload, run = result["steps"]
    assert typed["channel"] == "keys"
    assert typed["channels_tried"] == [{"channel": "keys", "result": "used"}]
    # No tools: guest operations are passed over, with their reason, in favour of ssh.
    assert upload["channel"] == "ssh", json.dumps(upload)
    assert [t["channel"] for t in upload["channels_tried"]][-1] == "ssh"
    assert upload["channels_tried"][-1]["result"] == "used"
    assert all(t.get("reason") for t in upload["channels_tried"][:-1])
    assert run["channel"] == "ssh" and run["stdout"].startswith("recipe\n")
    assert f"inet {guest['ip']}/24" in run["stdout"]
    # Pinned, not trusted on first use: another key in known_hosts is refused.
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    (tmp_path / "known_hosts").write_text(f"{guest['ip']} {other}\n")
    plan.write_text(yaml.safe_dump({"name": "pinned", "steps": [{"run": "true"}]}))
    refused = beachhead("run", str(plan), "--target", uri, "--json", timeout=120)
    assert refused.returncode != 0
    [tried] = [t for t in json.loads(refused.stdout)["steps"][0]["channels_tried"] if t["channel"] == "ssh"]
    assert tried["result"] == "failed" and "host key" in tried["reason"], tried
