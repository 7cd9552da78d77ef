"""What the console tests' servers share: a free loopback port, and (from
:mod:`beachhead.bootstrap.lab.console_processes`) waiting until a freshly started server
listens, stopping it, and free X display numbers."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from beachhead.bootstrap.lab import console_processes
from beachhead.bootstrap.lab.console_processes import free_display, stop, x_lock

__all__ = ["HOST", "START_TIMEOUT_S", "free_display", "free_port", "stop", "wait_listening", "x_lock"]

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
    """Return once something accepts connections on loopback ``port``; fail if ``process`` exits."""
    console_processes.wait_listening(
        HOST, port, process, lambda: log.read_text(errors="replace")[-2000:], START_TIMEOUT_S
    )
