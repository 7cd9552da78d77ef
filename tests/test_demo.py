"""The demo's fallback guest: a local sshd, for machines where the lab cannot run."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_demo


def test_demo_on_a_local_sshd_runs_and_undoes(tmp_path: Path) -> None:
    demo = run_demo(tmp_path, "--local-sshd")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "greeting: hello from beachhead" in demo.stdout
    run = demo.stdout.split("$ beachhead --log-level warning run")[1]
    steps = [_cells(line) for line in run.splitlines() if line.startswith("│ demo-guest ")]
    steps = [row for row in steps if len(row) == 5]  # target, #, step, channel, status
    assert len(steps) == 11, run
    for _, _, _, channel, status in steps:  # the Windows steps skipped, visibly; the others over ssh
        skipped = channel == "-" and status.startswith("skipped: os: windows, and demo-guest is linux")
        assert skipped or (channel, status) == ("ssh", "ok"), run
    assert sum(row[3] == "ssh" for row in steps) == 6
    assert "undone" in demo.stdout
    assert not (tmp_path / "beachhead-demo-reports").exists()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]
