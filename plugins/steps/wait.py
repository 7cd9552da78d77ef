"""The ``wait`` step and the ``port`` condition.

A ``wait`` step (or an entry of a plan's ``wait:`` list) holds one condition, parsed by
the condition kind registered under its name: ``{port: 22, timeout: 60}`` here, VM
states such as ``tools_running`` (:mod:`beachhead.plugins.steps.vm_states`), guest
reports such as ``phoned_home`` (:mod:`beachhead.plugins.pull`), or a third party's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

from beachhead.agent.context import StepContext
from beachhead.agent.errors import brief, brief_names
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import PlanReader
from beachhead.agent.stepkinds import CheckContext, Condition, ConditionKind, StepKind
from beachhead.agent.targets import Target

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


@dataclass(frozen=True)
class WaitStep:
    """Wait for ``condition`` (parsed by the condition kind named ``name``)."""

    condition: Condition
    name: str
    kind: ClassVar[str] = "wait"

    @property
    def timeout(self) -> float | None:
        """The condition's own timeout, if it set one."""
        return self.condition.timeout

    def describe(self) -> str:
        """Human description of the step."""
        return f"wait for {self.condition.describe()}"


def named_timeout(name: str, body: Any, reader: PlanReader, where: str) -> float | None:
    """The options of a condition written as a bare word (``tools_running``) or as
    ``{tools_running: {timeout: 300}}``: its timeout, if any."""
    if isinstance(body, str):
        return None
    options = body[name]
    if options is None:
        return None
    if not isinstance(options, dict):
        raise reader.error(f"{where}.{name}", "must be empty or a mapping such as {timeout: 300}", body)
    options = reader.fields(options, f"{where}.{name}", body, set(), {"timeout"})
    return reader.seconds(options.get("timeout"), f"{where}.{name}.timeout", options, "timeout")


class Wait(StepKind):
    """The ``wait`` step kind: dispatches to the registered condition kinds."""

    name = "wait"

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> WaitStep:
        """A bare condition name, or a mapping keyed by one."""
        conditions = reader.plugins.conditions
        known = ", ".join(sorted(conditions))
        if isinstance(body, str) and body in conditions:
            return WaitStep(conditions[body].parse(body, body, reader, where), body)
        if not isinstance(body, dict):
            raise reader.error(where, f"must be a condition such as {{port: 22, timeout: 60}} or one of {known}")
        names = [key for key in body if key in conditions]
        if len(names) != 1:
            keys = brief_names(body) or "empty mapping"
            raise reader.error(where, f"unknown condition (known: {known}) in {keys}", body)
        return WaitStep(conditions[names[0]].parse(names[0], body, reader, where), names[0])

    def check(self, step: WaitStep, target: Target, context: CheckContext) -> str | None:
        """What the condition's kind says about this target."""
        return context.plugins.conditions[step.name].check(step.condition, target, context)

    async def execute(self, step: WaitStep, ctx: StepContext) -> None:
        """Wait until the condition holds (the engine bounds the wait)."""
        await ctx.run.plugins.conditions[step.name].wait(step.condition, ctx)


@dataclass(frozen=True)
class PortOpen:
    """Wait until a TCP port on the guest's address accepts connections."""

    port: int
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return f"port {self.port} open"


class PortCondition(ConditionKind):
    """``{port: N, timeout: S}``: a TCP port on the guest (its address as network
    channels reach it: the host of an ssh:// target, a VM's reported address)."""

    names = ("port",)

    def parse(self, name: str, body: Any, reader: PlanReader, where: str) -> PortOpen:
        """``{port, timeout?}``."""
        if not isinstance(body, dict):
            raise reader.error(where, "must be a mapping such as {port: 22, timeout: 60}")
        body = reader.fields(body, where, None, {"port"}, {"timeout"})
        port = body["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise reader.error(f"{where}.port", f"must be a TCP port number, got {brief(port)}", body, "port")
        return PortOpen(int(port), reader.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout"))

    async def wait(self, condition: PortOpen, ctx: StepContext) -> None:
        """Connect until the port accepts; a VM's address is awaited first. Between
        attempts the delay doubles up to two seconds."""
        target = ctx.target_context
        delay = FIRST_DELAY_S
        while True:
            await target.refresh()
            address = target.guest_address()
            if address is None:
                if not await target.wait_for_change(ctx.timeout):
                    await asyncio.sleep(MAX_DELAY_S)  # the vCenter did not answer: try again
                continue
            try:
                _, writer = await asyncio.open_connection(address, condition.port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``wait`` step kind and the ``port`` condition."""
    register(Wait())
    register(PortCondition())
