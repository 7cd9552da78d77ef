"""RDP servers on loopback for the rdp console tests: Debian's xrdp (xorgxrdp backend,
through :mod:`beachhead.bootstrap.lab.xrdp`) and FreeRDP's X11 shadow server
(``freerdp-shadow-cli``) sharing an Xvfb display. Each session is an xterm whose shell
appends what is typed to a file (``cat >> FILE``) the tests read back."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from beachhead.bootstrap.lab import rdp_shadow, xrdp
from tests.console.peer_processes import HOST, START_TIMEOUT_S, free_display, free_port, stop, wait_listening


@dataclass
class RdpPeer:
    """A running RDP server whose session types into :attr:`typed`."""

    name: str
    port: int
    username: str
    password: str
    typed: Path
    uid: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    cleanup: Path | None = None
    after_stop: Callable[[], None] | None = None  # run once its processes have ended

    def clear(self) -> None:
        """Empty the typed file (the shell appends, so it goes on at offset 0)."""
        self.typed.write_bytes(b"")

    def text(self) -> str:
        """What arrived so far."""
        return self.typed.read_text(errors="replace")

    def log_text(self) -> str:
        """The server's logs, for failure messages."""
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs if p.exists())

    def stop(self) -> None:
        """End every process of the peer."""
        for process in reversed(self.processes):
            stop(process)
        if self.after_stop is not None:
            self.after_stop()
        if self.cleanup is not None:
            shutil.rmtree(self.cleanup, ignore_errors=True)


def _typed_file(directory: Path, uid: int) -> Path:
    typed = directory / "typed.txt"
    typed.touch()
    os.chown(typed, uid, uid)
    return typed


def start_xrdp(workdir: Path) -> RdpPeer:
    """xrdp + xrdp-sesman with private configuration on a free loopback port. The
    session runs as the console's login, which must reach its files: they live in a
    directory of their own under /tmp (pytest's are 0700), removed at :meth:`stop`."""
    directory = Path(tempfile.mkdtemp(prefix="beachhead-xrdp-"))
    directory.chmod(0o755)
    port, sesman_port, password = free_port(), free_port(), secrets.token_urlsafe(12)
    typed = _typed_file(directory, xrdp.DEFAULT_UID)
    console = xrdp.prepare(
        directory / "xrdp",
        address=HOST,
        port=port,
        username="bhconsole",
        password=password,
        session_command=["sh", "-c", f"exec cat >> {typed}"],
        sesman_port=sesman_port,
        display_offset=xrdp.free_display_offset(),
    )
    log = workdir / "xrdp.out"
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        xrdp.command(console),
        stdin=subprocess.DEVNULL,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    peer = RdpPeer("xrdp", port, "bhconsole", password, typed, xrdp.DEFAULT_UID, [process], cleanup=directory)
    peer.after_stop = lambda: xrdp.remove_display_locks(console)
    peer.logs = [log, console.log_dir / "xrdp.log", console.log_dir / "sesman.log", console.log_dir / "session.log"]
    try:
        wait_listening(port, process, log)
    except Exception:
        peer.stop()
        raise
    return peer


def start_shadow(directory: Path, width: int = 1024, height: int = 768) -> RdpPeer:
    """FreeRDP's shadow server over Xvfb with a full-screen xterm
    (:mod:`beachhead.bootstrap.lab.rdp_shadow`) on a free port (no authentication: the
    shadow server shows the display to anyone who connects)."""
    directory.mkdir(parents=True, exist_ok=True)
    uid = os.getuid()
    typed = _typed_file(directory, uid)
    console = rdp_shadow.prepare(
        directory / "shadow",
        address=HOST,
        port=free_port(),
        session_command=["sh", "-c", f"exec cat >> {typed}"],
        display=free_display(100),
        uid=uid,
        width=width,
        height=height,
    )
    log = directory / "shadow.log"
    peer = RdpPeer("freerdp-shadow", console.port, "bhconsole", "unused", typed, uid)
    peer.after_stop = lambda: rdp_shadow.remove_display_lock(console)
    peer.logs = [log, console.log_dir / "xvfb.log", console.log_dir / "xterm.log"]
    try:
        peer.processes.append(rdp_shadow.start(console, log, START_TIMEOUT_S))
    except Exception:
        peer.stop()
        raise
    return peer
