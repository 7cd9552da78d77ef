"""The Windows programs the stand-in has, how they are found, and the small ones.

Every program is a function ``main(guest, command_line) -> exit status``, found by
its file name in ``C:\\Windows\\System32`` (where they all live on Windows). External
programs run as processes of their own, started by :func:`spawn` as Windows'
``CreateProcess`` would start them, so each has its own pid.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import ntpath
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO

from beachhead.bootstrap.lab.windows.cmdline import argv, program_token
from beachhead.bootstrap.lab.windows.guest import SYSTEM32, Guest

Main = Callable[[Guest, str], int]

# File name -> "module:function", imported when the program runs.
PROGRAMS = {
    "cmd.exe": "cmd:main",
    "certutil.exe": "certutil:main",
    "findstr.exe": "findstr:main",
    "hostname.exe": "programs:hostname",
    "taskkill.exe": "programs:taskkill",
    "timeout.exe": "programs:timeout",
    "whoami.exe": "programs:whoami",
}
# Programs a Windows host may lack, and this one does: what is asked of them is recorded.
MISSING_RECORDED = {"powershell.exe": "programs:record_powershell"}
POWERSHELL_RECORD = "powershell.jsonl"
NOT_FOUND = "The system cannot find the file specified.\r\n"


def lookup(name: str, extensions: tuple[str, ...] = (".exe",)) -> str | None:
    """The program file ``name`` names (``cmd``, ``CMD.EXE``, ``C:\\Windows\\System32\\cmd.exe``),
    trying ``extensions`` when it has none of its own, or None when the guest has no
    such program (as for anything outside System32)."""
    name = name.replace("/", "\\")
    directory, base = ntpath.split(name)
    if directory and directory.rstrip("\\").casefold() not in {SYSTEM32.casefold(), r"\windows\system32"}:
        return None
    candidates = [base] if ntpath.splitext(base)[1] else [base + ext for ext in extensions]
    for candidate in candidates:
        if candidate.casefold() in PROGRAMS:
            return candidate.casefold()
    return None


def recorded_missing(name: str, extensions: tuple[str, ...] = (".exe",)) -> str | None:
    """Like :func:`lookup`, for the missing programs whose requests are recorded."""
    base = ntpath.basename(name.replace("/", "\\"))
    candidates = [base] if ntpath.splitext(base)[1] else [base + ext for ext in extensions]
    return next((c.casefold() for c in candidates if c.casefold() in MISSING_RECORDED), None)


def load(reference: str) -> Main:
    """The ``main`` function a registry entry names."""
    module, _, function = reference.partition(":")
    loaded: Main = getattr(importlib.import_module(f"beachhead.bootstrap.lab.windows.{module}"), function)
    return loaded


class Child:
    """A program started by :func:`spawn`; :meth:`wait` gives its whole exit status
    (Windows' are 32 bits, a Linux process's 8: the child writes it to a status file)."""

    def __init__(self, process: subprocess.Popen[bytes], status_file: str) -> None:
        self.process = process
        self.pid = process.pid
        self._status_file = status_file

    def wait(self) -> int:
        """Wait for the program to end; its exit status (1 if it was killed, as after
        ``taskkill /F``)."""
        returncode = self.process.wait()
        try:
            with open(self._status_file) as stream:
                return int(stream.read().strip())
        except (OSError, ValueError):
            return 1 if returncode < 0 else returncode
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self._status_file)


def spawn(
    guest: Guest, command_line: str, stdin: BinaryIO | int, stdout: BinaryIO | int, stderr: BinaryIO | int
) -> Child:
    """Start ``command_line`` as a process of its own (the stand-in's runner), with the
    guest's current directory and environment and the given streams."""
    record = ["--record", str(guest.record)] if guest.record is not None else []
    for stream in (stdout, stderr):
        if not isinstance(stream, int):
            stream.flush()
    descriptor, status_file = tempfile.mkstemp(prefix="beachhead-windows-", suffix=".status")
    os.close(descriptor)
    command = [
        sys.executable, "-m", "beachhead.bootstrap.lab.windows.run", "--root", str(guest.root),
        "--cwd", guest.cwd, "--status-file", status_file, *record, "--", command_line,
    ]  # fmt: skip
    env = dict(guest.env.items())
    return Child(subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, env=env), status_file)


# -- the small programs -------------------------------------------------------------------
def hostname(guest: Guest, command_line: str) -> int:
    """hostname.exe: the computer's host name."""
    guest.write(socket.gethostname() + "\n")
    return 0


def whoami(guest: Guest, command_line: str) -> int:
    """whoami.exe: ``computer\\user`` in lower case."""
    computer = guest.env.get("COMPUTERNAME") or socket.gethostname()
    guest.write(f"{computer}\\{guest.env.get('USERNAME') or ''}".lower() + "\n")
    return 0


def timeout(guest: Guest, command_line: str) -> int:
    """timeout.exe ``/t N [/nobreak]``: wait N seconds (-1: for ever)."""
    args = [arg.lower() for arg in argv(command_line)[1:]]
    seconds: int | None = None
    valid, index = True, 0
    while index < len(args):
        if args[index] in {"/t", "-t"} and index + 1 < len(args):
            seconds, index = _int(args[index + 1]), index + 2
            continue
        if args[index] not in {"/nobreak", "-nobreak"}:
            valid = valid and seconds is None
            seconds = _int(args[index])
        index += 1
    if not valid or seconds is None or seconds < -1 or seconds > 99999:
        guest.error("ERROR: Invalid syntax. Default option is not allowed more than '1' time(s).\n")
        guest.error('Type "TIMEOUT /?" for usage.\n')
        return 1
    nobreak = "/nobreak" in args or "-nobreak" in args
    guest.write(f"\nWaiting for {seconds} seconds, press {'CTRL+C to quit' if nobreak else 'a key to continue'} ...")
    deadline = time.monotonic() + seconds if seconds >= 0 else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
    guest.write("\n")
    return 0


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def taskkill(guest: Guest, command_line: str) -> int:
    """taskkill.exe ``/PID n [/PID m...] [/T] [/F]``: end processes (and with /T their
    descendants); without /F a termination request (SIGTERM), with /F at once."""
    args = argv(command_line)[1:]
    pids: list[int] = []
    tree = force = False
    index = 0
    while index < len(args):
        option = args[index].lower().replace("-", "/", 1)
        if option == "/pid" and index + 1 < len(args) and args[index + 1].isdigit():
            pids.append(int(args[index + 1]))
            index += 1
        elif option == "/t":
            tree = True
        elif option == "/f":
            force = True
        elif option == "/im":
            guest.error("ERROR: The stand-in's taskkill takes /PID only.\n")
            return 1
        else:
            guest.error(f"ERROR: Invalid argument/option - '{args[index]}'.\n")
            guest.error('Type "TASKKILL /?" for usage.\n')
            return 1
        index += 1
    if not pids:
        guest.error("ERROR: Invalid syntax. Neither /FI nor /PID nor /IM were specified.\n")
        guest.error('Type "TASKKILL /?" for usage.\n')
        return 1
    table = _process_table()
    status = 0
    for pid in pids:
        if pid not in table:
            guest.error(f'ERROR: The process "{pid}" not found.\n')
            status = 128
            continue
        victims = [*_descendants(pid, table), pid] if tree else [pid]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL if force else signal.SIGTERM)
            except ProcessLookupError:
                continue
            if force and tree:
                parent = f"child process of PID {table[victim]}"
                guest.write(f"SUCCESS: The process with PID {victim} ({parent}) has been terminated.\n")
            elif force:
                guest.write(f"SUCCESS: The process with PID {victim} has been terminated.\n")
            else:
                guest.write(f"SUCCESS: Sent termination signal to the process with PID {victim}.\n")
    return status


def _process_table() -> dict[int, int]:
    """pid -> parent pid of the processes in this guest (those sharing its mount
    namespace, as the guest's process list has them)."""
    own = os.readlink("/proc/self/ns/mnt")
    table: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") != own:
                continue
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry)] = int(fields[1])
    return table


def _descendants(pid: int, table: dict[int, int]) -> list[int]:
    """Every descendant of ``pid``, deepest first (ended before their parents)."""
    found: list[int] = []
    for child in (p for p, parent in table.items() if parent == pid and p != pid):
        found += [*_descendants(child, table), child]
    return found


# -- powershell.exe: not installed; what was asked of it is recorded ---------------------------
POWERSHELL_PARAMETERS = {
    # name -> takes a value; PowerShell accepts any unambiguous prefix of a name
    "command": True, "encodedcommand": True, "file": True, "executionpolicy": True,
    "inputformat": True, "outputformat": True, "windowstyle": True, "version": True,
    "configurationname": True, "workingdirectory": True, "settingsfile": True,
    "noprofile": False, "noninteractive": False, "nologo": False, "noexit": False,
    "sta": False, "mta": False, "help": False,
}  # fmt: skip
POWERSHELL_ALIASES = {
    "c": "command",
    "e": "encodedcommand",
    "ec": "encodedcommand",
    "enc": "encodedcommand",
    "f": "file",
}


def parse_powershell(args: list[str]) -> dict[str, object]:
    """powershell.exe's parameters as Windows PowerShell 5.1 reads them: ``-Command``
    takes the rest of the line, ``-File`` a path and then the script's arguments,
    ``-EncodedCommand`` base64 of UTF-16LE."""
    import base64
    import binascii

    parsed: dict[str, object] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith(("-", "/")):
            parsed["command"] = " ".join(args[index:])
            break
        key = arg[1:].lower()
        name = POWERSHELL_ALIASES.get(key) or next(
            (full for full in POWERSHELL_PARAMETERS if full.startswith(key) and key), key
        )
        if name == "command":
            parsed["command"] = " ".join(args[index + 1 :])
            break
        if name == "file":
            parsed["file"] = args[index + 1] if index + 1 < len(args) else ""
            parsed["file_arguments"] = args[index + 2 :]
            break
        if POWERSHELL_PARAMETERS.get(name) and index + 1 < len(args):
            parsed[name] = args[index + 1]
            index += 2
            continue
        parsed[name] = True
        index += 1
    encoded = parsed.get("encodedcommand")
    if isinstance(encoded, str):
        try:
            parsed["script"] = base64.b64decode(encoded, validate=False).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError) as exc:
            parsed["script_error"] = str(exc)
    elif isinstance(parsed.get("command"), str):
        parsed["script"] = parsed["command"]
    return parsed


def record_powershell(guest: Guest, command_line: str) -> None:
    """Append what was asked of powershell.exe to ``RECORD/powershell.jsonl`` (the
    script and, for ``-Command -`` or ``-File -``, its standard input)."""
    args = argv(command_line)
    parsed = parse_powershell(args[1:])
    entry: dict[str, object] = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "program": program_token(command_line)[0],
        "argv": args,
        "cwd": guest.cwd,
        "parameters": {key: value for key, value in parsed.items() if key != "script"},
        "script": parsed.get("script"),
    }
    if parsed.get("command") == "-" or parsed.get("file") == "-":
        entry["stdin"] = guest.stdin.read().decode("utf-8", "replace")
    if guest.record is None:
        return
    guest.record.mkdir(parents=True, exist_ok=True)
    path = guest.record / POWERSHELL_RECORD
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(entry) + "\n")
