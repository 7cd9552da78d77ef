"""How property changes become typed VM events, and which states satisfy a wait."""

from __future__ import annotations

from beachhead.agent.vsphere.states import VmState
from beachhead.agent.vsphere.watcher import EventKind, GuestNic, VmSnapshot, changes_between

OFF = VmSnapshot("vm-1", name="web", power_state="poweredOff", tools_running_status="guestToolsNotRunning")


def test_a_vm_first_seen_is_not_news() -> None:
    assert changes_between(None, OFF) == []


def test_a_boot_reports_each_change_once() -> None:
    on = VmSnapshot("vm-1", name="web", power_state="poweredOn", tools_running_status="guestToolsNotRunning")
    booted = VmSnapshot(
        "vm-1",
        name="web",
        power_state="poweredOn",
        tools_running_status="guestToolsRunning",
        guestops_ready=True,
        ip="10.0.0.5",
        net=(GuestNic("00:50:56:00:00:01", ("10.0.0.5",)),),
    )
    assert [e.kind for e in changes_between(OFF, on)] == [EventKind.POWERED_ON]
    events = changes_between(on, booted)
    assert [e.kind for e in events] == [EventKind.TOOLS_RUNNING, EventKind.GUESTOPS_READY, EventKind.IP_ASSIGNED]
    assert events[-1].detail == {"ip": "10.0.0.5", "net": [{"mac": "00:50:56:00:00:01", "addresses": ["10.0.0.5"]}]}
    assert changes_between(booted, booted) == []
    assert [e.kind for e in changes_between(booted, OFF)] == [
        EventKind.POWERED_OFF,
        EventKind.TOOLS_STOPPED,
        EventKind.GUESTOPS_UNAVAILABLE,
    ]


def test_link_local_addresses_are_not_an_assigned_ip() -> None:
    assert not VmSnapshot("vm-1", ip="169.254.3.4").satisfies(VmState.IP_ASSIGNED)
    assert not VmSnapshot("vm-1", ip="fe80::1").satisfies(VmState.IP_ASSIGNED)
    assert VmSnapshot("vm-1", ip="2001:db8::5").satisfies(VmState.IP_ASSIGNED)
    assert VmSnapshot("vm-1", power_state="poweredOn").satisfies(VmState.POWERED_ON)
    assert not OFF.satisfies(VmState.TOOLS_RUNNING)
