"""The GuestAuthManager, as third-party guest-operations clients use it: validate the
credentials first, acquire a ticket, run a program with it, release it."""

from __future__ import annotations

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from tests.lab.conftest import Vc, wait_for

Spec = vim.vm.guest.ProcessManager.ProgramSpec


def _ready(vc: Vc, name: str) -> vim.VirtualMachine:
    vm = vc.vm(name)
    wait_for(lambda: vm.guest.guestOperationsReady, what=f"{name} guest operations ready")
    return vm


def test_the_auth_manager_is_beside_the_process_and_file_managers(vc: Vc) -> None:
    manager = vc.content.guestOperationsManager
    assert isinstance(manager.authManager, vim.vm.guest.AuthManager)
    assert manager.authManager._moId == "guestOperationsAuthManager"


@pytest.mark.parametrize("name", ["lin-01", "win-01"])
def test_validate_then_run_then_acquire_and_release(vc: Vc, name: str) -> None:
    vm = _ready(vc, name)
    auth_manager = vc.content.guestOperationsManager.authManager
    auth = vc.auth(name)
    assert auth_manager.ValidateCredentialsInGuest(vm, auth) is None
    with pytest.raises(vim.fault.InvalidGuestLogin):
        auth_manager.ValidateCredentialsInGuest(vm, vc.auth(name, password="wrong"))
    program = (
        Spec(programPath=r"C:\Windows\System32\cmd.exe", arguments="/c exit 4")
        if name == "win-01"
        else Spec(programPath="/bin/sh", arguments="-c 'exit 4'")
    )
    ticket = auth_manager.AcquireCredentialsInGuest(vm, auth)
    assert isinstance(ticket, vim.vm.guest.TicketedSessionAuthentication) and ticket.ticket
    assert auth_manager.ValidateCredentialsInGuest(vm, ticket) is None
    pid = vc.processes.StartProgramInGuest(vm, ticket, program)

    def ended() -> vim.vm.guest.ProcessManager.ProcessInfo | None:
        (info,) = vc.processes.ListProcessesInGuest(vm, ticket, [pid])
        return info if info.endTime else None

    assert wait_for(ended, what=f"pid {pid} finished").exitCode == 4
    auth_manager.ReleaseCredentialsInGuest(vm, ticket)
    with pytest.raises(vim.fault.InvalidGuestLogin):
        auth_manager.ValidateCredentialsInGuest(vm, ticket)
    with pytest.raises(vim.fault.InvalidGuestLogin):
        auth_manager.AcquireCredentialsInGuest(vm, vc.auth(name, password="wrong"))


def test_checks_come_in_vsphere_order(vc: Vc) -> None:
    """Power state first, then the login, as for every guest operation."""
    vm = _ready(vc, "lin-03")
    auth_manager = vc.content.guestOperationsManager.authManager
    WaitForTask(vm.PowerOffVM_Task())
    try:
        with pytest.raises(vim.fault.InvalidPowerState):
            auth_manager.ValidateCredentialsInGuest(vm, vc.auth("lin-03", password="wrong"))
    finally:
        WaitForTask(vm.PowerOnVM_Task())
    _ready(vc, "lin-03")
    with pytest.raises(vim.fault.InvalidGuestLogin):  # the lab's guests know only passwords
        auth_manager.AcquireCredentialsInGuest(vm, vim.vm.guest.SSPIAuthentication(sspiToken="dG9rZW4="))
    ticket = auth_manager.AcquireCredentialsInGuest(vm, vc.auth("lin-03"))
    with pytest.raises(vim.fault.OperationNotSupportedByGuest):
        auth_manager.AcquireCredentialsInGuest(vm, ticket)
    auth_manager.ReleaseCredentialsInGuest(vm, ticket)
