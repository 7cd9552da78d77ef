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

# What `from beachhead import NAME` gives, by the module that defines it.
_EXPORTS = {
    "customize": "beachhead.agent.api",
    "customize_sync": "beachhead.agent.api",
    "run_plan": "beachhead.agent.api",
    "resume_run": "beachhead.agent.api",
    "RunReport": "beachhead.agent.api",
    "start_run": "beachhead.agent.run_handle",
    "Run": "beachhead.agent.run_handle",
    "RunEvent": "beachhead.agent.run_handle",
    "build_plan": "beachhead.agent.plans",
    "load_plan": "beachhead.agent.plans",
    "parse_target": "beachhead.agent.targets",
    "vsphere_target": "beachhead.agent.vm_targets",
    "RunSettings": "beachhead.agent.settings",
    "BeachheadError": "beachhead.agent.errors",
    "InputError": "beachhead.agent.errors",
}

__all__ = [
    "BeachheadError",
    "InputError",
    "Run",
    "RunEvent",
    "RunReport",
    "RunSettings",
    "__version__",
    "build_plan",
    "customize",
    "customize_sync",
    "load_plan",
    "parse_target",
    "resume_run",
    "run_plan",
    "start_run",
    "vsphere_target",
]

if TYPE_CHECKING:
    from beachhead.agent.api import RunReport, customize, customize_sync, resume_run, run_plan
    from beachhead.agent.errors import BeachheadError, InputError
    from beachhead.agent.plans import build_plan, load_plan
    from beachhead.agent.run_handle import Run, RunEvent, start_run
    from beachhead.agent.settings import RunSettings
    from beachhead.agent.targets import parse_target
    from beachhead.agent.vm_targets import vsphere_target


def __getattr__(name: str) -> object:
    # Lazy, so `import beachhead` (and `beachhead --version`) stays cheap.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(module), name)
