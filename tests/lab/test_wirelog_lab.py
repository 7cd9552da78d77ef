"""The wire log against the lab's vCenter: a logged connect, guest operations with guest
credentials, a fault, and guest file transfers over aiohttp, with nothing secret in the
file."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import pyVim.connect as pyvim_connect
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import SoapStubAdapter, vim

from beachhead.agent.vsphere.wire_capture import connect_logged, instrument_stub, uninstrument_stub
from beachhead.agent.vsphere.wirelog import WireLog
from tests.lab.conftest import Vc, wait_for

Spec = vim.vm.guest.ProcessManager.ProgramSpec


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _soap(records: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == "soap" and r["method"] == method]


def _masked(xml: str, name: str) -> bool:
    """Every ``name`` element of ``xml`` (there is one at least) holds ``***`` only."""
    contents = re.findall(rf"<{name}(?:\s[^>]*)?>(.*?)</{name}>", xml, re.S)
    return bool(contents) and all(content == "***" for content in contents)


def _cookie_value(stub: Any) -> str:
    match = re.search(r'vmware_soap_session="?([^";]+)', str(stub.cookie))
    assert match, stub.cookie
    return match.group(1)


async def _transfer(ssl_context: ssl.SSLContext, wire_log: WireLog, put_url: str, payload: bytes) -> None:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context), trace_configs=[wire_log.trace_config()]
        ) as session,
        session.put(put_url, data=payload) as response,
    ):
        assert response.status == 200


async def _download(ssl_context: ssl.SSLContext, wire_log: WireLog, url: str) -> bytes:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context), trace_configs=[wire_log.trace_config()]
        ) as session,
        session.get(url) as response,
    ):
        assert response.status == 200
        return await response.read()


def test_logged_connect_guest_operations_fault_and_transfers(lab: dict[str, Any], tmp_path: Path) -> None:
    vcenter = lab["vcenter"]
    guest = next(vm for vm in lab["vms"] if vm["name"] == "lin-01")
    context = ssl.create_default_context(cafile=vcenter["ca_file"])
    path = tmp_path / "wire.jsonl"
    wire_log = WireLog(path)
    payload = b"wire log payload\n" * 100
    si = connect_logged(
        wire_log, host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context
    )
    assert pyvim_connect.SoapStubAdapter is SoapStubAdapter  # the patch is gone
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        vm = next(v for v in view.view if v.name == "lin-01")
        view.Destroy()
        wait_for(lambda: vm.guest.guestOperationsReady, what="lin-01 guest operations ready")
        processes = content.guestOperationsManager.processManager
        files = content.guestOperationsManager.fileManager
        auth = vim.vm.guest.NamePasswordAuthentication(
            username=guest["guest_username"], password=guest["guest_password"]
        )
        listed = processes.ListProcessesInGuest(vm, auth)
        assert listed
        pid = processes.StartProgramInGuest(vm, auth, Spec(programPath="/bin/sh", arguments="-c 'exit 3'"))
        wrong = vim.vm.guest.NamePasswordAuthentication(username=guest["guest_username"], password="wrong-Pa55word")
        with pytest.raises(vim.fault.InvalidGuestLogin):
            processes.ListProcessesInGuest(vm, wrong)
        attributes = vim.vm.guest.FileManager.PosixFileAttributes(permissions=0o640)
        put_url = files.InitiateFileTransferToGuest(vm, auth, "/tmp/wirelog.bin", attributes, len(payload), True)
        asyncio.run(_transfer(context, wire_log, put_url, payload))
        back = files.InitiateFileTransferFromGuest(vm, auth, "/tmp/wirelog.bin")
        assert asyncio.run(_download(context, wire_log, back.url)) == payload
        files.DeleteFileInGuest(vm, auth, "/tmp/wirelog.bin")
        cookie = _cookie_value(si._stub)
        session_key = content.sessionManager.currentSession.key
    finally:
        Disconnect(si)
        wire_log.close()

    text = path.read_text()
    records = _records(path)
    for record in records:
        assert record["time"].endswith("Z") and record["duration_s"] >= 0
    # the connect: the version probe, the service content, the login, all before the rest
    probe = records[0]
    assert (probe["kind"], probe["method"], probe["status"]) == ("transfer", "GET", 200)
    assert probe["url"] == "https://127.0.0.1:443/sdk/vimServiceVersions.xml" and probe["size"] > 0
    assert [r["method"] for r in records[1:3]] == ["RetrieveServiceContent", "Login"]
    (login,) = _soap(records, "Login")
    assert login["url"] == "https://127.0.0.1:443/sdk" and login["status"] == 200
    assert _masked(login["request"], "password")
    assert re.search(rf"<userName[^>]*>{re.escape(vcenter['username'])}</userName>", login["request"])
    assert "<LoginResponse" in login["response"] and _masked(login["response"], "key")
    # guest operations, with their responses; the guest password masked
    lists = _soap(records, "ListProcessesInGuest")
    first = next(r for r in lists if r["status"] == 200)
    assert _masked(first["request"], "password")
    assert "Response" in first["response"] and "<pid>" in first["response"]
    (start,) = _soap(records, "StartProgramInGuest")
    assert start["status"] == 200 and f"<returnval>{pid}</returnval>" in start["response"]
    assert "<programPath>/bin/sh</programPath>" in start["request"] and _masked(start["request"], "password")
    # the fault: recorded with its body and type
    (fault,) = [r for r in lists if r["status"] == 500]
    assert fault["fault"] == "InvalidGuestLogin" and "InvalidGuestLogin" in fault["response"]
    assert _masked(fault["request"], "password")
    # the transfers, their URLs' ids masked in the SOAP results and in the transfer records
    (initiate,) = _soap(records, "InitiateFileTransferToGuest")
    assert "id=***" in initiate["response"]
    transfers = [r for r in records if r["kind"] == "transfer" and r is not probe]
    put, get = transfers
    assert (put["method"], put["status"], put["size"]) == ("PUT", 200, len(payload))
    assert (get["method"], get["status"], get["size"], get["received"]) == ("GET", 200, len(payload), len(payload))
    assert put["url"].endswith("/lab/guestFile?id=***") and get["url"].endswith("/lab/guestFile?id=***")
    # the session ends with the logout
    assert records[-1]["method"] == "Logout"
    # nothing secret anywhere
    transfer_ids = [parse_qs(urlsplit(url).query)["id"][0] for url in (put_url, back.url)]
    for secret in (vcenter["password"], guest["guest_password"], "wrong-Pa55word", cookie, session_key, *transfer_ids):
        assert secret not in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_instrumenting_a_smartconnect_session_records_every_call_from_any_thread(vc: Vc, tmp_path: Path) -> None:
    wire_log = WireLog(tmp_path / "wire.jsonl")
    names = ["lin-01", "lin-02", "lin-03", "win-01", "fleet-0001", "fleet-0002"]
    vms = {name: vc.vm(name) for name in names}
    lin = vms["lin-01"]
    wait_for(lambda: lin.guest.guestOperationsReady, what="lin-01 guest operations ready")
    instrument_stub(vc.si._stub, wire_log)
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(3):
                assert vms[name].name == name  # a Fetch whose answer names the VM asked about
                vc.processes.ListProcessesInGuest(lin, vc.auth("lin-01"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    uninstrument_stub(vc.si._stub)
    assert lin.name == "lin-01"  # not recorded any more
    wire_log.close()

    assert not errors
    records = _records(tmp_path / "wire.jsonl")
    assert all(record["status"] == 200 for record in records)
    assert len(_soap(records, "ListProcessesInGuest")) == 3 * len(names)
    assert all("<pid>" in record["response"] for record in _soap(records, "ListProcessesInGuest"))
    fetches = [r for r in _soap(records, "Fetch") if 'type="VirtualMachine"' in r["request"]]
    assert len(fetches) == 3 * len(names)
    by_moid = {vm._moId: name for name, vm in vms.items()}
    for record in fetches:  # each response is the answer to its own request
        moid = re.search(r'<_this[^>]*type="VirtualMachine"[^>]*>([^<]+)</_this>', record["request"])
        assert moid and f">{by_moid[moid.group(1)]}</returnval>" in record["response"], record
    assert not _soap(records, "Login")  # SmartConnect logged in before the log was attached
    assert vc.guest("lin-01")["guest_password"] not in (tmp_path / "wire.jsonl").read_text()


def test_smartconnect_behaves_the_same_with_the_log(lab: dict[str, Any], tmp_path: Path) -> None:
    vcenter = lab["vcenter"]
    context = ssl.create_default_context(cafile=vcenter["ca_file"])
    with WireLog(tmp_path / "wire.jsonl") as wire_log:
        with pytest.raises(vim.fault.InvalidLogin):
            connect_logged(
                wire_log, host="127.0.0.1", user=vcenter["username"], pwd="not-the-password", sslContext=context
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            connect_logged(
                wire_log, host="127.0.0.1", user=vcenter["username"], pwd="x", sslContext=ssl.create_default_context()
            )
        plain = SmartConnect(host="127.0.0.1", user=vcenter["username"], pwd=vcenter["password"], sslContext=context)
        Disconnect(plain)
    records = _records(tmp_path / "wire.jsonl")
    (login,) = _soap(records, "Login")
    assert (login["status"], login["fault"]) == (500, "InvalidLogin")
    assert "not-the-password" not in (tmp_path / "wire.jsonl").read_text()
    untrusted = records[-1]
    assert untrusted["kind"] == "transfer" and untrusted["status"] is None
    assert untrusted["error"].startswith("SSLCertVerificationError")
    # the first connect's probe, service content and login, the second's probe; not the plain SmartConnect
    assert len(records) == 4
