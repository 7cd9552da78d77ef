"""Checksums of local files and values, as every write is verified by sha256."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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
