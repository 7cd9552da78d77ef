"""cmd.exe's built-in commands, as documented in the Windows command reference
(https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/):
``echo``, ``type``, ``copy``, ``move``, ``del``/``erase``, ``mkdir``/``md``,
``rmdir``/``rd``, ``cd``/``chdir``, ``set``, ``exit``, ``ver``, ``dir``, ``rem``.

Each takes the running :class:`~beachhead.bootstrap.lab.windows.cmd.Cmd` and the
text after its name (its first character is the delimiter that ended the name) and
returns its status.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from beachhead.bootstrap.lab.windows.guest import GuestPathError

if TYPE_CHECKING:
    from beachhead.bootstrap.lab.windows.cmd import Cmd

Builtin = Callable[["Cmd", str], int]
NOT_FOUND = "The system cannot find the file specified.\n"
PATH_NOT_FOUND = "The system cannot find the path specified.\n"
SYNTAX = "The syntax of the command is incorrect.\n"
NAME_END = ' \t,;=./\\(+[]:"'
# Built-ins that leave the errorlevel as it was when they succeed.
KEEP_ERRORLEVEL = {"echo", "rem", "cd", "chdir", "set", "ver"}


def find(text: str) -> tuple[str, str] | None:
    """The built-in ``text`` starts with (``echo.``, ``cd..`` and ``dir/b`` included) and
    the text after its name, or None."""
    end = next((index for index, char in enumerate(text) if char in NAME_END), len(text))
    name = text[:end].lower()
    return (name, text[end:]) if name in BUILTINS else None


def words(arguments: str) -> list[str]:
    """Arguments split at whitespace outside quotes, quotes removed."""
    out: list[str] = []
    current: list[str] = []
    quoted = started = False
    for char in arguments:
        if char == '"':
            quoted, started = not quoted, True
        elif char in " \t,;" and not quoted:
            if started:
                out.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        out.append("".join(current))
    return out


def options(arguments: str) -> tuple[set[str], list[str]]:
    """Switches (``/s/q`` is ``s`` and ``q``), lower case, and the other words."""
    flags: set[str] = set()
    operands: list[str] = []
    for word in words(arguments):
        if word.startswith("/"):
            flags |= {part.lower() for part in word.split("/") if part}
        else:
            operands.append(word)
    return flags, operands


def _ask(cmd: Cmd, question: str, answers: str) -> str:
    """Print ``question`` and read the answer's first letter from stdin ('' at its end)."""
    cmd.guest.write(question)
    reply = cmd.guest.stdin.readline().decode("utf-8", "replace").strip()[:1].lower()
    cmd.guest.write("\n")
    return reply if reply in answers else ""


def echo(cmd: Cmd, arguments: str) -> int:
    """ECHO: print the text after the delimiter; ``echo on|off`` sets echoing."""
    rest = arguments[1:]
    if not rest.strip() and arguments[:1] in ("", " ", "\t"):
        cmd.guest.write(f"ECHO is {'on' if cmd.echo else 'off'}.\n")
    elif rest.strip().lower() in ("on", "off") and arguments[:1] in (" ", "\t"):
        cmd.echo = rest.strip().lower() == "on"
    else:
        cmd.guest.write(rest + "\n")
    return 0


def rem(cmd: Cmd, arguments: str) -> int:
    """REM: nothing."""
    return 0


def ver(cmd: Cmd, arguments: str) -> int:
    """VER: the Windows version."""
    from beachhead.bootstrap.lab.windows.cmd import VERSION

    cmd.guest.write(f"\n{VERSION}\n")
    return 0


def type_(cmd: Cmd, arguments: str) -> int:
    """TYPE FILE...: the files' bytes, unchanged (several: each name on stderr first)."""
    names = words(arguments)
    if not names:
        cmd.guest.error(SYNTAX)
        return 1
    status = 0
    for name in names:
        try:
            path = cmd.guest.host(name)
            data = path.read_bytes()
        except GuestPathError as exc:
            cmd.guest.error(f"{exc.strerror}\n")
            status = 1
            continue
        except FileNotFoundError:
            cmd.guest.error(NOT_FOUND if path.parent.is_dir() else PATH_NOT_FOUND)
            status = 1
            continue
        except IsADirectoryError:
            cmd.guest.error("Access is denied.\n")
            status = 1
            continue
        if len(names) > 1:
            cmd.guest.error(f"\n{name}\n\n\n")
        cmd.guest.stdout.write(data)
        cmd.guest.stdout.flush()
    return status


def _target(cmd: Cmd, source: Path, destination: str) -> Path:
    target: Path = cmd.guest.host(destination)
    return target / source.name if target.is_dir() else target


def _transfer(cmd: Cmd, arguments: str, verb: str) -> int:
    flags, names = options(arguments)
    if len(names) == 1:
        names.append(".")
    if len(names) != 2:
        cmd.guest.error(SYNTAX)
        return 1
    counted = "copied" if verb == "copy" else "moved"
    try:
        source = cmd.guest.host(names[0])
        if not source.exists():
            cmd.guest.error(NOT_FOUND)
            cmd.guest.write(f"        0 file(s) {counted}.\n") if verb == "copy" else None
            return 1
        target = _target(cmd, source, names[1])
        if not target.parent.is_dir():
            raise GuestPathError(3, PATH_NOT_FOUND.strip())
        if target.exists() and target.resolve() != source.resolve() and "y" not in flags:
            shown = cmd.guest.guest_path(target)
            if _ask(cmd, f"Overwrite {shown}? (Yes/No/All): ", "ya") == "":
                cmd.guest.write(f"        0 file(s) {counted}.\n")
                return 0
        if verb == "copy":
            if source.is_dir():
                cmd.guest.error(NOT_FOUND)
                cmd.guest.write("        0 file(s) copied.\n")
                return 1
            shutil.copyfile(source, target)
        else:
            if target.is_dir() and source.is_file():
                cmd.guest.error("Access is denied.\n")
                return 1
            os.replace(source, target)
    except GuestPathError as exc:
        cmd.guest.error(f"{exc.strerror}\n")
        cmd.guest.write(f"        0 file(s) {counted}.\n") if verb == "copy" else None
        return 1
    except OSError:
        cmd.guest.error("Access is denied.\n")
        return 1
    cmd.guest.write(f"        1 {'dir(s)' if verb == 'move' and target.is_dir() else 'file(s)'} {counted}.\n")
    return 0


def copy(cmd: Cmd, arguments: str) -> int:
    """COPY [/Y] SOURCE [DESTINATION]: one file (``/Y``: overwrite without asking)."""
    return _transfer(cmd, arguments, "copy")


def move(cmd: Cmd, arguments: str) -> int:
    """MOVE [/Y] SOURCE DESTINATION: a file or directory (``/Y``: replace without asking)."""
    return _transfer(cmd, arguments, "move")


def delete(cmd: Cmd, arguments: str) -> int:
    """DEL [/F] [/Q] NAMES: delete files (wildcards, or all files of a directory)."""
    flags, names = options(arguments)
    if not names:
        cmd.guest.error(SYNTAX)
        return 1
    for name in names:
        try:
            path = cmd.guest.host(name)
            directory, pattern = (path, "*") if path.is_dir() else (path.parent, path.name)
            whole = pattern in ("*", "*.*")
            if whole and "q" not in flags:
                question = f"{cmd.guest.guest_path(directory)}\\*, Are you sure (Y/N)? "
                if _ask(cmd, question, "y") != "y":
                    continue
            matched = [
                entry for entry in (os.listdir(directory) if directory.is_dir() else [])
                if fnmatch.fnmatch(entry.casefold(), pattern.casefold()) and (directory / entry).is_file()
            ]  # fmt: skip
            if not matched:
                cmd.guest.error(f"Could Not Find {cmd.guest.guest_path(directory / pattern)}\n")
            for entry in matched:
                (directory / entry).unlink()
        except GuestPathError as exc:
            cmd.guest.error(f"{exc.strerror}\n")
        except OSError:
            cmd.guest.error(f"{cmd.guest.absolute(name)}\nAccess is denied.\n")
    return 0


def mkdir(cmd: Cmd, arguments: str) -> int:
    """MKDIR / MD PATH...: create directories, and their parents."""
    names = words(arguments)
    if not names:
        cmd.guest.error(SYNTAX)
        return 1
    status = 0
    for name in names:
        try:
            path = cmd.guest.host(name)
            if path.exists():
                cmd.guest.error(f"A subdirectory or file {name} already exists.\n")
                status = 1
                continue
            path.mkdir(parents=True)
        except GuestPathError as exc:
            cmd.guest.error(f"{exc.strerror}\n")
            status = 1
        except OSError:
            cmd.guest.error("Access is denied.\n")
            status = 1
    return status


def rmdir(cmd: Cmd, arguments: str) -> int:
    """RMDIR / RD [/S] [/Q] PATH...: remove directories (``/S``: with what they hold)."""
    flags, names = options(arguments)
    if not names:
        cmd.guest.error(SYNTAX)
        return 1
    status = 0
    for name in names:
        try:
            path = cmd.guest.host(name)
            if not path.exists():
                cmd.guest.error(NOT_FOUND)
                status = 2
            elif not path.is_dir():
                cmd.guest.error("The directory name is invalid.\n")
                status = 267
            elif "s" in flags:
                if "q" not in flags and _ask(cmd, f"{name}, Are you sure (Y/N)? ", "y") != "y":
                    continue
                shutil.rmtree(path)
            elif any(path.iterdir()):
                cmd.guest.error("The directory is not empty.\n")
                status = 145
            else:
                path.rmdir()
        except GuestPathError as exc:
            cmd.guest.error(f"{exc.strerror}\n")
            status = 1
        except OSError:
            cmd.guest.error("Access is denied.\n")
            status = 5
    return status


def cd(cmd: Cmd, arguments: str) -> int:
    """CD / CHDIR [/D] [PATH]: show or change the current directory."""
    text = arguments.strip()
    if text.lower().startswith("/d"):
        text = text[2:].strip()
    text = text.replace('"', "")
    if not text:
        cmd.guest.write(cmd.guest.cwd + "\n")
        return 0
    try:
        path = cmd.guest.host(text)
        if not path.is_dir():
            raise GuestPathError(3, PATH_NOT_FOUND.strip())
    except GuestPathError as exc:
        cmd.guest.error(f"{exc.strerror}\n" if exc.errno != 3 else PATH_NOT_FOUND)
        return 1
    cmd.guest.cwd = cmd.guest.guest_path(path)
    return 0


def set_(cmd: Cmd, arguments: str) -> int:
    """SET [NAME[=VALUE]]: list variables (all, or those whose names begin with NAME),
    or set one (``set NAME=`` removes it); ``set "NAME=VALUE"`` keeps text after the
    closing quote out."""
    text = arguments[1:] if arguments[:1] in (" ", "\t") else arguments
    text = text.lstrip(" \t")
    if text.startswith('"'):
        last = text.rfind('"')
        text = text[1:last] if last > 0 else text[1:]
    if text.lower().startswith(("/a", "/p")):
        cmd.guest.error(SYNTAX)
        return 1
    name, sep, value = text.partition("=")
    if not sep:
        prefix = name.strip().upper()
        shown = [(n, v) for n, v in cmd.guest.env.items() if n.upper().startswith(prefix)]
        if not shown:
            cmd.guest.error(f"Environment variable {name.strip()} not defined\n")
            return 1
        cmd.guest.write("".join(f"{n}={v}\n" for n, v in shown))
        return 0
    if not name:
        cmd.guest.error(SYNTAX)
        return 1
    if value:
        cmd.guest.env[name] = value
    else:
        del cmd.guest.env[name]
    return 0


def exit_(cmd: Cmd, arguments: str) -> int:
    """EXIT [/B] [CODE]: end cmd.exe with CODE (the errorlevel when none is given);
    ``/B`` in a batch file ends the batch file alone."""
    from beachhead.bootstrap.lab.windows.cmd import Exit, ExitBatch

    said = words(arguments)
    given = [word for word in said if word.lower() != "/b"]
    try:
        status = int(given[0]) if given else cmd.errorlevel
    except ValueError:
        status = 0
    if cmd.batch_depth and len(given) < len(said):
        raise ExitBatch(status)
    raise Exit(status)


def dir_(cmd: Cmd, arguments: str) -> int:
    """DIR [/B] [PATH]: the names in a directory (or matching a wildcard), in
    case-insensitive name order; ``/B`` bare, otherwise a short listing."""
    flags, names = options(arguments)
    try:
        path = cmd.guest.host(names[0] if names else ".")
        directory, pattern = (path, "*") if path.is_dir() else (path.parent, path.name)
        entries = sorted(
            (e for e in os.listdir(directory) if fnmatch.fnmatch(e.casefold(), pattern.casefold())),
            key=str.casefold,
        ) if directory.is_dir() else []  # fmt: skip
    except GuestPathError as exc:
        cmd.guest.error(f"{exc.strerror}\n")
        return 1
    if not entries:
        cmd.guest.error("File Not Found\n")
        return 1
    if "b" in flags:
        cmd.guest.write("".join(f"{entry}\n" for entry in entries))
        return 0
    lines = [f" Directory of {cmd.guest.guest_path(directory)}", ""]
    files = total = 0
    for entry in entries:
        full = directory / entry
        if full.is_dir():
            lines.append(f"{'<DIR>':>20}          {entry}")
        else:
            size = full.stat().st_size
            files, total = files + 1, total + size
            lines.append(f"{size:>29,} {entry}")
    lines.append(f"{files:>16} File(s) {total:>14,} bytes")
    cmd.guest.write("\n" + "\n".join(lines) + "\n")
    return 0


BUILTINS: dict[str, Builtin] = {
    "echo": echo, "rem": rem, "ver": ver, "type": type_, "copy": copy, "move": move,
    "del": delete, "erase": delete, "mkdir": mkdir, "md": mkdir, "rmdir": rmdir, "rd": rmdir,
    "cd": cd, "chdir": cd, "set": set_, "exit": exit_, "dir": dir_,
}  # fmt: skip
