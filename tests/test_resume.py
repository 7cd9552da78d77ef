"""`beachhead run --resume RUN_ID`: finished targets are left alone, the others restart
at the step that did not complete under the same run id, and a write the journal saw
begin but never end is checked against the guest before it is redone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead, write_plan


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_restarts_where_each_target_stopped(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.conf").write_text(f"{name}\n")
    plan = write_plan(
        tmp_path,
        f"""
        name: three-parts
        steps:
          - upload: {{src: a.conf, dest: "{guest_dir}/{{target}}-a.conf"}}
          - upload: {{src: b.conf, dest: "{guest_dir}/{{target}}/b.conf"}}
          - upload: {{src: c.conf, dest: "{guest_dir}/{{target}}-c.conf"}}
        """,
    )
    (guest_dir / "first").write_text("a file where the first target needs a directory\n")
    targets = ["--target", sshd.uri(name="first"), "--target", sshd.uri(name="second")]
    first = beachhead("run", str(plan), *targets, "--json")
    assert first.returncode == 1, first.stderr
    run_id = json.loads(first.stdout.splitlines()[0])["run_id"]
    assert not (guest_dir / "first-c.conf").exists() and (guest_dir / "second-c.conf").exists(), first.stdout

    (guest_dir / "first").unlink()
    resumed = beachhead("run", "--resume", run_id, "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "left alone (finished in an earlier attempt): second" in resumed.stderr
    [result] = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert (result["target"], result["run_id"], result["attempt"], result["status"]) == ("first", run_id, 2, "ok")
    upload_a, upload_b, upload_c = result["steps"]
    assert (upload_a["status"], upload_a["done_in_attempt"]) == ("ok", 1)  # not run again
    assert (upload_b["status"], upload_b["done_in_attempt"]) == ("ok", None)
    assert upload_c["status"] == "ok" and (guest_dir / "first-c.conf").read_text() == "c\n"

    records = _lines(runs_dir / run_id / "journal.jsonl")
    intents = [(r["target"], r["op"], r.get("step"), r["attempt"]) for r in records if r["phase"] == "intent"]
    assert [i for i in intents if i[0] == "first" and i[1] == "put_file"] == [
        ("first", "put_file", 1, 1),
        ("first", "put_file", 2, 1),  # failed: a file stood where its directory goes
        ("first", "put_file", 2, 2),
        ("first", "put_file", 3, 2),
    ]
    assert all(i[0] == "first" for i in intents if i[3] == 2)
    recorded = [(r["target"], r["attempt"]) for r in _lines(runs_dir / run_id / "results.jsonl")]
    assert sorted(recorded[:2]) == [("first", 1), ("second", 1)] and recorded[2:] == [("first", 2)]
    # Nothing left to do: a second resume leaves everything alone.
    again = beachhead("run", "--resume", run_id, "--json")
    assert again.returncode == 0 and again.stdout == ""
    assert "first, second" in again.stderr
    # Undo reverts what both attempts wrote.
    undone = beachhead("undo", run_id)
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert not list(guest_dir.glob("**/*.conf"))


def _crash_after(run_dir: Path, op: str) -> int:
    """Make the run look as if its process died right after starting ``op``: drop that
    write's outcome from the journal and the target's result line."""
    records = _lines(run_dir / "journal.jsonl")
    seq = next(r["seq"] for r in records if r["phase"] == "intent" and r["op"] == op)
    kept = [r for r in records if r["seq"] != seq or r["phase"] == "intent"]
    (run_dir / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run_dir / "results.jsonl").unlink()
    return int(seq)


def test_an_interrupted_upload_is_checked_before_it_is_redone(
    sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    (tmp_path / "app.conf").write_text("new\n")
    plan = write_plan(
        tmp_path, f"name: p\nsteps:\n  - run: 'true'\n  - upload: {{src: app.conf, dest: {guest_dir}/app.conf}}\n"
    )
    for landed in (True, False):
        (guest_dir / "app.conf").write_text("original\n")
        done = beachhead("run", str(plan), "--target", sshd.uri(name="g"), "--json")
        assert done.returncode == 0, done.stderr
        run_id = json.loads(done.stdout)["run_id"]
        seq = _crash_after(runs_dir / run_id, "put_file")
        if not landed:
            (guest_dir / "app.conf").write_text("original\n")  # the write never reached the guest
        resumed = beachhead("run", "--resume", run_id, "--json")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        [result] = [json.loads(line) for line in resumed.stdout.splitlines()]
        records = _lines(runs_dir / run_id / "journal.jsonl")
        [checked] = [r for r in records if r["seq"] == seq and r["phase"] != "intent"]
        assert checked["checked_on_resume"] is True
        redone = [r for r in records if r["phase"] == "intent" and r["op"] == "put_file" and r["attempt"] == 2]
        if landed:
            assert checked["phase"] == "done" and not redone  # in place: not written again
            assert result["steps"][1]["done_in_attempt"] == 1
        else:
            assert checked["phase"] == "failed" and len(redone) == 1
            assert redone[0]["replaces"]["exists"] is True and result["steps"][1]["done_in_attempt"] is None
        assert (guest_dir / "app.conf").read_text() == "new\n"
        undone = beachhead("undo", run_id)
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert (guest_dir / "app.conf").read_text() == "original\n"
