"""The workflow engine through the library API, against the real sshd."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from beachhead import customize, run_plan
from beachhead.agent.engine import RunSettings
from beachhead.agent.errors import InputError
from beachhead.agent.journal import RunDirectory
from beachhead.agent.plans import load_plan
from beachhead.agent.results import FAILED, OK, SKIPPED
from beachhead.bootstrap.local_sshd import LocalSshd, _free_port
from tests.conftest import await_until, processes_mentioning, write_plan

FAST = RunSettings(connect_timeout=5, retries=1, retry_delay=0.05)


async def test_plan_runs_every_step(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    (tmp_path / "app.conf").write_text("port=8080\n")
    plan = write_plan(
        tmp_path,
        f"""
        name: full
        wait: [{{port: {sshd.port}, timeout: 10}}]
        steps:
          - upload: {{src: app.conf, dest: {guest_dir}/etc/app.conf, mode: "0600"}}
          - upload: {{src: app.conf, dest: "{guest_dir}/{{target}}.conf"}}
          - run: {{command: 'cat {guest_dir}/etc/app.conf; echo "$ROLE" > {guest_dir}/role', env: {{ROLE: web}}}}
          - download: {{src: {guest_dir}/role, dest: "out/{{target}}.role"}}
          - wait: {{port: {sshd.port}}}
        """,
    )
    result = await customize(sshd.uri(name="guest-1"), plan, runs_dir=runs_dir, settings=FAST)
    assert result.ok, result.to_json()
    assert [s.status for s in result.steps] == [OK] * 6
    assert result.channel == "ssh" and result.steps[3].stdout == "port=8080\n"
    assert (guest_dir / "guest-1.conf").read_text() == "port=8080\n"
    assert (guest_dir / "etc" / "app.conf").read_text() == "port=8080\n"
    assert (tmp_path / "out" / "guest-1.role").read_text() == "web\n"


async def test_failed_command_stops_target_and_keeps_output(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(
        tmp_path,
        """
        name: failing
        steps:
          - run: "echo before; echo broken >&2; exit 4"
          - run: echo never
        """,
    )
    result = await customize(sshd.uri(), plan, runs_dir=runs_dir, settings=FAST)
    assert not result.ok
    first, second = result.steps
    assert (first.status, first.exit_code, first.stdout, first.stderr) == (FAILED, 4, "before\n", "broken\n")
    assert second.status == SKIPPED
    assert result.error == "step 1 (run): exit status 4"


async def test_step_timeout_kills_the_command(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    marker = guest_dir / "finished"
    plan = write_plan(
        tmp_path,
        f"""
        name: slow
        steps:
          - run: {{command: "sleep 4; touch {marker}", timeout: 0.5}}
        """,
    )
    seen: list[int] = []  # the command's shell in the guest, while the step runs

    async def watch() -> None:
        while not seen:
            seen.extend(processes_mentioning(str(marker)))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        result = await customize(sshd.uri(), plan, runs_dir=runs_dir, settings=FAST)
    finally:
        watcher.cancel()
    assert time.monotonic() - started < 3.5
    assert result.steps[0].status == FAILED and result.steps[0].error == "timed out after 0.5s"
    assert seen, "the command never ran in the guest"
    # Nothing is left that would create the marker (an orphan would, once its `sleep 4` ends).
    await await_until(lambda: not processes_mentioning(str(marker)), what="the guest command is gone")
    assert not marker.exists()
    entries = RunDirectory.open(runs_dir, result.run_id).entries()
    assert [e.state for e in entries] == ["interrupted"]


async def test_twenty_targets_at_once(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    (tmp_path / "payload").write_bytes(os.urandom(64 * 1024))
    plan = write_plan(
        tmp_path,
        f"""
        name: fanout
        steps:
          - run: sleep 0.5; echo "$$"
          - upload: {{src: payload, dest: {guest_dir}/payload}}
        """,
    )
    targets = [sshd.uri(name=f"vm{n:02d}") for n in range(20)]
    started = time.monotonic()
    report = await run_plan(plan, targets, runs_dir=runs_dir, settings=FAST)
    elapsed = time.monotonic() - started
    assert report.ok, [r.error for r in report.results if not r.ok]
    assert sorted(r.target for r in report.results) == [f"vm{n:02d}" for n in range(20)]
    pids = {r.steps[0].stdout for r in report.results}
    assert len(pids) == 20  # twenty distinct remote sessions
    assert elapsed < 20 * 0.5  # they overlapped rather than ran one after another
    assert (guest_dir / "payload").read_bytes() == (tmp_path / "payload").read_bytes()


async def test_concurrency_limit_is_respected(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> None:
    # Each command holds a lock directory while it runs and counts the locks it sees.
    plan = write_plan(
        tmp_path,
        f"""
        name: limited
        steps:
          - run: 'mkdir {guest_dir}/lock-$$; ls {guest_dir} | grep -c lock-; sleep 0.3; rmdir {guest_dir}/lock-$$'
        """,
    )
    report = await run_plan(
        plan,
        [sshd.uri(name=f"c{n}") for n in range(6)],
        runs_dir=runs_dir,
        settings=RunSettings(concurrency=2, connect_timeout=5, retries=0),
    )
    assert report.ok
    assert max(int(r.steps[0].stdout.split()[-1]) for r in report.results) <= 2


async def test_unreachable_target_fails_after_retries(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: 'true'}]\n")
    port = _free_port("127.0.0.1")
    result = await customize(
        f"ssh://root@127.0.0.1:{port}?known_hosts=ignore&name=gone",
        plan,
        runs_dir=runs_dir,
        settings=RunSettings(connect_timeout=2, retries=2, retry_delay=0.05),
    )
    assert not result.ok
    assert "connection refused" in (result.error or "")
    assert result.steps[0].status == FAILED


async def test_connection_retries_until_guest_comes_up(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    late = LocalSshd(tmp_path / "late")
    late._prepare()  # keys and port now, the server in a moment, as a booting guest
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        plan = write_plan(tmp_path, "name: x\nsteps: [{run: echo up}]\n")
        result = await customize(
            late.uri(), plan, runs_dir=runs_dir, settings=RunSettings(connect_timeout=5, retries=6, retry_delay=0.3)
        )
        assert result.ok, result.error
        assert result.steps[0].stdout == "up\n"
    finally:
        starter.join()
        late.stop()


async def test_secrets_never_reach_journal_or_results(
    sshd: LocalSshd, password_env: str, tmp_path: Path, runs_dir: Path
) -> None:
    account = sshd.sudo_account
    assert account is not None and account.password is not None
    plan = write_plan(
        tmp_path,
        f"""
        name: leaky
        steps:
          - run: {{command: 'echo "pw=${password_env}"', env: {{{password_env}: "{account.password}"}}}}
          - run: {{command: "id -u", become: true}}
        """,
    )
    result = await customize(sshd.uri(account, password_env=password_env), plan, runs_dir=runs_dir, settings=FAST)
    assert result.ok, result.error
    assert result.steps[1].stdout.strip() == "0"
    output = json.dumps(result.to_json())
    journal = (runs_dir / result.run_id / "journal.jsonl").read_text()
    run_json = (runs_dir / result.run_id / "run.json").read_text()
    for text in (output, journal, run_json):
        assert account.password not in text
    assert "pw=***" in output


async def test_bad_input_is_rejected_before_anything_runs(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nchannels: [telepathy]\nsteps: [{run: 'true'}]\n")
    with pytest.raises(InputError, match="unknown channel 'telepathy'"):
        await run_plan(plan, [sshd.uri()], runs_dir=runs_dir)
    shared = write_plan(tmp_path, "name: x\nsteps: [{download: {src: /etc/hostname, dest: out.txt}}]\n", "p2.yaml")
    with pytest.raises(InputError, match=r"put \{target\} in dest"):
        await run_plan(shared, [sshd.uri(name="a"), sshd.uri(name="b")], runs_dir=runs_dir)
    with pytest.raises(InputError, match="appears twice"):
        await run_plan(load_plan(plan.with_name("p2.yaml")), [sshd.uri(), sshd.uri()], runs_dir=runs_dir)
    windows = write_plan(tmp_path, "name: x\nos: windows\nsteps: [{run: {command: dir, shell: bash}}]\n", "p3.yaml")
    with pytest.raises(InputError, match="not available on Windows"):
        await run_plan(windows, [sshd.uri()], runs_dir=runs_dir)
    assert not runs_dir.exists()  # nothing ran, no run directory


async def test_every_step_emits_start_and_finish_events(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    import structlog

    plan = write_plan(tmp_path, "name: ev\nsteps:\n  - run: 'true'\n  - run: 'false'\n  - run: 'true'\n")
    with structlog.testing.capture_logs() as logs:
        result = await customize(sshd.uri(name="ev"), plan, runs_dir=runs_dir, settings=FAST)
    steps = [(e["event"], e["step"], e.get("status")) for e in logs if e["event"].startswith("step.")]
    assert steps == [
        ("step.start", 1, None),
        ("step.finish", 1, OK),
        ("step.start", 2, None),
        ("step.finish", 2, FAILED),
    ]
    finish = [e for e in logs if e["event"] == "target.finish"]
    assert finish[0]["status"] == FAILED and all(e.get("run_id") == result.run_id for e in logs if "step" in e)
