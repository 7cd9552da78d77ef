"""A second RDP console: FreeRDP 2's X11 shadow server (``freerdp-shadow-cli``) showing
an Xvfb display whose only window is a full-screen xterm running a given command.

Used by win-01 in the lab (port 3390 at its address, the xterm running the Windows
stand-in's ``cmd.exe`` as :mod:`beachhead.bootstrap.lab.xrdp`'s session does) and by
the tests' loopback peers. :func:`prepare` writes one directory; :func:`command` is the
command line that serves it, in a pid and mount namespace of its own
(``unshare --pid --fork --kill-child --mount``), where

- a private directory is bind-mounted over ``/tmp/.X11-unix``, so the display's socket
  meets no other X server's; its lock file ``/tmp/.X<N>-lock`` stays where every X
  server looks, so ``console_processes.free_display`` and sesman see the number as taken;
- the shadow server's configuration (its generated certificate) lives in the directory,
  not in the caller's home;
- ending the ``unshare`` process (SIGKILL included) ends Xvfb, the xterm and the server.

The start is bounded: the script waits at most :data:`X_START_TIMEOUT_S` for Xvfb's
socket and fails otherwise; callers wait for the port (:func:`start` does).

The shadow server runs without authentication (``-auth``): it shows the display to
anyone who connects, and an RDP client's login is accepted and ignored.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from beachhead.bootstrap.lab.console_processes import X11_DIR, free_display, stop, wait_listening, x_lock

#: Display numbers are taken from here up; xrdp's consoles start at :40
#: (:data:`beachhead.bootstrap.lab.xrdp.DEFAULT_DISPLAY_OFFSET`), the console tests' at :100.
DEFAULT_DISPLAY_LOW = 300
X_START_TIMEOUT_S = 10
DEFAULT_GEOMETRY = (1024, 768)
XTERM = ["xterm", "-fa", "DejaVu Sans Mono", "-fs", "11", "-geometry", "400x200+0+0"]


@dataclass(frozen=True)
class ShadowConsole:
    """One prepared shadow console: its directory, where it listens, its display."""

    directory: Path
    address: str
    port: int
    display: int
    uid: int
    width: int = DEFAULT_GEOMETRY[0]
    height: int = DEFAULT_GEOMETRY[1]

    @property
    def log_dir(self) -> Path:
        """Xvfb's, the xterm's and the shadow server's logs."""
        return self.directory / "log"


def prepare(
    directory: Path,
    *,
    address: str,
    port: int,
    session_command: Sequence[str],
    display: int,
    uid: int = 0,
    session_dir: str | None = None,
    width: int = DEFAULT_GEOMETRY[0],
    height: int = DEFAULT_GEOMETRY[1],
) -> ShadowConsole:
    """Write the console's directory (created, mode 0711) and its script: an xterm
    covering the screen runs ``session_command`` as ``uid`` in ``session_dir`` (default:
    wherever the console is started)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o711)
    console = ShadowConsole(directory, address, port, display, uid, width, height)
    for sub in ("x11", "log", "config"):
        (directory / sub).mkdir(exist_ok=True)
    (directory / "x11").chmod(0o1777)
    (directory / "log").chmod(0o1777)
    x = f":{display}"
    socket_file = f"{X11_DIR}/X{display}"
    logs = {name: shlex.quote(str(console.log_dir / f"{name}.log")) for name in ("xvfb", "xterm")}
    become = [] if uid == 0 else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    xterm = [*become, "env", f"DISPLAY={x}", *XTERM, "-e", *session_command]
    shadow = ["freerdp-shadow-cli", f"/port:{port}", f"/bind-address:{address}", "-auth"]
    config = shlex.quote(str(directory / "config"))
    steps = 10 * X_START_TIMEOUT_S
    (directory / "console.sh").write_text(
        "#!/bin/sh\n"
        "# Run inside the console's pid and mount namespaces (rdp_shadow.command).\n"
        "set -e\n"
        "mkdir -p /tmp/.X11-unix\n"
        f"mount --bind {shlex.quote(str(directory / 'x11'))} /tmp/.X11-unix\n"
        f"Xvfb {x} -screen 0 {width}x{height}x24 -nolisten tcp >{logs['xvfb']} 2>&1 &\n"
        f"i=0; while [ ! -S {socket_file} ]; do\n"
        f'  i=$((i + 1)); [ "$i" -le {steps} ] || {{ echo "Xvfb {x} did not start" >&2; exit 1; }}\n'
        "  sleep 0.1\n"
        "done\n"
        + (f"cd {shlex.quote(session_dir)}\n" if session_dir else "")
        + f"{shlex.join(xterm)} >{logs['xterm']} 2>&1 &\n"
        f"export DISPLAY={x} HOME={config} XDG_CONFIG_HOME={config}\n"
        f"exec {shlex.join(shadow)}\n"
    )
    return console


def command(console: ShadowConsole) -> list[str]:
    """The command line that serves ``console`` until it is ended (any signal)."""
    return [
        *("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private"),
        *("sh", str(console.directory / "console.sh")),
    ]


def start(console: ShadowConsole, log: Path, timeout_s: float = 20.0) -> subprocess.Popen[bytes]:
    """Serve ``console`` (its output to ``log``) and return once its port accepts
    connections; fails, the console ended, when it exits or ``timeout_s`` passes."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command(console), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_listening(console.address, console.port, process, lambda: _tail(console, log), timeout_s)
    except Exception:
        stop(process)
        raise
    return process


def remove_display_lock(console: ShadowConsole) -> None:
    """Remove the X lock file of ``console``'s display, once its processes have ended."""
    x_lock(console.display).unlink(missing_ok=True)


def _tail(console: ShadowConsole, log: Path) -> str:
    logs = [log, *(console.log_dir / f"{name}.log" for name in ("xvfb", "xterm"))]
    return "\n".join(p.read_text(errors="replace")[-1500:] for p in logs if p.exists())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m beachhead.bootstrap.lab.rdp_shadow --dir DIR --address IP --port N
    [--uid N] [--cwd DIR] [--display N] -- COMMAND...``: prepare and serve a console.
    Without ``--display`` it takes the first free X display from :data:`DEFAULT_DISPLAY_LOW`
    (as seen where it runs), skipping the lock files killed X servers left behind."""
    parser = argparse.ArgumentParser(prog="beachhead.bootstrap.lab.rdp_shadow")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=3390)
    parser.add_argument("--uid", type=int, default=0)
    parser.add_argument("--cwd")
    parser.add_argument("--display", type=int)
    parser.add_argument("session_command", nargs="+")
    args = parser.parse_args(argv)
    console = prepare(
        args.dir,
        address=args.address,
        port=args.port,
        session_command=args.session_command,
        display=free_display(DEFAULT_DISPLAY_LOW) if args.display is None else args.display,
        uid=args.uid,
        session_dir=args.cwd,
    )
    os.execvp("unshare", command(console))  # noqa: S606 - replaces this process with the console
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
