"""Wait conditions on a vSphere VM's state: ``powered_on``, ``tools_running``,
``guestops_ready`` and ``ip_assigned`` (vsphere:// targets), resolved by the vCenter's
one event watcher, never by polling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from beachhead.agent.context import StepContext
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import PlanReader
from beachhead.agent.stepkinds import CheckContext, ConditionKind
from beachhead.agent.targets import Target
from beachhead.agent.vsphere.states import VmState
from beachhead.plugins.steps.wait import named_timeout


@dataclass(frozen=True)
class VmCondition:
    """Wait until the target's VM is in ``state``."""

    state: VmState
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return self.state.describe()


def needs_vm(what: str, target: Target) -> str | None:
    """Why ``what`` cannot act on ``target`` when it is not a vSphere VM, or None."""
    if target.scheme == "vsphere":
        return None
    return f"{what}; target {target.name} is {target.scheme}:// (give a vsphere:// target)"


class VmStateCondition(ConditionKind):
    """The VM state conditions."""

    names = tuple(state.value for state in VmState)

    def parse(self, name: str, body: Any, reader: PlanReader, where: str) -> VmCondition:
        """A bare state, or ``{state: {timeout: S}}``."""
        return VmCondition(VmState(name), named_timeout(name, body, reader, where))

    def check(self, condition: VmCondition, target: Target, context: CheckContext) -> str | None:
        """Only a vSphere VM has these states."""
        return needs_vm(f"{condition.state} is a vSphere VM state", target)

    async def wait(self, condition: VmCondition, ctx: StepContext) -> None:
        """Return once the watcher reports the state."""
        vcenter, vm = await ctx.vm()
        snapshot = await vcenter.watcher.wait_for(vm, condition.state)
        ctx.log.info(
            "vm.condition_met", condition=str(condition.state), power_state=snapshot.power_state, ip=snapshot.ip
        )


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the VM state conditions."""
    register(VmStateCondition())
