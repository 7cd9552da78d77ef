"""The ``extra_config`` step: set (or, with null, remove) keys of the VM's extraConfig.

``- extra_config: {guestinfo.role: web, guestinfo.stale: null}`` (vsphere:// targets).
Each value is read back through the API. The journal (``extra_config``) holds the keys
and the sha256 of each value written; the values it replaced go to the run's backups
(mode 0600), since they may be secrets. Undo restores them, and removes keys the run
added, unless a key changed again after the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from beachhead.agent.checksums import value_digest
from beachhead.agent.context import StepContext
from beachhead.agent.errors import brief
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.journal import JournalEntry
from beachhead.agent.plans import PlanReader
from beachhead.agent.stepkinds import CheckContext, Operation, StepKind
from beachhead.agent.targets import Target
from beachhead.agent.undo import UndoContext
from beachhead.plugins.steps.vm_states import needs_vm

EXTRA_CONFIG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
UNSET = "unset"  # the digest undo compares for a key that has no value


@dataclass(frozen=True)
class ExtraConfigStep:
    """Set keys of the VM's extraConfig; None removes a key."""

    values: Mapping[str, str | None]
    timeout: ClassVar[None] = None
    kind: ClassVar[str] = "extra_config"

    def describe(self) -> str:
        """Human description of the step (keys only: values may be secrets)."""
        return f"extra_config {', '.join(self.values)}"


async def apply_extra_config(ctx: StepContext, values: Mapping[str, str | None], description: str) -> None:
    """Write ``values`` to the target VM's extraConfig, journaled and read back (also
    what the ``userdata`` step's guestinfo publisher does)."""
    from beachhead.agent.vsphere.vmconfig import read_extra_config, write_extra_config

    vcenter, vm = await ctx.vm()
    before = await read_extra_config(vcenter, vm, values)
    seq = ctx.reserve()
    backup = ctx.run_dir.save_json_backup(seq, before)
    intended = {key: value_digest(value) for key, value in values.items()}
    with ctx.journaled(
        seq, "extra_config", channel="vsphere", keys=list(values), intended=intended, replaces={"backup": backup}
    ) as after:
        await write_extra_config(vcenter, vm, values, description)
        after["sha256"] = {key: value_digest(value) for key, value in values.items()}


def _digest(value: str | None) -> str:
    return value_digest(value) or UNSET


async def _restore(entry: JournalEntry, undo: UndoContext) -> str:
    from beachhead.agent.vsphere.vmconfig import read_extra_config, write_extra_config

    intent = entry.intent
    original: dict[str, str | None] = undo.run_dir.load_json_backup(intent["replaces"]["backup"])
    written = entry.outcome.get("sha256", {}) if entry.outcome and entry.state == "done" else {}
    vcenter, vm = await undo.vm(intent)
    current = await read_extra_config(vcenter, vm, original)
    for key, value in current.items():
        if key in written:
            undo.check_unchanged(f"extraConfig {key}", _digest(value), written[key] or UNSET, _digest(original[key]))
    restore = {key: value for key, value in original.items() if current[key] != value}
    if not restore:
        return "already as before the run"
    await write_extra_config(vcenter, vm, restore, f"restore extraConfig {', '.join(restore)}")
    return f"restored {', '.join(restore)}"


async def _recheck(entry: JournalEntry, undo: UndoContext) -> bool | None:
    from beachhead.agent.vsphere.vmconfig import read_extra_config

    intended: dict[str, str | None] | None = entry.intent.get("intended")
    if intended is None:
        return None
    vcenter, vm = await undo.vm(entry.intent)
    current = await read_extra_config(vcenter, vm, intended)
    return all(value_digest(current[key]) == digest for key, digest in intended.items())


EXTRA_CONFIG = Operation(
    "extra_config",
    describe=lambda entry: f"extraConfig {', '.join(entry.intent.get('keys', []))}",
    revert=_restore,
    recheck=_recheck,
)


class ExtraConfig(StepKind):
    """The ``extra_config`` step kind."""

    name = "extra_config"
    operations = (EXTRA_CONFIG,)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> ExtraConfigStep:
        """A mapping of extraConfig keys to strings (or null)."""
        if not isinstance(body, dict) or not body:
            raise reader.error(where, "must be a mapping of extraConfig keys to values (null removes a key)", parent)
        values: dict[str, str | None] = {}
        for key, value in body.items():
            if not isinstance(key, str) or not EXTRA_CONFIG_KEY.match(key):
                raise reader.error(f"{where}.{key}", "not an extraConfig key (letters, digits, . _ : -)", body, key)
            if value is not None and not isinstance(value, str):
                raise reader.error(
                    f"{where}.{key}", f"must be a string (quote it) or null, got {brief(value)}", body, key
                )
            if value is not None and "\x00" in value:
                raise reader.error(f"{where}.{key}", "contains a NUL byte", body, key)
            values[key] = value or None
        return ExtraConfigStep(values)

    def check(self, step: ExtraConfigStep, target: Target, context: CheckContext) -> str | None:
        """vsphere:// targets only."""
        return needs_vm("extra_config acts on a vSphere VM", target)

    async def execute(self, step: ExtraConfigStep, ctx: StepContext) -> None:
        """Write, journal and read back."""
        await apply_extra_config(ctx, step.values, step.describe())


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``extra_config`` step kind."""
    register(ExtraConfig())
