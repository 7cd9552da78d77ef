"""The VM states a plan can wait for. Kept apart from the watcher so that reading a
plan does not load pyVmomi."""

from __future__ import annotations

from enum import StrEnum

from beachhead.agent.targets import OsFamily


class VmState(StrEnum):
    """States of a vSphere VM that vCenter's event stream reports."""

    POWERED_ON = "powered_on"
    TOOLS_RUNNING = "tools_running"
    GUESTOPS_READY = "guestops_ready"
    IP_ASSIGNED = "ip_assigned"

    def describe(self) -> str:
        """Human words for the state."""
        return self.value.replace("_", " ").replace("guestops", "guest operations")


def os_family_of(guest_family: str, guest_id: str) -> OsFamily:
    """The OS family VMware Tools (or, before it runs, the configured guest id) reports."""
    if guest_family:
        return OsFamily.WINDOWS if guest_family == "windowsGuest" else OsFamily.LINUX
    return OsFamily.WINDOWS if guest_id.lower().startswith("win") else OsFamily.LINUX
