"""An RDP console: Debian's xrdp and xrdp-sesman (xorgxrdp backend) serving one login
whose session is a full-screen xterm running a given command.

Used by win-01 in the lab (its console: xterm running the Windows stand-in's
``cmd.exe``) and by the tests' loopback peers. Nothing of the system's xrdp is touched:
:func:`prepare` writes private ``xrdp.ini`` / ``sesman.ini`` copies, a certificate, a
session script and account files into one directory, and :func:`command` is the
command line that serves them. It runs in a pid and mount namespace of its own
(``unshare --pid --fork --kill-child --mount``), where

- the account files (``passwd``, ``group``, ``shadow`` with the login's password hash)
  are bind-mounted over ``/etc``'s, so sesman's PAM stack (pam_unix) knows the login
  while the host does not;
- a private directory is bind-mounted over ``/run/xrdp`` (xrdp's socket directory
  and pid file are compiled in as ``/run/xrdp/sockdir`` and ``/run/xrdp/xrdp.pid``) and
  over ``/tmp/.X11-unix``, so several consoles (and a host xrdp) never meet;
- ending the ``unshare`` process (SIGKILL included) ends every process of the console,
  X server and session too: they all die with the pid namespace.

Sessions end when the client disconnects (``KillDisconnected``), so every connection
gets a fresh session with the keyboard layout it announces.
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

from beachhead.bootstrap.lab.console_processes import x_lock
from beachhead.bootstrap.local_sshd import password_hash

#: Where the xterm's session lives; uid/gid of the console's login unless given.
DEFAULT_UID = 61391
#: sesman numbers X displays from this offset; consoles sharing a host use different ones.
DEFAULT_DISPLAY_OFFSET = 40
SESSIONS = 8  # sesman's MaxSessions: the display numbers a console may take from its offset
LAST_DISPLAY = 999
XORG = "/usr/lib/xorg/Xorg"


@dataclass(frozen=True)
class XrdpConsole:
    """One prepared console: its directory, where it listens and who may log in."""

    directory: Path
    address: str
    port: int
    username: str
    uid: int
    display_offset: int = DEFAULT_DISPLAY_OFFSET

    @property
    def log_dir(self) -> Path:
        """xrdp's, sesman's and Xorg's logs."""
        return self.directory / "log"

    @property
    def home(self) -> Path:
        """The login's home directory (the session's working directory)."""
        return self.directory / "home"


def _ini(sections: dict[str, dict[str, str | list[str]]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.extend(f"{key}={item}" for item in (value if isinstance(value, list) else [value]))
        lines.append("")
    return "\n".join(lines)


def _account_files(etc: Path, username: str, uid: int, home: Path, password: str) -> None:
    """The host's account files plus ``username`` (same uid and gid), for the mounts."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
    keep = [line for line in passwd.splitlines() if line.split(":", 1)[0] != username]
    (etc / "passwd").write_text("\n".join([*keep, f"{username}:x:{uid}:{uid}::{home}:/bin/sh"]) + "\n")
    keep = [line for line in group.splitlines() if line.split(":", 1)[0] != username]
    (etc / "group").write_text("\n".join([*keep, f"{username}:x:{uid}:"]) + "\n")
    keep = [line for line in shadow.splitlines() if line.split(":", 1)[0] != username]
    shadow_file = etc / "shadow"
    shadow_file.touch(mode=0o600)
    shadow_file.chmod(0o600)
    shadow_file.write_text("\n".join([*keep, f"{username}:{password_hash(password)}:19000:0:99999:7:::"]) + "\n")


def _certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for xrdp's TLS (clients of a console do not verify it:
    RDP servers' certificates are self-signed as a rule)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not cert.exists() or not key.exists():
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650"),
                *("-subj", f"/CN={address}", "-keyout", str(key), "-out", str(cert)),
            ],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
    key.chmod(0o600)
    return cert, key


def free_display_offset(low: int = DEFAULT_DISPLAY_OFFSET) -> int:
    """The first display number from ``low`` followed by :data:`SESSIONS` free ones (no
    X server's lock file). An Xorg ended with its console (SIGKILL of the namespace)
    leaves its ``/tmp/.X<N>-lock`` behind, as the namespace hides only
    ``/tmp/.X11-unix``; sesman takes such a display for one in use, and refuses the
    session once its whole range is taken."""
    for offset in range(low, LAST_DISPLAY - SESSIONS):
        if not any(x_lock(n).exists() for n in range(offset, offset + SESSIONS)):
            return offset
    raise RuntimeError(f"no {SESSIONS} free X displays from :{low}")


def remove_display_locks(console: XrdpConsole) -> None:
    """Remove the X lock files of ``console``'s displays, once its processes have ended."""
    for display in range(console.display_offset, console.display_offset + SESSIONS):
        x_lock(display).unlink(missing_ok=True)


def prepare(
    directory: Path,
    *,
    address: str,
    port: int,
    username: str,
    password: str,
    session_command: Sequence[str],
    uid: int = DEFAULT_UID,
    display_offset: int = DEFAULT_DISPLAY_OFFSET,
    sesman_port: int = 3350,
    session_dir: str | None = None,
    session_env: dict[str, str] | None = None,
) -> XrdpConsole:
    """Write everything the console needs into ``directory`` (created, mode 0700).

    The session is an xterm covering the screen, running ``session_command`` in
    ``session_dir`` (default: the login's home) with ``session_env`` added. The password
    is kept only as a SHA-512 crypt hash in the private shadow file (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    console = XrdpConsole(directory, address, port, username, uid, display_offset)
    for sub in ("etc", "run", "x11", "log", "home"):
        (directory / sub).mkdir(exist_ok=True)
    (directory / "run" / "sockdir").mkdir(exist_ok=True)
    (directory / "run" / "sockdir").chmod(0o1777)
    (directory / "x11").chmod(0o1777)
    (directory / "log").chmod(0o1777)  # Xorg and the session write theirs as the login
    os.chown(console.home, uid, uid)
    # The login reaches its home and the session script through the 0700 directory
    # only as its owner's group would; give it search permission on the path alone.
    directory.chmod(0o711)
    _account_files(directory / "etc", username, uid, console.home, password)
    cert, key = _certificate(directory, address)

    environment = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in (session_env or {}).items())
    xterm = ["xterm", "-fa", "DejaVu Sans Mono", "-fs", "11", "-geometry", "400x200+0+0", "-e", *session_command]
    session = directory / "session.sh"
    session.write_text(
        "#!/bin/sh\n"
        "# The console's session: one xterm over the whole screen (no window manager).\n"
        f"{environment}"
        f"cd {shlex.quote(session_dir or str(console.home))} || exit 1\n"
        f"exec {shlex.join(xterm)} >>{shlex.quote(str(console.log_dir / 'session.log'))} 2>&1\n"
    )
    session.chmod(0o755)

    (directory / "xrdp.ini").write_text(
        _ini(
            {
                "Globals": {
                    "ini_version": "1",
                    "fork": "true",
                    "port": f"tcp://{address}:{port}",
                    "tcp_nodelay": "true",
                    "security_layer": "negotiate",
                    "crypt_level": "high",
                    "certificate": str(cert),
                    "key_file": str(key),
                    "ssl_protocols": "TLSv1.2, TLSv1.3",
                    "autorun": "Xorg",
                    "allow_channels": "false",
                    "allow_multimon": "false",
                    "bitmap_cache": "true",
                    "bitmap_compression": "true",
                    "bulk_compression": "true",
                    "max_bpp": "24",
                    "new_cursors": "true",
                    "use_fastpath": "both",
                },
                "Logging": {
                    "LogFile": str(console.log_dir / "xrdp.log"),
                    "LogLevel": "INFO",
                    "EnableSyslog": "false",
                },
                "Channels": {"rdpdr": "false", "rdpsnd": "false", "drdynvc": "false", "cliprdr": "false"},
                "Xorg": {
                    "name": "Xorg",
                    "lib": "libxup.so",
                    "username": "ask",
                    "password": "ask",
                    "ip": "127.0.0.1",
                    "port": "-1",
                    "code": "20",
                },
            }
        )
    )
    (directory / "sesman.ini").write_text(
        _ini(
            {
                "Globals": {
                    "ListenAddress": "127.0.0.1",
                    "ListenPort": str(sesman_port),
                    "EnableUserWindowManager": "false",
                    "DefaultWindowManager": str(session),
                    "ReconnectScript": "/bin/true",
                },
                "Security": {
                    "AllowRootLogin": "true",
                    "MaxLoginRetry": "4",
                    "TerminalServerUsers": "tsusers",
                    "TerminalServerAdmins": "tsadmins",
                    "AlwaysGroupCheck": "false",
                },
                "Sessions": {
                    "X11DisplayOffset": str(display_offset),
                    "MaxSessions": str(SESSIONS),
                    "KillDisconnected": "true",
                    "DisconnectedTimeLimit": "0",
                    "IdleTimeLimit": "0",
                    "Policy": "Default",
                },
                "Logging": {
                    "LogFile": str(console.log_dir / "sesman.log"),
                    "LogLevel": "INFO",
                    "EnableSyslog": "false",
                },
                "Xorg": {
                    "param": [
                        XORG,
                        "-config",
                        "xrdp/xorg.conf",
                        "-noreset",
                        "-nolisten",
                        "tcp",
                        "-logfile",
                        str(console.log_dir / "xorg.%s.log"),
                    ]
                },
                "Chansrv": {"FuseMountName": "thinclient_drives", "FileUmask": "077"},
                "ChansrvLogging": {"LogLevel": "WARNING", "EnableSyslog": "false"},
            }
        )
    )
    return console


def command(console: XrdpConsole) -> list[str]:
    """The command line that serves ``console`` until it is ended (any signal)."""
    d = console.directory
    mounts = [f"mount --bind {d / 'etc' / name} /etc/{name}" for name in ("passwd", "group", "shadow")]
    script = " && ".join(
        [
            "mkdir -p /run/xrdp /tmp/.X11-unix",
            *mounts,
            f"mount --bind {d / 'run'} /run/xrdp",
            f"mount --bind {d / 'x11'} /tmp/.X11-unix",
            # xrdp finds sesman's port in the compiled-in /etc/xrdp/sesman.ini.
            f"mount --bind {d / 'sesman.ini'} /etc/xrdp/sesman.ini",
            f"(xrdp-sesman --nodaemon --config {d / 'sesman.ini'} &)",
            f"exec xrdp --nodaemon --config {d / 'xrdp.ini'}",
        ]
    )
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "sh", "-c", script]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m beachhead.bootstrap.lab.xrdp --dir DIR --address IP --port N --user U
    [--uid N] [--cwd DIR] [--display-offset N] -- COMMAND...``: prepare and serve a
    console (the password is read from the environment variable
    ``BEACHHEAD_XRDP_PASSWORD``). Without ``--display-offset`` the console takes the
    first free range of X displays (:func:`free_display_offset`), as seen where it runs."""
    parser = argparse.ArgumentParser(prog="beachhead.bootstrap.lab.xrdp")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=3389)
    parser.add_argument("--user", required=True)
    parser.add_argument("--uid", type=int, default=DEFAULT_UID)
    parser.add_argument("--cwd")
    parser.add_argument("--display-offset", type=int)
    parser.add_argument("session_command", nargs="+")
    args = parser.parse_args(argv)
    password = os.environ.pop("BEACHHEAD_XRDP_PASSWORD", "")
    if not password:
        print("BEACHHEAD_XRDP_PASSWORD is not set", file=sys.stderr)
        return 2
    console = prepare(
        args.dir,
        address=args.address,
        port=args.port,
        username=args.user,
        password=password,
        session_command=args.session_command,
        uid=args.uid,
        display_offset=free_display_offset() if args.display_offset is None else args.display_offset,
        session_dir=args.cwd,
    )
    os.execvp("unshare", command(console))  # noqa: S606 - replaces this process with the console
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
