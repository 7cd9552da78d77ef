"""A known_hosts file checked line by line before anything connects.

asyncssh skips a line it cannot read without a word, as OpenSSH does, so a mistyped or
half-pasted entry would surface only later as a host key that cannot be verified, on
every target that uses the file. A line here is OpenSSH's: an optional marker
(``@cert-authority``, ``@revoked``), host patterns (or a hashed ``|1|...`` name), a key
type, the key in base64 (whose own first field must name that type) and an optional
comment. Key types are not limited to those asyncssh knows.
"""

from __future__ import annotations

import base64
import binascii
import functools
from pathlib import Path

MARKERS = ("@cert-authority", "@revoked")
MAX_BYTES = 4 * 1024 * 1024  # far beyond any real known_hosts file


def known_hosts_problem(path: Path) -> str | None:
    """What is wrong with the known_hosts file at ``path`` (its first malformed line, as
    ``line N: reason``), or None when every line is an entry, a comment or blank."""
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if info.st_size > MAX_BYTES:
        return f"larger than {MAX_BYTES // 2**20} MiB: not a known_hosts file"
    return _first_problem(path, info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=64)
def _first_problem(path: Path, mtime_ns: int, size: int) -> str | None:
    """Cached by the file's modification time and size: a targets file names the same
    known_hosts file for every target."""
    del mtime_ns, size  # only the cache key
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    for number, line in enumerate(text.splitlines(), start=1):
        reason = _line_problem(line.split())
        if reason is not None:
            return f"line {number}: {reason}"
    return None


def _line_problem(fields: list[str]) -> str | None:
    if not fields or fields[0].startswith("#"):
        return None
    if fields[0].startswith("@"):
        if fields[0] not in MARKERS:
            return f"unknown marker {fields[0]} (expected {' or '.join(MARKERS)})"
        fields = fields[1:]
    if len(fields) < 3:
        return "expected host names, a key type and a base64 key"
    key_type, blob = fields[1], fields[2]
    try:
        key = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return f"the {key_type} key is not base64"
    length = int.from_bytes(key[:4], "big")
    if len(key) < 4 + length or key[4 : 4 + length] != key_type.encode():
        return f"the key is not a {key_type} key"
    return None
