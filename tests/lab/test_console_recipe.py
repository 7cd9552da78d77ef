"""The console recipe on the lab: con-01 (no network, no tools, no login) gets its
address and dropbear from ``linux/console-ssh`` typed over usb (PutUsbScanCodes); the
plan waits for port 22 and finishes over ssh. The host key is pinned by Beachhead
(``known_hosts=serial``): the recipe prints it on con-01's serial port, a VM serial
port backed by a file on the datastore, which Beachhead reads through vCenter's
datastore file access. Every channel decision is in the run's result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import yaml
from pyVmomi import vim

from tests.conftest import beachhead
from tests.lab.conftest import Vc
from tests.lab.test_keys_usb import _console_ready, _console_vm_uri


def test_con01_has_a_serial_port_backed_by_a_datastore_file(vc: Vc) -> None:
    vm = vc.vm("con-01")
    [port] = [device for device in vm.config.hardware.device if isinstance(device, vim.vm.device.VirtualSerialPort)]
    assert isinstance(port.backing, vim.vm.device.VirtualSerialPort.FileBackingInfo)
    assert port.backing.fileName == f"{vm.config.files.logDirectory.rstrip('/')}/serial.log"


def test_recipe_moves_a_console_only_vm_to_ssh(
    tmp_path: Path, lab: dict[str, Any], runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    guest = next(vm for vm in lab["vms"] if vm["name"] == "con-01")
    serial_log = _console_ready(lab, "con-01")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    (tmp_path / "app.conf").write_text("recipe\n")
    plan = tmp_path / "plan.yaml"
    steps = [
        {"wait": {"powered_on": {"timeout": 60}}},
        {"type": {"recipe": "linux/console-ssh", "with": {"authorized_key": key.export_public_key().decode().strip()}}},
        {"wait": {"port": 22, "timeout": 60}},
        {"upload": {"src": "app.conf", "dest": "/root/app.conf"}},
        {"run": "cat /root/app.conf; ip -4 -o address show eth0"},
        # Another host key, printed nowhere: the next run must refuse it. The listening
        # dropbear (this session's parent's parent) ends; this session lives on.
        {
            "run": "kill $(cut -d' ' -f4 /proc/$PPID/stat) && dropbearkey -t ed25519 -f /tmp/other_key >/dev/null"
            " && dropbear -s -r /tmp/other_key </dev/null >/dev/null 2>&1"
        },
    ]
    plan.write_text(yaml.safe_dump({"name": "console-recipe", "steps": steps}, sort_keys=False))
    parameters = {"address": guest["ip"], "ssh_user": "root", "ssh_key": tmp_path / "id", "known_hosts": "serial"}
    uri = _console_vm_uri(vsphere_uri, "con-01") + "&" + "&".join(f"{k}={v}" for k, v in parameters.items())
    done = beachhead("run", str(plan), "--target", uri, "--json", timeout=300)
    assert done.returncode == 0, done.stdout + serial_log.read_text(errors="replace")[-3000:]
    result = json.loads(done.stdout)
    _, typed, _, upload, run, _ = result["steps"]
    assert typed["channel"] == "keys"
    assert typed["channels_tried"] == [{"channel": "keys", "result": "used"}]
    # No tools: guest operations are passed over, with their reason, in favour of ssh.
    assert upload["channel"] == "ssh", json.dumps(upload)
    assert [t["channel"] for t in upload["channels_tried"]][-1] == "ssh"
    assert upload["channels_tried"][-1]["result"] == "used"
    assert all(t.get("reason") for t in upload["channels_tried"][:-1])
    assert run["channel"] == "ssh" and run["stdout"].startswith("recipe\n")
    assert f"inet {guest['ip']}/24" in run["stdout"]
    # Pinned from the serial port, not trusted on first use: the new key is refused.
    plan.write_text(yaml.safe_dump({"name": "pinned", "steps": [{"run": "true"}]}))
    refused = beachhead("run", str(plan), "--target", uri, "--json", timeout=120)
    assert refused.returncode != 0
    [tried] = [t for t in json.loads(refused.stdout)["steps"][0]["channels_tried"] if t["channel"] == "ssh"]
    assert tried["result"] == "failed" and "host key" in tried["reason"] and "serial port" in tried["reason"], tried


def test_serial_host_keys_need_a_file_backed_serial_port(tmp_path: Path, vsphere_uri: Callable[..., str]) -> None:
    """lin-01 has no serial port: ssh is passed over with the reason, guest operations run the step."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "no-serial", "steps": [{"run": "true"}]}))
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-01", known_hosts="serial"), "--json", timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    [step] = json.loads(done.stdout)["steps"]
    assert step["channel"] == "guestops"
    [ssh] = [t for t in step["channels_tried"] if t["channel"] == "ssh"]
    assert "no serial port backed by a datastore file" in ssh["reason"], ssh
