"""certutil.exe's file verbs: ``-encode``, ``-decode`` and ``-hashfile``
(https://learn.microsoft.com/en-us/windows-server/administration/windows-commands/certutil).

Options come before the verb (``-f`` overwrites an existing output file), ``-`` or
``/`` alike. Output and failures are worded as Windows 10 words them; a failure's exit
status is certutil's HRESULT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from beachhead.bootstrap.lab.windows.cmdline import argv
from beachhead.bootstrap.lab.windows.guest import Guest, GuestPathError

BEGIN, END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
HASHES = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512"}
FAILURES = {
    "exists": (0x80070050, "0x80070050 (WIN32: 80 ERROR_FILE_EXISTS)", "The file exists."),
    "missing": (0x80070002, "0x80070002 (WIN32: 2 ERROR_FILE_NOT_FOUND)", "The system cannot find the file specified."),
    "path": (0x80070003, "0x80070003 (WIN32: 3 ERROR_PATH_NOT_FOUND)", "The system cannot find the path specified."),
    "denied": (0x80070005, "0x80070005 (WIN32: 5 ERROR_ACCESS_DENIED)", "Access is denied."),
    "bad_data": (0x80090005, "0x80090005 (-2146893819 NTE_BAD_DATA)", "Bad Data."),
    "bad_alg": (0x80090008, "0x80090008 (-2146893816 NTE_BAD_ALGID)", "Invalid algorithm specified."),
    "args": (0x80070057, "0x80070057 (WIN32: 87 ERROR_INVALID_PARAMETER)", "The parameter is incorrect."),
}


class Failed(Exception):
    """A certutil failure: one of :data:`FAILURES`."""


def main(guest: Guest, command_line: str) -> int:
    """Run one certutil verb."""
    args = argv(command_line)[1:]
    force = False
    while args and args[0][:1] in "-/" and args[0][1:].lower() == "f":
        force, args = True, args[1:]
    if not args or args[0][:1] not in "-/":
        guest.error("CertUtil: Unknown arguments.\n")
        return FAILURES["args"][0]
    verb, operands = args[0][1:].lower(), args[1:]
    try:
        if verb in {"encode", "decode"} and len(operands) == 2:
            _convert(guest, verb, operands[0], operands[1], force)
        elif verb == "hashfile" and len(operands) in {1, 2}:
            _hashfile(guest, operands[0], operands[1] if len(operands) == 2 else "SHA1")
        else:
            raise Failed("args")
    except Failed as failure:
        code, detail, message = FAILURES[str(failure)]
        guest.error(f"CertUtil: -{verb} command FAILED: {detail}\nCertUtil: {message}\n")
        return code
    guest.write(f"CertUtil: -{verb} command completed successfully.\n")
    return 0


def _read(guest: Guest, name: str) -> bytes:
    try:
        return guest.host(name).read_bytes()
    except GuestPathError as exc:
        raise Failed("denied" if exc.errno == 5 else "path") from None
    except FileNotFoundError:
        raise Failed("missing") from None
    except IsADirectoryError:
        raise Failed("denied") from None


def _convert(guest: Guest, verb: str, source: str, destination: str, force: bool) -> None:
    data = _read(guest, source)
    try:
        target = guest.host(destination)
    except GuestPathError:
        raise Failed("path") from None
    if target.exists() and not force:
        raise Failed("exists")
    out = encode(data) if verb == "encode" else decode(data)
    guest.write(f"Input Length = {len(data)}\nOutput Length = {len(out)}\n")
    try:
        target.write_bytes(out)
    except FileNotFoundError:
        raise Failed("path") from None
    except OSError:
        raise Failed("denied") from None


def encode(data: bytes) -> bytes:
    """What ``certutil -encode`` writes: base64 in 64-character CRLF lines between
    certificate header and trailer lines."""
    text = base64.b64encode(data)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return b"\r\n".join([BEGIN, *lines, END]) + b"\r\n"


def decode(data: bytes) -> bytes:
    """What ``certutil -decode`` makes of ``data``: the base64 between a ``-----BEGIN``
    and ``-----END`` line when there are such lines, else all of it, whitespace ignored."""
    lines = data.splitlines()
    begin = next((i for i, line in enumerate(lines) if line.strip().startswith(b"-----BEGIN")), None)
    if begin is not None:
        end = next((i for i in range(begin + 1, len(lines)) if lines[i].strip().startswith(b"-----END")), None)
        if end is None:
            raise Failed("bad_data")
        lines = lines[begin + 1 : end]
    body = b"".join(b"".join(line.split()) for line in lines)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise Failed("bad_data") from None


def _hashfile(guest: Guest, name: str, algorithm: str) -> None:
    hash_name = HASHES.get(algorithm.upper())
    if hash_name is None:
        raise Failed("bad_alg")
    data = _read(guest, name)
    guest.write(f"{algorithm.upper()} hash of {name}:\n{hashlib.new(hash_name, data).hexdigest()}\n")
