"""How the lab tells whether a process it started still runs (``system.alive``):
by pid and a marker in its command line, a zombie counting as gone."""

from __future__ import annotations

import subprocess
import sys
import time

from beachhead.bootstrap.lab import system

MARKER = "beachhead-alive-probe"


def test_a_running_process_is_alive_by_its_marker_and_not_by_another() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", MARKER])
    try:
        assert system.alive(process.pid, MARKER)
        assert not system.alive(process.pid, "some-other-program")
    finally:
        process.kill()
        process.wait(timeout=10)
    assert not system.alive(process.pid, MARKER)


def test_an_exited_child_not_yet_reaped_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass", MARKER])
    deadline = time.monotonic() + 10
    while system.process_state(process.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert system.process_state(process.pid) == "Z"  # a zombie: its command line reads empty
        assert not system.alive(process.pid, MARKER)
    finally:
        process.wait(timeout=10)
