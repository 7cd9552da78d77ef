"""The ``guestops`` channel: commands and files through VMware Tools guest operations,
by the vSphere API alone, with no guest network (sessions in
:mod:`beachhead.plugins.guestops_session`, loaded when one is opened).

It needs the target's guest-operations login (``guest_user``, ``guest_password_env``),
a powered-on VM and VMware Tools running: while the VM boots, selection waits for the
vCenter watcher to report guest operations ready.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beachhead.agent.channel import Capability, ChannelInfo, Direction, Medium, Prerequisite, Unmet
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.targets import OsFamily

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext

NAME = "guestops"

INFO = ChannelInfo(
    name=NAME,
    summary="VMware Tools guest operations through vCenter: no guest network needed",
    direction=Direction.PUSH,
    medium=Medium.HYPERVISOR_API,
    prerequisites=(Prerequisite.VMWARE_TOOLS, Prerequisite.CREDENTIALS),
    capabilities=frozenset({Capability.RUN, Capability.PUT_FILE, Capability.GET_FILE}),
    preference={OsFamily.LINUX: 50, OsFamily.WINDOWS: 50},
    target_schemes=frozenset({"vsphere"}),
)


class GuestopsChannel:
    """The guestops channel (see the module's description)."""

    info = INFO

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """The guest login, the vCenter, a powered-on VM, guest operations ready."""
        if not target.target.guest_user or target.target.guest_password is None:
            return [Unmet("no guest login (guest_user and guest_password_env)")]
        if unmet := target.powered_on_unmet():
            return unmet
        assert target.snapshot is not None
        if not target.snapshot.guestops_ready:
            return [Unmet("guest operations not ready (VMware Tools not running)", transient=True)]
        return []

    async def connect(self, target: TargetContext) -> Any:
        """Open a guest operations session on the target's VM."""
        from beachhead.plugins.guestops_session import open_session

        return await open_session(target)


@hookimpl
def beachhead_register_channels(register: Any) -> None:
    """Register the guestops channel."""
    register(GuestopsChannel())
