"""The whole Windows flow on win-01, pull then push: a plan publishes user-data and a
WinRM client certificate on the metadata server, powers the VM on, waits until the
guest's cloudbase-init (the lab's stand-in, with cloudbase-init's own metadata client
and Beachhead's shipped cloudbase-init.conf) has fetched its user-data, waits for
WinRM, then goes on over `winrm` with certificate authentication, which works only
because cloudbase-init imported and mapped that certificate at this boot."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyVim.task import WaitForTask
from winrm.protocol import Protocol

from beachhead.bootstrap.lab.lab import lab_dir
from tests.conftest import beachhead, write_plan
from tests.lab.conftest import Vc, lab_metadata_server
from tests.metadata.cloudbase_init import client_certificate
from tests.metadata.conftest import MetadataServer

TOOLS = lab_dir() / "guests" / "win-01.tools"
USER_DATA = "#ps1_sysnative\nWrite-Output 'first boot'\n"
UPN = "administrator@win-01.lab.invalid"


def _whoami_over_certificate(ip: str, cert: Path, key: Path, ca_file: str) -> str:
    """``whoami`` over https with certificate authentication, as pywinrm does it."""
    protocol = Protocol(
        f"https://{ip}:5986/wsman", transport="certificate", cert_pem=str(cert), cert_key_pem=str(key),
        server_cert_validation="validate", ca_trust_path=ca_file,
    )  # fmt: skip
    shell = protocol.open_shell()
    try:
        command = protocol.run_command(shell, "whoami")
        stdout, _, _ = protocol.get_command_output(shell, command)
        return bytes(stdout).decode().strip()
    finally:
        protocol.close_shell(shell)


@pytest.fixture
def metadata_server(lab: dict[str, Any], tmp_path: Path) -> Iterator[MetadataServer]:
    """Beachhead's metadata server where cloudbase-init.conf points guests:
    http://169.254.169.254/ (port 80), recognising guests by their DHCP leases."""
    with lab_metadata_server(lab, tmp_path / "metadata", lab["network"]["metadata_address"], 80) as server:
        yield server


def test_a_plan_bootstraps_windows_through_cloudbase_init_then_winrm_certificate_auth(
    lab: dict[str, Any], vc: Vc, metadata_server: MetadataServer, tmp_path: Path, vsphere_uri: Callable[..., str]
) -> None:
    win = vc.vm("win-01")
    WaitForTask(win.PowerOffVM_Task())  # as a freshly provisioned VM is
    try:
        cert, key = tmp_path / "admin-cert.pem", tmp_path / "admin-key.pem"
        cert.write_text(client_certificate(UPN, key_file=key))
        ip, ca_file = vc.guest("win-01")["ip"], lab["vcenter"]["ca_file"]
        (tmp_path / "user-data.ps1").write_text(USER_DATA)
        plan = write_plan(
            tmp_path,
            """
            name: windows-first-boot
            os: windows
            channels: [winrm, pull]
            steps:
              - userdata: {user_data: user-data.ps1, client_certs: [admin-cert.pem]}
              - power: on
              - wait: {userdata_fetched: {timeout: 120}}
              - wait: {port: 5986, timeout: 60}
              - run: {command: whoami, shell: cmd}
            """,
        )
        uri = vsphere_uri(
            "win-01", winrm_scheme="https", winrm_transport="certificate", winrm_ca_file=ca_file,
            winrm_cert_pem=str(cert), winrm_cert_key_pem=str(key),
        )  # fmt: skip
        env = metadata_server.client_env
        done = beachhead("run", str(plan), "--target", uri, "--json", timeout=300, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = json.loads(done.stdout)
        whoami = result["steps"][-1]
        assert whoami["channel"] == "winrm", whoami
        assert whoami["stdout"].strip().lower() == "win-01\\administrator", whoami

        # What the guest's cloudbase-init read and did, in its own record.
        record = json.loads((TOOLS / "cloudbase-init" / "metadata.json").read_text())
        assert record["instance_id"] == "win-01"
        assert base64.b64decode(record["user_data"]).decode() == USER_DATA
        assert [line.split()[1:] for line in record["cert_mappings"]] == [[UPN, "Administrator"]]
        assert _whoami_over_certificate(ip, cert, key, ca_file).lower() == "win-01\\administrator"
        # A certificate with the same UPN that cloudbase-init never imported is refused.
        other_cert, other_key = tmp_path / "other-cert.pem", tmp_path / "other-key.pem"
        other_cert.write_text(client_certificate(UPN, key_file=other_key))
        with pytest.raises(requests.exceptions.ConnectionError):
            _whoami_over_certificate(ip, other_cert, other_key, ca_file)

        undo = beachhead("undo", result["run_id"], env=env)
        assert undo.returncode == 0, undo.stdout + undo.stderr
    finally:
        if win.runtime.powerState != "poweredOn":
            WaitForTask(win.PowerOnVM_Task())
