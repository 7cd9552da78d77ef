"""The README's first command: the demo runs one plan over the lab's mixed fleet, its
Linux guests over SSH and win-01 over WinRM, and undoes it on every guest."""

from __future__ import annotations

from pathlib import Path

from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import beachhead, run_demo

LINUX = ("lin-01", "lin-02", "lin-03")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_demo_runs_on_the_lab_guests_and_undoes(lab_session: Path, tmp_path: Path) -> None:
    demo = run_demo(tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    run = demo.stdout.split("$ beachhead --log-level warning run")[1].split("$ beachhead journal")[0]
    rows = [_cells(line) for line in run.splitlines() if line.startswith("│ ")]
    steps = [row for row in rows if len(row) == 5 and row[0]]  # target, #, step, channel, status
    guests = {row[0] for row in steps}
    assert guests >= {*LINUX, "win-01"}, run
    ran = {guest: [(row[1], row[3]) for row in steps if row[0] == guest and row[4] == "ok"] for guest in guests}
    skipped = {
        guest: [row[1] for row in steps if row[0] == guest and row[4].startswith("skipped: os:")] for guest in guests
    }
    for guest in guests - {"win-01"}:  # every Linux guest: its steps over ssh, the Windows ones skipped
        assert [channel for _, channel in ran[guest]] == ["ssh"] * 6, (guest, run)
        assert skipped[guest] == ["2", "4", "6", "9", "11"], (guest, run)
    assert ran["win-01"] == [("2", "winrm"), ("4", "winrm"), ("6", "winrm"), ("9", "winrm"), ("11", "winrm")], run
    assert skipped["win-01"] == ["1", "3", "5", "7", "8", "10"], run
    for guest in LINUX:
        assert f"host: {guest}\n" in demo.stdout  # the report configure.sh wrote in that guest
    assert "host: WIN-01" in demo.stdout  # the report cmd wrote in win-01, downloaded over WinRM
    guests_dir = lab_dir() / "guests"
    for home in ("lin-01/root", "lin-02/root", "lin-03/home/admin", "win-01/C/Users/Administrator"):
        assert (guests_dir / home).is_dir()
        assert not (guests_dir / home / "beachhead-demo").exists()  # undone in the guest
    assert not (tmp_path / "beachhead-demo-reports").exists()  # undone
    # The demo found the lab running, so it leaves it running.
    assert beachhead("lab", "status").returncode == 0
