"""The ``power`` step: ``- power: on`` or ``off`` (vsphere:// targets); nothing to do
when the VM already is. Read back through the API and journaled (``power``, with the
state before); undo lists it and leaves the power state as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from beachhead.agent.context import StepContext
from beachhead.agent.errors import brief
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.journal import JournalEntry
from beachhead.agent.plans import PlanReader
from beachhead.agent.stepkinds import CheckContext, Operation, StepKind
from beachhead.agent.targets import Target
from beachhead.plugins.steps.vm_states import needs_vm

POWER_STATES = {"on": True, "off": False, True: True, False: False}  # YAML 1.1 reads a bare on/off as a bool


@dataclass(frozen=True)
class PowerStep:
    """Power the VM on or off."""

    on: bool
    timeout: ClassVar[None] = None
    kind: ClassVar[str] = "power"

    def describe(self) -> str:
        """Human description of the step."""
        return f"power {'on' if self.on else 'off'}"


def _kept(entry: JournalEntry) -> str:
    before = entry.outcome.get("before") if entry.outcome else entry.state
    return f"was {before}; power state left as it is"


POWER = Operation("power", describe=lambda entry: f"power {entry.intent.get('state')}", kept=_kept)


class Power(StepKind):
    """The ``power`` step kind."""

    name = "power"
    operations = (POWER,)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> PowerStep:
        """``on`` or ``off``."""
        if isinstance(body, str | bool) and body in POWER_STATES:
            return PowerStep(POWER_STATES[body])
        raise reader.error(where, f"must be on or off, got {brief(body)}", parent, "power")

    def check(self, step: PowerStep, target: Target, context: CheckContext) -> str | None:
        """vsphere:// targets only."""
        return needs_vm("power acts on a vSphere VM", target)

    async def execute(self, step: PowerStep, ctx: StepContext) -> None:
        """Power on or off, journaled, read back."""
        from beachhead.agent.vsphere.vmconfig import set_power

        vcenter, vm = await ctx.vm()
        seq = ctx.reserve()
        with ctx.journaled(seq, "power", channel="vsphere", state="on" if step.on else "off") as after:
            after["before"] = await set_power(vcenter, vm, step.on, step.describe())


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``power`` step kind."""
    register(Power())
