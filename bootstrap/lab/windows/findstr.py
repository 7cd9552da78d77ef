"""findstr.exe: search for text in files or standard input
(https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/findstr).

Search strings are regular expressions (findstr's own small dialect: ``.`` ``*`` ``^``
``$`` ``[class]`` ``[^class]`` ``[x-y]`` ``\\<`` ``\\>`` and ``\\x`` for a literal x)
unless ``/l`` is given; a string of several words is several strings, any of which may
match, unless given with ``/c:``. Lines go out as they came in (their own line end),
a last line without one gets CRLF, so ``findstr "^"`` copies text unchanged.
"""

from __future__ import annotations

import re

from beachhead.bootstrap.lab.windows.cmdline import argv
from beachhead.bootstrap.lab.windows.guest import Guest, GuestPathError

FLAGS = set("bdeilmnorsvx")


def translate(pattern: str) -> str:
    """A findstr regular expression as a Python one."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            following = pattern[index + 1]
            out.append({"<": r"\b(?=\w)", ">": r"\b(?<=\w)"}.get(following, re.escape(following)))
            index += 2
            continue
        if char == "[":
            end = pattern.find("]", index + 2)
            if end > 0:
                body = pattern[index + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                escaped = "".join("\\" + c if c in "\\]^[" else c for c in body)
                out.append(f"[{'^' if negate else ''}{escaped}]")
                index = end + 1
                continue
        if char == "*":
            out.append("*" if out else re.escape("*"))
        elif char == ".":
            out.append(".")
        elif char == "^" and index == 0:
            out.append("^")
        elif char == "$" and index == len(pattern) - 1:
            out.append("$")
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def main(guest: Guest, command_line: str) -> int:
    """Run findstr; exit status 0 when a line was printed, 1 when none, 2 on bad usage."""
    args = argv(command_line)[1:]
    flags: set[str] = set()
    strings: list[str] = []
    literal_strings: list[str] = []
    rest: list[str] = []
    for arg in args:
        if arg[:1] in "/-" and not rest and not strings and len(arg) > 1:
            option = arg[1:]
            if option.lower().startswith("c:"):
                literal_strings.append(option[2:])
                continue
            if all(flag in FLAGS for flag in option.lower()):
                flags |= set(option.lower())
                continue
            guest.error(f"FINDSTR: /{option} ignored\n")
            continue
        if not strings and not literal_strings and not rest:
            strings = arg.split()
            if not strings:
                strings = [arg]
            continue
        rest.append(arg)
    if not strings and not literal_strings:
        guest.error("FINDSTR: Bad command line\n")
        return 2
    regex = "r" in flags or ("l" not in flags and not literal_strings)
    patterns = [(s, regex) for s in strings] + [(s, "r" in flags) for s in literal_strings]
    case = re.IGNORECASE if "i" in flags else 0
    compiled = [re.compile(translate(s) if as_regex else re.escape(s), case | re.DOTALL) for s, as_regex in patterns]

    def matches(line: str) -> bool:
        for pattern in compiled:
            found = pattern.fullmatch(line) if "x" in flags else None
            if "x" not in flags:
                for hit in pattern.finditer(line):
                    if ("b" in flags and hit.start() != 0) or ("e" in flags and hit.end() != len(line)):
                        continue
                    found = hit
                    break
            if found is not None:
                return True
        return False

    sources: list[tuple[str | None, bytes]] = []  # (file name or None for stdin, its bytes)
    status = 1
    if not rest:
        sources.append((None, guest.stdin.read()))
    for file_name in rest:
        try:
            sources.append((file_name, guest.host(file_name).read_bytes()))
        except (GuestPathError, OSError):
            guest.error(f"FINDSTR: Cannot open {file_name}\n")
    for name, data in sources:
        prefix = f"{name}:" if name is not None and len(rest) > 1 else ""
        for number, raw in enumerate(_lines(data), 1):
            body = raw[:-1] if raw.endswith(b"\n") else raw
            body = body[:-1] if body.endswith(b"\r") else body
            end = raw[len(body) :] or b"\r\n"
            text = body.decode("latin-1")
            if matches(text) == ("v" not in flags):
                status = 0
                if "m" in flags:
                    guest.stdout.write(f"{name}\r\n".encode())
                    break
                number_text = f"{number}:" if "n" in flags else ""
                guest.stdout.write((prefix + number_text).encode("latin-1") + body + end)
    guest.stdout.flush()
    return status


def _lines(data: bytes) -> list[bytes]:
    """``data`` cut after each LF (a CR alone ends no line), the last line as it is."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines
