"""How a run behaves: one immutable settings object for the engine and the plugins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunSettings:
    """How a run behaves; immutable defaults, overridden per call."""

    concurrency: int = 50
    step_timeout: float = 1800.0
    connect_timeout: float = 30.0
    retries: int = 3
    retry_delay: float = 0.5
    wire_log: Path | None = None
    metadata_server: str | None = None  # userdata via metadata, phoned_home / userdata_fetched waits
    metadata_token_file: Path | None = None
