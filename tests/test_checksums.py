"""Local file digests: each version of a file is read once, however many writes send it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from beachhead.agent import checksums
from beachhead.agent.checksums import file_sha256


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every time a file's content is actually read (sha256_of, spied on)."""
    seen: list[Path] = []
    real = checksums.sha256_of

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(checksums, "sha256_of", counting)
    return seen


async def test_concurrent_callers_share_one_reading(tmp_path: Path, reads: list[Path]) -> None:
    payload = tmp_path / "payload.bin"
    data = os.urandom(3 << 20)
    payload.write_bytes(data)
    os.utime(payload, (1_700_000_000, 1_700_000_000))  # settled: written long ago
    results = await asyncio.gather(*(file_sha256(payload) for _ in range(100)))
    assert set(results) == {(hashlib.sha256(data).hexdigest(), len(data))}
    assert reads == [payload]
    assert await file_sha256(payload) == results[0] and reads == [payload]  # remembered after


async def test_a_file_just_written_is_not_remembered(tmp_path: Path, reads: list[Path]) -> None:
    payload = tmp_path / "fresh"
    payload.write_text("now\n")
    await file_sha256(payload)
    await file_sha256(payload)
    assert reads == [payload, payload]  # a rewrite within the same timestamp tick would go unseen


async def test_a_changed_file_is_read_again(tmp_path: Path, reads: list[Path]) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("first\n")
    os.utime(payload, (1_700_000_000, 1_700_000_000))
    first, _ = await file_sha256(payload)
    payload.write_text("other\n")  # same size, new content, new times
    second, size = await file_sha256(payload)
    assert second == hashlib.sha256(b"other\n").hexdigest() != first and size == 6
    replaced = tmp_path / "replacement"
    replaced.write_text("third\n")
    replaced.replace(payload)  # a new inode under the same name
    assert (await file_sha256(payload))[0] == hashlib.sha256(b"third\n").hexdigest()
    assert len(reads) == 3
