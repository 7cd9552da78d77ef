"""What the console tests' servers share: a free loopback port, waiting until a freshly
started server listens (bounded, failing when it exits), and stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0


def free_port(low: int = 1024) -> int:
    """A TCP port free on loopback now (at least ``low``)."""
    if low <= 1024:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            return int(probe.getsockname()[1])
    for port in range(low, low + 200):
        with socket.socket() as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {low}")


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once something accepts connections on ``port``; fail if ``process`` exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {START_TIMEOUT_S}s: {log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Kill ``process`` and its process group, and reap it."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def x_lock(display: int) -> Path:
    """The lock file of X display ``display``; an X server killed outright leaves it behind."""
    return Path(f"/tmp/.X{display}-lock")


def free_display(low: int) -> int:
    """The first X display number from ``low`` with neither a lock file nor a socket."""
    for number in range(low, low + 400):
        if not x_lock(number).exists() and not Path(f"/tmp/.X11-unix/X{number}").exists():
            return number
    raise RuntimeError(f"no free X display number from {low}")
