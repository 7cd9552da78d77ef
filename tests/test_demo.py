"""The demo's fallback guest: a local sshd, for machines where the lab cannot run."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_demo


def test_demo_on_a_local_sshd_runs_and_undoes(tmp_path: Path) -> None:
    demo = run_demo(tmp_path, "--local-sshd")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "greeting: hello from beachhead" in demo.stdout
    assert "undone" in demo.stdout
    assert not (tmp_path / "beachhead-demo-reports").exists()
