"""What the lab's console servers and the console tests' peers share: X display
numbers no X server holds, waiting (bounded) until a freshly started server listens,
and ending a server's process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

X11_DIR = "/tmp/.X11-unix"  # noqa: S108 (X's own fixed path)
DISPLAY_RANGE = 400  # display numbers tried from a caller's lowest


def x_lock(display: int) -> Path:
    """The lock file of X display ``display``; an X server killed outright leaves it behind."""
    return Path(f"/tmp/.X{display}-lock")  # noqa: S108 (X's own fixed path)


def free_display(low: int) -> int:
    """The first X display number from ``low`` with neither a lock file nor a socket."""
    for number in range(low, low + DISPLAY_RANGE):
        if not x_lock(number).exists() and not Path(f"{X11_DIR}/X{number}").exists():
            return number
    raise RuntimeError(f"no free X display number from :{low}")


def wait_listening(
    address: str, port: int, process: subprocess.Popen[bytes], logs: Callable[[], str], timeout_s: float
) -> None:
    """Return once something accepts connections on ``address:port``; fail, quoting
    ``logs()``, if ``process`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {logs()}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {address}:{port} after {timeout_s:g}s: {logs()}")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Kill ``process`` and its process group, and reap it."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
