"""Every process a command starts in a Linux guest, found again to end them all.

A command is tagged with an environment variable naming a random marker; the marker
survives exec and is inherited by every child, including those that leave the
command's session or process group, so a scan of ``/proc/*/environ`` finds the whole
tree when a timeout or Ctrl-C ends the step. Signalling only the top process (an SSH
signal request, ``TerminateProcessInGuest``) would leave its children running.
"""

from __future__ import annotations

import secrets
import shlex

MARKER_VARIABLE = "BEACHHEAD_TASK"


def new_marker() -> str:
    """A marker no other command shares."""
    return f"beachhead-task-{secrets.token_hex(8)}"


def tagged(marker: str, command: str) -> str:
    """``command`` with ``marker`` exported to it and to everything it starts."""
    return f"{MARKER_VARIABLE}={marker}; export {MARKER_VARIABLE}; {command}"


def kill_script(marker: str, pid: int | None = None) -> str:
    """A POSIX ``sh`` script that SIGKILLs ``pid`` (the shell that runs the command,
    whose own environment predates the export) and then every process tagged with
    ``marker``. It exits 0 whatever it found. One ``grep`` reads every environment: a
    ``grep`` per process took seconds on a busy guest, and a cancelled command outlived
    the kill's time limit."""
    first = f"kill -KILL {pid} 2>/dev/null; " if pid is not None else ""
    return (
        f'{first}for f in $(grep -ls "{MARKER_VARIABLE}={marker}" /proc/[0-9]*/environ); do '
        'p=${f#/proc/}; kill -KILL "${p%/environ}" 2>/dev/null; '
        "done; true"
    )


def kill_command(marker: str, pid: int | None = None) -> str:
    """:func:`kill_script` as one ``sh -c`` command line."""
    return f"sh -c {shlex.quote(kill_script(marker, pid))}"
