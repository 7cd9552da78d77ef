"""Clone a VM with pyVmomi and hand the clone to Beachhead in the same script, as a
provisioning tool would right after it created a VM.

    BEACHHEAD_VCENTER_PASSWORD=... BEACHHEAD_GUEST_PASSWORD=... \\
        python examples/clone_and_customize.py --vcenter 127.0.0.1 --ca-file ca.pem \\
        --source lin-01 --name web-01 --guest-user root [--destroy]

The script logs in once; Beachhead runs over that session (no second login). It
clones ``--source`` into ``--name``, powers the clone on, and runs a plan built in
Python: wait until VMware Tools run and the clone has an address, upload a file,
run a command. Progress events print as they come; the result prints as the JSON
object ``beachhead run --json`` prints. ``--destroy`` powers the clone off and
destroys it afterwards. Exit status: 0 when the plan succeeded, 1 when it failed.

Against the lab (``beachhead lab up``), the vCenter is 127.0.0.1, its CA file, user
and password are in ``beachhead lab status --json``, and so are the source VM's
guest login and password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

import beachhead

TASK_TIMEOUT_S = 300.0


def wait_for_task(task: vim.Task, what: str) -> object:
    """The task's result once it has finished (bounded); raise its fault if it failed."""
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while task.info.state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not finished within {TASK_TIMEOUT_S:g}s")
        time.sleep(0.2)
    if task.info.state == vim.TaskInfo.State.error:
        raise RuntimeError(f"{what} failed: {task.info.error}")
    result: object = task.info.result
    return result


def find_vm(content: vim.ServiceInstanceContent, name: str) -> vim.VirtualMachine:
    """The VM called ``name``."""
    assert content.viewManager is not None
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        for vm in view.view:
            if isinstance(vm, vim.VirtualMachine) and vm.name == name:
                return vm
    finally:
        view.Destroy()
    raise SystemExit(f"no VM named {name!r}")


def clone(source: vim.VirtualMachine, name: str) -> vim.VirtualMachine:
    """Clone ``source`` into the same folder and resource pool, powered off."""
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(pool=source.resourcePool), powerOn=False)  # type: ignore[no-untyped-call]
    result = wait_for_task(source.CloneVM_Task(folder=source.parent, name=name, spec=spec), f"cloning {source.name}")
    assert isinstance(result, vim.VirtualMachine)
    return result


def plan(payload: Path) -> dict[str, object]:
    """The plan, built in Python: the same shape as a plan file."""
    return {
        "name": "clone-bootstrap",
        "wait": ["tools_running", {"ip_assigned": {"timeout": 120}}],
        "steps": [
            {"upload": {"src": str(payload), "dest": "/etc/motd.d/provisioned", "mode": "0644"}},
            {"run": "hostname; cat /etc/motd.d/provisioned"},
        ],
    }


async def customize(vm: vim.VirtualMachine, guest_user: str, guest_password: str, runs_dir: Path | None) -> bool:
    """Run the plan on ``vm`` over the caller's session, printing progress as it comes."""
    target = await beachhead.vsphere_target(vm, guest_user=guest_user, guest_password=guest_password, name=vm.name)
    with tempfile.TemporaryDirectory() as scratch:
        payload = Path(scratch) / "provisioned"
        payload.write_text(f"provisioned by {Path(__file__).name}\n")
        run = beachhead.start_run(plan(payload), [target], runs_dir=runs_dir)
        async for event in run.events():
            if event.kind == "step_finished" and event.step is not None:
                step = event.step
                label = f"step {step.number} {step.kind}" if step.number is not None else step.description
                print(f"{label}: {step.status}", flush=True)
            elif event.kind in ("run_started", "target_started"):
                print(event.kind.replace("_", " "), event.target or event.run_id, flush=True)
        report = await run.wait()
    print(json.dumps(report.to_json()["results"][0]))
    return report.ok


def main() -> int:
    """Clone, power on, customize, and destroy when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vcenter", required=True, help="vCenter host name or address")
    parser.add_argument("--user", default="administrator@vsphere.local", help="vCenter user")
    parser.add_argument("--ca-file", help="CA bundle that signed vCenter's certificate (else the system's)")
    parser.add_argument("--source", required=True, help="the VM (or template) to clone")
    parser.add_argument("--name", required=True, help="the clone's name")
    parser.add_argument("--guest-user", required=True, help="the guest login (VMware Tools guest operations)")
    parser.add_argument("--runs-dir", type=Path, help="where Beachhead keeps the run's journal")
    parser.add_argument("--destroy", action="store_true", help="power off and destroy the clone afterwards")
    args = parser.parse_args()
    vcenter_password = os.environ.get("BEACHHEAD_VCENTER_PASSWORD")
    guest_password = os.environ.get("BEACHHEAD_GUEST_PASSWORD")
    if not vcenter_password or not guest_password:
        parser.error("set BEACHHEAD_VCENTER_PASSWORD and BEACHHEAD_GUEST_PASSWORD")
    logging.basicConfig(level=logging.WARNING)  # Beachhead's own events go through logging
    context = ssl.create_default_context(cafile=args.ca_file)
    si = SmartConnect(host=args.vcenter, user=args.user, pwd=vcenter_password, sslContext=context)  # type: ignore[no-untyped-call]
    try:
        vm = clone(find_vm(si.RetrieveContent(), args.source), args.name)
        print(f"cloned {args.source} into {vm.name} ({vm._moId})", flush=True)
        wait_for_task(vm.PowerOnVM_Task(), f"powering on {vm.name}")
        try:
            ok = asyncio.run(customize(vm, args.guest_user, guest_password, args.runs_dir))
        finally:
            if args.destroy:
                if vm.runtime.powerState == vim.VirtualMachine.PowerState.poweredOn:
                    wait_for_task(vm.PowerOffVM_Task(), f"powering off {vm.name}")
                wait_for_task(vm.Destroy_Task(), f"destroying {args.name}")
                print(f"destroyed {args.name}", flush=True)
    finally:
        Disconnect(si)  # type: ignore[no-untyped-call]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
