"""The demo's fallback guest: a local sshd, for machines where the lab cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_on_a_local_sshd_runs_and_undoes(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "bootstrap.run_demo", "--local-sshd"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)},
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "greeting: hello from beachhead" in demo.stdout
    assert "undone" in demo.stdout
    assert not (tmp_path / "beachhead-demo-reports").exists()
