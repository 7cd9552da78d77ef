"""Faults end cleanly: an interrupted run still reports every target, a runs directory
that fills up stops the run before its next write with one line naming it, and two
undos of one run never interleave."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import BEACHHEAD, beachhead, needs_root, processes_mentioning, wait_until, write_plan


def test_sigterm_reports_every_target_so_far(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    marker = guest_dir / "slept"
    plan = write_plan(tmp_path, f"name: long\nsteps:\n  - run: 'sleep 30; touch {marker}'\n  - run: echo never\n")
    targets = ["--target", sshd.uri(name="first"), "--target", sshd.uri(name="second")]
    process = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), *targets, "--json", "--concurrency", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(lambda: processes_mentioning(str(marker)), timeout=15, what="the first target's command runs")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    printed = {line["target"]: line for line in map(json.loads, stdout.splitlines())}
    assert set(printed) == {"first", "second"}
    first, second = printed["first"], printed["second"]
    assert first["status"] == "failed" and first["error"] == "step 1 (run): interrupted"
    assert [step["status"] for step in first["steps"]] == ["failed", "skipped"]
    assert first["steps"][0]["error"] == "interrupted"
    assert second["status"] == "failed" and second["error"] == "interrupted before it started"
    assert all(step["status"] == "skipped" for step in second["steps"])
    [run_dir] = runs_dir.iterdir()
    recorded = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(result["target"] for result in recorded) == ["first", "second"]


PAGE = 4096
SMALL_RUNS_DIR_BYTES = 16 * PAGE


@pytest.fixture
def small_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runs directory on a 64 KiB tmpfs (only the beachhead process writes there:
    the guests' sshd lives in a mount namespace of its own)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tmp_path / "small-runs"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_RUNS_DIR_BYTES},mode=0700", "tmpfs", str(path)], check=True
    )
    monkeypatch.setenv("BEACHHEAD_RUNS_DIR", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@needs_root
def test_a_full_runs_directory_stops_the_run_cleanly(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, small_runs_dir: Path
) -> None:
    # Leave two pages: run.json and the journal's first page fit, nothing more.
    filler = small_runs_dir / "filler"
    filler.write_bytes(b"\0" * (SMALL_RUNS_DIR_BYTES - 2 * PAGE))
    (tmp_path / "app.conf").write_text("x=1\n")
    long_command = "echo " + "x" * 2 * PAGE  # its journal entry needs a page the disk does not have
    plan = write_plan(
        tmp_path,
        f"""
        name: fill-up
        steps:
          - upload: {{src: app.conf, dest: {guest_dir}/app.conf}}
          - run: {long_command}
          - upload: {{src: app.conf, dest: {guest_dir}/never.conf}}
        """,
    )
    done = beachhead("run", str(plan), "--target", sshd.uri(name="g"), "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("beachhead: ")]
    assert str(small_runs_dir) in line and "No space left on device" in line
    [result] = [json.loads(line) for line in done.stdout.splitlines()]  # printed though not recorded
    upload, long_run, never = result["steps"]
    assert upload["status"] == "ok" and (guest_dir / "app.conf").exists()
    assert long_run["status"] == "failed" and "No space left on device" in long_run["error"]
    assert long_run["stdout"] == ""  # stopped before it ran: it could not be recorded
    assert never["status"] == "skipped" and not (guest_dir / "never.conf").exists()
    # Undo on the full directory reverts what it can or ends with one line, never a traceback.
    undone = beachhead("undo", result["run_id"])
    assert "Traceback" not in undone.stderr
    assert undone.returncode == 0 or "No space left on device" in undone.stderr
    filler.unlink()
    again = beachhead("undo", result["run_id"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (guest_dir / "app.conf").exists()


def test_a_second_undo_of_the_same_run_is_refused(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    (tmp_path / "app.conf").write_text("x=1\n")
    plan = write_plan(tmp_path, f"name: p\nsteps:\n  - upload: {{src: app.conf, dest: {guest_dir}/app.conf}}\n")
    done = beachhead("run", str(plan), "--target", sshd.uri(name="g"), "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run_id"]
    # Another undo holds the run's lock (the documented flock on the run directory).
    holder = os.open(runs_dir / run_id, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = beachhead("undo", run_id)
    finally:
        os.close(holder)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"run {run_id} is busy" in refused.stderr
    assert (guest_dir / "app.conf").exists()  # nothing was reverted behind the holder's back
    allowed = beachhead("undo", run_id)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert not (guest_dir / "app.conf").exists()


def _sshd_sessions(sshd: LocalSshd) -> list[int]:
    """The per-connection processes of the test sshd (its listener's descendants)."""
    listener = sshd._process
    assert listener is not None
    found, frontier = [], [listener.pid]
    while frontier:
        children = subprocess.run(["pgrep", "-P", str(frontier.pop())], capture_output=True, text=True, check=False)
        pids = [int(pid) for pid in children.stdout.split()]
        found += pids
        frontier += pids
    return found


def test_an_upload_cut_short_leaves_no_temporary_file(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as stream:
        stream.truncate(200 << 20)
    plan = write_plan(tmp_path, f"name: big\nsteps:\n  - upload: {{src: big.bin, dest: {guest_dir}/big.bin}}\n")
    process = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", sshd.uri(name="g"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_until(lambda: list(guest_dir.glob(".big.bin.beachhead-*.part")), timeout=60, what="the transfer runs")
        for pid in _sshd_sessions(sshd):  # the guest's sshd dies under the transfer
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr  # the transfer was retried on a new connection
    assert (guest_dir / "big.bin").stat().st_size == 200 << 20
    assert not list(guest_dir.glob("*.part"))  # the cut attempt's temporary file was removed
    run_id = json.loads(stdout)["run_id"]
    records = [json.loads(line) for line in (runs_dir / run_id / "journal.jsonl").read_text().splitlines()]
    puts = [r for r in records if r.get("op") == "put_file"]
    assert len(puts) == 2 and all(r["partial"].endswith(".part") for r in puts)
    assert [r["phase"] for r in records if r["seq"] == puts[0]["seq"]] == ["intent", "failed"]
    # Had it outlived the run (every retry cut short), undo removes it.
    Path(puts[0]["partial"]).write_bytes(b"left behind")
    undone = beachhead("undo", run_id)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert not list(guest_dir.iterdir())
