"""Fixtures for the lab tests: the lab comes up once per session through the CLI
(``beachhead lab up --json``); the tests then talk to it with plain pyvmomi, asyncssh
and urllib, as any third-party client would."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from beachhead.bootstrap.lab.lab import status as lab_status
from beachhead.bootstrap.lab.lock import lab_lock
from tests.conftest import LAB_LOCK, beachhead
from tests.metadata.conftest import MetadataServer, free_port

BOOT_DELAY_S = 3
FLEET_SIZE = 17  # `lab up --vms 17`: with lin-01..03, twenty Linux VMs
FLEET = [f"fleet-{n:04d}" for n in range(1, FLEET_SIZE + 1)]
LAB_YAML = f"""
vcenter: {{host: 127.0.0.1, port: 443}}
network: {{bridge: bhlab0, subnet: 10.213.0.0/24}}
boot_delay_s: {BOOT_DELAY_S}
vms:
  - {{name: lin-01, guest_id: debian12_64Guest, os: linux, guest_username: root}}
  - {{name: lin-02, guest_id: ubuntu64Guest, os: linux, guest_username: root}}
  - {{name: lin-03, guest_id: debian12_64Guest, os: linux, guest_username: admin}}
  - {{name: win-01, guest_id: windows2019srv_64Guest, os: windows, guest_username: Administrator,
      cloudbase_init: true}}
  - {{name: con-01, guest_id: otherLinux64Guest, os: linux, console: qemu}}
"""


@pytest.fixture(scope="session")
def lab_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lab YAML the tests bring up."""
    path = tmp_path_factory.mktemp("lab") / "lab.yaml"
    path.write_text(LAB_YAML)
    return path


@pytest.fixture(scope="session")
def lab_session(lab_config: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The lab, up for the whole session and down afterwards, while the session holds
    the lab lock (taken after collection by ``tests/conftest.py``, else here)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    held = request.config.stash.get(LAB_LOCK, None)
    with contextlib.nullcontext() if held is not None else lab_lock():
        beachhead("lab", "down")
        started = beachhead("lab", "up", "--config", str(lab_config), "--vms", str(FLEET_SIZE), "--json", timeout=300)
        assert started.returncode == 0, started.stderr
        yield lab_config
        beachhead("lab", "down")


@pytest.fixture
def lab(lab_session: Path) -> dict[str, Any]:
    """The running lab's description, what ``beachhead lab status --json`` prints: read
    fresh for each test (a clone or an ``up`` changes it) through the function behind that
    command, in this process, as a CLI start per lab test cost more than many of the tests
    (test_vcenter checks that the command prints the same)."""
    state = lab_status()
    assert state is not None, "the lab is not running (beachhead lab up)"
    description: dict[str, Any] = json.loads(json.dumps(state.public()))
    return description


@dataclass
class Vc:
    """A pyvmomi connection to the lab's vCenter and the lab's description."""

    si: vim.ServiceInstance
    lab: dict[str, Any]
    ssl_context: ssl.SSLContext

    def connect(self) -> vim.ServiceInstance:
        """A new session, as the fixture's."""
        return connect(self.lab, self.ssl_context)

    @property
    def content(self) -> vim.ServiceInstanceContent:
        """The service content."""
        return self.si.RetrieveContent()

    def vm(self, name: str) -> vim.VirtualMachine:
        """The VM called ``name``."""
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [vim.VirtualMachine], True)
        try:
            return next(vm for vm in view.view if vm.name == name)
        finally:
            view.Destroy()

    def guest(self, name: str) -> dict[str, Any]:
        """The lab's entry for VM ``name`` (ip, credentials)."""
        return next(vm for vm in self.lab["vms"] if vm["name"] == name)

    def auth(self, name: str, password: str | None = None) -> vim.vm.guest.NamePasswordAuthentication:
        """Guest credentials for VM ``name`` (or a wrong password)."""
        guest = self.guest(name)
        return vim.vm.guest.NamePasswordAuthentication(
            username=guest["guest_username"], password=password or guest["guest_password"]
        )

    @property
    def processes(self) -> vim.vm.guest.ProcessManager:
        """The guest process manager."""
        return self.content.guestOperationsManager.processManager

    @property
    def files(self) -> vim.vm.guest.FileManager:
        """The guest file manager."""
        return self.content.guestOperationsManager.fileManager


@pytest.fixture
def vc(lab: dict[str, Any]) -> Iterator[Vc]:
    """pyvmomi connected with its defaults (https, port 443), verifying the lab's CA."""
    context = ssl.create_default_context(cafile=lab["vcenter"]["ca_file"])
    si = connect(lab, context)
    yield Vc(si, lab, context)
    Disconnect(si)


def connect(lab: dict[str, Any], context: ssl.SSLContext) -> vim.ServiceInstance:
    """A session with pyvmomi's defaults (https, port 443), verifying the lab's CA."""
    vcenter = lab["vcenter"]
    return SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context)


def listening(ip: str, port: int, timeout: float = 1) -> bool:
    """Whether something accepts TCP connections on ``ip:port`` now."""
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=timeout):
        return True
    return False


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


@pytest.fixture
def vsphere_uri(lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """Builds the vsphere:// target URI of a lab VM, its passwords in the environment."""
    vcenter = lab["vcenter"]
    monkeypatch.setenv("LAB_VCENTER_PASSWORD", vcenter["password"])

    def uri(name: str, guest_password: str | None = None, **parameters: str) -> str:
        guest = next(vm for vm in lab["vms"] if vm["name"] == name)
        variable = "LAB_GUEST_PASSWORD_" + name.replace("-", "_").upper()
        monkeypatch.setenv(variable, guest_password or guest["guest_password"])
        query = {
            "password_env": "LAB_VCENTER_PASSWORD",
            "guest_user": guest["guest_username"],
            "guest_password_env": variable,
            "ca_file": vcenter["ca_file"],
            **parameters,
        }
        user = quote(vcenter["username"], safe="")
        return f"vsphere://{user}@127.0.0.1/{name}?" + "&".join(f"{k}={v}" for k, v in query.items())

    return uri


@contextlib.contextmanager
def lab_metadata_server(
    lab: dict[str, Any], directory: Path, address: str | None = None, port: int | None = None
) -> Iterator[MetadataServer]:
    """Beachhead's metadata server on a lab address (the gateway unless ``address``), on
    ``port`` or a free one, knowing the guests by their DHCP leases; stopped afterwards,
    with no internal error in its log."""
    network = lab["network"]
    host = address or network["gateway"]
    directory.mkdir(parents=True, exist_ok=True)
    server = MetadataServer(directory, port or free_port(host), ("--leases", network["dhcp_leases"]), host).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.internal_errors() == []
