"""Run a Windows command line in the stand-in guest, as ``CreateProcess`` would.

    python -m beachhead.bootstrap.lab.windows.run --root ROOT [--cwd 'C:\\Users\\Administrator']
        [--record DIR] -- COMMAND_LINE

ROOT is the guest's root directory on the host (drive C is ``ROOT/C``); COMMAND_LINE
is one argument, the whole command line (program, then its arguments, Windows
quoting). The program's standard streams are this process's; the environment is
this process's, given Windows' names
(:func:`~beachhead.bootstrap.lab.windows.guest.windows_environment`). The exit status
is the program's: its low byte as this process's status, all 32 bits (unsigned
decimal) in ``--status-file FILE`` when given (``{pid}`` in FILE is this process's
pid). A program the guest does not have ends the run with status 9009 and Windows'
"The system cannot find the file specified." (callers that start programs refuse such
a command line before, with :func:`resolve`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from beachhead.bootstrap.lab.windows import programs
from beachhead.bootstrap.lab.windows.cmdline import program_token
from beachhead.bootstrap.lab.windows.guest import Guest, windows_environment

NOT_FOUND_STATUS = 9009


def resolve(command_line: str) -> str | None:
    """The file name of the program ``command_line`` starts (``cmd.exe``,
    ``certutil.exe``, …) as ``CreateProcess`` finds it: a bare name (``.exe``
    added when it has no extension) or a path in ``C:\\Windows\\System32``; None when
    the guest has no such program (``CreateProcess`` fails with error 2)."""
    return programs.lookup(program_token(command_line)[0])


def run(guest: Guest, command_line: str) -> int:
    """Run ``command_line`` in ``guest``; its exit status."""
    name = resolve(command_line)
    if name is None:
        missing = programs.recorded_missing(program_token(command_line)[0])
        if missing is not None:
            programs.load(programs.MISSING_RECORDED[missing])(guest, command_line)
        guest.error(programs.NOT_FOUND)
        return NOT_FOUND_STATUS
    return programs.load(programs.PROGRAMS[name])(guest, command_line)


def main(argv: list[str] | None = None) -> int:
    """The command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m beachhead.bootstrap.lab.windows.run", description=__doc__)
    parser.add_argument(
        "--resolve", action="store_true", help="only print the program's file name (status 9009 when there is none)"
    )
    parser.add_argument("--root", type=Path, help="the guest's root directory (drive C is ROOT/C)")
    parser.add_argument("--cwd", default=None, help="the current directory, a Windows path (default: %%USERPROFILE%%)")
    parser.add_argument("--record", type=Path, help="directory for records of missing programs' requests")
    parser.add_argument(
        "--status-file",
        help="write the whole exit status (32 bits, unsigned decimal) here at the end; {pid} is this process's pid",
    )
    parser.add_argument("command_line", help="the whole Windows command line, one argument")
    args = parser.parse_args(argv)
    if args.resolve:
        name = resolve(args.command_line)
        print(name or programs.NOT_FOUND.strip(), file=sys.stdout if name else sys.stderr)
        return 0 if name else NOT_FOUND_STATUS & 0xFF
    if args.root is None:
        parser.error("--root is required")
    env = windows_environment(os.environ)
    guest = Guest(
        root=args.root.absolute(),
        cwd="",
        env=env,
        stdin=sys.stdin.buffer,
        stdout=sys.stdout.buffer,
        stderr=sys.stderr.buffer,
        record=args.record,
    )
    guest.cwd = guest.absolute(args.cwd or env.get("USERPROFILE") or "C:\\")
    try:
        status = run(guest, args.command_line)
    except KeyboardInterrupt:
        status = 0xC000013A  # STATUS_CONTROL_C_EXIT
    except BrokenPipeError:
        status = 1
    finally:
        for stream in (guest.stdout, guest.stderr):
            with contextlib.suppress(OSError):
                stream.flush()
    if args.status_file:
        _write_status(args.status_file.replace("{pid}", str(os.getpid())), status)
    return status & 0xFF


def _write_status(path: str, status: int) -> None:
    """Write the exit status through a temporary file renamed into place."""
    partial = f"{path}.part"
    with contextlib.suppress(OSError):
        with open(partial, "w") as stream:
            stream.write(str(status & 0xFFFFFFFF))
        os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main())
