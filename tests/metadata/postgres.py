"""A real PostgreSQL server for the tests: Debian's binaries (installed by
bootstrap/install.sh), a data directory of its own under /tmp, listening on 127.0.0.1
only, on a free port, trust authentication for loopback; stopped and removed at the end.
PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user the package
made."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server."""

    port: int
    data: Path

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` on this server (no password: trust)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError(f"no {name} under /usr/lib/postgresql: run bootstrap/install.sh")
    return found[-1]


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def run_postgres(port: int) -> Iterator[Postgres]:
    """Start a server on ``port``; yield it; stop it and remove its data."""
    top = Path(tempfile.mkdtemp(prefix="beachhead-pg-"))
    data = top / "data"
    if os.geteuid() == 0:
        shutil.chown(top, "postgres")
    user = ["-U", "postgres"]
    subprocess.run(
        [*_as_owner(), _bin("initdb"), "-D", str(data), *user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        cwd=top,  # the postgres user may not be able to enter the caller's directory
        timeout=START_TIMEOUT_S,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off"
    log = top / "server.log"
    subprocess.run(
        [
            *_as_owner(),
            _bin("pg_ctl"),
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            options,
        ],
        check=True,
        capture_output=True,
        cwd=top,  # the postgres user may not be able to enter the caller's directory
        timeout=START_TIMEOUT_S + 10,
    )
    try:
        yield Postgres(port, data)
    finally:
        subprocess.run(
            [*_as_owner(), _bin("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data)],
            check=False,
            capture_output=True,
            cwd=top,  # the postgres user may not be able to enter the caller's directory
            timeout=START_TIMEOUT_S,
        )
        shutil.rmtree(top, ignore_errors=True)
