"""A machine-wide lock for work that brings the lab up and down (test sessions,
benchmarks): the lab is one per machine, so such work takes turns."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from beachhead.bootstrap.lab.system import LabError

LOCK_FILE = Path("/run/beachhead-lab.lock")
DEFAULT_WAIT_S = 900.0


@contextmanager
def lab_lock(wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold the lab for the block; wait (bounded) while another process holds it."""
    with LOCK_FILE.open("w") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another process held {LOCK_FILE} for {wait_s:g}s") from None
                time.sleep(1)
        yield
