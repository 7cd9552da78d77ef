"""The hook a provisioning tool calls after creating a VM, on the lab: a target built from
the tool's own pyVmomi objects runs over the tool's session (no second login, left
logged in), and `beachhead customize --vm MOID` runs a plan as Terraform's local-exec
would call it, with the vCenter from the provider's VSPHERE_* variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from beachhead import customize, vsphere_target
from beachhead.agent.errors import InputError
from tests.conftest import beachhead, write_plan
from tests.lab.conftest import Vc

PLAN = {"name": "hook", "steps": [{"run": "hostname"}]}


def _sessions(vc: Vc) -> set[str]:
    return {session.key for session in vc.content.sessionManager.sessionList}


async def test_target_from_the_callers_vm_object_uses_its_session(vc: Vc, runs_dir: Path) -> None:
    vm = vc.vm("lin-01")
    guest = vc.guest("lin-01")
    before = _sessions(vc)
    target = await vsphere_target(vm, guest_user=guest["guest_username"], guest_password=guest["guest_password"])
    assert target.vm == vm._moId and target.session is not None
    assert guest["guest_password"] not in target.uri and "guest_password_env=BEACHHEAD_GUEST_PASSWORD" in target.uri
    result = await customize(target, PLAN, runs_dir=runs_dir)
    assert result.ok, result.to_json()
    assert result.steps[0].stdout.strip() == "lin-01"
    assert _sessions(vc) == before  # no login of Beachhead's own
    assert vc.si.content.sessionManager.currentSession is not None  # and the caller's is still logged in


async def test_target_from_a_managed_object_id_and_service_instance(vc: Vc, runs_dir: Path) -> None:
    moid = vc.vm("lin-02")._moId
    guest = vc.guest("lin-02")
    target = await vsphere_target(
        moid, vc.si, guest_user=guest["guest_username"], guest_password=guest["guest_password"], name="by-moid"
    )
    result = await customize(target, PLAN, runs_dir=runs_dir)
    assert result.ok, result.to_json()
    assert result.target == "by-moid" and result.steps[0].stdout.strip() == "lin-02"


async def test_secrets_are_values_not_variable_names(vc: Vc) -> None:
    with pytest.raises(InputError, match="guest_password_env: give the secret's value"):
        await vsphere_target(vc.vm("lin-01"), guest_user="root", guest_password_env="X")
    with pytest.raises(InputError, match=r"expected a vim\.VirtualMachine"):
        await vsphere_target("vm-1")


def test_customize_command_runs_a_plan_on_a_vm_by_its_moid(
    vc: Vc, lab: dict[str, Any], tmp_path: Path, runs_dir: Path
) -> None:
    vm = vc.vm("lin-01")
    guest = vc.guest("lin-01")
    plan = write_plan(tmp_path, "name: tf\nsteps:\n  - run: hostname\n")
    env = {
        "VSPHERE_SERVER": "127.0.0.1",
        "VSPHERE_USER": lab["vcenter"]["username"],
        "VSPHERE_PASSWORD": lab["vcenter"]["password"],
        "GUEST_PW": guest["guest_password"],
    }
    common = ["--guest-user", guest["guest_username"], "--guest-password-env", "GUEST_PW"]
    common += ["--param", f"ca_file={lab['vcenter']['ca_file']}", "--json"]
    done = beachhead("customize", str(plan), "--vm", vm._moId, *common, env=env)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    record = json.loads(line)
    assert record["status"] == "ok" and record["steps"][0]["stdout"].strip() == "lin-01"
    # A failing plan exits 1 with its output; an unknown VM fails too, naming it.
    failing = write_plan(tmp_path, "name: tf\nsteps:\n  - run: 'echo broke >&2; exit 3'\n", "fail.yaml")
    failed = beachhead("customize", str(failing), "--vm", vm._moId, *common, env=env)
    assert failed.returncode == 1 and "broke" in failed.stdout + failed.stderr
    missing = beachhead("customize", str(plan), "--vm", "vm-999999", *common, env=env)
    assert missing.returncode == 1 and "vm-999999" in missing.stdout + missing.stderr
    # Without a vCenter (no VSPHERE_SERVER, no --vcenter): bad input, nothing ran.
    unset = {key: value for key, value in env.items() if key != "VSPHERE_SERVER"}
    bad = beachhead("customize", str(plan), "--vm", vm._moId, env={**unset, "VSPHERE_SERVER": ""})
    assert bad.returncode == 2 and "--vcenter" in bad.stderr


def test_the_moid_is_a_vm_reference_in_any_target(vc: Vc, vsphere_uri: Any, tmp_path: Path, runs_dir: Path) -> None:
    moid = vc.vm("lin-02")._moId
    assert isinstance(vc.vm("lin-02"), vim.VirtualMachine)
    plan = write_plan(tmp_path, "name: m\nsteps:\n  - run: hostname\n")
    uri = vsphere_uri("lin-02").replace("/lin-02?", f"/{moid}?")
    done = beachhead("run", str(plan), "--target", uri, "--json")
    assert done.returncode == 0, done.stderr
    assert '"lin-02' in done.stdout
