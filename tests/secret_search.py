"""Looking for secrets where they must not be: the forms a secret can take in an
artefact, and a sampler of this machine's process table (which the test guests, local
sshd logins and lab namespaces alike, share)."""

from __future__ import annotations

import base64
import gzip
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, quote_plus

MIN_FORM = 8  # shorter fragments (of short base64 forms) would match by chance


def forms(secret: str | bytes) -> dict[str, bytes]:
    """``secret`` as it could appear: in clear, URL-encoded, base64 (at each of the three
    alignments it can have inside a longer base64 text) and gzip+base64."""
    raw = secret if isinstance(secret, bytes) else secret.encode()
    text = raw.decode("utf-8", errors="replace")
    found = {
        "clear": raw,
        "url": quote(text, safe="").encode(),
        "url+": quote_plus(text).encode(),
        "gzip+base64": base64.b64encode(gzip.compress(raw, mtime=0)),
    }
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        # Drop the characters that mix in the bytes around the secret.
        start = {0: 0, 1: 2, 2: 3}[offset]
        end = len(encoded) - 4 if (len(raw) + offset) % 3 else len(encoded)
        found[f"base64@{offset}"] = encoded[start:end].rstrip(b"=")
    return {name: value for name, value in found.items() if len(value) >= MIN_FORM}


def hits(data: bytes, secrets: dict[str, str | bytes]) -> list[str]:
    """Which secret, in which form, ``data`` contains: ``["NAME as FORM", ...]``."""
    return [
        f"{name} as {form}"
        for name, secret in secrets.items()
        for form, value in forms(secret).items()
        if value in data
    ]


def search_files(paths: Iterable[Path], secrets: dict[str, str | bytes]) -> dict[str, list[str]]:
    """Every regular file under ``paths`` (files or directories) that holds a secret."""
    found: dict[str, list[str]] = {}
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if where := hits(file.read_bytes(), secrets):
                found[str(file)] = where
    return found


class ProcessSampler:
    """Samples every process's command line, and the ``SUDO_COMMAND`` sudo puts in its
    children's environment, in a thread, while the block it guards runs (at most
    ``limit_s`` seconds). ``seen`` collects what was read; :meth:`hits` searches it."""

    def __init__(self, interval_s: float = 0.01, limit_s: float = 300) -> None:
        self.interval_s = interval_s
        self.limit_s = limit_s
        self.seen: set[bytes] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        deadline = time.monotonic() + self.limit_s
        own = str(os.getpid())
        while not self._stop.is_set() and time.monotonic() < deadline:
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or entry.name == own:
                    continue
                try:
                    self.seen.add(Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" "))
                    environ = Path(entry.path, "environ").read_bytes()
                except OSError:  # gone meanwhile
                    continue
                self.seen.update(item for item in environ.split(b"\0") if item.startswith(b"SUDO_COMMAND="))
            self.samples += 1
            self._stop.wait(self.interval_s)

    def saw(self, text: str) -> bool:
        """Whether some sampled command line contained ``text``."""
        return any(text.encode() in line for line in self.seen)

    def hits(self, secrets: dict[str, str | bytes]) -> list[str]:
        """The sampled command lines and SUDO_COMMANDs that hold a secret, with which."""
        return [f"{line[:300]!r}: {', '.join(where)}" for line in self.seen if (where := hits(line, secrets))]
