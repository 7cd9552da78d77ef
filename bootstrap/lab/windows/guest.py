"""The stand-in guest a Windows program runs in: its drive folders, its current
directory and its environment, as Windows names them.

Drive ``X:`` is the folder ``ROOT/X``. Windows file systems are case-insensitive but
keep the case they were given, so an existing name is found whatever its case; ``/``
is accepted as a separator wherever Windows accepts it; ``..`` stops at the drive's
root, and nothing resolves outside ROOT (a link leading out is refused).
"""

from __future__ import annotations

import ntpath
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

# What the stand-in's process environment may carry from Linux that Windows would not.
LINUX_ONLY = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_", "TERM"}
SYSTEM32 = r"C:\Windows\System32"


class GuestPathError(OSError):
    """A guest path that names no place in the guest (outside ROOT, no such drive, UNC)."""


class Environment:
    """Environment variables with Windows' case-insensitive names (the case first set
    is kept for display)."""

    def __init__(self, values: Mapping[str, str] = {}) -> None:
        self._values: dict[str, tuple[str, str]] = {}
        for name, value in values.items():
            self[name] = value

    def __getitem__(self, name: str) -> str:
        return self._values[name.upper()][1]

    def __setitem__(self, name: str, value: str) -> None:
        shown = self._values.get(name.upper(), (name, ""))[0]
        self._values[name.upper()] = (shown, value)

    def __delitem__(self, name: str) -> None:
        self._values.pop(name.upper(), None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.upper() in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``, or ``default``."""
        entry = self._values.get(name.upper())
        return entry[1] if entry else default

    def items(self) -> Iterator[tuple[str, str]]:
        """``(name, value)`` pairs sorted as ``set`` lists them."""
        for key in sorted(self._values):
            yield self._values[key]

    def copy(self) -> Environment:
        """An independent copy (a child process's environment)."""
        return Environment(dict(self.items()))


def windows_environment(process_env: Mapping[str, str]) -> Environment:
    """The Windows environment for a process given ``process_env``: kept as it is when
    it already is a Windows one (``SystemRoot`` set, as a child of the stand-in gets),
    otherwise derived from the Linux one the guest's launcher passes (``USER``,
    ``HOSTNAME``), with the variables Windows sets for every logon."""
    env = Environment({name: value for name, value in process_env.items() if name not in LINUX_ONLY})
    if "SystemRoot" in env:
        return env
    user = process_env.get("USER") or "Administrator"
    computer = (process_env.get("HOSTNAME") or socket.gethostname()).upper()
    profile = rf"C:\Users\{user}"
    defaults = {
        "ALLUSERSPROFILE": r"C:\ProgramData",
        "APPDATA": rf"{profile}\AppData\Roaming",
        "CommonProgramFiles": r"C:\Program Files\Common Files",
        "COMPUTERNAME": computer,
        "ComSpec": rf"{SYSTEM32}\cmd.exe",
        "HOMEDRIVE": "C:",
        "HOMEPATH": rf"\Users\{user}",
        "LOCALAPPDATA": rf"{profile}\AppData\Local",
        "NUMBER_OF_PROCESSORS": str(os.cpu_count() or 1),
        "OS": "Windows_NT",
        "Path": rf"{SYSTEM32};C:\Windows;{SYSTEM32}\Wbem",
        "PATHEXT": ".COM;.EXE;.BAT;.CMD;.VBS;.VBE;.JS;.JSE;.WSF;.WSH;.MSC",
        "PROCESSOR_ARCHITECTURE": "AMD64",
        "ProgramData": r"C:\ProgramData",
        "ProgramFiles": r"C:\Program Files",
        "ProgramFiles(x86)": r"C:\Program Files (x86)",
        "PROMPT": "$P$G",
        "PUBLIC": r"C:\Users\Public",
        "SystemDrive": "C:",
        "SystemRoot": r"C:\Windows",
        "TEMP": r"C:\Windows\Temp",
        "TMP": r"C:\Windows\Temp",
        "USERDOMAIN": computer,
        "USERNAME": user,
        "USERPROFILE": profile,
        "windir": r"C:\Windows",
    }
    for name, value in defaults.items():
        if name not in env:
            env[name] = value
    return env


@dataclass
class Guest:
    """Where a program runs: the guest's ROOT on the host, its current directory (a
    Windows path), its environment, its standard streams and the record directory."""

    root: Path
    cwd: str
    env: Environment
    stdin: BinaryIO
    stdout: BinaryIO
    stderr: BinaryIO
    record: Path | None = None
    children: list[int] = field(default_factory=list)

    def absolute(self, path: str) -> str:
        """``path`` as an absolute, normalised Windows path (``C:\\a\\b``)."""
        path = path.replace("/", "\\")
        if path.startswith("\\\\"):
            raise GuestPathError(2, "The network path was not found.", path)
        drive, rest = ntpath.splitdrive(path)
        cwd_drive = ntpath.splitdrive(self.cwd)[0].upper()
        if not drive:
            joined = ntpath.join(cwd_drive + "\\", rest) if rest.startswith("\\") else ntpath.join(self.cwd, rest)
        elif not rest.startswith("\\"):
            base = self.cwd if drive.upper() == cwd_drive else drive + "\\"
            joined = ntpath.join(base, rest)
        else:
            joined = path
        drive, rest = ntpath.splitdrive(ntpath.normpath(joined))
        parts = [part for part in rest.split("\\") if part and part != ".."]
        # Windows drops trailing dots and spaces from names.
        parts = [part.rstrip(" .") or part for part in parts]
        return drive.upper() + "\\" + "\\".join(parts)

    def host(self, path: str) -> Path:
        """Where guest ``path`` lives on the host: an existing name found in any case,
        the given case for names that do not exist yet."""
        full = self.absolute(path)
        drive, rest = ntpath.splitdrive(full)
        place = self.root / drive[0]
        if not place.is_dir():
            raise GuestPathError(3, "The system cannot find the path specified.", path)
        for part in (p for p in rest.split("\\") if p):
            place = place / _existing_name(place, part)
        real_root = self.root.resolve()
        if not place.resolve().is_relative_to(real_root):
            raise GuestPathError(5, "Access is denied.", path)
        return place

    def guest_path(self, host: Path) -> str:
        """The Windows path of a host path under ROOT."""
        relative = host.relative_to(self.root)
        drive, *rest = relative.parts
        return f"{drive}:\\" + "\\".join(rest)

    def write(self, text: str, stream: BinaryIO | None = None) -> None:
        """Write ``text`` as Windows prints it (CRLF line ends) to stdout or ``stream``."""
        target = stream if stream is not None else self.stdout
        target.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "surrogateescape"))
        target.flush()

    def error(self, text: str) -> None:
        """Write ``text`` to stderr as Windows prints it."""
        self.write(text, self.stderr)


def _existing_name(directory: Path, name: str) -> str:
    """The existing entry of ``directory`` matching ``name`` case-insensitively, or
    ``name`` itself."""
    if (directory / name).exists() or (directory / name).is_symlink():
        return name
    try:
        entries = os.listdir(directory)
    except OSError:
        return name
    folded = name.casefold()
    return next((entry for entry in entries if entry.casefold() == folded), name)
