"""Output memory: 100 targets each printing 50 MiB, peak RSS side by side with baselines.

Every implementation runs the same command (``yes | head -c SIZE``) on the same
number of target entries of one loopback OpenSSH sshd, in a process of its own (its
peak RSS, ``ru_maxrss``, is the figure), interleaved run by run:

- ``beachhead``: ``beachhead.run_plan`` with a one-step plan (``run``): journal, head
  and tail kept per stream, the whole output spilled to the run directory as it
  arrives, results as ``--json`` prints them;
- ``beachhead-quiet``: the same with ``yes | head -c 0``, which prints nothing: what
  Beachhead costs for as many targets whatever they print;
- ``asyncssh-stream``: a plain asyncssh script doing the least the same work needs:
  read each command's stdout block by block into a file per target;
- ``asyncssh-collect``: a plain asyncssh script as such scripts are usually written,
  ``connection.run()`` collecting each command's output in memory. It needs about
  twice the total output in memory, so it is left out when the machine has less than
  three times that available (``--no-collect`` leaves it out always).

Each run checks that every target's output arrived in full (the spilled or written
files' sizes; the collected lengths). Run it from the repository root, as root (the
sshd runs in a private mount namespace):

    .venv/bin/python -m benchmarks.output_memory [--targets 100] [--size-mib 50] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_TIMEOUT_S = 1800
READ_BLOCK = 256 * 1024
IMPLEMENTATIONS = ("beachhead", "beachhead-quiet", "asyncssh-stream", "asyncssh-collect")


@dataclass
class Figures:
    """Peak RSS and wall time of one implementation over the runs, or why it did not run."""

    name: str
    rss_mib: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    unavailable: str | None = None

    def summary(self) -> dict[str, Any]:
        """Medians and extremes, as reported."""
        if self.unavailable:
            return {"unavailable": self.unavailable}
        return {
            "peak_rss_mib_median": round(statistics.median(self.rss_mib), 1),
            "peak_rss_mib_max": round(max(self.rss_mib), 1),
            "seconds_median": round(statistics.median(self.seconds), 2),
        }


class BenchmarkFailed(RuntimeError):
    """An implementation did not get every byte; its figures would mean nothing."""


# -- the workers (each in a process of its own) ---------------------------------------------------
def _command(size: int) -> str:
    return f"yes | head -c {size}"


async def work_beachhead(spec: dict[str, Any], scratch: Path) -> list[int]:
    """The plan through Beachhead's engine, every target at once; the bytes each target's
    spill file received."""
    from beachhead.agent.api import run_plan
    from beachhead.agent.engine import RunSettings
    from beachhead.agent.logs import configure_logging

    configure_logging("warning")
    plan = scratch / "plan.yaml"
    plan.write_text(f"name: output\nsteps:\n  - run: {_command(spec['size'])!r}\n")
    settings = RunSettings(concurrency=len(spec["targets"]), connect_timeout=60, retries=0)
    report = await run_plan(plan, spec["targets"], settings=settings, runs_dir=scratch / "runs")
    failed = [f"{result.target}: {result.error}" for result in report.results if not result.ok]
    if failed:
        raise BenchmarkFailed(f"beachhead: {len(failed)} targets failed, e.g. {failed[0]}")
    counted = {result.steps[0].stdout_bytes for result in report.results}
    if counted != {spec["size"]}:
        raise BenchmarkFailed(f"beachhead: stdout_bytes {sorted(counted)}")
    return _sizes([Path(result.steps[0].stdout_file or "/nonexistent") for result in report.results])


async def work_beachhead_quiet(spec: dict[str, Any], scratch: Path) -> list[int]:
    """The same plan printing nothing (the sizes reported are the expected ones)."""
    await work_beachhead({**spec, "size": 0}, scratch)
    return [spec["size"]] * len(spec["targets"])


def _sizes(paths: list[Path]) -> list[int]:
    return [path.stat().st_size if path.exists() else 0 for path in paths]


async def _connect(spec: dict[str, Any]) -> Any:
    import asyncssh

    return await asyncssh.connect(
        spec["host"],
        spec["port"],
        username=spec["user"],
        client_keys=[spec["key_file"]],
        known_hosts=spec["known_hosts"],
        agent_path=None,
    )


async def work_asyncssh_stream(spec: dict[str, Any], scratch: Path) -> list[int]:
    """Each command's stdout read block by block into a file; the files' sizes."""

    async def one(path: Path) -> Path:
        async with await _connect(spec) as connection:
            process = await connection.create_process(_command(spec["size"]), encoding=None)
            with path.open("wb") as stream:
                while block := await process.stdout.read(READ_BLOCK):
                    stream.write(block)
            await process.wait_closed()
        return path

    paths = [scratch / f"out-{index}" for index in range(len(spec["targets"]))]
    return _sizes(list(await asyncio.gather(*(one(path) for path in paths))))


async def work_asyncssh_collect(spec: dict[str, Any], scratch: Path) -> list[int]:
    """Each command's output collected by ``connection.run()``; the lengths collected."""

    async def one(index: int) -> int:
        async with await _connect(spec) as connection:
            result = await connection.run(_command(spec["size"]), encoding=None, check=True)
            return len(result.stdout or b"")

    return list(await asyncio.gather(*(one(index) for index in range(len(spec["targets"])))))


WORKERS: dict[str, Callable[[dict[str, Any], Path], Awaitable[list[int]]]] = {
    "beachhead": work_beachhead,
    "beachhead-quiet": work_beachhead_quiet,
    "asyncssh-stream": work_asyncssh_stream,
    "asyncssh-collect": work_asyncssh_collect,
}


def worker(name: str, spec_file: Path) -> int:
    """Run one implementation once; print its wall time and peak RSS as JSON."""
    spec = json.loads(spec_file.read_text())
    scratch = Path(tempfile.mkdtemp(prefix=f"bh-out-{name}-", dir=spec["scratch"]))
    try:
        started = time.perf_counter()
        sizes = asyncio.run(asyncio.wait_for(WORKERS[name](spec, scratch), RUN_TIMEOUT_S))
        seconds = time.perf_counter() - started
        if set(sizes) != {spec["size"]}:
            raise BenchmarkFailed(f"{name}: output sizes {sorted(set(sizes))}, expected {spec['size']}")
    except BenchmarkFailed as exc:
        print(json.dumps({"failed": str(exc)}))
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_kib / 1024}))
    return 0


# -- the driver -------------------------------------------------------------------------------------
def _available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(spec_file: Path, spec: dict[str, Any], runs: int, collect: bool) -> list[Figures]:
    """Interleave the implementations ``runs`` times, each in a fresh process."""
    total_mib = spec["size"] * len(spec["targets"]) / 2**20
    figures = [Figures(name) for name in IMPLEMENTATIONS]
    if not collect:
        figures[-1].unavailable = "left out (--no-collect)"
    elif _available_mib() < 3 * total_mib:
        figures[-1].unavailable = f"needs ~{2 * total_mib:,.0f} MiB; {_available_mib():,.0f} MiB available"
    for run in range(runs):
        for figure in figures:
            if figure.unavailable:
                continue
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.output_memory", "--worker", figure.name, str(spec_file)],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S + 60,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            outcome: dict[str, Any] = json.loads(lines[-1]) if lines else {"failed": done.stderr[-2000:]}
            if done.returncode != 0 or "failed" in outcome:
                raise BenchmarkFailed(f"{figure.name}: {outcome.get('failed') or done.stderr[-2000:]}")
            figure.rss_mib.append(float(outcome["peak_rss_mib"]))
            figure.seconds.append(float(outcome["seconds"]))
            print(
                f"run {run + 1}/{runs} {figure.name}: {outcome['peak_rss_mib']:.1f} MiB, {outcome['seconds']:.1f}s",
                file=sys.stderr,
            )
    return figures


def report(figures: list[Figures], spec: dict[str, Any], runs: int, as_json: bool) -> None:
    """Print medians and Beachhead's ratio to each baseline."""
    ours = figures[0]
    targets, size = len(spec["targets"]), spec["size"]
    document = {
        "targets": targets,
        "bytes_per_target": size,
        "runs": runs,
        "nproc": os.cpu_count(),
        "results": {figure.name: figure.summary() for figure in figures},
        "ratios": {
            f"beachhead/{figure.name}": round(statistics.median(ours.rss_mib) / statistics.median(figure.rss_mib), 2)
            for figure in figures[1:]
            if not figure.unavailable
        },
    }
    if as_json:
        print(json.dumps(document, indent=2))
        return
    print(f"\n{targets} targets x {size:,} bytes of output, {runs} runs, nproc {os.cpu_count()}")
    print(f"{'implementation':<17} {'peak RSS MiB':>13} {'max MiB':>9} {'wall s':>8}  beachhead RSS / it")
    for figure in figures:
        if figure.unavailable:
            print(f"{figure.name:<17} {'-':>13} {'-':>9} {'-':>8}  unavailable: {figure.unavailable}")
            continue
        rss = statistics.median(figure.rss_mib)
        ratio = "" if figure is ours else f"{statistics.median(ours.rss_mib) / rss:.2f}x"
        print(
            f"{figure.name:<17} {rss:>13.1f} {max(figure.rss_mib):>9.1f} "
            f"{statistics.median(figure.seconds):>8.1f}  {ratio}"
        )


def main() -> int:
    """Parse options, start the sshd, measure, report (or, with --worker, be one run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--size-mib", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-collect", action="store_true", help="leave the asyncssh-collect baseline out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("IMPLEMENTATION", "SPEC"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker[0], Path(options.worker[1]))

    from beachhead.bootstrap.local_sshd import LocalSshd

    with tempfile.TemporaryDirectory(prefix="beachhead-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        with LocalSshd(scratch / "sshd") as sshd:
            account = sshd.login
            spec = {
                "size": int(options.size_mib * 2**20),
                "targets": [sshd.uri(name=f"t{n:03d}") for n in range(options.targets)],
                "host": sshd.host,
                "port": sshd.port,
                "user": account.name,
                "key_file": str(account.key_file),
                "known_hosts": str(sshd.known_hosts),
                "scratch": str(scratch),
            }
            spec_file = scratch / "spec.json"
            spec_file.write_text(json.dumps(spec))
            try:
                figures = measure(spec_file, spec, options.runs, not options.no_collect)
            except BenchmarkFailed as exc:
                print(f"benchmark failed: {exc}", file=sys.stderr)
                return 1
            report(figures, spec, options.runs, options.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
