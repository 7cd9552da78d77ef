"""A real PostgreSQL server on loopback, for the tests and the benchmarks: Debian's
binaries (installed by bootstrap/install.sh), a data directory of its own under /tmp,
listening on 127.0.0.1 only, trust authentication for loopback; stopped and removed at
the end. It can be stopped and started again on the same port and data (a database
outage, as a client sees it). PostgreSQL refuses to run as root: as root it runs as
the ``postgres`` user the package made.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 60
INSTALL_HINT = "bash bootstrap/install.sh"


class PostgresMissing(RuntimeError):
    """Debian's PostgreSQL server binaries are not installed."""


def postgres_binary(name: str) -> str:
    """The newest installed ``/usr/lib/postgresql/VERSION/bin/NAME``."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise PostgresMissing(f"no {name} under /usr/lib/postgresql: run {INSTALL_HINT}")
    return found[-1]


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class LocalPostgres:
    """A PostgreSQL server of its own on ``127.0.0.1:port``; ``fsync`` off makes a
    throwaway server for tests faster (the benchmarks keep it on, as deployed)."""

    def __init__(self, port: int, *, fsync: bool = True) -> None:
        self.port = port
        self.fsync = fsync
        self.top = Path(tempfile.mkdtemp(prefix="beachhead-pg-"))
        self.data = self.top / "data"
        self.log = self.top / "server.log"
        self._initialised = False

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` (no password: trust on loopback)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, check: bool = True, timeout: float = START_TIMEOUT_S) -> None:
        subprocess.run(
            [*_as_owner(), *command],
            check=check,
            capture_output=True,
            cwd=self.top,  # the postgres user may not be able to enter the caller's directory
            timeout=timeout,
        )

    def start(self) -> LocalPostgres:
        """Create the data directory (the first time) and start the server, waiting
        (bounded) until it accepts connections."""
        if not self._initialised:
            if os.geteuid() == 0:
                shutil.chown(self.top, "postgres")
            self._run(
                postgres_binary("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            self._initialised = True
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.top}"
        if not self.fsync:
            options += " -c fsync=off"
        self._run(
            postgres_binary("pg_ctl"),
            "start",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            timeout=START_TIMEOUT_S + 10,
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected), keeping its data."""
        if self._initialised:
            self._run(postgres_binary("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data), check=False)

    def pid(self) -> int | None:
        """The postmaster's process id (None when it is not running)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        """Stop the server and remove its data."""
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
