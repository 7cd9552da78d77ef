"""The library hook as a provisioning tool calls it: plans built in Python, a run followed
through its event stream, cancelled with its journal left consistent, its report as JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import beachhead
from beachhead import InputError, RunEvent, build_plan, customize, start_run
from beachhead.agent.journal import RunDirectory
from beachhead.agent.results import FAILED, OK
from beachhead.agent.settings import RunSettings
from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import await_until, processes_mentioning
from tests.conftest import beachhead as beachhead_cli

FAST = RunSettings(connect_timeout=5, retries=1, retry_delay=0.05)


async def test_a_plan_built_in_python_runs_like_a_file(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    (tmp_path / "motd").write_text("hello from python\n")
    plan = build_plan(
        {
            "name": "built",
            "steps": [
                {"upload": {"src": "motd", "dest": f"{guest_dir}/motd", "mode": "0644"}},
                {"run": f"cat {guest_dir}/motd"},
            ],
        },
        base_dir=tmp_path,
    )
    assert plan.source is None and [step.kind for step in plan.steps] == ["upload", "run"]
    result = await customize(sshd.uri(name="py"), plan, runs_dir=runs_dir, settings=FAST)
    assert result.ok, result.to_json()
    assert result.steps[1].stdout == "hello from python\n"
    # A plain mapping is accepted wherever a plan is (relative files against the cwd),
    # and the runs directory may be given as a string.
    again = await customize(
        sshd.uri(name="py2"), {"name": "inline", "steps": [{"run": "echo inline"}]}, runs_dir=str(runs_dir)
    )
    assert again.ok and again.steps[0].stdout == "inline\n"
    assert len([path for path in runs_dir.iterdir() if (path / "run.json").is_file()]) == 2


def test_bad_python_plan_names_the_field() -> None:
    with pytest.raises(InputError) as caught:
        build_plan({"name": "x", "steps": [{"run": "true"}, {"uplaod": {"src": "a", "dest": "/b"}}]})
    assert caught.value.source == "<plan built in Python>"
    assert caught.value.where == "step 2" and "unknown step 'uplaod'" in caught.value.reason
    with pytest.raises(InputError, match=r"step 1 \(upload\)\.src: file not found"):
        build_plan({"name": "x", "steps": [{"upload": {"src": "absent", "dest": "/b"}}]}, base_dir="/nonexistent")


async def test_events_stream_follows_the_run_and_replays_for_late_readers(
    sshd: LocalSshd, tmp_path: Path, runs_dir: Path
) -> None:
    plan = {"name": "events", "steps": [{"run": "echo one"}, {"run": "echo two"}]}
    run = start_run(plan, [sshd.uri(name="a"), sshd.uri(name="b")], runs_dir=runs_dir, settings=FAST)
    live = [event async for event in run.events()]
    report = await run
    assert report.ok and run.done and run.run_id == report.run_id
    assert live[0].kind == "run_started" and live[-1].kind == "run_finished"
    assert live[-1].report is report
    for name in ("a", "b"):
        mine = [(event.kind, event.step.number if event.step else None) for event in live if event.target == name]
        assert mine == [
            ("target_started", None),
            ("step_started", 1),
            ("step_finished", 1),
            ("step_started", 2),
            ("step_finished", 2),
            ("target_finished", None),
        ]
    started = next(e for e in live if e.kind == "step_started" and e.target == "a" and e.step and e.step.number == 2)
    finished = next(e for e in live if e.kind == "step_finished" and e.target == "a" and e.step and e.step.number == 2)
    assert started.step is not None and finished.step is not None
    assert started.step.status == "running" and finished.step.status == OK and finished.step.stdout == "two\n"
    assert all(event.run_id == report.run_id for event in live)
    # A reader that comes after the end gets the same stream.
    late = [event.kind for event in [e async for e in run.events()]]
    assert late == [event.kind for event in live]
    # Events and report are JSON; the report's results are what `run --json` prints.
    lines = [json.dumps(event.to_json()) for event in live]
    assert json.loads(lines[-1])["report"]["ok"] is True
    document = report.to_json()
    assert document["run_id"] == report.run_id and document["interrupted"] is False
    recorded = [
        json.loads(line) for line in RunDirectory.open(runs_dir, report.run_id).results_path.read_text().splitlines()
    ]
    assert sorted(document["results"], key=lambda r: r["target"]) == sorted(recorded, key=lambda r: r["target"])


async def test_cancel_interrupts_the_step_and_leaves_an_undoable_journal(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    (tmp_path / "payload").write_text("written before the cancel\n")
    marker = f"beachhead-cancel-{tmp_path.name}"
    plan = build_plan(
        {
            "name": "cancelled",
            "steps": [
                {"upload": {"src": "payload", "dest": f"{guest_dir}/payload"}},
                {"run": f"sleep 60 # {marker}"},
                {"run": "echo never"},
            ],
        },
        base_dir=tmp_path,
    )
    run = start_run(plan, [sshd.uri(name="c")], runs_dir=runs_dir, settings=FAST)
    seen: list[RunEvent] = []
    async for event in run.events():
        seen.append(event)
        if event.kind == "step_started" and event.step is not None and event.step.number == 2:
            await await_until(lambda: processes_mentioning(marker), what="the sleep started in the guest")
            run.cancel()
    report = await run.wait()
    assert report.interrupted and not report.ok
    [result] = report.results
    assert result.status == FAILED and result.error == "step 2 (run): interrupted"
    assert [step.status for step in result.steps][:2] == [OK, FAILED]
    assert seen[-1].kind == "run_finished" and seen[-1].report is report
    await await_until(lambda: not processes_mentioning(marker), what="the guest command ended by the cancel")
    # Every journaled operation has its outcome; undo removes what the run wrote.
    entries = RunDirectory.open(runs_dir, report.run_id).entries()
    assert [entry.state for entry in entries] == ["done", "interrupted"]
    assert (guest_dir / "payload").exists()
    undo = beachhead_cli("undo", report.run_id, "--json")
    assert undo.returncode == 0, undo.stderr
    assert not (guest_dir / "payload").exists()


async def test_cancelling_the_awaiting_task_cancels_the_run(sshd: LocalSshd, tmp_path: Path, runs_dir: Path) -> None:
    marker = f"beachhead-outer-{tmp_path.name}"
    run = start_run({"name": "outer", "steps": [{"run": f"sleep 60 # {marker}"}]}, [sshd.uri()], runs_dir=runs_dir)
    waiter = asyncio.ensure_future(run.wait())
    await await_until(lambda: processes_mentioning(marker), what="the sleep started in the guest")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert run.done
    await await_until(lambda: not processes_mentioning(marker), what="the guest command ended")


async def test_bad_input_surfaces_from_wait_and_ends_the_stream(runs_dir: Path) -> None:
    run = start_run({"name": "bad", "steps": []}, ["ssh://root@host.invalid"], runs_dir=runs_dir)
    assert [event async for event in run.events()] == []
    with pytest.raises(InputError, match="a plan needs at least one step"):
        await run.wait()
    assert run.run_id is None


def test_the_library_names_are_importable_from_the_package() -> None:
    for name in beachhead.__all__:
        assert getattr(beachhead, name) is not None, name
