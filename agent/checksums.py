"""Checksums of local files and values, as every write is verified by sha256."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections import OrderedDict
from pathlib import Path

BLOCK = 1 << 20
KNOWN_DIGESTS = 512  # file versions whose digest is remembered
# A file modified this recently may be rewritten again within the same timestamp tick
# (file times advance in coarse steps), unnoticed: its digest is not remembered.
RACY_NS = 2_000_000_000

# What identifies one version of a file: rewritten or replaced, one of these changes.
_Version = tuple[int, int, int, int, int]
_digests: OrderedDict[_Version, str] = OrderedDict()
_computing: dict[tuple[int, _Version], asyncio.Future[str]] = {}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(stat: os.stat_result) -> _Version:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


async def file_sha256(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a local file, read in a worker thread. Each version of a
    file is read once however many writes send it (a plan uploading one file to 1,000
    guests hashes it once, not 2,000 times): the digest is remembered by the file's
    device, inode, size, modification and change times (unless it changed in the last 2 s,
    when a rewrite could leave all of them as they were), and concurrent callers share one
    reading."""
    stat = await asyncio.to_thread(path.stat)
    version = _version(stat)
    known = _digests.get(version)
    if known is not None:
        _digests.move_to_end(version)
        return known, stat.st_size
    key = (id(asyncio.get_running_loop()), version)
    running = _computing.get(key)
    if running is None:
        running = asyncio.ensure_future(asyncio.to_thread(_read_digest, path, version))
        _computing[key] = running
        running.add_done_callback(lambda _: _computing.pop(key, None))
    return await asyncio.shield(running), stat.st_size


def _read_digest(path: Path, version: _Version) -> str:
    digest = sha256_of(path)
    settled = time.time_ns() - version[3] > RACY_NS
    if settled and _version(path.stat()) == version:  # unchanged while it was read: safe to remember
        _digests[version] = digest
        while len(_digests) > KNOWN_DIGESTS:
            _digests.popitem(last=False)
    return digest


def value_digest(value: str | None) -> str | None:
    """Hex sha256 of a text value (None stays None): what the journal keeps of values
    that may be secrets."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def value_digest_of_base64(value: str | None) -> str | None:
    """Hex sha256 of the bytes a base64 text holds (None when it is None or invalid)."""
    if value is None:
        return None
    try:
        return hashlib.sha256(base64.b64decode(value, validate=True)).hexdigest()
    except ValueError:
        return None
