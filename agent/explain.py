"""``beachhead channels --target``: which channel each capability would use on a guest
now, and why each other would not, from live prerequisites (the VM's state as its
vCenter reports it). It opens no channel and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from beachhead.agent.channel import Capability
from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.plans import Plan
from beachhead.agent.registry import Plugins
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import OsFamily, Target

CAPABILITY_ORDER = (
    Capability.RUN,
    Capability.PUT_FILE,
    Capability.GET_FILE,
    Capability.TYPE_KEYS,
    Capability.PUBLISH_USERDATA,
)


@dataclass
class Explanation:
    """Per capability, each candidate channel in order with its verdict."""

    target: str
    os: str
    state: str
    capabilities: dict[Capability, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def can_run(self) -> bool:
        """True when some channel would be tried for commands now."""
        return any(verdict["usable"] == "yes" for verdict in self.capabilities.get(Capability.RUN, []))

    def to_json(self) -> dict[str, Any]:
        """The explanation as ``--json`` prints it."""
        return {
            "target": self.target,
            "os": self.os,
            "vm_state": self.state or None,
            "capabilities": {str(capability): verdicts for capability, verdicts in self.capabilities.items()},
        }


def _vm_state(context: TargetContext) -> str:
    snapshot = context.snapshot
    if context.vm_problem:
        return f"vCenter: {context.vm_problem}"
    if snapshot is None:
        return ""
    address = context.guest_address() or "no address"
    return f"{snapshot.power_state}, tools {snapshot.tools_running_status or 'unknown'}, {address}"


async def explain_channels(
    target: Target, os_family: OsFamily | None, plugins: Plugins, settings: RunSettings
) -> Explanation:
    """Explain the channel choice for every capability on ``target``."""
    run = RunContext(plugins, settings)
    try:
        context = TargetContext(run, Plan(name="channels", steps=(), os=os_family), target)
        await context.refresh()
        explanation = Explanation(target.name, str(context.os), _vm_state(context))
        for capability in CAPABILITY_ORDER:
            verdicts = context.selector.verdicts(capability)
            chosen = next((verdict.channel for verdict in verdicts if verdict.usable), None)
            rows = []
            for verdict in verdicts:
                if verdict.channel == chosen:
                    words = "would be used"
                elif verdict.usable:
                    words = f"fallback after {chosen}"
                else:
                    words = f"passed over: {verdict.reason}"
                rows.append({"channel": verdict.channel, "usable": "yes" if verdict.usable else "no", "verdict": words})
            if not rows:
                rows.append(
                    {"channel": "-", "usable": "no", "verdict": "no installed channel has this capability here"}
                )
            explanation.capabilities[capability] = rows
        return explanation
    finally:
        await run.close()
