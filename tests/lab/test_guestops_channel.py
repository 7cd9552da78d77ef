"""The guestops channel and vSphere wait conditions, end to end through `beachhead run`
on the lab: commands, transfers, verification, faults, undo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyVim.task import WaitForTask

from beachhead.agent.output import KEPT_BYTES
from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import BEACHHEAD, beachhead, processes_mentioning, write_plan
from tests.lab.conftest import FLEET, Vc, wait_for

GUESTS = lab_dir() / "guests"


def _results(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a log written so far (a line still being written is left out)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else ():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def _watching_while_off(run: subprocess.Popen[str], wire: Path, vm: Any) -> bool:
    """True once the run's vCenter watcher has been told ``vm`` is powered off (a
    WaitForUpdatesEx answer in the run's wire log): the run waits with the VM's state in hand."""
    assert run.poll() is None, "the run should be waiting for the VM"
    return any(
        r.get("method") == "WaitForUpdatesEx"
        and f">{vm._moId}<" in r.get("response", "")
        and "poweredOff" in r.get("response", "")
        for r in _lines(wire)
    )


def test_commands_and_files_through_guestops(tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]) -> None:
    (tmp_path / "app.conf").write_text("listen 8080\n")
    plan = write_plan(
        tmp_path,
        """
        name: guestops
        channels: [guestops]
        wait: [guestops_ready]
        steps:
          - run: "echo out-$(hostname); echo err >&2"
          - upload: {src: app.conf, dest: /root/gops/app.conf, mode: "0640"}
          - run: {script: script.sh, env: {GREETING: hi}}
          - download: {src: /root/gops/app.conf, dest: "TMP/back.conf"}
          - run: "exit 3"
        """.replace("TMP", str(tmp_path)),
    )
    (tmp_path / "script.sh").write_text('cat /root/gops/app.conf; echo "$GREETING from script"\n')
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-01"), "--json", timeout=120)
    assert done.returncode == 1, done.stderr
    [result] = _results(done)
    assert result["channel"] == "guestops"
    first, upload, script, download, last = result["steps"][1:]
    assert (first["exit_code"], first["stdout"], first["stderr"]) == (0, "out-lin-01\n", "err\n")
    assert upload["status"] == "ok" and download["status"] == "ok"
    guest_file = GUESTS / "lin-01/root/gops/app.conf"
    assert guest_file.read_text() == "listen 8080\n"
    assert guest_file.stat().st_mode & 0o7777 == 0o640
    assert script["stdout"] == "listen 8080\nhi from script\n"
    assert (tmp_path / "back.conf").read_text() == "listen 8080\n"
    assert (last["status"], last["exit_code"]) == ("failed", 3)
    assert not list((GUESTS / "lin-01/tmp").glob("beachhead-*")), "temporary output files left in the guest"
    records = [json.loads(line) for line in (runs_dir / result["run_id"] / "journal.jsonl").read_text().splitlines()]
    runs = {r["seq"] for r in records if r.get("op") == "run"}
    pids = [r.get("pid") for r in records if r["seq"] in runs and r["phase"] != "intent"]
    assert len(pids) == 3 and all(isinstance(pid, int) and pid > 0 for pid in pids), pids  # processes started

    undo = beachhead("undo", result["run_id"])
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not guest_file.exists() and not guest_file.parent.exists()


def test_the_os_family_is_read_from_the_vm(tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]) -> None:
    (tmp_path / "notes.txt").write_text("windows stand-in\n")
    plan = write_plan(
        tmp_path,
        r"""
        name: windows-files
        steps:
          - upload: {src: notes.txt, dest: 'C:\Users\Administrator\notes.txt'}
          - download: {src: 'C:\Users\Administrator\notes.txt', dest: "TMP/notes-back.txt"}
        """.replace("TMP", str(tmp_path)),
    )
    done = beachhead("run", str(plan), "--target", vsphere_uri("win-01"), "--json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (GUESTS / "win-01/C/Users/Administrator/notes.txt").read_text() == "windows stand-in\n"
    assert (tmp_path / "notes-back.txt").read_text() == "windows stand-in\n"


def test_wrong_guest_password_fails_without_retrying(
    tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps:\n  - run: 'true'\n")
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-02", guest_password="wrong"), "--json")
    assert done.returncode == 1
    [result] = _results(done)
    assert "the guest refused the user name or password" in result["error"]


def test_a_run_started_while_the_vm_is_off_waits_for_power_on_tools_and_ip(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    vm = vc.vm("lin-03")
    WaitForTask(vm.PowerOffVM_Task())
    plan = write_plan(
        tmp_path,
        """
        name: first-boot
        channels: [guestops]
        wait:
          - {powered_on: {timeout: 60}}
          - tools_running
          - {ip_assigned: {timeout: 60}}
        steps:
          - run: id -un
        """,
    )
    wire, log = tmp_path / "wire.jsonl", tmp_path / "stderr.jsonl"
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [str(BEACHHEAD), "run", str(plan), "--target", vsphere_uri("lin-03"), "--json", "--wire-log", str(wire)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        wait_for(lambda: _watching_while_off(run, wire, vm), timeout=60, what="the run watching lin-03 off")
        WaitForTask(vm.PowerOnVM_Task())
        stdout, _ = run.communicate(timeout=60)
    finally:
        run.kill()
        wait_for(lambda: vm.runtime.powerState == "poweredOn", what="lin-03 on")
    assert run.returncode == 0, log.read_text()
    [result] = [json.loads(line) for line in stdout.splitlines()]
    waits, step = result["steps"][:3], result["steps"][3]
    assert [w["status"] for w in waits] == ["ok"] * 3
    assert step["stdout"] == "admin\n"
    events = _lines(log)
    assert {"powered_on", "tools_running", "ip_assigned"} <= {e.get("kind") for e in events if e["event"] == "vm.event"}
    # It waited for vCenter to report the power-on, and ended after the report.
    powered_on = next(n for n, e in enumerate(events) if e["event"] == "vm.event" and e.get("kind") == "powered_on")
    first_wait_end = next(n for n, e in enumerate(events) if e["event"] == "step.finish")
    assert powered_on < first_wait_end


def test_a_powered_off_vm_times_out_waiting(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    vm = vc.vm("lin-02")
    WaitForTask(vm.PowerOffVM_Task())
    try:
        plan = write_plan(tmp_path, "name: x\nwait: [{powered_on: {timeout: 2}}]\nsteps:\n  - run: 'true'\n")
        done = beachhead("run", str(plan), "--target", vsphere_uri("lin-02"), "--json")
    finally:
        WaitForTask(vm.PowerOnVM_Task())
    assert done.returncode == 1
    [result] = _results(done)
    assert result["steps"][0]["error"] == "timed out after 2s"
    assert result["steps"][1]["status"] == "skipped"


def test_vm_conditions_need_a_vsphere_target(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nwait: [tools_running]\nsteps:\n  - run: 'true'\n")
    done = beachhead("run", str(plan), "--target", "ssh://root@127.0.0.1")
    assert done.returncode == 2
    assert "wait[1]: tools_running is a vSphere VM state" in done.stderr


def test_unknown_vm_is_reported(tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps:\n  - run: 'true'\n")
    uri = vsphere_uri("lin-01").replace("/lin-01?", "/no-such-vm?")
    done = beachhead("run", str(plan), "--target", uri, "--json")
    assert done.returncode == 1
    assert "no VM named 'no-such-vm'" in _results(done)[0]["error"]


def test_one_plan_on_twenty_vms_at_once(tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]) -> None:
    names = ["lin-01", "lin-02", "lin-03", *FLEET]
    assert len(names) == 20
    (tmp_path / "marker").write_text("fleet\n")
    plan = write_plan(
        tmp_path,
        """
        name: fleet
        channels: [guestops]
        wait: [guestops_ready]
        steps:
          - upload: {src: marker, dest: "~/fleet-marker"}
          - run: 'cat ~/fleet-marker; hostname'
        """,
    )
    targets = [argument for name in names for argument in ("--target", vsphere_uri(name))]
    done = beachhead("run", str(plan), *targets, "--json", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = {r["target"]: r for r in _results(done)}
    assert set(results) == set(names)
    for name, result in results.items():
        assert result["steps"][-1]["stdout"] == f"fleet\n{name}\n"
    assert (GUESTS / FLEET[-1] / "root/fleet-marker").read_text() == "fleet\n"


def test_a_wait_and_a_command_ride_out_one_vcenter_restart(
    tmp_path: Path, runs_dir: Path, vc: Vc, vsphere_uri: Callable[..., str]
) -> None:
    """Two runs through one restart (a restart with its downtime is the expensive part):
    one waits for lin-02, powered off: its watcher logs in again and rebuilds its filters,
    and the VM powered on through the restarted vCenter is what it was waiting for. The
    other's guest command on lin-01 goes on while the vCenter is down; that run waits for
    the vCenter, then collects the exit code and output of the command that kept running."""
    vm = vc.vm("lin-02")
    WaitForTask(vm.PowerOffVM_Task())
    waiting_plan = write_plan(
        tmp_path,
        """
        name: restart
        channels: [guestops]
        wait: [{tools_running: {timeout: 120}}]
        steps:
          - run: hostname
        """,
        name="waiting.yaml",
    )
    token = f"ride-{os.getpid()}"
    riding_plan = write_plan(
        tmp_path,
        f"""
        name: ride
        channels: [guestops]
        steps:
          - run: "touch /tmp/{token}; sleep 6; echo done-$(hostname)"
        """,
        name="riding.yaml",
    )
    wire, waiting_log, riding_log = tmp_path / "wire.jsonl", tmp_path / "waiting.jsonl", tmp_path / "riding.jsonl"
    runs: list[subprocess.Popen[str]] = []
    try:
        with waiting_log.open("w") as stderr:
            waiting = subprocess.Popen(
                [
                    str(BEACHHEAD),
                    "run",
                    str(waiting_plan),
                    "--json",
                    "--wire-log",
                    str(wire),
                    "--target",
                    vsphere_uri("lin-02"),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        runs.append(waiting)
        wait_for(lambda: _watching_while_off(waiting, wire, vm), timeout=60, what="the run watching lin-02 off")
        with riding_log.open("w") as stderr:
            riding = subprocess.Popen(
                [str(BEACHHEAD), "run", str(riding_plan), "--target", vsphere_uri("lin-01"), "--json"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        runs.append(riding)
        wait_for(lambda: (GUESTS / "lin-01/tmp" / token).exists(), timeout=60, what="the command runs")
        restarted = beachhead("lab", "restart-vcenter", "--down-seconds", "2", timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        again = Vc(vc.connect(), vc.lab, vc.ssl_context).vm("lin-02")
        assert again.runtime.powerState == "poweredOff"  # as it was before the restart
        WaitForTask(again.PowerOnVM_Task())
        riding_out, _ = riding.communicate(timeout=120)
        waiting_out, _ = waiting.communicate(timeout=120)
    finally:
        for run in runs:
            run.kill()
        (GUESTS / "lin-01/tmp" / token).unlink(missing_ok=True)
    waiting_text = waiting_log.read_text()
    assert waiting.returncode == 0, waiting_text[-3000:]
    [result] = [json.loads(line) for line in waiting_out.splitlines()]
    assert result["steps"][-1]["stdout"] == "lin-02\n"
    assert '"event": "watcher.reconnect"' in waiting_text
    riding_text = riding_log.read_text()
    assert riding.returncode == 0, riding_text[-3000:]
    [result] = [json.loads(line) for line in riding_out.splitlines() if line.startswith("{")]
    assert result["steps"][-1]["stdout"] == "done-lin-01\n"
    assert '"event": "guestops.ride_out"' in riding_text


def test_the_wire_log_shows_the_run_without_secrets(
    tmp_path: Path, runs_dir: Path, lab: dict[str, Any], vsphere_uri: Callable[..., str]
) -> None:
    (tmp_path / "payload").write_text("payload\n")
    plan = write_plan(
        tmp_path,
        """
        name: wire
        channels: [guestops]
        steps:
          - upload: {src: payload, dest: /tmp/wire-payload}
          - run: cat /tmp/wire-payload
        """,
    )
    wire = tmp_path / "wire.jsonl"
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-01"), "--wire-log", str(wire), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    text = wire.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    methods = {r.get("method") for r in records if r["kind"] == "soap"}
    assert {"Login", "StartProgramInGuest", "ListProcessesInGuest", "InitiateFileTransferToGuest"} <= methods
    transfers = [r for r in records if r["kind"] == "transfer" and "/lab/guestFile" in r["url"]]
    assert {"PUT", "GET"} <= {r["method"] for r in transfers}
    guest = next(vm for vm in lab["vms"] if vm["name"] == "lin-01")
    assert lab["vcenter"]["password"] not in text
    assert guest["guest_password"] not in text
    cookies = re.findall(r"vmware_soap_session=([^;\"]*)", text)
    assert cookies and set(cookies) == {"***"}  # the session cookie is logged, its value is not
    assert wire.stat().st_mode & 0o777 == 0o600


def test_big_output_over_guest_operations_is_bounded_and_kept_whole(
    tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    size = 3_000_000
    plan = write_plan(tmp_path, f"name: big\nchannels: [guestops]\nsteps:\n  - run: 'yes | head -c {size}'\n")
    done = beachhead("run", str(plan), "--target", vsphere_uri("lin-01") + "&name=big-gops", "--json", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(line) < 4 * KEPT_BYTES
    result = json.loads(line)
    [step] = result["steps"]
    assert (step["channel"], step["stdout_bytes"], step["stdout_truncated"]) == ("guestops", size, True)
    spill = Path(step["stdout_file"])
    assert spill.parent == runs_dir / result["run_id"] / "output" / "big-gops"
    assert spill.stat().st_size == size and spill.stat().st_mode & 0o777 == 0o600
    assert not list((GUESTS / "lin-01/tmp").glob("beachhead-*")), "temporary files left in the guest"


@pytest.mark.parametrize("cut", ["timeout", "ctrl-c"])
def test_a_command_cut_short_leaves_none_of_its_processes(
    cut: str, tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    """A timeout or Ctrl-C ends the command's whole tree in the guest, a child that left
    its session too (TerminateProcessInGuest alone would end only the shell)."""
    token = f"tree-{cut}-{os.getpid()}"
    command = f"sh -c 'sleep 300; : {token}' & setsid sh -c 'sleep 301; : {token}' & touch /tmp/{token}; wait"
    timeout = ", timeout: 4" if cut == "timeout" else ""
    plan = write_plan(
        tmp_path,
        f"""
        name: tree
        channels: [guestops]
        steps:
          - run: {{command: "{command}"{timeout}}}
        """,
    )
    run = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", vsphere_uri("lin-01"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (GUESTS / "lin-01/tmp" / token).exists(), timeout=60, what="the command runs")
        if cut == "ctrl-c":
            run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        (GUESTS / "lin-01/tmp" / token).unlink(missing_ok=True)
    assert run.returncode == (130 if cut == "ctrl-c" else 1), stderr[-3000:]
    try:
        wait_for(lambda: not processes_mentioning(token), timeout=10, what="the command's processes are gone")
    finally:
        for pid in processes_mentioning(token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
