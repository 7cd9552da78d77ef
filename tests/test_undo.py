"""Journal and undo: what a run wrote is recorded with what it replaced, and put back."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from beachhead import customize
from beachhead.agent.engine import RunSettings
from beachhead.agent.journal import RunDirectory
from beachhead.agent.results import TargetResult
from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead, write_plan

FAST = RunSettings(connect_timeout=5, retries=0)


def _plan(tmp_path: Path, guest_dir: Path) -> Path:
    (tmp_path / "new.conf").write_text("new contents\n")
    return write_plan(
        tmp_path,
        f"""
        name: writes
        steps:
          - upload: {{src: new.conf, dest: {guest_dir}/existing.conf}}
          - upload: {{src: new.conf, dest: {guest_dir}/created/deep/new.conf, mode: "0600"}}
          - run: echo done
          - download: {{src: {guest_dir}/existing.conf, dest: "{tmp_path}/local/{{target}}.conf"}}
        """,
    )


async def _upload_one(sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path) -> TargetResult:
    """Run a plan that uploads one new file, ``guest_dir/f``."""
    (tmp_path / "f").write_text("from run\n")
    plan = write_plan(tmp_path, f"name: x\nsteps: [{{upload: {{src: f, dest: {guest_dir}/f}}}}]\n")
    return await customize(sshd.uri(), plan, runs_dir=runs_dir, settings=FAST)


async def test_journal_records_before_and_after(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    (guest_dir / "existing.conf").write_text("original\n")
    result = await customize(sshd.uri(name="g"), _plan(tmp_path, guest_dir), runs_dir=runs_dir, settings=FAST)
    assert result.ok, result.error
    run_dir = RunDirectory.open(runs_dir, result.run_id)
    records = list(run_dir.records())
    phases = [(r["seq"], r["phase"]) for r in records]
    assert phases == [(n, phase) for n in range(1, 7) for phase in ("intent", "done")]
    ops = [r["op"] for r in records if r["phase"] == "intent"]
    assert ops == ["put_file", "make_dirs", "put_file", "run", "make_dirs", "get_file"]
    assert records[9]["created"] == [str(tmp_path / "local")] and records[8]["where"] == "local"
    replaced = records[0]["replaces"]
    assert replaced["exists"] is True and replaced["size"] == len("original\n")
    assert (run_dir.path / replaced["backup"]).read_text() == "original\n"
    assert records[1]["sha256"] and records[1]["size"] == len("new contents\n")
    assert records[3]["created"] == [str(guest_dir / "created"), str(guest_dir / "created" / "deep")]
    assert all(r["target"] == "g" and r["target_uri"] == sshd.uri(name="g") for r in records if r["phase"] == "intent")


async def test_undo_restores_deletes_and_lists_commands(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    original = guest_dir / "existing.conf"
    original.write_text("original\n")
    original.chmod(0o640)
    local = tmp_path / "local" / "g.conf"
    result = await customize(sshd.uri(name="g"), _plan(tmp_path, guest_dir), runs_dir=runs_dir, settings=FAST)
    assert result.ok and original.read_text() == "new contents\n" and local.exists()

    undo = beachhead("undo", result.run_id, "--json")
    assert undo.returncode == 0, undo.stderr
    report = json.loads(undo.stdout)
    assert original.read_text() == "original\n"
    assert stat.S_IMODE(original.stat().st_mode) == 0o640
    assert not (guest_dir / "created").exists()
    assert not local.parent.exists()
    assert len(report["undone"]) == 5 and report["failed"] == []
    assert report["not_undoable"] == ["#4 g: command 'echo done' (exit status 0)"]

    again = beachhead("undo", result.run_id, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["already_undone"] == 5
    assert original.read_text() == "original\n"

    shown = beachhead("journal", result.run_id, "--json")
    phases = [json.loads(line)["phase"] for line in shown.stdout.splitlines()]
    assert phases.count("undone") == 5


async def test_undo_leaves_files_changed_after_the_run(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    result = await _upload_one(sshd, guest_dir, tmp_path, runs_dir)
    assert result.ok
    (guest_dir / "f").write_text("edited by someone else\n")
    refused = beachhead("undo", result.run_id)
    assert refused.returncode == 1
    assert "changed after the run" in refused.stdout
    assert (guest_dir / "f").read_text() == "edited by someone else\n"
    forced = beachhead("undo", result.run_id, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not (guest_dir / "f").exists()


async def test_interrupted_write_is_still_undone(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    """A process that died between intent and outcome left a file undo must remove."""
    result = await _upload_one(sshd, guest_dir, tmp_path, runs_dir)
    journal = runs_dir / result.run_id / "journal.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # torn after the intent
    shown = beachhead("journal", result.run_id)
    assert "unknown" in shown.stdout
    undo = beachhead("undo", result.run_id)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert not (guest_dir / "f").exists()
    entries = RunDirectory.open(runs_dir, result.run_id).entries()
    assert [(e.state, e.undone) for e in entries] == [("unknown", True)]


def test_unknown_run_id(runs_dir: Path) -> None:
    shown = beachhead("journal", "20990101T000000Z-000000")
    assert shown.returncode == 1 and "no run 20990101T000000Z-000000" in shown.stderr
    assert beachhead("undo", "../etc").returncode == 2  # not a run id at all: bad input
