"""Directory removal and moves in the guest, with the faults vSphere gives, through plain
pyvmomi; and files the lab creates belong to the guest login."""

from __future__ import annotations

import os

import pytest
from pyVmomi import vim

from beachhead.bootstrap.lab.lab import lab_dir
from tests.lab.conftest import Vc, wait_for

GUESTS = str(lab_dir() / "guests")


def _ready(vc: Vc, name: str) -> vim.VirtualMachine:
    vm = vc.vm(name)
    wait_for(lambda: vm.guest.guestOperationsReady, what=f"{name} guest operations ready")
    return vm


def test_delete_directory_empty_recursive_and_faults(vc: Vc) -> None:
    vm, auth, files = _ready(vc, "lin-01"), vc.auth("lin-01"), vc.files
    files.MakeDirectoryInGuest(vm, auth, "/tmp/dirs/a/b", True)
    files.CreateTemporaryFileInGuest(vm, auth, "f", ".txt", "/tmp/dirs/a/b")
    with pytest.raises(vim.fault.DirectoryNotEmpty):
        files.DeleteDirectoryInGuest(vm, auth, "/tmp/dirs", False)
    path = files.CreateTemporaryFileInGuest(vm, auth, "plain", "", "/tmp")
    with pytest.raises(vim.fault.NotADirectory):
        files.DeleteDirectoryInGuest(vm, auth, path, False)
    files.MakeDirectoryInGuest(vm, auth, "/tmp/dirs/empty", False)
    files.DeleteDirectoryInGuest(vm, auth, "/tmp/dirs/empty", False)
    files.DeleteDirectoryInGuest(vm, auth, "/tmp/dirs", True)
    assert not os.path.exists(os.path.join(GUESTS, "lin-01/tmp/dirs"))
    with pytest.raises(vim.fault.FileNotFound):
        files.DeleteDirectoryInGuest(vm, auth, "/tmp/dirs", True)


def test_move_file_and_directory(vc: Vc) -> None:
    vm, auth, files = _ready(vc, "lin-02"), vc.auth("lin-02"), vc.files
    first = files.CreateTemporaryFileInGuest(vm, auth, "one", "", "/tmp")
    second = files.CreateTemporaryFileInGuest(vm, auth, "two", "", "/tmp")
    with pytest.raises(vim.fault.FileAlreadyExists):
        files.MoveFileInGuest(vm, auth, first, second, False)
    files.MoveFileInGuest(vm, auth, first, second, True)
    assert not os.path.exists(os.path.join(GUESTS, "lin-02", first.lstrip("/")))
    assert os.path.exists(os.path.join(GUESTS, "lin-02", second.lstrip("/")))
    files.MakeDirectoryInGuest(vm, auth, "/tmp/moving", False)
    files.MoveDirectoryInGuest(vm, auth, "/tmp/moving", "/tmp/moved")
    assert os.path.isdir(os.path.join(GUESTS, "lin-02/tmp/moved"))
    with pytest.raises(vim.fault.FileNotFound):
        files.MoveDirectoryInGuest(vm, auth, "/tmp/moving", "/tmp/elsewhere")
    files.DeleteDirectoryInGuest(vm, auth, "/tmp/moved", False)


def test_files_the_lab_creates_belong_to_the_guest_login(vc: Vc) -> None:
    vm, auth, files = _ready(vc, "lin-03"), vc.auth("lin-03"), vc.files
    temp = files.CreateTemporaryFileInGuest(vm, auth, "owned", "", None)
    files.MakeDirectoryInGuest(vm, auth, "/home/admin/x/y", True)
    home = os.path.join(GUESTS, "lin-03/home/admin")
    owner = os.stat(home).st_uid
    assert owner != 0
    for created in (os.path.join(GUESTS, "lin-03", temp.lstrip("/")), f"{home}/x", f"{home}/x/y"):
        assert os.stat(created).st_uid == owner, created
