"""Guest operations on the lab: command latency, commands per second, and how soon after
VMware Tools start running the first guest command starts.

Beachhead is measured beside a plain pyvmomi script doing the same work with the usual
1 s polling loop, in the same process run, interleaved so that machine noise falls on
both:

- ``latency``: one command at a time on one VM. Beachhead's guestops channel runs
  ``echo ok`` through ``/bin/sh`` with stdout and stderr redirected to guest temporary
  files, awaits the exit through ListProcessesInGuest with a short backoff (50 ms
  growing to 1 s), then downloads and deletes both files. The baseline starts the same
  command with its output discarded and asks ListProcessesInGuest once a second.
- ``throughput``: the same, ``--concurrency`` commands at a time over the lab's Linux
  VMs (the baseline on as many threads).
- ``first command``: the VM is powered off, each implementation starts waiting, the VM
  is powered on. Beachhead runs a plan (``wait: [tools_running]``, then ``run: date``)
  through ``beachhead.run_plan``, so the figure includes opening the channel; the baseline
  reads ``guest.toolsRunningStatus`` once a second and then starts ``date``. The delay
  is from the moment the lab's vCenter set tools running (its line in the VM's
  vmware.log, in microseconds) to the time ``date`` printed in the guest: one clock, as
  the lab's guests run on this machine. The 0.24 simulator hands property changes to
  WaitForUpdatesEx in batches every 250 ms, so on the lab an event-driven client sees a
  change 0-250 ms late; a real vCenter sends it at once.

The lab is machine-wide, so the benchmark holds the lab lock, brings the default lab up
if it is not running, and takes it down again if it started it. Run as root from the
repository root:

    .venv/bin/python -m benchmarks.guestops [--commands 40] [--concurrency 8] [--power-cycles 15] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from beachhead.agent.api import run_plan
from beachhead.agent.channel import CommandRequest
from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.logs import configure_logging
from beachhead.agent.plans import Plan
from beachhead.agent.registry import default_plugins
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import parse_target
from beachhead.agent.vsphere.vmlogs import datastore_file_url, log_location
from beachhead.bootstrap.lab.config import load_config
from beachhead.bootstrap.lab.lab import down, up
from beachhead.bootstrap.lab.lock import lab_lock
from beachhead.plugins.guestops_session import GuestopsSession, open_session

POLL_INTERVAL_S = 1.0  # the baseline's polling loop
COMMAND = "echo ok"
WAIT_LIMIT_S = 120.0  # every wait below is bounded by this
PASSWORD_ENV = "BENCH_VCENTER_PASSWORD"


class BenchmarkFailed(RuntimeError):
    """An implementation did not do the work; its figures would mean nothing."""


@dataclass
class Lab:
    """The running lab as the benchmark uses it: vCenter, its CA, the Linux VMs."""

    description: dict[str, Any]

    @property
    def vcenter(self) -> dict[str, Any]:
        """URL, credentials and CA file of the lab's vCenter."""
        return dict(self.description["vcenter"])

    @property
    def linux(self) -> list[dict[str, Any]]:
        """The lab's Linux VMs."""
        return [vm for vm in self.description["vms"] if vm["os"] == "linux" and vm.get("console") != "qemu"]

    def uri(self, vm: dict[str, Any]) -> str:
        """The vsphere:// target of ``vm``, its passwords in this process's environment."""
        variable = "BENCH_GUEST_PASSWORD_" + vm["name"].replace("-", "_").upper()
        os.environ[PASSWORD_ENV] = self.vcenter["password"]
        os.environ[variable] = vm["guest_password"]
        user = quote(self.vcenter["username"], safe="")
        return (
            f"vsphere://{user}@127.0.0.1/{vm['name']}?password_env={PASSWORD_ENV}"
            f"&guest_user={vm['guest_username']}&guest_password_env={variable}&ca_file={self.vcenter['ca_file']}"
        )

    def connect(self) -> Any:
        """A plain pyvmomi session, verifying the lab's CA."""
        vcenter = self.vcenter
        context = ssl.create_default_context(cafile=vcenter["ca_file"])
        return SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context)


@contextmanager
def running_lab() -> Iterator[Lab]:
    """Hold the lab lock; bring the default lab up unless it runs; down again after if
    this started it."""
    with lab_lock():
        state, started = up(load_config(None), progress=lambda message: print(f"lab: {message}", file=sys.stderr))
        try:
            yield Lab(state.public())
        finally:
            if started:
                down()


@dataclass
class Figures:
    """Measurements of one implementation in one benchmark."""

    name: str
    values: list[float] = field(default_factory=list)

    def median(self) -> float:
        """The median."""
        return statistics.median(self.values)

    def p95(self) -> float:
        """The 95th percentile (nearest rank)."""
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


# -- the baseline: plain pyvmomi ----------------------------------------------------------
class PyvmomiGuest:
    """Guest operations on one VM as a plain pyvmomi script does them."""

    def __init__(self, si: Any, vm: Any, info: dict[str, Any]) -> None:
        self.vm = vm
        self.auth = vim.vm.guest.NamePasswordAuthentication(
            username=info["guest_username"], password=info["guest_password"]
        )
        manager = si.content.guestOperationsManager
        self.processes, self.files = manager.processManager, manager.fileManager

    def start(self, command: str) -> int:
        """Start ``command`` with /bin/sh; return its pid."""
        spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments=f"-c '{command}'")
        return int(self.processes.StartProgramInGuest(self.vm, self.auth, spec))

    def wait(self, pid: int) -> int:
        """Ask once a second until the process has ended; return its exit code."""
        deadline = time.monotonic() + WAIT_LIMIT_S
        while time.monotonic() < deadline:
            [info] = self.processes.ListProcessesInGuest(self.vm, self.auth, [pid])
            if info.endTime is not None:
                return int(info.exitCode or 0)
            time.sleep(POLL_INTERVAL_S)
        raise BenchmarkFailed(f"pyvmomi: process {pid} still running after {WAIT_LIMIT_S:g}s")

    def read(self, path: str, context: ssl.SSLContext) -> str:
        """A guest file's text, through a transfer URL."""
        transfer = self.files.InitiateFileTransferFromGuest(self.vm, self.auth, path)
        with urllib.request.urlopen(transfer.url, context=context, timeout=30) as response:
            return str(response.read().decode())

    def run(self, command: str) -> None:
        """Run ``command`` to its end; a non-zero exit is a failed benchmark."""
        code = self.wait(self.start(command))
        if code != 0:
            raise BenchmarkFailed(f"pyvmomi: {command!r} exited {code}")


def find_vm(si: Any, name: str) -> Any:
    """The VM called ``name``."""
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next(vm for vm in view.view if vm.name == name)
    finally:
        view.Destroy()


# -- command latency and throughput ------------------------------------------------------
async def beachhead_commands(sessions: list[GuestopsSession], count: int, concurrency: int) -> list[float]:
    """Run ``count`` commands over ``sessions`` (round robin), ``concurrency`` at a time;
    return each command's seconds."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> float:
        async with gate:
            started = time.perf_counter()
            outcome = await sessions[index % len(sessions)].run(CommandRequest(COMMAND, "benchmark"))
            if outcome.exit_status != 0 or outcome.stdout != "ok\n":
                raise BenchmarkFailed(f"beachhead: {COMMAND!r} gave {outcome.exit_status} {outcome.stdout!r}")
            return time.perf_counter() - started

    return list(await asyncio.gather(*(one(index) for index in range(count))))


def pyvmomi_commands(guests: list[PyvmomiGuest], count: int, concurrency: int) -> list[float]:
    """The same with plain pyvmomi on ``concurrency`` threads."""

    def one(index: int) -> float:
        started = time.perf_counter()
        guests[index % len(guests)].run(f"{COMMAND} >/dev/null")
        return time.perf_counter() - started

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(count)))


async def measure_commands(
    lab: Lab, si: Any, count: int, concurrency: int, runs: int
) -> tuple[list[Figures], list[Figures]]:
    """Latency (one at a time, one VM) and throughput (commands/s), both implementations."""
    latency = [Figures("beachhead"), Figures("pyvmomi")]
    throughput = [Figures("beachhead"), Figures("pyvmomi")]
    baseline = [PyvmomiGuest(si, find_vm(si, vm["name"]), vm) for vm in lab.linux]
    context = RunContext(default_plugins(), RunSettings(connect_timeout=WAIT_LIMIT_S))
    plan = Plan(name="guestops-benchmark", steps=())
    try:
        sessions = [await open_session(TargetContext(context, plan, parse_target(lab.uri(vm)))) for vm in lab.linux]
        try:
            await beachhead_commands(sessions, 2, 1)  # warm-up: connections, caches
            await asyncio.to_thread(pyvmomi_commands, baseline, 2, 1)
            for run in range(runs):
                latency[0].values += await beachhead_commands(sessions[:1], count // 2, 1)
                latency[1].values += await asyncio.to_thread(pyvmomi_commands, baseline[:1], count // 2, 1)
                started = time.perf_counter()
                await beachhead_commands(sessions, count, concurrency)
                throughput[0].values.append(count / (time.perf_counter() - started))
                started = time.perf_counter()
                await asyncio.to_thread(pyvmomi_commands, baseline, count, concurrency)
                throughput[1].values.append(count / (time.perf_counter() - started))
                print(
                    f"run {run + 1}/{runs}: commands/s beachhead {throughput[0].values[-1]:.1f}, "
                    f"pyvmomi {throughput[1].values[-1]:.1f}",
                    file=sys.stderr,
                )
        finally:
            for session in sessions:
                await session.close()
    finally:
        await context.close()
    return latency, throughput


# -- from tools running to the first command ---------------------------------------------
TOOLS_RUNNING_LINE = re.compile(r"^vmx (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) Tools: running", re.MULTILINE)


def tools_running_logged(si: Any, vm: Any, context: ssl.SSLContext) -> float:
    """When tools last turned running, from the lab's lines in the VM's vmware.log
    (fetched through the datastore file API): the lab's own clock, to the microsecond."""
    url = datastore_file_url("https://127.0.0.1", log_location(vm), "vmware.log")
    request = urllib.request.Request(url, headers={"Cookie": si._stub.cookie})
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        text = response.read().decode()
    stamps = TOOLS_RUNNING_LINE.findall(text)
    if not stamps:
        raise BenchmarkFailed(f"no 'Tools: running' line in {vm.name}'s vmware.log")
    return time.mktime(time.strptime(stamps[-1][:19], "%Y/%m/%d %H:%M:%S")) + float(stamps[-1][19:])


async def beachhead_first_command(lab: Lab, vm: dict[str, Any], scratch: Path) -> float:
    """A plan that waits for tools, then runs ``date``; the guest time ``date`` printed."""
    plan = scratch / "first.yaml"
    plan.write_text(
        "name: first-command\nchannels: [guestops]\nwait: [{tools_running: {timeout: 120}}]\n"
        "steps:\n  - run: date +%s.%N\n"
    )
    settings = RunSettings(connect_timeout=WAIT_LIMIT_S, retries=0)
    report = await run_plan(plan, [lab.uri(vm)], settings=settings, runs_dir=scratch / "runs")
    [result] = report.results
    if not result.ok:
        raise BenchmarkFailed(f"beachhead: {result.error}")
    return float(result.steps[-1].stdout)


def pyvmomi_first_command(lab: Lab, vm: dict[str, Any], context: ssl.SSLContext) -> float:
    """Read ``guest.toolsRunningStatus`` once a second; once running, run ``date``."""
    si = lab.connect()
    try:
        guest = PyvmomiGuest(si, find_vm(si, vm["name"]), vm)
        deadline = time.monotonic() + WAIT_LIMIT_S
        while guest.vm.guest.toolsRunningStatus != "guestToolsRunning":
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"pyvmomi: tools never ran on {vm['name']}")
            time.sleep(POLL_INTERVAL_S)
        output = "/tmp/beachhead-bench-first"
        guest.run(f"date +%s.%N >{output}")
        return float(guest.read(output, context))
    finally:
        Disconnect(si)


async def one_power_cycle(
    si: Any,
    vm: dict[str, Any],
    context: ssl.SSLContext,
    implementation: Callable[[], Awaitable[float]],
) -> float:
    """Power the VM off, start the implementation, power the VM on; return seconds from
    tools running (as the lab logged it) to the first command's start (in the guest)."""
    target = find_vm(si, vm["name"])
    if target.runtime.powerState != "poweredOff":
        WaitForTask(target.PowerOffVM_Task())
    deadline = time.monotonic() + WAIT_LIMIT_S
    while target.guest.toolsRunningStatus == "guestToolsRunning":  # the lab clears it just after
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"{vm['name']}: tools still running after power off")
        await asyncio.sleep(0.05)
    work = asyncio.ensure_future(implementation())
    # Connected and waiting by then; a random pause, so the baseline's 1 s polling is
    # not in step with the lab's fixed boot delay.
    await asyncio.sleep(random.uniform(1.0, 2.0))
    await asyncio.to_thread(WaitForTask, target.PowerOnVM_Task())
    started_at = await asyncio.wait_for(work, WAIT_LIMIT_S)
    return started_at - await asyncio.to_thread(tools_running_logged, si, target, context)


async def measure_first_command(lab: Lab, si: Any, cycles: int, scratch: Path) -> list[Figures]:
    """Power cycles, alternating the implementations."""
    vm = lab.linux[-1]
    context = ssl.create_default_context(cafile=lab.vcenter["ca_file"])
    figures = [Figures("beachhead"), Figures("pyvmomi")]
    implementations: list[Callable[[], Awaitable[float]]] = [
        lambda: beachhead_first_command(lab, vm, scratch),
        lambda: asyncio.to_thread(pyvmomi_first_command, lab, vm, context),
    ]
    for cycle in range(cycles):
        for result, implementation in zip(figures, implementations, strict=True):
            result.values.append(await one_power_cycle(si, vm, context, implementation))
            print(f"cycle {cycle + 1}/{cycles} {result.name}: {result.values[-1] * 1000:.0f} ms", file=sys.stderr)
    return figures


# -- report ------------------------------------------------------------------------------
def report(
    latency: list[Figures], throughput: list[Figures], first: list[Figures], options: argparse.Namespace
) -> None:
    """Print the figures beside the baseline's, with ratios."""
    ours_latency, base_latency = latency
    ours_rate, base_rate = throughput
    ours_first, base_first = first
    figures = {
        "nproc": os.cpu_count(),
        "runs": options.runs,
        "commands": options.commands,
        "concurrency": options.concurrency,
        "power_cycles": options.power_cycles,
        "latency_s": {
            f.name: {"median": round(f.median(), 4), "p95": round(f.p95(), 4), "samples": len(f.values)}
            for f in latency
        },
        "commands_per_s": {f.name: {"median": round(f.median(), 2)} for f in throughput},
        "first_command_after_tools_s": {
            f.name: {"median": round(f.median(), 4), "max": round(max(f.values), 4)} for f in first
        },
        "ratios": {
            "latency beachhead/pyvmomi": round(ours_latency.median() / base_latency.median(), 3),
            "commands_per_s beachhead/pyvmomi": round(ours_rate.median() / base_rate.median(), 2),
            "first_command beachhead/pyvmomi": round(ours_first.median() / base_first.median(), 3),
        },
    }
    if options.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"\nguest operations on the lab, nproc {os.cpu_count()}, {options.runs} runs, medians")
    print(f"{'figure':<38} {'beachhead':>10} {'pyvmomi 1 s':>12}  beachhead / it")
    rows = [
        ("command latency, median (ms)", ours_latency.median() * 1000, base_latency.median() * 1000),
        ("command latency, p95 (ms)", ours_latency.p95() * 1000, base_latency.p95() * 1000),
        (f"commands/s at concurrency {options.concurrency}", ours_rate.median(), base_rate.median()),
        ("tools running -> first command (ms)", ours_first.median() * 1000, base_first.median() * 1000),
    ]
    for label, ours, base in rows:
        print(f"{label:<38} {ours:>10.1f} {base:>12.1f}  {ours / base:.2f}x")


async def measure(lab: Lab, options: argparse.Namespace, scratch: Path) -> None:
    """Everything, then the report."""
    si = lab.connect()
    try:
        latency, throughput = await measure_commands(lab, si, options.commands, options.concurrency, options.runs)
        first = await measure_first_command(lab, si, options.power_cycles, scratch)
    finally:
        Disconnect(si)
    report(latency, throughput, first, options)


def main() -> int:
    """Parse options, hold the lab, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=40, help="commands per throughput run (half per latency run)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--power-cycles", type=int, default=15, help="power cycles per implementation")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 1
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch, running_lab() as lab:
        try:
            asyncio.run(measure(lab, options, Path(scratch)))
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
