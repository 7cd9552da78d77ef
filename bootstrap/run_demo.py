"""The demo: a bootstrap run of ``bootstrap/demo/plan.yaml`` against a local sshd that
the demo starts (a real OpenSSH on 127.0.0.1 with generated keys), then the run's
journal, then ``beachhead undo``. Run it with ``bash bootstrap/demo.sh``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bootstrap.local_sshd import LocalSshd

PLAN = Path(__file__).parent / "demo" / "plan.yaml"
BEACHHEAD = Path(sys.executable).with_name("beachhead")


def _show_and_run(arguments: list[str], env: dict[str, str]) -> int:
    print(f"\n$ beachhead {shlex.join(arguments)}", flush=True)
    return subprocess.run([str(BEACHHEAD), *arguments], env=env, check=False).returncode


def main() -> int:
    """Start the demo guest, run the plan on it, show the journal, undo; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="skip the final undo")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="beachhead-demo-") as scratch:
        workdir = Path(scratch)
        env = {**os.environ, "BEACHHEAD_RUNS_DIR": str(workdir / "runs")}
        with LocalSshd(workdir / "sshd") as sshd:
            print(f"demo guest: OpenSSH sshd on {sshd.host}:{sshd.port} (keys in {workdir / 'sshd'})")
            status = _show_and_run(
                ["--log-level", "warning", "run", str(PLAN), "--target", sshd.uri(name="demo-guest")], env
            )
            runs = sorted((workdir / "runs").iterdir()) if (workdir / "runs").is_dir() else []
            if not runs:
                return status
            run_id = runs[-1].name
            _show_and_run(["journal", run_id], env)
            report = Path("~/beachhead-demo-reports/demo-guest.txt").expanduser()
            if report.exists():
                print(f"\ndownloaded report {report}:\n{report.read_text()}")
            if not options.keep:
                undo_status = _show_and_run(["--log-level", "warning", "undo", run_id], env)
                status = status or undo_status
        return status


if __name__ == "__main__":
    sys.exit(main())
