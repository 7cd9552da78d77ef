"""The ``beachhead`` command line as a user runs it: exit statuses, output contracts,
Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import BEACHHEAD, beachhead, processes_mentioning, wait_until, write_plan

STEP_FIELDS = {"kind", "status", "exit_code", "stdout", "stderr", "duration_s"}


def test_run_json_contract(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: hello\nsteps:\n  - run: echo hello\n  - run: 'echo warn >&2'\n")
    done = beachhead("run", str(plan), "--target", sshd.uri(name="one"), "--json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    record = json.loads(line)
    assert record["target"] == "one" and record["status"] == "ok" and record["channel"] == "ssh"
    assert (runs_dir / record["run_id"] / "journal.jsonl").exists()
    assert json.loads((runs_dir / record["run_id"] / "results.jsonl").read_text()) == record
    first, second = record["steps"]
    assert set(first) >= STEP_FIELDS
    assert (first["kind"], first["status"], first["exit_code"], first["stdout"]) == ("run", "ok", 0, "hello\n")
    assert second["stderr"] == "warn\n" and isinstance(second["duration_s"], float)


def test_failure_exits_1_with_the_steps_output(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: bad\nsteps:\n  - run: 'echo partial; echo disk full >&2; exit 7'\n")
    done = beachhead("run", str(plan), "--target", sshd.uri(name="one"), env={"COLUMNS": "200"})
    assert done.returncode == 1
    assert "failed" in done.stdout and "exit status 7" in done.stdout
    assert "partial" in done.stdout and "disk full" in done.stdout


def test_mixed_results_over_a_targets_file(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    targets = tmp_path / "targets.yaml"
    good = {"uri": sshd.uri(name="good")}
    gone = {"host": "127.0.0.1", "port": 1, "user": "root", "known_hosts": "ignore", "name": "gone"}
    targets.write_text(json.dumps([good, gone]))  # JSON is YAML
    plan = write_plan(tmp_path, "name: p\nsteps: [{run: 'true'}]\n")
    done = beachhead("run", str(plan), "--targets", str(targets), "--json", "--retries", "0")
    assert done.returncode == 1
    by_name = {r["target"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert by_name["good"]["status"] == "ok"
    assert by_name["gone"]["status"] == "failed" and "refused" in by_name["gone"]["error"]
    assert by_name["gone"]["run_id"] == by_name["good"]["run_id"]


def test_bad_input_exits_2_naming_file_step_and_field(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: p\nsteps:\n  - run: ls\n  - upload: {src: missing.txt, dest: /tmp/x}\n")
    done = beachhead("run", str(plan), "--target", sshd.uri())
    assert done.returncode == 2
    assert f"{plan}: step 2 (upload).src (line 4): file not found" in done.stderr
    assert not runs_dir.exists()

    good = write_plan(tmp_path, "name: p\nsteps: [{run: ls}]\n", "good.yaml")
    no_targets = beachhead("run", str(good))
    assert no_targets.returncode == 2 and "no targets" in no_targets.stderr
    bad_uri = beachhead("run", str(good), "--target", "ssh://root:pw@host")
    assert bad_uri.returncode == 2 and "password_env" in bad_uri.stderr
    missing = beachhead("run", str(tmp_path / "nope.yaml"), "--target", sshd.uri())
    assert missing.returncode == 2 and "file not found" in missing.stderr
    usage = beachhead("run", str(good), "--concurrency", "0", "--target", sshd.uri())
    assert usage.returncode == 2


def test_channels_table_and_json() -> None:
    table = beachhead("channels", env={"COLUMNS": "200"})
    assert table.returncode == 0 and "ssh" in table.stdout and "guest network" in table.stdout
    (ssh,) = [c for c in json.loads(beachhead("channels", "--json").stdout) if c["name"] == "ssh"]
    assert ssh["direction"] == "push" and ssh["capabilities"] == ["get_file", "put_file", "run"]
    assert ssh["os_families"] == ["linux", "windows"]


def test_help_explains() -> None:
    top = beachhead("--help")
    assert top.returncode == 0 and "run" in top.stdout and "undo" in top.stdout
    run = beachhead("run", "--help")
    for flag in ("--target", "--targets", "--concurrency", "--json", "password_env", "known_hosts"):
        assert flag in run.stdout


def test_ctrl_c_cancels_cleanly(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    marker = guest_dir / "finished"
    plan = write_plan(tmp_path, f"name: long\nsteps:\n  - run: 'sleep 5; touch {marker}'\n  - run: echo never\n")
    process = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", sshd.uri(name="t"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        journal = wait_until(
            lambda: next((j for j in runs_dir.glob("*/journal.jsonl") if '"op": "run"' in j.read_text()), None),
            timeout=15,
            what="the run journals its command",
        )
        wait_until(lambda: processes_mentioning(str(marker)), timeout=15, what="the command runs in the guest")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "interrupted" in stderr
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [r["phase"] for r in records] == ["intent", "interrupted"]
    # The guest command was killed, not orphaned: nothing is left that would create the
    # marker (an orphan would live until its `sleep 5` ends, then create it).
    wait_until(lambda: not processes_mentioning(str(marker)), timeout=10, what="the guest command is gone")
    assert not marker.exists()


def test_ctrl_c_ends_a_client_command_with_status_130(tmp_path: Path) -> None:
    """Commands other than `run` (here a metadata admin client waiting on a server that
    accepts and never answers) end on SIGINT as `run` does: "interrupted", status 130."""
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        process = subprocess.Popen(
            [str(BEACHHEAD), "metadata", "list", "--server", f"http://127.0.0.1:{port}", "--token-file", str(token)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server.settimeout(30)
            connection, _ = server.accept()  # the request is on its way and will get no answer
            with connection:
                process.send_signal(signal.SIGINT)
                _, stderr = process.communicate(timeout=15)
        finally:
            process.kill()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
