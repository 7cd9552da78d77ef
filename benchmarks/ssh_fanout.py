"""SSH fan-out: one command and a 1 MiB upload on each of N targets, beside baselines.

The targets are spread over several real OpenSSH sshds, one per loopback address
(127.0.0.2, 127.0.0.3, ...; ``--sshds``, by default one per 50 targets). Every
implementation does the same work against them, each run in a fresh worker process of
its own (so its peak RSS and CPU time are its own), interleaved run by run so that
machine noise spreads evenly:

- ``beachhead``: ``beachhead.run_plan`` with a two-step plan (``run``, ``upload``), which
  also journals every write, verifies each upload's size, mode and sha256 in the guest,
  and writes through a temporary file renamed into place;
- ``asyncssh``: a plain asyncssh script: connect, run, SFTP put, close;
- ``ansible``: ansible-core ad-hoc, ``shell`` then ``copy`` (ControlPersist lets the
  second command reuse the first's connections), with ``--ansible-forks`` forks; it
  forks a process per host, so it is left out above ``--ansible-max-targets``.

Reported per implementation: wall time (median and minimum), CPU seconds per target
(user + system of the worker and its children), peak RSS, and RSS per open connection
(peak RSS less the worker's RSS before it connected, over the number of targets, all of
whose connections are open at once at the peak).

Run it from the repository root, as root (each sshd runs in a private mount namespace):

    bash bootstrap/install.sh bench
    .venv/bin/python -m benchmarks.ssh_fanout [--targets 50] [--runs 5] [--size-mib 1] [--sshds N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMMAND = "hostname"
RUN_TIMEOUT_S = 900
TARGETS_PER_SSHD = 50


@dataclass(frozen=True)
class Host:
    """One sshd and the key login the targets on it use."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str


@dataclass(frozen=True)
class Setup:
    """What every implementation shares: the sshds, the payload, the guest directory."""

    hosts: list[Host]
    scratch: str
    payload: str
    guest: str
    targets: int
    ansible_forks: int

    def names(self) -> list[str]:
        """One distinct target name per entry."""
        return [f"t{n:04d}" for n in range(self.targets)]

    def host_of(self, index: int) -> Host:
        """The sshd target ``index`` talks to (round robin)."""
        return self.hosts[index % len(self.hosts)]

    def known_hosts(self) -> str:
        """One known_hosts file with every sshd's host key."""
        merged = Path(self.scratch) / "known_hosts"
        if not merged.exists():
            merged.write_text("".join(Path(host.known_hosts).read_text() for host in self.hosts))
        return str(merged)


@dataclass
class Figures:
    """One implementation's measurements over the runs, or why it could not run."""

    name: str
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)
    rss_before_kib: list[int] = field(default_factory=list)
    unavailable: str | None = None


class BenchmarkFailed(RuntimeError):
    """An implementation did not do all the work; its time would mean nothing."""


def _check_uploads(setup: Setup, prefix: str) -> None:
    files = sorted(Path(setup.guest).glob(f"{prefix}*"))
    size = Path(setup.payload).stat().st_size
    if len(files) != setup.targets or any(f.stat().st_size != size for f in files):
        raise BenchmarkFailed(f"{prefix}: expected {setup.targets} complete uploads, found {len(files)}")


# -- the implementations (each runs inside a worker process) ------------------------------
async def run_beachhead(setup: Setup) -> None:
    """The plan through Beachhead's engine, journal and verification included."""
    from beachhead.agent.api import run_plan
    from beachhead.agent.settings import RunSettings

    plan = Path(setup.scratch) / "plan.yaml"
    plan.write_text(
        f"name: fanout\nsteps:\n  - run: {COMMAND}\n"
        f"  - upload: {{src: {setup.payload}, dest: '{setup.guest}/bh-{{target}}'}}\n"
    )
    known_hosts = setup.known_hosts()
    targets = [
        f"ssh://{h.user}@{h.host}:{h.port}?key={h.key_file}&known_hosts={known_hosts}&name={name}"
        for index, name in enumerate(setup.names())
        for h in [setup.host_of(index)]
    ]
    settings = RunSettings(concurrency=setup.targets, connect_timeout=60, retries=0)
    report = await run_plan(plan, targets, settings=settings, runs_dir=Path(setup.scratch) / "runs")
    failed = [result.error for result in report.results if not result.ok]
    if failed:
        raise BenchmarkFailed(f"beachhead: {len(failed)} targets failed, e.g. {failed[0]}")
    _check_uploads(setup, "bh-")


async def run_asyncssh(setup: Setup) -> None:
    """The same work as a plain asyncssh script would do it."""
    import asyncssh

    known_hosts = setup.known_hosts()

    async def one(index: int, name: str) -> None:
        host = setup.host_of(index)
        async with asyncssh.connect(
            host.host,
            host.port,
            username=host.user,
            client_keys=[host.key_file],
            known_hosts=known_hosts,
            agent_path=None,
        ) as connection:
            result = await connection.run(COMMAND, check=True)
            if not result.stdout:
                raise BenchmarkFailed("asyncssh: command printed nothing")
            async with connection.start_sftp_client() as sftp:
                await sftp.put(setup.payload, f"{setup.guest}/raw-{name}")

    await asyncio.gather(*(one(index, name) for index, name in enumerate(setup.names())))
    _check_uploads(setup, "raw-")


def ansible_unavailable(targets: int, max_targets: int) -> str | None:
    """None when ansible-core can run this size, else why not."""
    if not Path(sys.executable).with_name("ansible").exists():
        return "ansible-core not installed (bash bootstrap/install.sh bench)"
    if targets > max_targets:
        return f"left out above {max_targets} targets (--ansible-max-targets): it forks a process per host"
    return None


def _ansible_environment(setup: Setup) -> tuple[dict[str, str], Path]:
    base = Path(setup.scratch) / "ansible"
    if not base.exists():
        base.mkdir()
        inventory = base / "inventory.ini"
        inventory.write_text(
            "[guests]\n"
            + "".join(
                f"{name} ansible_host={h.host} ansible_port={h.port} "
                f"ansible_user={h.user} ansible_ssh_private_key_file={h.key_file}\n"
                for index, name in enumerate(setup.names())
                for h in [setup.host_of(index)]
            )
        )
        control = Path(tempfile.mkdtemp(prefix="bh-cp-"))  # short: ssh limits socket path length
        (base / "ansible.cfg").write_text(
            "[defaults]\n"
            f"inventory = {inventory}\n"
            "host_key_checking = True\n"
            f"forks = {min(setup.ansible_forks, setup.targets)}\n"
            "interpreter_python = /usr/bin/python3\n"
            f"local_tmp = {base}/local\n"
            f"remote_tmp = {base}/remote\n"
            "gathering = explicit\n"
            "[ssh_connection]\n"
            f"ssh_args = -o UserKnownHostsFile={setup.known_hosts()} -o ControlMaster=auto -o ControlPersist=60s\n"
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


IMPLEMENTATIONS: dict[str, Callable[[Setup], Awaitable[None]]] = {
    "beachhead": run_beachhead,
    "asyncssh": run_asyncssh,
    "ansible": run_ansible,
}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(name: str, setup_file: Path) -> int:
    """Run one implementation once and print its figures as one JSON line."""
    from beachhead.agent.logs import configure_logging

    configure_logging("warning")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # as `beachhead` itself does
    data = json.loads(setup_file.read_text())
    setup = Setup(**{**data, "hosts": [Host(**host) for host in data["hosts"]]})
    shutil.rmtree(setup.guest, ignore_errors=True)
    Path(setup.guest).mkdir(parents=True)
    work = IMPLEMENTATIONS[name]
    if name == "asyncssh":
        import asyncssh  # noqa: F401 (imported before the baseline RSS, as beachhead's modules are)
    elif name == "beachhead":
        from beachhead.agent.registry import default_plugins

        default_plugins()  # loaded once per process, as by any caller that runs more than one plan
    before = _rss_kib()
    cpu_before = time.process_time()
    started = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(work(setup), RUN_TIMEOUT_S))
    except BenchmarkFailed as exc:
        print(json.dumps({"failed": str(exc)}))
        return 1
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu_before + children.ru_utime + children.ru_stime
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": wall, "cpu_s": cpu, "peak_rss_kib": peak, "rss_before_kib": before}))
    return 0


# -- the parent: sshds, interleaved runs, report -------------------------------------------------
def run_worker(name: str, setup_file: Path) -> dict[str, float]:
    """One worker process's figures (raises BenchmarkFailed when it could not do the work)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ssh_fanout", "--worker", name, "--setup", str(setup_file)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchmarkFailed(f"{name}: worker exited {done.returncode}: {done.stderr[-2000:]}")
    record: dict[str, float] = json.loads(lines[-1])
    if "failed" in record:
        raise BenchmarkFailed(str(record["failed"]))
    return record


def measure(setup_file: Path, figures: list[Figures], runs: int) -> None:
    """Interleave the implementations ``runs`` times (after one untimed warm-up each)."""
    active = [f for f in figures if f.unavailable is None]
    for f in active:
        run_worker(f.name, setup_file)
    for run in range(runs):
        for f in active:
            record = run_worker(f.name, setup_file)
            f.seconds.append(record["seconds"])
            f.cpu_s.append(record["cpu_s"])
            f.peak_rss_kib.append(int(record["peak_rss_kib"]))
            f.rss_before_kib.append(int(record["rss_before_kib"]))
            print(f"run {run + 1}/{runs} {f.name}: {f.seconds[-1]:.2f}s", file=sys.stderr)


def summary(figures: list[Figures], setup: Setup) -> dict[str, object]:
    """Medians per implementation and Beachhead's ratio to each baseline."""
    results: dict[str, object] = {}
    for f in figures:
        if f.unavailable:
            results[f.name] = {"unavailable": f.unavailable}
            continue
        pairs = zip(f.peak_rss_kib, f.rss_before_kib, strict=True)
        per_connection = [(peak - before) / setup.targets for peak, before in pairs]
        results[f.name] = {
            "median_s": round(statistics.median(f.seconds), 3),
            "min_s": round(min(f.seconds), 3),
            "cpu_ms_per_target": round(1000 * statistics.median(f.cpu_s) / setup.targets, 2),
            "peak_rss_mib": round(statistics.median(f.peak_rss_kib) / 1024, 1),
            # ansible's connections live in its forks and ssh processes, not in the process measured
            "rss_kib_per_connection": None if f.name == "ansible" else round(statistics.median(per_connection), 1),
        }
    ours = next(f for f in figures if f.name == "beachhead")
    ratios = {
        f"beachhead/{f.name}": round(statistics.median(ours.seconds) / statistics.median(f.seconds), 2)
        for f in figures
        if f is not ours and not f.unavailable and ours.seconds
    }
    return {
        "targets": setup.targets,
        "sshds": len(setup.hosts),
        "payload_bytes": Path(setup.payload).stat().st_size,
        "nproc": os.cpu_count(),
        "runs": len(ours.seconds),
        "results": results,
        "ratios": ratios,
    }


def print_table(document: dict[str, object]) -> None:
    """The summary as a table."""
    results = document["results"]
    ratios = document["ratios"]
    assert isinstance(results, dict) and isinstance(ratios, dict)
    print(
        f"\n{document['targets']} targets on {document['sshds']} sshds, one command + "
        f"{document['payload_bytes']} byte upload each, {document['runs']} runs, nproc {document['nproc']}"
    )
    columns = ("median s", "min s", "cpu ms/t", "peak MiB", "KiB/conn")
    print(f"{'implementation':<12} " + " ".join(f"{c:>9}" for c in columns) + "  beachhead / it")
    for name, row in results.items():
        if "unavailable" in row:
            print(f"{name:<12} " + " ".join(f"{'-':>9}" for _ in columns) + f"  unavailable: {row['unavailable']}")
            continue
        ratio = ratios.get(f"beachhead/{name}")
        per_connection = row["rss_kib_per_connection"]
        cells = (
            f"{row['median_s']:>9.3f}",
            f"{row['min_s']:>9.3f}",
            f"{row['cpu_ms_per_target']:>9.2f}",
            f"{row['peak_rss_mib']:>9.1f}",
            f"{per_connection:>9.1f}" if per_connection is not None else f"{'-':>9}",
        )
        print(f"{name:<12} " + " ".join(cells) + f"  {f'{ratio:.2f}x' if ratio else ''}")


def main() -> int:
    """Parse options, start the sshds, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mib", type=float, default=1.0)
    parser.add_argument("--sshds", type=int, default=None, help="sshd instances [default: one per 50 targets]")
    parser.add_argument("--ansible-forks", type=int, default=50)
    parser.add_argument("--ansible-max-targets", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options.setup)

    from beachhead.bootstrap.local_sshd import LocalSshd

    sshd_count = options.sshds or max(1, math.ceil(options.targets / TARGETS_PER_SSHD))
    if not 1 <= sshd_count <= 250:
        parser.error("--sshds: 1 to 250 (one loopback address each)")
    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch_dir, ExitStack() as stack:
        scratch = Path(scratch_dir)
        payload = scratch / "payload.bin"
        payload.write_bytes(os.urandom(int(options.size_mib * 1024 * 1024)))
        hosts = []
        for index in range(sshd_count):
            sshd = stack.enter_context(LocalSshd(scratch / f"sshd-{index}", host=f"127.0.0.{index + 2}"))
            hosts.append(Host(sshd.host, sshd.port, sshd.login.name, str(sshd.login.key_file), str(sshd.known_hosts)))
        setup = Setup(hosts, str(scratch), str(payload), str(scratch / "guest"), options.targets, options.ansible_forks)
        setup_file = scratch / "setup.json"
        setup_file.write_text(json.dumps(asdict(setup)))
        figures = [
            Figures("beachhead"),
            Figures("asyncssh"),
            Figures("ansible", unavailable=ansible_unavailable(options.targets, options.ansible_max_targets)),
        ]
        try:
            measure(setup_file, figures, options.runs)
        except BenchmarkFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        document = summary(figures, setup)
    if options.json:
        print(json.dumps(document, indent=2))
    else:
        print_table(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
