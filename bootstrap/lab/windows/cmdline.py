"""Windows command lines: how a program's command line splits into its arguments.

Windows hands a process one string. Programs built with the Microsoft C runtime split
it as ``CommandLineToArgvW`` does (documented in "Parsing C command-line arguments",
https://learn.microsoft.com/en-us/cpp/c-language/parsing-c-command-line-arguments);
``CreateProcess`` finds the program from the first token alone. cmd.exe follows rules
of its own (:mod:`beachhead.bootstrap.lab.windows.cmd`).
"""

from __future__ import annotations

WHITESPACE = " \t"


def program_token(command_line: str) -> tuple[str, str]:
    """The program name as ``CreateProcess`` reads it (a leading quoted string, quotes
    removed, or everything up to the first space or tab) and the text after it,
    leading whitespace removed."""
    line = command_line.lstrip(WHITESPACE)
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0:
            return line[1:], ""
        return line[1:end], line[end + 1 :].lstrip(WHITESPACE)
    cut = len(line)
    for index, char in enumerate(line):
        if char in WHITESPACE:
            cut = index
            break
    return line[:cut], line[cut:].lstrip(WHITESPACE)


def split_arguments(text: str) -> list[str]:
    """Arguments after the program name, by the C runtime's rules: whitespace outside
    quotes separates; ``2n`` backslashes before a quote give ``n`` and toggle quoting,
    ``2n+1`` give ``n`` and a literal quote; other backslashes are literal; ``""``
    inside quotes is a literal quote."""
    args: list[str] = []
    current: list[str] = []
    in_arg = quoted = False
    index, size = 0, len(text)
    while index < size:
        char = text[index]
        if char in WHITESPACE and not quoted:
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
            index += 1
            continue
        in_arg = True
        if char == "\\":
            run = index
            while run < size and text[run] == "\\":
                run += 1
            count = run - index
            if run < size and text[run] == '"':
                current.append("\\" * (count // 2))
                if count % 2:
                    current.append('"')
                    index = run + 1
                else:
                    index = run
            else:
                current.append("\\" * count)
                index = run
            continue
        if char == '"':
            if quoted and index + 1 < size and text[index + 1] == '"':
                current.append('"')
                index += 2
                continue
            quoted = not quoted
            index += 1
            continue
        current.append(char)
        index += 1
    if in_arg:
        args.append("".join(current))
    return args


def argv(command_line: str) -> list[str]:
    """The whole ``argv`` a C-runtime program sees for ``command_line``."""
    program, rest = program_token(command_line)
    return [program, *split_arguments(rest)]


def quote(argument: str) -> str:
    """``argument`` written so that :func:`split_arguments` gives it back unchanged."""
    if argument and not any(char in argument for char in ' \t"'):
        return argument
    out: list[str] = ['"']
    backslashes = 0
    for char in argument:
        if char == "\\":
            backslashes += 1
            continue
        if char == '"':
            out.append("\\" * (2 * backslashes + 1) + '"')
        else:
            out.append("\\" * backslashes + char)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)
