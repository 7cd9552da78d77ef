# mypy: disable-error-code="no-untyped-call,no-any-return"
# (the baseline drives pyVmomi, whose calls are untyped)
"""A fleet on the lab: power on and customize hundreds of VMs from one process.

The lab is brought up with ``--vms N`` (``fleet-0001`` … Linux namespace guests with
sshd). Before each measurement every fleet VM is powered off (and the file a run
uploads is deleted from the guests). Then one worker process does the whole job:

- ``beachhead``: one ``beachhead.run_plan`` over the N ``vsphere://`` targets
  (``concurrency`` N), with the plan ``power: on``, ``wait: tools_running``,
  ``wait: ip_assigned``, ``upload`` of a small file and ``run: sha256sum FILE;
  hostname``, over the channel selection picks (ssh, with host keys pinned through
  guest operations). It waits on the vCenter's one property-collector watcher.
- ``polling``: what a Packer/Ansible-style client does: pyvmomi (one session, 64
  threads) powers each VM on and reads ``runtime.powerState``,
  ``guest.toolsRunningStatus`` and ``guest.ipAddress`` of that VM once a second (one
  RetrieveProperties per VM per second) until it is on with tools running and an
  address, then asyncssh (password login, host keys not checked) uploads the same file
  over SFTP and runs the same command.

The lab's guests report VMware Tools running ``--boot-delay`` seconds after power-on
(20 s by default, a small Linux VM's boot): a poller's calls grow with the boot time,
a watcher's do not, so the calls-per-VM ratio is quoted with the delay it was measured at.

Each worker reports its own wall time (from before its first vCenter call to the last
VM customized), peak RSS and CPU seconds; the parent reads the lab vCenter's SOAP
request counters (``GET /lab/stats``, by method) before and after, so each figure is
the worker's own: vCenter API calls per VM. The implementations alternate, one run
each per round; the report gives medians and the ratio beside the baseline.

The lab is machine-wide: the benchmark holds the lab lock, brings the lab up with the
fleet (taking down a running lab that lacks it) and down again afterwards. Run as root
from the repository root:

    .venv/bin/python -m benchmarks.fleet [--vms 500] [--runs 3] [--boot-delay 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import http.client
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

PASSWORD_ENV = "BENCH_VCENTER_PASSWORD"
GUEST_PASSWORD_ENV = "BENCH_FLEET_PASSWORD"
PAYLOAD_NAME = "fleet-payload"
PAYLOAD_BYTES = 4096
POLL_INTERVAL_S = 1.0
BASELINE_THREADS = 64
POWER_OFF_THREADS = 16  # the parent powers the fleet off between runs
WAIT_LIMIT_S = 600.0  # every wait below is bounded by this
BOOT_DELAY_S = 20.0
IMPLEMENTATIONS = ("beachhead", "polling")


class BenchmarkFailed(RuntimeError):
    """An implementation did not do the work; its figures would mean nothing."""


def fleet_of(lab: dict[str, Any]) -> list[dict[str, Any]]:
    """The lab's fleet VMs (``lab up --vms``)."""
    return [vm for vm in lab["vms"] if vm["name"].startswith("fleet-") and len(vm["name"]) == 10]


def expected_output(payload: bytes, name: str) -> str:
    """What the command prints on VM ``name``."""
    return f"{hashlib.sha256(payload).hexdigest()}  /root/{PAYLOAD_NAME}\n{name}\n"


def own_usage() -> dict[str, float]:
    """This process's peak RSS (MB) and CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


# -- the workers (one process each) ------------------------------------------------------
async def beachhead_worker(lab: dict[str, Any], payload: Path) -> dict[str, Any]:
    """One run_plan over the fleet: power on, wait (watcher), upload, run."""
    from beachhead.agent.api import run_plan
    from beachhead.agent.settings import RunSettings

    vcenter, fleet = lab["vcenter"], fleet_of(lab)
    os.environ[PASSWORD_ENV] = vcenter["password"]
    os.environ[GUEST_PASSWORD_ENV] = fleet[0]["guest_password"]
    user = quote(vcenter["username"], safe="")
    targets = [
        f"vsphere://{user}@127.0.0.1/{vm['name']}?password_env={PASSWORD_ENV}&guest_user=root"
        f"&guest_password_env={GUEST_PASSWORD_ENV}&ca_file={vcenter['ca_file']}"
        for vm in fleet
    ]
    plan = {
        "name": "fleet",
        "steps": [
            {"power": "on"},
            {"wait": {"tools_running": {"timeout": WAIT_LIMIT_S}}},
            {"wait": {"ip_assigned": {"timeout": WAIT_LIMIT_S}}},
            {"upload": {"src": str(payload), "dest": f"/root/{PAYLOAD_NAME}"}},
            {"run": f"sha256sum /root/{PAYLOAD_NAME}; hostname"},
        ],
    }
    settings = RunSettings(concurrency=len(targets), connect_timeout=WAIT_LIMIT_S, retries=0)
    started = time.monotonic()
    report = await run_plan(plan, targets, settings=settings, runs_dir=payload.parent / "runs")
    elapsed = time.monotonic() - started
    data = payload.read_bytes()  # noqa: ASYNC240 - a small local file, once per run
    channels: dict[str, int] = {}
    for vm, result in zip(fleet, report.results, strict=True):
        if not result.ok:
            raise BenchmarkFailed(f"beachhead: {vm['name']}: {result.error}")
        if result.steps[-1].stdout != expected_output(data, vm["name"]):
            raise BenchmarkFailed(f"beachhead: {vm['name']} printed {result.steps[-1].stdout!r}")
        channel = result.steps[-1].channel or "?"
        channels[channel] = channels.get(channel, 0) + 1
    return {"seconds": elapsed, "channels": channels}


def _ready(properties: dict[str, Any]) -> bool:
    return (
        properties.get("runtime.powerState") == "poweredOn"
        and properties.get("guest.toolsRunningStatus") == "guestToolsRunning"
        and bool(properties.get("guest.ipAddress"))
    )


async def polling_worker(lab: dict[str, Any], payload: Path) -> dict[str, Any]:
    """pyvmomi power-on and 1 s polling per VM, then asyncssh upload and command."""
    import asyncssh
    from pyVim.connect import Disconnect, SmartConnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim, vmodl

    vcenter, fleet = lab["vcenter"], fleet_of(lab)
    data = payload.read_bytes()  # noqa: ASYNC240 - a small local file, once per run
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(BASELINE_THREADS)
    started = time.monotonic()
    context = ssl.create_default_context(cafile=vcenter["ca_file"])
    si = await loop.run_in_executor(
        threads,
        lambda: SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context),
    )
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    by_name = {vm.name: vm for vm in view.view}
    view.Destroy()
    collector = content.propertyCollector
    paths = ["runtime.powerState", "guest.toolsRunningStatus", "guest.ipAddress"]

    def read(vm: Any) -> dict[str, Any]:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=paths)],
        )
        [found] = collector.RetrieveContents([spec])
        return {prop.name: prop.val for prop in found.propSet}

    async def one(info: dict[str, Any]) -> None:
        vm = by_name[info["name"]]
        await loop.run_in_executor(threads, lambda: WaitForTask(vm.PowerOnVM_Task()))
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not _ready(properties := await loop.run_in_executor(threads, read, vm)):
            if time.monotonic() > deadline:
                raise BenchmarkFailed(f"polling: {info['name']} not ready after {WAIT_LIMIT_S:g}s")
            await asyncio.sleep(POLL_INTERVAL_S)
        async with asyncssh.connect(
            properties["guest.ipAddress"],
            username="root",
            password=info["guest_password"],
            known_hosts=None,
            connect_timeout=60,
        ) as connection:
            async with connection.start_sftp_client() as sftp, sftp.open(f"/root/{PAYLOAD_NAME}", "wb") as remote:
                await remote.write(data)
            result = await connection.run(f"sha256sum /root/{PAYLOAD_NAME}; hostname", check=True)
        if result.stdout != expected_output(data, info["name"]):
            raise BenchmarkFailed(f"polling: {info['name']} printed {result.stdout!r}")

    try:
        await asyncio.gather(*(one(info) for info in fleet))
    finally:
        elapsed = time.monotonic() - started
        await loop.run_in_executor(threads, Disconnect, si)
        threads.shutdown()
    return {"seconds": elapsed, "channels": {"ssh": len(fleet)}}


def worker_main(kind: str, lab_file: Path, payload: Path) -> int:
    """``--worker KIND``: do the job, print one JSON line with the figures."""
    from beachhead.agent.logs import configure_logging

    configure_logging("warning")
    lab = json.loads(lab_file.read_text())
    work = beachhead_worker if kind == "beachhead" else polling_worker
    try:
        figures = asyncio.run(work(lab, payload))
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**figures, **own_usage()}))
    return 0


# -- the parent: the lab, power-offs, counters, report -----------------------------------
def power_off_fleet(lab: dict[str, Any]) -> None:
    """Power every fleet VM off, wait until the lab has cleared their tools state, and
    delete the uploaded file from the guests."""
    from pyVim.connect import Disconnect, SmartConnect
    from pyVim.task import WaitForTask
    from pyVmomi import vim

    vcenter, names = lab["vcenter"], {vm["name"] for vm in fleet_of(lab)}
    context = ssl.create_default_context(cafile=vcenter["ca_file"])
    si = SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context)
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vms = [vm for vm in view.view if vm.name in names]
        view.Destroy()
        on = [vm for vm in vms if vm.runtime.powerState != "poweredOff"]
        si._stub.poolSize = POWER_OFF_THREADS  # a connection per thread, kept between calls

        def power_off(vm: Any) -> None:
            # Once, a connection the busy simulator had dropped was reused: ask again.
            for attempt in range(3):
                try:
                    if vm.runtime.powerState != "poweredOff":
                        WaitForTask(vm.PowerOffVM_Task())
                    return
                except (ConnectionError, http.client.HTTPException):
                    if attempt == 2:
                        raise

        with ThreadPoolExecutor(POWER_OFF_THREADS) as pool:
            list(pool.map(power_off, on))
        deadline = time.monotonic() + WAIT_LIMIT_S
        while any(vm.guest.toolsRunningStatus == "guestToolsRunning" for vm in vms):
            if time.monotonic() > deadline:
                raise BenchmarkFailed("fleet VMs still report tools running after power off")
            time.sleep(0.5)
    finally:
        Disconnect(si)
    guests = Path(lab["network"]["dhcp_leases"]).parent / "guests"
    for name in names:
        (guests / name / "root" / PAYLOAD_NAME).unlink(missing_ok=True)


def mem_available_mb() -> float:
    """The machine's MemAvailable now, in MB: what bringing the lab up costs is its drop."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise BenchmarkFailed("/proc/meminfo has no MemAvailable")


def measure_once(kind: str, lab: dict[str, Any], lab_file: Path, payload: Path) -> dict[str, Any]:
    """One worker run from a powered-off fleet; its figures and its vCenter calls."""
    from beachhead.bootstrap.lab.soap_stats import calls_since, soap_calls

    power_off_fleet(lab)
    before = soap_calls(lab)
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.fleet",
            "--worker",
            kind,
            "--lab-file",
            str(lab_file),
            "--payload",
            str(payload),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_S * 2,
        check=False,
    )
    if worker.returncode != 0:
        raise BenchmarkFailed(f"{kind} worker: {worker.stderr.strip()[-2000:]}")
    time.sleep(0.5)  # the counters follow the vCenter's request trace
    after = soap_calls(lab)
    calls = calls_since(before, after)
    figures: dict[str, Any] = json.loads(worker.stdout.strip().splitlines()[-1])
    figures["calls"] = calls
    return figures


def report(runs: list[dict[str, dict[str, Any]]], vms: int, boot_delay: float, as_json: bool) -> None:
    """Medians of each figure, beside the baseline's, with ratios."""

    def median(kind: str, key: str) -> float:
        return statistics.median(run[kind][key] for run in runs)

    def calls_per_vm(kind: str) -> float:
        return statistics.median(sum(run[kind]["calls"].values()) / vms for run in runs)

    rows = {
        "seconds, first power-on to last VM customized": (median("beachhead", "seconds"), median("polling", "seconds")),
        "peak RSS (MB)": (median("beachhead", "peak_rss_mb"), median("polling", "peak_rss_mb")),
        "CPU seconds": (median("beachhead", "cpu_s"), median("polling", "cpu_s")),
        "vCenter API calls per VM": (calls_per_vm("beachhead"), calls_per_vm("polling")),
    }
    last = runs[-1]
    top = {kind: dict(sorted(last[kind]["calls"].items(), key=lambda kv: -kv[1])[:12]) for kind in IMPLEMENTATIONS}
    if as_json:
        figures = {
            "nproc": os.cpu_count(),
            "vms": vms,
            "boot_delay_s": boot_delay,
            "runs": len(runs),
            "medians": {label: {"beachhead": round(a, 3), "polling": round(b, 3)} for label, (a, b) in rows.items()},
            "ratios beachhead/polling": {label: round(a / b, 3) for label, (a, b) in rows.items()},
            "channels": last["beachhead"]["channels"],
            "calls_by_method_last_run": top,
            "samples": runs,
        }
        print(json.dumps(figures, indent=2))
        return
    print(f"\nfleet of {vms} lab VMs, boot delay {boot_delay:g}s, nproc {os.cpu_count()}, {len(runs)} runs each")
    print(f"{'figure':<48} {'beachhead':>10} {'polling 1 s':>12}  beachhead / it")
    for label, (ours, base) in rows.items():
        print(f"{label:<48} {ours:>10.1f} {base:>12.1f}  {ours / base:.2f}x")
    print(f"beachhead's channels: {last['beachhead']['channels']}")
    for kind in IMPLEMENTATIONS:
        print(f"{kind} calls by method (last run): {top[kind]}")


def main() -> int:
    """Parse options, hold the lab with the fleet, alternate the implementations, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=500, help="fleet VMs (lab up --vms)")
    parser.add_argument("--runs", type=int, default=3, help="runs per implementation")
    parser.add_argument(
        "--boot-delay",
        type=float,
        default=BOOT_DELAY_S,
        help=f"seconds from power-on to VMware Tools running in the lab's guests (default {BOOT_DELAY_S:g}: "
        "a small Linux VM's boot; the polling baseline's calls grow with it, the watcher's do not)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--lab-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--payload", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return worker_main(options.worker, options.lab_file, options.payload)
    if os.geteuid() != 0:
        print("the lab needs root", file=sys.stderr)
        return 1
    from beachhead.bootstrap.lab.config import load_config, with_fleet
    from beachhead.bootstrap.lab.lab import down, status, up
    from beachhead.bootstrap.lab.lock import lab_lock

    def say(message: str) -> None:
        print(f"lab: {message}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch, lab_lock():
        if status() is not None:
            down()  # a lab up already may have another fleet or boot delay
        started_at, available_before = time.monotonic(), mem_available_mb()
        config = dataclasses.replace(with_fleet(load_config(None), options.vms), boot_delay_s=options.boot_delay)
        state, started = up(config, progress=say)
        lab = state.public()
        if started:
            cost, count = available_before - mem_available_mb(), len(lab["vms"])
            say(
                f"up with {options.vms} fleet VMs ({count} in all) in {time.monotonic() - started_at:.1f}s; "
                f"MemAvailable {cost:.0f} MB lower, {cost / count:.1f} MB per VM"
            )
        lab_file, payload = Path(scratch, "lab.json"), Path(scratch, "payload.bin")
        lab_file.write_text(json.dumps(lab))
        lab_file.chmod(0o600)
        payload.write_bytes(os.urandom(PAYLOAD_BYTES))
        runs: list[dict[str, dict[str, Any]]] = []
        try:
            for run in range(options.runs):
                order = IMPLEMENTATIONS if run % 2 == 0 else IMPLEMENTATIONS[::-1]
                figures = {kind: measure_once(kind, lab, lab_file, payload) for kind in order}
                runs.append(figures)
                print(
                    f"run {run + 1}/{options.runs}: "
                    + ", ".join(
                        f"{kind} {f['seconds']:.1f}s {f['peak_rss_mb']:.0f} MB "
                        f"{sum(f['calls'].values()) / options.vms:.1f} calls/VM"
                        for kind, f in figures.items()
                    ),
                    file=sys.stderr,
                )
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        finally:
            if not options.keep_lab:
                down()
    report(runs, options.vms, options.boot_delay, options.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
