"""Plan steps that write to the VM itself (extraConfig, power): journaled with the
values they replace kept out of the journal, read back after writing, undone by
`beachhead undo`; checked with plain pyvmomi."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.conftest import beachhead, write_plan
from tests.lab.conftest import Vc


def _extra_config(vm: Any) -> dict[str, str]:
    """Last value wins, an empty value is no value (vCenter's semantics)."""
    values: dict[str, str] = {}
    for option in vm.config.extraConfig or ():
        if option.value:
            values[option.key] = option.value
        else:
            values.pop(option.key, None)
    return values


def _set(vm: Any, **values: str) -> None:
    spec = vim.vm.ConfigSpec(
        extraConfig=[vim.option.OptionValue(key=k.replace("_", "."), value=v) for k, v in values.items()]
    )
    WaitForTask(vm.ReconfigVM_Task(spec=spec))


def _journal(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def test_extra_config_is_written_verified_journaled_and_undone(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    vm = vc.vm("lin-03")
    _set(vm, guestinfo_bh_kept="before", guestinfo_bh_gone="was-here")
    plan = write_plan(
        tmp_path,
        """
        name: guestinfo
        steps:
          - extra_config: {guestinfo.bh.kept: "s3cret-value", guestinfo.bh.new: added, guestinfo.bh.gone: null}
        """,
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-03"), "--json")
    assert done.returncode == 0, done.stderr
    [result] = [json.loads(line) for line in done.stdout.splitlines()]
    config = _extra_config(vm)
    assert config["guestinfo.bh.kept"] == "s3cret-value" and config["guestinfo.bh.new"] == "added"
    assert "guestinfo.bh.gone" not in config

    run_dir = runs_dir / result["run_id"]
    journal_text = (run_dir / "journal.jsonl").read_text()
    assert "s3cret-value" not in journal_text and "was-here" not in journal_text and "before" not in journal_text
    intent, outcome = _journal(run_dir)
    assert intent["op"] == "extra_config" and intent["keys"] == [
        "guestinfo.bh.kept",
        "guestinfo.bh.new",
        "guestinfo.bh.gone",
    ]
    assert outcome["phase"] == "done" and outcome["sha256"]["guestinfo.bh.gone"] is None
    backup = run_dir / intent["replaces"]["backup"]
    assert backup.stat().st_mode & 0o777 == 0o600
    assert json.loads(backup.read_text()) == {
        "guestinfo.bh.kept": "before",
        "guestinfo.bh.new": None,
        "guestinfo.bh.gone": "was-here",
    }

    undo = beachhead("undo", result["run_id"])
    assert undo.returncode == 0, undo.stdout + undo.stderr
    config = _extra_config(vm)
    assert config["guestinfo.bh.kept"] == "before" and config["guestinfo.bh.gone"] == "was-here"
    assert "guestinfo.bh.new" not in config
    again = beachhead("undo", result["run_id"])
    assert again.returncode == 0 and "already undone" in again.stdout + again.stderr


def test_undo_leaves_a_key_changed_after_the_run_unless_forced(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    vm = vc.vm("lin-03")
    plan = write_plan(tmp_path, "name: c\nsteps:\n  - extra_config: {guestinfo.bh.owner: run}\n")
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-03"), "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    _set(vm, guestinfo_bh_owner="someone-else")
    refused = beachhead("undo", run_id)
    assert refused.returncode == 1 and "guestinfo.bh.owner changed after the run" in refused.stdout + refused.stderr
    assert _extra_config(vm)["guestinfo.bh.owner"] == "someone-else"
    forced = beachhead("undo", run_id, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "guestinfo.bh.owner" not in _extra_config(vm)


def test_power_steps_are_verified_and_listed_by_undo(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    vm = vc.vm("lin-03")
    plan = write_plan(
        tmp_path,
        """
        name: power
        steps:
          - power: off
          - power: off
          - power: on
          - wait: {guestops_ready: {timeout: 60}}
          - run: hostname
        """,
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-03"), "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["steps"][-1]["stdout"] == "lin-03\n"
    powers = [r for r in _journal(runs_dir / result["run_id"]) if r.get("op") == "power" or "before" in r]
    befores = [r["before"] for r in powers if "before" in r]
    assert befores == ["poweredOn", "poweredOff", "poweredOff"]
    undo = beachhead("undo", result["run_id"], "--json")
    report = json.loads(undo.stdout)
    assert sum("power off (was poweredOn" in item for item in report["not_undoable"]) == 1
    assert vm.runtime.powerState == "poweredOn"


def test_vm_steps_need_a_vsphere_target(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps:\n  - power: on\n")
    done = beachhead("run", str(plan), "--target", "ssh://root@127.0.0.1")
    assert done.returncode == 2
    assert "step 1 (power): power acts on a vSphere VM" in done.stderr


def test_userdata_via_guestinfo_for_the_vmware_datasource(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    import base64
    import gzip

    import yaml

    vm = vc.vm("lin-03")
    (tmp_path / "user-data.yaml").write_text("#cloud-config\nhostname: from-guestinfo\n")
    (tmp_path / "net.yaml").write_text("version: 2\nethernets: {eth0: {dhcp4: true}}\n")
    plan = write_plan(
        tmp_path,
        """
        name: guestinfo
        steps:
          - userdata: {user_data: user-data.yaml, network_config: net.yaml, via: guestinfo, instance_id: lin-03-a}
        """,
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-03"), "--json")
    assert done.returncode == 0, done.stderr

    def unpacked(key: str) -> bytes:
        config = _extra_config(vm)
        assert config[key + ".encoding"] == "gzip+base64"
        return gzip.decompress(base64.b64decode(config[key]))

    assert unpacked("guestinfo.userdata") == b"#cloud-config\nhostname: from-guestinfo\n"
    meta = yaml.safe_load(unpacked("guestinfo.metadata"))
    assert (meta["instance-id"], meta["local-hostname"]) == ("lin-03-a", "lin-03-a")
    assert gzip.decompress(base64.b64decode(meta["network"])).startswith(b"version: 2")
    assert "guestinfo.vendordata" not in _extra_config(vm)

    undo = beachhead("undo", json.loads(done.stdout)["run_id"])
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not any(key.startswith(("guestinfo.userdata", "guestinfo.metadata")) for key in _extra_config(vm))
