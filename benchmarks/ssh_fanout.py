"""SSH fan-out: one command and a 1 MiB upload on 50 targets, side by side with baselines.

Every implementation does the same work against the same loopback OpenSSH sshd, in
the same process run, interleaved run by run so that machine noise spreads evenly:

- ``beachhead``: ``beachhead.run_plan`` with a two-step plan (``run``, ``upload``), which
  also journals every write, verifies each upload's sha256 in the guest, and writes
  through a temporary file renamed into place;
- ``asyncssh``: a plain asyncssh script: connect, run, SFTP put, close;
- ``ansible``: ansible-core ad-hoc with forks equal to the target count, ``shell`` then
  ``copy`` (ControlPersist lets the second command reuse the first's connections).

Run it from the repository root, as root (the sshd runs in a private mount namespace):

    bash bootstrap/install.sh bench
    .venv/bin/python -m benchmarks.ssh_fanout [--targets 50] [--runs 5] [--size-mib 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from beachhead.agent.api import run_plan
from beachhead.agent.engine import RunSettings
from beachhead.agent.logs import configure_logging
from beachhead.bootstrap.local_sshd import LocalSshd

COMMAND = "hostname"
RUN_TIMEOUT_S = 300


@dataclass
class Setup:
    """What every implementation shares: the sshd, the payload, the guest directory."""

    sshd: LocalSshd
    scratch: Path
    payload: Path
    guest: Path
    targets: int

    def names(self) -> list[str]:
        """One distinct target name per entry."""
        return [f"t{n:03d}" for n in range(self.targets)]

    def reset_guest(self) -> None:
        """Empty the guest directory so every run uploads fresh files."""
        shutil.rmtree(self.guest, ignore_errors=True)
        self.guest.mkdir(parents=True)


@dataclass
class Timings:
    """Wall times of one implementation, or why it could not run."""

    name: str
    seconds: list[float] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def median(self) -> float:
        """Median wall time in seconds."""
        return statistics.median(self.seconds)


class BenchmarkFailed(RuntimeError):
    """An implementation did not do all the work; its time would mean nothing."""


def _check_uploads(setup: Setup, prefix: str) -> None:
    files = sorted(setup.guest.glob(f"{prefix}*"))
    if len(files) != setup.targets or any(f.stat().st_size != setup.payload.stat().st_size for f in files):
        raise BenchmarkFailed(f"{prefix}: expected {setup.targets} complete uploads, found {len(files)}")


async def run_beachhead(setup: Setup) -> None:
    """The plan through Beachhead's engine, journal and verification included."""
    plan = setup.scratch / "plan.yaml"
    plan.write_text(
        f"name: fanout\nsteps:\n  - run: {COMMAND}\n"
        f"  - upload: {{src: {setup.payload}, dest: '{setup.guest}/bh-{{target}}'}}\n"
    )
    targets = [setup.sshd.uri(name=name) for name in setup.names()]
    settings = RunSettings(concurrency=setup.targets, connect_timeout=30, retries=0)
    report = await run_plan(plan, targets, settings=settings, runs_dir=setup.scratch / "runs")
    failed = [result.error for result in report.results if not result.ok]
    if failed:
        raise BenchmarkFailed(f"beachhead: {len(failed)} targets failed, e.g. {failed[0]}")
    _check_uploads(setup, "bh-")


async def run_asyncssh(setup: Setup) -> None:
    """The same work as a plain asyncssh script would do it."""
    account = setup.sshd.login

    async def one(name: str) -> None:
        async with asyncssh.connect(
            setup.sshd.host,
            setup.sshd.port,
            username=account.name,
            client_keys=[str(account.key_file)],
            known_hosts=str(setup.sshd.known_hosts),
            agent_path=None,
        ) as connection:
            result = await connection.run(COMMAND, check=True)
            if not result.stdout:
                raise BenchmarkFailed("asyncssh: command printed nothing")
            async with connection.start_sftp_client() as sftp:
                await sftp.put(str(setup.payload), f"{setup.guest}/raw-{name}")

    await asyncio.gather(*(one(name) for name in setup.names()))
    _check_uploads(setup, "raw-")


def ansible_available() -> str | None:
    """None when ansible-core is installed beside this Python, else why not."""
    if not Path(sys.executable).with_name("ansible").exists():
        return "ansible-core not installed (bash bootstrap/install.sh bench)"
    return None


def _ansible_environment(setup: Setup) -> tuple[dict[str, str], Path]:
    base = setup.scratch / "ansible"
    if not base.exists():
        base.mkdir()
        account = setup.sshd.login
        inventory = base / "inventory.ini"
        inventory.write_text(
            "[guests]\n"
            + "".join(
                f"{name} ansible_host={setup.sshd.host} ansible_port={setup.sshd.port} "
                f"ansible_user={account.name} ansible_ssh_private_key_file={account.key_file}\n"
                for name in setup.names()
            )
        )
        control = Path(tempfile.mkdtemp(prefix="bh-cp-"))  # short: ssh limits socket path length
        (base / "ansible.cfg").write_text(
            "[defaults]\n"
            f"inventory = {inventory}\n"
            "host_key_checking = True\n"
            f"forks = {setup.targets}\n"
            "interpreter_python = /usr/bin/python3\n"
            f"local_tmp = {base}/local\n"
            f"remote_tmp = {base}/remote\n"
            "gathering = explicit\n"
            "[ssh_connection]\n"
            f"ssh_args = -o UserKnownHostsFile={setup.sshd.known_hosts} -o ControlMaster=auto -o ControlPersist=60s\n"
            f"control_path_dir = {control}\n"
            "pipelining = True\n"
        )
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(base),
        "ANSIBLE_CONFIG": str(base / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    return environment, base / "inventory.ini"


async def run_ansible(setup: Setup) -> None:
    """Two ad-hoc commands: shell, then copy."""
    environment, inventory = _ansible_environment(setup)
    ansible = str(Path(sys.executable).with_name("ansible"))
    for module, argument in (
        ("shell", COMMAND),
        ("copy", f"src={setup.payload} dest={setup.guest}/ans-{{{{ inventory_hostname }}}}"),
    ):
        process = await asyncio.create_subprocess_exec(
            ansible,
            "all",
            "-i",
            str(inventory),
            "-m",
            module,
            "-a",
            argument,
            "-o",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
        if process.returncode != 0:
            raise BenchmarkFailed(f"ansible -m {module} exited {process.returncode}: {output.decode()[-2000:]}")
    _check_uploads(setup, "ans-")


async def timed(setup: Setup, work: Callable[[Setup], Awaitable[None]]) -> float:
    """Wall seconds of one run, starting from an empty guest directory."""
    setup.reset_guest()
    started = time.perf_counter()
    await asyncio.wait_for(work(setup), RUN_TIMEOUT_S)
    return time.perf_counter() - started


async def measure(setup: Setup, runs: int) -> list[Timings]:
    """Interleave the implementations ``runs`` times (after one untimed warm-up each)."""
    implementations: list[tuple[Timings, Callable[[Setup], Awaitable[None]]]] = [
        (Timings("beachhead"), run_beachhead),
        (Timings("asyncssh"), run_asyncssh),
        (Timings("ansible", unavailable=ansible_available()), run_ansible),
    ]
    active = [(t, work) for t, work in implementations if t.unavailable is None]
    for _, work in active:
        await timed(setup, work)
    for run in range(runs):
        for timings, work in active:
            timings.seconds.append(await timed(setup, work))
            print(f"run {run + 1}/{runs} {timings.name}: {timings.seconds[-1]:.2f}s", file=sys.stderr)
    return [t for t, _ in implementations]


def report(results: list[Timings], setup: Setup, as_json: bool) -> None:
    """Print medians, minima and Beachhead's ratio to each baseline."""
    ours = next(t for t in results if t.name == "beachhead")
    figures = {
        "targets": setup.targets,
        "payload_bytes": setup.payload.stat().st_size,
        "nproc": os.cpu_count(),
        "runs": len(ours.seconds),
        "results": {
            t.name: (
                {"unavailable": t.unavailable}
                if t.unavailable
                else {"median_s": round(t.median, 3), "min_s": round(min(t.seconds), 3)}
            )
            for t in results
        },
        "ratios": {
            f"beachhead/{t.name}": round(ours.median / t.median, 2)
            for t in results
            if t is not ours and not t.unavailable
        },
    }
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"\n{setup.targets} targets, one command + {setup.payload.stat().st_size} byte upload each, "
        f"{len(ours.seconds)} runs, nproc {os.cpu_count()}"
    )
    print(f"{'implementation':<14} {'median s':>9} {'min s':>9}  beachhead / it")
    for t in results:
        if t.unavailable:
            print(f"{t.name:<14} {'-':>9} {'-':>9}  unavailable: {t.unavailable}")
            continue
        ratio = "" if t is ours else f"{ours.median / t.median:.2f}x"
        print(f"{t.name:<14} {t.median:>9.3f} {min(t.seconds):>9.3f}  {ratio}")


def main() -> int:
    """Parse options, start the sshd, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        payload = scratch / "payload.bin"
        payload.write_bytes(os.urandom(int(options.size_mib * 1024 * 1024)))
        with LocalSshd(scratch / "sshd") as sshd:
            setup = Setup(sshd, scratch, payload, scratch / "guest", options.targets)
            try:
                results = asyncio.run(measure(setup, options.runs))
            except BenchmarkFailed as exc:
                print(f"benchmark failed: {exc}", file=sys.stderr)
                return 1
            report(results, setup, options.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
