"""Beachhead: event-driven guest customization for freshly provisioned virtual machines.

This is the installed ``beachhead`` package itself (setuptools maps it here, see
``pyproject.toml``); the repository's top-level folders are its subpackages
(``beachhead.agent``, ``beachhead.plugins``, ``beachhead.metadata_server``,
``beachhead.bootstrap``). The library API::

    from beachhead import customize

    result = await customize("ssh://root@10.0.0.5?key=/etc/prov/id_ed25519", "plan.yaml")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# A library is quiet unless its caller configures logging (see beachhead.agent.logs).
logging.getLogger("beachhead").addHandler(logging.NullHandler())

__all__ = ["__version__", "customize", "customize_sync", "run_plan"]

if TYPE_CHECKING:
    from beachhead.agent.api import customize, customize_sync, run_plan


def __getattr__(name: str) -> object:
    # Lazy, so `import beachhead` (and `beachhead --version`) stays cheap.
    if name in ("customize", "customize_sync", "run_plan"):
        from beachhead.agent import api

        return getattr(api, name)
    raise AttributeError(name)
