"""Steps for one OS family (``os:`` beside a step's kind) against the real sshd: run
where the target's OS family matches, reported as skipped with the reason elsewhere,
never checked, journaled or resumed on a target they skip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead, write_plan

WINDOWS_THEN_LINUX = """
name: mixed
steps:
  - run: {command: "echo %COMPUTERNAME%", shell: cmd}
    os: windows
  - run: echo linux-step
    os: linux
  - run: echo everywhere
"""


def _results(stdout: str) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {record["target"]: record for record in records}


def _journal(runs_dir: Path, run_id: str) -> list[dict[str, Any]]:
    lines = (runs_dir / run_id / "journal.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["phase"] == "intent"]


def test_a_windows_step_is_skipped_on_a_linux_target_with_its_reason(
    sshd: LocalSshd, tmp_path: Path, runs_dir: Path
) -> None:
    plan = write_plan(tmp_path, WINDOWS_THEN_LINUX)
    done = beachhead("run", str(plan), "--target", sshd.uri(name="lin"), "--json")
    assert done.returncode == 0, done.stdout + done.stderr  # shell: cmd not refused before the run
    result = _results(done.stdout)["lin"]
    windows, linux, everywhere = result["steps"]
    assert [step["number"] for step in result["steps"]] == [1, 2, 3]  # positions in the file
    assert (windows["status"], windows["channel"], windows["stdout"]) == ("skipped", None, "")
    assert windows["skip_reason"] == "os: windows, and lin is linux (by default: neither target nor plan declares one)"
    assert (linux["status"], linux["channel"], linux["stdout"], linux["skip_reason"]) == (
        "ok",
        "ssh",
        "linux-step\n",
        None,
    )
    assert (everywhere["status"], everywhere["stdout"]) == ("ok", "everywhere\n")
    assert result["status"] == "ok" and result["channel"] == "ssh"
    steps_journaled = {entry.get("step") for entry in _journal(runs_dir, result["run_id"])}
    assert steps_journaled == {2, 3}  # nothing written for the skipped step
    assert not (runs_dir / result["run_id"] / "output" / "lin" / "1.stdout").exists()


def test_the_human_output_shows_each_steps_channel_and_why_one_was_skipped(
    sshd: LocalSshd, tmp_path: Path, runs_dir: Path
) -> None:
    plan = write_plan(tmp_path, WINDOWS_THEN_LINUX)
    done = beachhead("run", str(plan), "--target", f"{sshd.uri(name='lin')}&os=linux", env={"COLUMNS": "250"})
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("│ lin ")]
    assert len(rows) == 4, done.stdout  # three steps, then the target's summary
    assert "skipped: os: windows, and lin is linux (declared by the target)" in rows[0]
    assert "│ - " in rows[0] and "│ ssh " in rows[1] and "│ ssh " in rows[2]
    assert "2/2 (1 skipped: os)" in rows[3]


def test_a_mixed_run_over_targets_of_different_os(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(
        tmp_path,
        f"""
        name: per-family
        steps:
          - run: {{command: "echo on-linux", shell: bash}}
            os: linux
          - wait: {{port: {sshd.port}, timeout: 10}}
            os: windows
        """,
    )
    targets = ["--target", f"{sshd.uri(name='lin')}&os=linux", "--target", f"{sshd.uri(name='win')}&os=windows"]
    done = beachhead("run", str(plan), *targets, "--json")
    assert done.returncode == 0, done.stdout + done.stderr  # bash not refused for the windows target
    results = _results(done.stdout)
    lin_run, lin_wait = results["lin"]["steps"]
    win_run, win_wait = results["win"]["steps"]
    assert (lin_run["status"], lin_run["channel"], lin_run["stdout"]) == ("ok", "ssh", "on-linux\n")
    assert (lin_wait["status"], lin_wait["skip_reason"]) == (
        "skipped",
        "os: windows, and lin is linux (declared by the target)",
    )
    assert (win_run["status"], win_run["skip_reason"]) == (
        "skipped",
        "os: linux, and win is windows (declared by the target)",
    )
    assert win_wait["status"] == "ok"
    journal = _journal(runs_dir, results["lin"]["run_id"])
    assert {(entry["target"], entry.get("step")) for entry in journal} == {("lin", 1)}


def test_a_step_is_still_checked_on_the_targets_it_runs_on(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: bad\nsteps:\n  - run: {command: ver, shell: cmd}\n    os: linux\n")
    done = beachhead("run", str(plan), "--target", sshd.uri(name="lin"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "step 1 (run): cmd is not available on Linux guests" in done.stderr
    bad = write_plan(tmp_path, "name: bad\nsteps:\n  - run: ls\n    os: beos\n", name="bad.yaml")
    done = beachhead("run", str(bad), "--target", sshd.uri(name="lin"))
    assert done.returncode == 2
    assert f"{bad}: step 1 (run).os (line 4): unknown OS family 'beos' (linux or windows)" in done.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing ran


def test_a_resumed_run_decides_again_and_never_restarts_at_a_skipped_step(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    flag = guest_dir / "flag"
    plan = write_plan(
        tmp_path,
        f"""
        name: resumable
        steps:
          - run: {{command: ver, shell: cmd}}
            os: windows
          - run: echo once >> {guest_dir}/counter
          - run: test -f {flag}
        """,
    )
    first = beachhead("run", str(plan), "--target", sshd.uri(name="lin"), "--json")
    assert first.returncode == 1, first.stdout + first.stderr
    run_id = _results(first.stdout)["lin"]["run_id"]
    flag.touch()
    resumed = beachhead("run", "--resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    skipped, counted, checked = _results(resumed.stdout)["lin"]["steps"]
    assert (skipped["status"], skipped["skip_reason"]) == (
        "skipped",
        "os: windows, and lin is linux (by default: neither target nor plan declares one)",
    )
    assert (counted["status"], counted["done_in_attempt"]) == ("ok", 1)
    assert checked["status"] == "ok"
    assert (guest_dir / "counter").read_text() == "once\n"  # step 2 not run again


def test_a_vm_whose_os_cannot_be_read_fails_the_step_instead_of_guessing(
    tmp_path: Path, runs_dir: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("VC_PASSWORD", "not-used")
    monkeypatch.setenv("GUEST_PASSWORD", "not-used-either")
    plan = write_plan(tmp_path, "name: vm\nsteps:\n  - run: uname\n    os: linux\n")
    uri = (
        "vsphere://admin@127.0.0.1:1/vm-01?password_env=VC_PASSWORD&scheme=http"
        "&guest_user=root&guest_password_env=GUEST_PASSWORD"
    )
    done = beachhead("run", str(plan), "--target", uri, "--json", "--connect-timeout", "2", "--retries", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    [step] = _results(done.stdout)["vm-01"]["steps"]
    assert step["status"] == "failed" and step["channel"] is None
    assert step["error"].startswith("os: linux: cannot tell whether the step applies: the OS family of vm-01")
    assert _journal(runs_dir, _results(done.stdout)["vm-01"]["run_id"]) == []
