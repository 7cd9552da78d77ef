"""The README's first command: the demo runs its plan on the lab's Linux guests."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import beachhead, run_demo


def test_demo_runs_on_the_lab_guests_and_undoes(lab_session: Path, tmp_path: Path) -> None:
    demo = run_demo(tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for guest in ("lin-01", "lin-02", "lin-03"):
        assert f"host: {guest}\n" in demo.stdout  # the report configure.sh wrote in that guest
    guests_dir = Path(os.environ.get("BEACHHEAD_LAB_DIR", "/run/beachhead-lab")) / "guests"
    for home in ("lin-01/root", "lin-02/root", "lin-03/home/admin"):
        assert (guests_dir / home).is_dir()
        assert not (guests_dir / home / "beachhead-demo").exists()  # undone in the guest
    assert "win-01" not in demo.stdout.split("$ beachhead --log-level warning run")[1]
    assert not (tmp_path / "beachhead-demo-reports").exists()  # undone
    # The demo found the lab running, so it leaves it running.
    assert beachhead("lab", "status").returncode == 0
