"""win-01's WinRM endpoint, reached by pywinrm unchanged at the guest's DHCP address:
http with NTLM message encryption, https verified against the lab CA; commands run
through the Windows stand-in and write into the guest's drive; power-off stops it."""

from __future__ import annotations

import winrm
from pyVim.task import WaitForTask

from beachhead.bootstrap.lab.lab import lab_dir
from tests.lab.conftest import Vc, listening, wait_for

GUESTS = lab_dir() / "guests"


def test_pywinrm_reaches_win01_over_http_and_https(vc: Vc) -> None:
    guest = vc.guest("win-01")
    ip, user, password = guest["ip"], guest["guest_username"], guest["guest_password"]
    wait_for(lambda: listening(ip, 5985) and listening(ip, 5986), timeout=30, what="win-01 listening on 5985/5986")

    http = winrm.Session(f"http://{ip}:5985/wsman", auth=(user, password), transport="ntlm")
    result = http.run_cmd("hostname")
    assert (result.status_code, result.std_out.strip().lower()) == (0, b"win-01")
    written = http.run_cmd(r"echo written by pywinrm> C:\winrm-endpoint.txt")
    assert written.status_code == 0, written.std_err
    assert (GUESTS / "win-01" / "C" / "winrm-endpoint.txt").read_bytes() == b"written by pywinrm\r\n"

    https = winrm.Session(
        f"https://{ip}:5986/wsman",
        auth=(user, password),
        transport="ntlm",
        server_cert_validation="validate",
        ca_trust_path=vc.lab["vcenter"]["ca_file"],
    )
    result = https.run_cmd("type", [r"C:\winrm-endpoint.txt"])
    assert (result.status_code, result.std_out) == (0, b"written by pywinrm\r\n")

    wrong = winrm.Session(f"http://{ip}:5985/wsman", auth=(user, "not-the-password"), transport="ntlm")
    try:
        wrong.run_cmd("hostname")
    except winrm.exceptions.InvalidCredentialsError:
        pass
    else:
        raise AssertionError("a wrong password was accepted")


def test_power_off_stops_the_endpoint(vc: Vc) -> None:
    guest = vc.guest("win-01")
    ip = guest["ip"]
    vm = vc.vm("win-01")
    wait_for(lambda: listening(ip, 5985), timeout=30, what="win-01 listening on 5985")
    WaitForTask(vm.PowerOffVM_Task())
    try:
        wait_for(lambda: not listening(ip, 5985), timeout=30, what="5985 closed after power-off")
    finally:
        WaitForTask(vm.PowerOnVM_Task())
    wait_for(lambda: listening(ip, 5985), timeout=30, what="5985 open again after power-on")
    session = winrm.Session(
        f"http://{ip}:5985/wsman", auth=(guest["guest_username"], guest["guest_password"]), transport="ntlm"
    )
    assert session.run_cmd("echo", ["back"]).std_out == b"back\r\n"
