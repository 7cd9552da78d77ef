"""cmd.exe: the command processor
(https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/cmd).

A line is read as cmd.exe reads it: ``%VAR%`` expanded first, over the whole line
(so a ``set`` does not change what the same line already expanded); then ``^``
escapes and ``"`` quoting, the operators ``&``, ``&&``, ``||``, ``|`` and ``( )``,
and the redirections ``<``, ``>``, ``>>``, ``N>``, ``N>&M``. Built-ins
(:mod:`~beachhead.bootstrap.lab.windows.builtins`) run in this process; other programs
as processes of their own; each side of a pipe runs in a process of its own too, a
built-in through a child ``cmd.exe /S /D /c" …"`` as Windows does.

A batch file (``.cmd``, ``.bat``) named as a command runs in this process, line by line:
each line expanded when it is reached (so a ``set`` is seen by the lines after it),
``%%`` a percent sign, ``%0``-``%9`` and ``%*`` its arguments, an undefined variable
nothing; echoed (a blank line, the prompt and the line) while echo is on unless it
starts with ``@``; lines starting with ``:`` (labels, ``::`` comments) skipped;
``exit /b N`` ends the batch file alone. A batch file named in a batch file without
``call`` ends the one that named it when it ends, as in cmd.exe.
"""

from __future__ import annotations

import datetime
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from beachhead.bootstrap.lab.windows import programs
from beachhead.bootstrap.lab.windows.cmdline import program_token
from beachhead.bootstrap.lab.windows.guest import Guest, GuestPathError

SPECIAL_IN_QUOTES = set("&<>()@^|")
NOT_RECOGNIZED = "'{}' is not recognized as an internal or external command,\noperable program or batch file.\n"
VERSION = "Microsoft Windows [Version 10.0.17763.1]"
DELIMITERS = " \t,;="
BATCH_EXTENSIONS = (".cmd", ".bat")
BUILTIN_END = './\\(+[]:"'


class CmdSyntaxError(Exception):
    """A line cmd.exe refuses to parse; the message is what it prints."""


@dataclass
class Redirect:
    """``N>file``, ``N>>file``, ``N<file`` or ``N>&M``."""

    handle: int
    op: str
    target: str
    dup: bool = False

    def render(self) -> str:
        """The redirection as it would be typed."""
        target = ("&" + self.target) if self.dup else f'"{self.target}"' if " " in self.target else self.target
        return f"{self.handle}{self.op}{target}"


@dataclass
class Simple:
    """One command: its text (escapes removed, quotes kept) and its redirections."""

    text: str
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class Group:
    """``( … )`` with its own redirections."""

    body: list[list[list[list[Simple | Group]]]]
    redirects: list[Redirect] = field(default_factory=list)


# A line: commands joined by ``&``, of ``||`` chains, of ``&&`` chains, of pipelines.
Pipeline = list[Simple | Group]
Line = list[list[list[Pipeline]]]


class Parser:
    """cmd.exe's second phase: escapes, quotes, operators, redirections."""

    def __init__(self, line: str) -> None:
        self.text = line
        self.at = 0

    def _peek(self, ahead: int = 0) -> str:
        index = self.at + ahead
        return self.text[index] if index < len(self.text) else ""

    def _skip_space(self) -> None:
        while self._peek() in (" ", "\t") and self._peek():
            self.at += 1

    def line(self, depth: int = 0) -> Line:
        """A whole line, or a group's body at ``depth`` > 0."""
        flat: list[tuple[str, Pipeline]] = [("&", self._pipeline(depth))]
        while True:
            self._skip_space()
            char = self._peek()
            if not char or (char == ")" and depth):
                break
            if self.text.startswith(("&&", "||"), self.at):
                op = self.text[self.at : self.at + 2]
                self.at += 2
            elif char == "&":
                op = "&"
                self.at += 1
            else:
                raise CmdSyntaxError(f"{char} was unexpected at this time.")
            self._skip_space()
            if not self._peek() or (self._peek() == ")" and depth):
                if op == "&":
                    break
                raise CmdSyntaxError(f"{op[0]} was unexpected at this time.")
            flat.append((op, self._pipeline(depth)))
        line: Line = []
        for op, pipeline in flat:
            if op == "&":
                line.append([[pipeline]])
            elif op == "||":
                line[-1].append([pipeline])
            else:
                line[-1][-1].append(pipeline)
        return line

    def _pipeline(self, depth: int) -> Pipeline:
        commands: Pipeline = [self._command(depth)]
        while self._peek() == "|" and self._peek(1) != "|":
            self.at += 1
            self._skip_space()
            if not self._peek() or self._peek() in "&|":
                raise CmdSyntaxError("| was unexpected at this time.")
            commands.append(self._command(depth))
        return commands

    def _command(self, depth: int) -> Simple | Group:
        self._skip_space()
        while self._peek() == "@":
            self.at += 1
        if self._peek() == "(":
            self.at += 1
            body = self.line(depth + 1)
            self._skip_space()
            if self._peek() != ")":
                raise CmdSyntaxError("The syntax of the command is incorrect.")
            self.at += 1
            group = Group(body)
            while True:
                self._skip_space()
                if self._peek() in ("<", ">") and self._peek():
                    group.redirects.append(self._redirect(None, depth))
                elif self._peek().isdigit() and self._peek(1) in ("<", ">") and self._peek(1):
                    number = int(self._peek())
                    self.at += 1
                    group.redirects.append(self._redirect(number, depth))
                else:
                    return group
        text: list[str] = []
        redirects: list[Redirect] = []
        quoted = False
        while self.at < len(self.text):
            char = self.text[self.at]
            if quoted or char == '"':
                quoted = quoted != (char == '"')
                text.append(char)
                self.at += 1
            elif char == "^":
                text.append(self._peek(1))
                self.at += 2
            elif char in "&|" or (char == ")" and depth):
                break
            elif char in "<>":
                handle: int | None = None
                if text and text[-1].isdigit() and (len(text) == 1 or text[-2] in " \t"):
                    handle = int(text.pop())
                redirects.append(self._redirect(handle, depth))
            else:
                text.append(char)
                self.at += 1
        return Simple("".join(text), redirects)

    def _redirect(self, handle: int | None, depth: int) -> Redirect:
        op = (">>" if self._peek(1) == ">" else ">") if self._peek() == ">" else "<"
        self.at += len(op)
        number = handle if handle is not None else (0 if op == "<" else 1)
        if self._peek() == "&" and self._peek(1).isdigit() and self._peek(1):
            target = self._peek(1)
            self.at += 2
            return Redirect(number, op, target, dup=True)
        self._skip_space()
        name: list[str] = []
        quoted = False
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == '"':
                quoted = not quoted
            elif quoted:
                name.append(char)
            elif char == "^":
                name.append(self._peek(1))
                self.at += 1
            elif char in " \t&|<>" or (char == ")" and depth):
                break
            else:
                name.append(char)
            self.at += 1
        if not name:
            raise CmdSyntaxError("The syntax of the command is incorrect.")
        return Redirect(number, op, "".join(name))


def render(command: Simple | Group) -> str:
    """A parsed command written back as a line (for the child cmd.exe of a pipe)."""
    text = command.text if isinstance(command, Simple) else "(" + render_line(command.body) + ")"
    return " ".join([text, *(r.render() for r in command.redirects)])


def render_line(line: Line) -> str:
    """A parsed line written back."""
    return " & ".join(
        " || ".join(" && ".join(" | ".join(render(c) for c in pipeline) for pipeline in ands) for ands in ors)
        for ors in line
    )


class Exit(Exception):
    """``exit``: cmd.exe ends with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ExitBatch(Exception):
    """``exit /b`` in a batch file: the batch file ends with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


Streams = tuple[BinaryIO, BinaryIO, BinaryIO]


class Cmd:
    """One cmd.exe process: its guest (current directory, environment), its
    errorlevel and echo state."""

    def __init__(self, guest: Guest, command_line: str) -> None:
        self.guest = guest
        self.command_line = command_line
        self.errorlevel = 0
        self.echo = True
        self.batch_depth = 0  # batch files running, innermost last
        self._chained = False  # a batch file named one without call: it ends after it

    # -- phase 1 ---------------------------------------------------------------------------
    def expand(self, line: str, batch: list[str] | None = None) -> str:
        """``%NAME%`` (and ``%NAME:~start,length%``, ``%NAME:old=new%``) replaced by
        its value. On the command line an undefined one is left as it is; in a batch
        file (``batch``: its name and arguments) it is removed, ``%%`` is ``%``, and
        ``%0``-``%9`` and ``%*`` are the arguments."""
        out: list[str] = []
        index = 0
        while index < len(line):
            start = line.find("%", index)
            if start < 0:
                out.append(line[index:])
                break
            out.append(line[index:start])
            after = line[start + 1 : start + 2]
            if batch is not None and after == "%":
                out.append("%")
                index = start + 2
                continue
            if batch is not None and (after.isdigit() or after == "*"):
                out.append(" ".join(batch[1:]) if after == "*" else _argument(batch, int(after)))
                index = start + 2
                continue
            end = line.find("%", start + 1)
            if end < 0:
                out.append("" if batch is not None else line[start:])
                break
            value = self._variable(line[start + 1 : end])
            if value is not None:
                out.append(value)
                index = end + 1
            elif batch is not None:
                index = end + 1
            else:
                out.append(line[start:end])
                index = end
        return "".join(out)

    def _variable(self, spec: str) -> str | None:
        name, _, edit = spec.partition(":")
        if not name:
            return None
        value = self.guest.env.get(name)
        if value is None:
            value = self._dynamic(name.upper())
        if value is None or not edit:
            return value
        if edit.startswith("~"):
            numbers = [int(n) if re.fullmatch(r"-?\d+", n) else 0 for n in edit[1:].split(",", 1)]
            start = numbers[0]
            picked = value[start:] if start >= 0 else value[len(value) + start :]
            if len(numbers) > 1:
                picked = picked[: numbers[1]]
            return picked
        old, sep, new = edit.partition("=")
        if not sep or not old:
            return value
        return re.sub(re.escape(old.lstrip("*")), lambda _: new, value, flags=re.IGNORECASE)

    def _dynamic(self, name: str) -> str | None:
        now = datetime.datetime.now()
        return {
            "CD": self.guest.cwd,
            "ERRORLEVEL": str(self.errorlevel),
            "DATE": now.strftime("%a %m/%d/%Y"),
            "TIME": now.strftime("%H:%M:%S.") + f"{now.microsecond // 10000:02d}",
            "RANDOM": str(random.randint(0, 32767)),
            "CMDCMDLINE": self.command_line,
            "CMDEXTVERSION": "2",
        }.get(name)

    # -- running -----------------------------------------------------------------------------
    def run_line(self, line: str) -> None:
        """Expand, parse and run one line; :class:`Exit` ends the process."""
        self._run_expanded(self.expand(line))

    def _run_expanded(self, line: str) -> None:
        try:
            parsed = Parser(line).line()
        except CmdSyntaxError as exc:
            self.guest.error(f"{exc}\n")
            self.errorlevel = 255
            return
        streams = (self.guest.stdin, self.guest.stdout, self.guest.stderr)
        self._line(parsed, streams)

    def run_batch(self, path: Path, name: str, arguments: str) -> int:
        """Run a batch file (see the module's description); its errorlevel at the end."""
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        batch = [name, *_batch_arguments(arguments)]
        self.batch_depth += 1
        try:
            for raw in text.splitlines():
                line = raw.lstrip(" \t")
                if not line or line.startswith(":"):
                    continue
                quiet = line.startswith("@")
                expanded = self.expand(line[1:] if quiet else line, batch)
                if self.echo and not quiet and expanded.strip():
                    self.guest.write(f"\n{self.guest.cwd}>{expanded}\n")
                self._run_expanded(expanded)
                if self._chained:
                    break
        except ExitBatch as done:
            self.errorlevel = done.status
        finally:
            self.batch_depth -= 1
        # Named in a batch file without call: the batch file that named it ends too.
        self._chained = self.batch_depth > 0
        return self.errorlevel

    def _batch_file(self, text: str) -> tuple[Path, str, str] | None:
        """The batch file a command names (an existing ``.cmd`` or ``.bat``), its name
        and arguments; None when it names none."""
        name, arguments = program_token(text)
        if not name.lower().endswith(BATCH_EXTENSIONS):
            return None
        try:
            path = self.guest.host(name)
        except GuestPathError:
            return None
        return (path, name, arguments) if path.is_file() else None

    def _line(self, line: Line, streams: Streams) -> int:
        status = 0
        for ors in line:
            for ands in ors:
                for pipeline in ands:
                    status = self._pipeline(pipeline, streams)
                    if status != 0:
                        break
                if status == 0:
                    break
        return status

    def _pipeline(self, pipeline: Pipeline, streams: Streams) -> int:
        if len(pipeline) == 1:
            return self._command(pipeline[0], streams)
        stdin, stdout, stderr = streams
        children = []
        source: BinaryIO | int = stdin
        for index, command in enumerate(pipeline):
            last = index == len(pipeline) - 1
            read_end, write_end = (None, None) if last else os.pipe()
            sink: BinaryIO | int = stdout if write_end is None else write_end
            external = isinstance(command, Simple) and self._external(command.text) is not None
            if isinstance(command, Simple) and external and not command.redirects:
                line = command.text.strip(DELIMITERS)
            else:
                line = f'{self.guest.env.get("ComSpec") or "cmd.exe"} /S /D /c" {render(command)}"'
            children.append(programs.spawn(self.guest, line, source, sink, stderr))
            for end in (source, write_end):
                if isinstance(end, int):
                    os.close(end)
            source = read_end if read_end is not None else stdin
        statuses = [child.wait() for child in children]
        self.errorlevel = statuses[-1]
        return statuses[-1]

    def _command(self, command: Simple | Group, streams: Streams) -> int:
        try:
            with self._redirected(command.redirects, streams) as redirected:
                if isinstance(command, Group):
                    return self._line(command.body, redirected)
                return self._simple(command.text, redirected)
        except GuestPathError as exc:
            self.guest.error(f"{exc.strerror}\n")
        except FileNotFoundError:
            self.guest.error("The system cannot find the file specified.\n")
        except (IsADirectoryError, PermissionError):
            self.guest.error("Access is denied.\n")
        self.errorlevel = 1
        return 1

    @contextmanager
    def _redirected(self, redirects: list[Redirect], streams: Streams) -> Iterator[Streams]:
        handles: dict[int, BinaryIO] = dict(enumerate(streams))
        opened: list[BinaryIO] = []
        try:
            for redirect in redirects:
                if redirect.dup:
                    if int(redirect.target) not in handles:
                        raise GuestPathError(
                            6, f"The handle could not be duplicated\nduring redirection of handle {redirect.handle}."
                        )
                    handles[redirect.handle] = handles[int(redirect.target)]
                    continue
                if re.fullmatch(r"nul(\..*)?", redirect.target, re.IGNORECASE):
                    path = os.devnull
                else:
                    host = self.guest.host(redirect.target)
                    if redirect.op != "<" and not host.parent.is_dir():
                        raise GuestPathError(3, "The system cannot find the path specified.")
                    path = str(host)
                stream = cast(BinaryIO, open(path, {"<": "rb", ">": "wb", ">>": "ab"}[redirect.op]))  # noqa: SIM115
                opened.append(stream)
                handles[redirect.handle] = stream
            yield handles[0], handles[1], handles[2]
        finally:
            for stream in opened:
                stream.close()

    def _external(self, text: str) -> str | None:
        name = program_token(text.lstrip(DELIMITERS))[0]
        extensions = tuple(ext.lower() for ext in (self.guest.env.get("PATHEXT") or ".EXE").split(";") if ext)
        return programs.lookup(name, extensions)

    def _simple(self, text: str, streams: Streams) -> int:
        from beachhead.bootstrap.lab.windows import builtins

        text = text.lstrip(DELIMITERS)
        if not text.strip():
            return self.errorlevel
        found = builtins.find(text)
        if found is not None:
            name, arguments = found
            saved = self.guest.stdin, self.guest.stdout, self.guest.stderr
            self.guest.stdin, self.guest.stdout, self.guest.stderr = streams
            try:
                status = builtins.BUILTINS[name](self, arguments)
            finally:
                self.guest.stdin, self.guest.stdout, self.guest.stderr = saved
            if status != 0 or name not in builtins.KEEP_ERRORLEVEL:
                self.errorlevel = status
            return status
        batch = self._batch_file(text)
        if batch is not None:
            saved = self.guest.stdin, self.guest.stdout, self.guest.stderr
            self.guest.stdin, self.guest.stdout, self.guest.stderr = streams
            try:
                return self.run_batch(*batch)
            finally:
                self.guest.stdin, self.guest.stdout, self.guest.stderr = saved
        if self._external(text) is None:
            name = program_token(text)[0]
            extensions = tuple((self.guest.env.get("PATHEXT") or ".EXE").lower().split(";"))
            if programs.recorded_missing(name, extensions):
                saved_stdin = self.guest.stdin
                self.guest.stdin = streams[0]
                try:
                    programs.load(programs.MISSING_RECORDED[programs.recorded_missing(name, extensions) or ""])(
                        self.guest, text
                    )
                finally:
                    self.guest.stdin = saved_stdin
            self.guest.write(NOT_RECOGNIZED.format(name), streams[2])
            self.errorlevel = 9009
            return 9009
        child = programs.spawn(self.guest, text.rstrip(" \t"), *streams)
        self.errorlevel = child.wait()
        return self.errorlevel


def _argument(batch: list[str], index: int) -> str:
    return batch[index] if index < len(batch) else ""


def _batch_arguments(arguments: str) -> list[str]:
    """A batch file's arguments as ``%1``… see them: split at delimiters outside quotes,
    quotes kept."""
    found: list[str] = []
    current, quoted = "", False
    for char in arguments:
        if char == '"':
            quoted = not quoted
        if not quoted and char in DELIMITERS:
            if current:
                found.append(current)
            current = ""
            continue
        current += char
    if current:
        found.append(current)
    return found


def parse_switches(arguments: str) -> tuple[str | None, bool]:
    """The command after cmd.exe's ``/C`` or ``/K`` (None for neither) and whether
    ``/S`` was given; other switches are accepted and ignored."""
    index, strip = 0, False
    while index < len(arguments):
        if arguments[index] in " \t":
            index += 1
            continue
        if arguments[index] != "/":
            return None, strip
        letter = arguments[index + 1 : index + 2].lower()
        if letter in ("c", "k"):
            return arguments[index + 2 :], strip
        strip = strip or letter == "s"
        index += 1
        while index < len(arguments) and arguments[index] not in " \t/":
            index += 1
    return None, strip


def unquote(command: str, strip: bool, extensions: tuple[str, ...]) -> str:
    """cmd.exe's rule for quotes after /C or /K (``cmd /?``): kept when there is no
    /S, exactly two quotes, no special character and some whitespace between them,
    and they enclose the name of a program; otherwise a leading quote is removed with
    the last one on the line."""
    body = command.lstrip(" \t")
    quotes = [index for index, char in enumerate(body) if char == '"']
    if not strip and len(quotes) == 2:
        inner = body[quotes[0] + 1 : quotes[1]]
        if (
            not SPECIAL_IN_QUOTES & set(inner)
            and any(char in " \t" for char in inner)
            and programs.lookup(inner, extensions) is not None
        ):
            return body
    if body.startswith('"'):
        last = body.rfind('"')
        return body[1:last] + body[last + 1 :] if last > 0 else body[1:]
    return body


def main(guest: Guest, command_line: str) -> int:
    """cmd.exe: run the command after /C (or /K, which this stand-in treats alike) and
    end with its errorlevel; without either, read commands from standard input."""
    arguments = program_token(command_line)[1]
    command, strip = parse_switches(arguments)
    cmd = Cmd(guest, command_line)
    extensions = tuple((guest.env.get("PATHEXT") or ".EXE").lower().split(";"))
    try:
        if command is not None:
            line = unquote(command, strip, extensions).partition("\n")[0].rstrip("\r")
            cmd.run_line(line)
            return cmd.errorlevel
        guest.write(f"{VERSION}\n(c) 2018 Microsoft Corporation. All rights reserved.\n")
        for raw in iter(guest.stdin.readline, b""):
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            guest.write(f"\n{guest.cwd}>" + (line + "\n" if cmd.echo else ""))
            cmd.run_line(line)
        guest.write(f"\n{guest.cwd}>")
        return cmd.errorlevel
    except Exit as done:
        return done.status
