"""The ``winrm`` channel: commands and files over WS-Management / WinRS on a Windows
guest's network, through pywinrm (sessions in :mod:`beachhead.plugins.winrm_session`,
loaded when one is opened).

It reaches a ``winrm://USER@HOST`` host, or a ``vsphere://`` VM at the address VMware
Tools reports (or the target's ``address``) with the target's WinRM route: NTLM (with
message encryption over http), Basic over https, or a client certificate over https.
On Windows it comes first: it streams output and files and needs nothing but WinRM,
while guest operations (next) poll for exit codes and go through vCenter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from beachhead.agent.channel import Capability, ChannelInfo, Direction, Medium, Prerequisite, Unmet
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.targets import OsFamily, WinrmTransport

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext

NAME = "winrm"

INFO = ChannelInfo(
    name=NAME,
    summary="WS-Management / WinRS on the guest's network: streamed commands and transfers",
    direction=Direction.PUSH,
    medium=Medium.GUEST_NETWORK,
    prerequisites=(Prerequisite.GUEST_NETWORK, Prerequisite.CREDENTIALS),
    capabilities=frozenset({Capability.RUN, Capability.PUT_FILE, Capability.GET_FILE}),
    preference={OsFamily.WINDOWS: 100},
    target_schemes=frozenset({"winrm", "vsphere"}),
)


class WinrmChannel:
    """The winrm channel (see the module's description)."""

    info = INFO

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """The WinRM route and its credentials, and an address to connect to."""
        route = target.target.winrm
        if route is None:
            return [Unmet("no winrm credentials (winrm_user, winrm_password_env, or a guest login)")]
        if route.transport is WinrmTransport.CERTIFICATE:
            if route.cert_pem is None or route.cert_key_pem is None:
                return [Unmet("the certificate transport needs winrm_cert_pem and winrm_cert_key_pem")]
        elif route.password is None:
            return [Unmet(f"no WinRM password for {route.user} (winrm_password_env)")]
        if target.guest_address() is None:
            if target.vm_problem:
                return [Unmet(f"no guest address: {target.vm_problem}")]
            return [Unmet("no guest address yet (VMware Tools has reported none)", transient=True)]
        return []

    async def connect(self, target: TargetContext) -> Any:
        """Open a WinRS session on the guest."""
        from beachhead.plugins.winrm_session import open_session

        return await open_session(target)


@hookimpl
def beachhead_register_channels(register: Any) -> None:
    """Register the winrm channel."""
    register(WinrmChannel())
