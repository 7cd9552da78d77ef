"""The wire log: its JSON lines, its redaction of every kind of secret however the XML
is written, its aiohttp trace config against a real aiohttp server, and the pyvmomi
hooks where no vCenter is needed (the lab tests cover the rest)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import stat
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pyVim.connect as pyvim_connect
from aiohttp import web
from pyVmomi import SoapStubAdapter, vim

from beachhead.agent.secrets import Secret
from beachhead.agent.vsphere.wire_capture import _decode_body, connect_logged, instrument_stub, recording_connects
from beachhead.agent.vsphere.wire_redaction import is_secret_name
from beachhead.agent.vsphere.wirelog import WireLog

SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">'
    "{header}<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
)
SECRET = "Hunter2-secret"


def envelope(body: str, header: str = "") -> bytes:
    """A SOAP envelope around ``body``."""
    return SOAP.format(body=body, header=header).encode()


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[WireLog]:
    """A wire log in a fresh directory, closed after the test."""
    wire_log = WireLog(tmp_path / "wire.jsonl")
    yield wire_log
    wire_log.close()


def lines(wire_log: WireLog) -> list[dict[str, Any]]:
    """The records written so far (every write is flushed)."""
    return [json.loads(line) for line in wire_log.path.read_text().splitlines()]


def exchange(wire_log: WireLog, request: str, response: str = "", **fields: Any) -> dict[str, Any]:
    """Record one SOAP exchange of ``request``/``response`` bodies; its record."""
    fields = {"status": 200, "duration_s": 0.01, **fields}
    wire_log.soap(
        url="https://vc.example:443/sdk",
        request=envelope(request),
        response=envelope(response) if response else b"",
        **fields,
    )
    return lines(wire_log)[-1]


# -- the record --------------------------------------------------------------------------------
def test_a_soap_record_is_one_json_line_with_the_exchange(wire: WireLog) -> None:
    request = (
        '<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this>'
        "</RetrieveServiceContent>"
    )
    response = (
        '<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><about><name>VMware vCenter Server</name>'
        "</about></returnval></RetrieveServiceContentResponse>"
    )
    before = datetime.now(UTC)
    record = exchange(wire, request, response, duration_s=0.25, headers={"SOAPAction": "urn:vim25/8.0.3.0"})
    after = datetime.now(UTC)
    assert wire.path.read_text().count("\n") == 1
    assert record["kind"] == "soap"
    assert record["method"] == "RetrieveServiceContent"
    assert (record["url"], record["status"], record["duration_s"]) == ("https://vc.example:443/sdk", 200, 0.25)
    assert record["request"] == envelope(request).decode()  # nothing secret: the XML as it was sent
    assert record["response"] == envelope(response).decode()
    assert record["headers"] == {"SOAPAction": "urn:vim25/8.0.3.0"}
    started = datetime.fromisoformat(record["time"])
    assert record["time"].endswith("Z") and started.tzinfo is not None
    assert before - timedelta(seconds=0.3) <= started <= after - timedelta(seconds=0.2)


def test_a_transfer_record(wire: WireLog) -> None:
    wire.transfer(method="PUT", url="https://vc.example/folder/a.iso?dsName=ds1", status=201, size=42, duration_s=1.5)
    (record,) = lines(wire)
    assert {k: record[k] for k in ("kind", "method", "url", "status", "size", "duration_s")} == {
        "kind": "transfer",
        "method": "PUT",
        "url": "https://vc.example/folder/a.iso?dsName=ds1",
        "status": 201,
        "size": 42,
        "duration_s": 1.5,
    }
    assert "error" not in record


def test_the_file_is_private_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "wire.jsonl"
    path.write_text('{"kind": "earlier"}\n')
    path.chmod(0o644)
    with WireLog(path) as wire_log:
        wire_log.transfer(method="GET", url="http://h/x", status=200, size=1, duration_s=0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with WireLog(tmp_path / "new.jsonl") as fresh:
        assert stat.S_IMODE(fresh.path.stat().st_mode) == 0o600
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["earlier", "transfer"]


def test_close_is_idempotent_and_later_records_are_dropped(tmp_path: Path) -> None:
    wire_log = WireLog(tmp_path / "wire.jsonl")
    wire_log.close()
    wire_log.close()
    wire_log.transfer(method="GET", url="http://h/x", status=200, size=1, duration_s=0)
    assert wire_log.path.read_text() == ""


def test_concurrent_writers_never_interleave_lines(wire: WireLog) -> None:
    request = f'<Login xmlns="urn:vim25"><userName>u</userName><password>{SECRET}</password></Login>'

    def write(n: int) -> None:
        for i in range(40):
            wire.soap(url=f"https://vc/{n}/{i}", request=envelope(request), response=b"", status=200, duration_s=0)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = lines(wire)
    assert len(records) == 320 and len({r["url"] for r in records}) == 320
    assert SECRET not in wire.path.read_text()


# -- passwords, however written ------------------------------------------------------------------
PASSWORD_FORMS = {
    "plain": "<{n}>{s}</{n}>",
    "prefixed": '<vim25:{n} xmlns:vim25="urn:vim25">{s}</vim25:{n}>',
    "attributes": '<{n} versionId="6.5" xsi:type="xsd:string">{s}</{n}>',
    "quoted >": "<{n} note=\"a>b\" other='c>d'>{s}</{n}>",
    "whitespace": "<{n}\n\t>\n  {s}\n</{n}\n>",
    "cdata": "<{n}><![CDATA[{s}]]></{n}>",
    "character references": "<{n}>&#72;unter2&#x2d;secret</{n}>",
    "comment inside": "<{n}>Hunter2<!-- split -->-secret</{n}>",
    "child elements": "<{n}><value>{s}</value><plainText>true</plainText></{n}>",
    "default namespace": '<{n} xmlns="urn:other">{s}</{n}>',
}


@pytest.mark.parametrize("name", ["password", "pwd", "Password", "passwd", "newPassword", "PASSWORD", "oldPassword"])
@pytest.mark.parametrize("form", list(PASSWORD_FORMS))
def test_password_elements_are_masked_however_written(wire: WireLog, name: str, form: str) -> None:
    element = PASSWORD_FORMS[form].format(n=name, s=SECRET)
    record = exchange(wire, f'<ChangePassword xmlns="urn:vim25"><user>admin</user>{element}</ChangePassword>')
    text = wire.path.read_text()
    assert "Hunter2" not in text
    assert "***" in record["request"] and "<user>admin</user>" in record["request"]
    assert record["method"] == "ChangePassword"


def test_guest_credentials_in_name_password_authentication(wire: WireLog) -> None:
    request = (
        '<StartProgramInGuest xmlns="urn:vim25"><_this type="GuestProcessManager">guestOperationsProcessManager</_this>'
        '<vm type="VirtualMachine">vm-45</vm><auth xsi:type="NamePasswordAuthentication">'
        f"<interactiveSession>false</interactiveSession><username>root</username><password>{SECRET}</password></auth>"
        "<spec><programPath>/bin/sh</programPath><arguments>-c 'echo hi'</arguments></spec></StartProgramInGuest>"
    )
    record = exchange(
        wire,
        request,
        '<StartProgramInGuestResponse xmlns="urn:vim25"><returnval>4242</returnval></StartProgramInGuestResponse>',
    )
    assert record["method"] == "StartProgramInGuest"
    assert "<username>root</username><password>***</password>" in record["request"]
    assert "<arguments>-c 'echo hi'</arguments>" in record["request"]
    assert "<returnval>4242</returnval>" in record["response"]
    assert SECRET not in wire.path.read_text()


def test_guest_environment_values_are_masked_and_names_kept(wire: WireLog) -> None:
    request = (
        '<StartProgramInGuest xmlns="urn:vim25"><spec><programPath>/bin/sh</programPath>'
        "<envVariables>ROLE=web</envVariables><envVariables>API_TOKEN=tok-0123456789</envVariables>"
        "<envVariables>EMPTY=</envVariables></spec></StartProgramInGuest>"
    )
    record = exchange(wire, request)
    assert (
        "<envVariables>ROLE=***</envVariables><envVariables>API_TOKEN=***</envVariables>"
        "<envVariables>EMPTY=***</envVariables>"
    ) in record["request"]
    assert "tok-0123456789" not in wire.path.read_text()


@pytest.mark.parametrize("well_formed", [True, False])
def test_secret_attributes_are_masked(wire: WireLog, well_formed: bool) -> None:
    body = (
        '<Connect xmlns="urn:vim25" xmlns:a="urn:a"><host name="esx1" password="attr-Secret-1" '
        "a:sessionId='attr-Secret-2' note=\"password=x\"/></Connect>"
    )
    if not well_formed:
        body += "<unclosed>"
    record = exchange(wire, body)
    assert 'name="esx1" password="***"' in record["request"] and "a:sessionId='***'" in record["request"]
    assert "attr-Secret" not in wire.path.read_text()


def test_secret_names() -> None:
    for name in (
        "password",
        "newPassword",
        "pwd",
        "passwd",
        "sessionID",
        "cloneTicket",
        "samlToken",
        "vcSessionCookie",
    ):
        assert is_secret_name(name), name
    for name in ("userName", "key", "ticketType", "tokenType", "programPath", "id"):
        assert not is_secret_name(name), name


# -- session ids and tickets ---------------------------------------------------------------------
LOGIN = (
    '<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this>'
    "<userName>admin</userName><password>pw-123456</password></Login>"
)
SESSION_KEY = "52e8a3c0-7d41-4e26-b0a4-8d2c3e4f5a6b"


@pytest.mark.parametrize(
    "operation", ["Login", "LoginExtensionByCertificate", "LoginBySSPI", "ImpersonateUser", "CloneSession"]
)
def test_the_session_key_of_a_login_is_masked_and_stays_masked(wire: WireLog, operation: str) -> None:
    request = LOGIN.replace("Login", operation)
    response = (
        f'<{operation}Response xmlns="urn:vim25"><returnval><key>{SESSION_KEY}</key><userName>admin</userName>'
        f"<fullName>Admin</fullName></returnval></{operation}Response>"
    )
    record = exchange(wire, request, response)
    assert "<key>***</key><userName>admin</userName>" in record["response"]
    # the key comes back later inside other text (govmomi's session-scoped views, a message)
    later = exchange(
        wire,
        '<DestroyView xmlns="urn:vim25"><_this type="ContainerView">session['
        + SESSION_KEY
        + "]8ffe6b50</_this></DestroyView>",
        "",
        error=f"session {SESSION_KEY} is gone",
    )
    assert "session[***]8ffe6b50" in later["request"] and later["error"] == "session *** is gone"
    assert SESSION_KEY not in wire.path.read_text()


@pytest.mark.parametrize(
    "type_attribute",
    ['xsi:type="UserSession"', 'xsi:type="vim25:UserSession" xmlns:vim25="urn:vim25"',
     'xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="UserSession"'],
)  # fmt: skip
def test_a_user_session_read_as_a_property_has_its_key_masked(wire: WireLog, type_attribute: str) -> None:
    response = (
        f'<FetchResponse xmlns="urn:vim25"><returnval {type_attribute}><key>{SESSION_KEY}</key>'
        "<userName>admin</userName></returnval></FetchResponse>"
    )
    record = exchange(wire, '<Fetch xmlns="urn:vim25"><prop>currentSession</prop></Fetch>', response)
    assert "<key>***</key><userName>admin</userName>" in record["response"]
    sessions = (
        '<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><propSet><name>sessionList</name>'
        f'<val xsi:type="ArrayOfUserSession"><UserSession><key>{SESSION_KEY}-2</key><userName>bob</userName>'
        "</UserSession></val></propSet></objects></returnval></RetrievePropertiesExResponse>"
    )
    record = exchange(wire, "<RetrievePropertiesEx/>", sessions)
    assert "<UserSession><key>***</key><userName>bob</userName>" in record["response"]
    assert SESSION_KEY not in wire.path.read_text()


def test_an_option_key_does_not_look_like_a_session_key(wire: WireLog) -> None:
    response = (
        '<FetchResponse xmlns="urn:vim25"><returnval xsi:type="ArrayOfOptionValue">'
        '<OptionValue><key>guestinfo.hostname</key><value xsi:type="xsd:string">web-01</value></OptionValue>'
        f'<OptionValue><key>guestinfo.admin.password</key><value xsi:type="xsd:string">{SECRET}</value></OptionValue>'
        "</returnval></FetchResponse>"
    )
    record = exchange(wire, '<Fetch xmlns="urn:vim25"><prop>config.extraConfig</prop></Fetch>', response)
    assert "<key>guestinfo.hostname</key>" in record["response"] and ">web-01</value>" in record["response"]
    assert "<key>guestinfo.admin.password</key>" in record["response"]
    assert SECRET not in wire.path.read_text()


def test_cloud_init_data_in_guestinfo_is_masked_wherever_it_appears(wire: WireLog) -> None:
    packed = base64.b64encode(gzip.compress(f"#cloud-config\npassword: {SECRET}\n".encode(), mtime=0)).decode()
    options = "".join(
        f'<extraConfig><key>{key}</key><value xsi:type="xsd:string">{value}</value></extraConfig>'
        for key, value in (("guestinfo.userdata", packed), ("guestinfo.userdata.encoding", "gzip+base64"))
    )
    record = exchange(wire, f'<ReconfigVM_Task xmlns="urn:vim25"><spec>{options}</spec></ReconfigVM_Task>')
    assert '<key>guestinfo.userdata</key><value xsi:type="xsd:string">***</value>' in record["request"]
    assert ">gzip+base64</value>" in record["request"]  # the encoding is no secret
    # Read back later (a property read, or any text): masked there too.
    exchange(wire, "<RetrievePropertiesEx/>", f"<RetrievePropertiesExResponse>{packed}</RetrievePropertiesExResponse>")
    assert packed not in wire.path.read_text()


def test_session_is_active_and_terminate_session_requests(wire: WireLog) -> None:
    record = exchange(
        wire,
        f'<SessionIsActive xmlns="urn:vim25"><sessionID>{SESSION_KEY}</sessionID><userName>admin</userName>'
        "</SessionIsActive>",
        '<SessionIsActiveResponse xmlns="urn:vim25"><returnval>true</returnval></SessionIsActiveResponse>',
    )
    assert "<sessionID>***</sessionID><userName>admin</userName>" in record["request"]
    assert "<returnval>true</returnval>" in record["response"]
    record = exchange(
        wire, f'<TerminateSession xmlns="urn:vim25"><sessionId>{SESSION_KEY}x</sessionId></TerminateSession>'
    )
    assert "<sessionId>***</sessionId>" in record["request"]
    assert SESSION_KEY not in wire.path.read_text()


def test_tickets_are_masked(wire: WireLog) -> None:
    clone = "cst-VCT-52f7a1e9-1c2d-4b3a-9e8f-7a6b5c4d3e2f"
    record = exchange(
        wire,
        '<AcquireCloneTicket xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this>'
        "</AcquireCloneTicket>",
        f'<AcquireCloneTicketResponse xmlns="urn:vim25"><returnval>{clone}</returnval></AcquireCloneTicketResponse>',
    )
    assert record["method"] == "AcquireCloneTicket"
    assert "<returnval>***</returnval>" in record["response"]
    assert '<_this type="SessionManager">SessionManager</_this>' in record["request"]
    record = exchange(wire, f'<CloneSession xmlns="urn:vim25"><cloneTicket>{clone}</cloneTicket></CloneSession>')
    assert "<cloneTicket>***</cloneTicket>" in record["request"]
    service = "cst-VCT-service-ticket-0123456789"
    record = exchange(
        wire,
        '<AcquireGenericServiceTicket xmlns="urn:vim25"><spec xsi:type="SessionManagerHttpServiceRequestSpec">'
        "<method>httpGet</method><url>https://vc/folder/x</url></spec></AcquireGenericServiceTicket>",
        f'<AcquireGenericServiceTicketResponse xmlns="urn:vim25"><returnval><id>{service}</id>'
        "<hostName>vc.example</hostName><sslThumbprint>AA:BB</sslThumbprint></returnval></AcquireGenericServiceTicketResponse>",
    )
    assert "<id>***</id><hostName>vc.example</hostName><sslThumbprint>AA:BB</sslThumbprint>" in record["response"]
    mks = "mks-ticket-value-987654"
    record = exchange(
        wire,
        '<AcquireTicket xmlns="urn:vim25"><ticketType>webmks</ticketType></AcquireTicket>',
        f'<AcquireTicketResponse xmlns="urn:vim25"><returnval><ticket>{mks}</ticket><host>esx1</host><port>443</port>'
        f"<url>wss://esx1:443/ticket/{mks}</url></returnval></AcquireTicketResponse>",
    )
    assert "<ticketType>webmks</ticketType>" in record["request"]
    assert "<ticket>***</ticket><host>esx1</host><port>443</port>" in record["response"]
    assert "<url>wss://esx1:443/ticket/***</url>" in record["response"]
    text = wire.path.read_text()
    assert clone not in text and service not in text and mks not in text


def test_security_headers_and_session_cookies_in_soap_headers(wire: WireLog) -> None:
    header = (
        "<soapenv:Header><vcSessionCookie>cookie-value-123456</vcSessionCookie>"
        '<wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
        '<saml2:Assertion xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion" ID="a1">'
        "<saml2:Subject>admin</saml2:Subject><ds:SignatureValue xmlns:ds='x'>c2lnbmF0dXJl</ds:SignatureValue>"
        "</saml2:Assertion></wsse:Security></soapenv:Header>"
    )
    wire.soap(
        url="https://vc/sdk",
        request=envelope('<LoginByToken xmlns="urn:vim25"/>', header),
        response=b"",
        status=200,
        duration_s=0,
    )
    (record,) = lines(wire)
    assert "<vcSessionCookie>***</vcSessionCookie>" in record["request"]
    assert "<wsse:Security" in record["request"] and "***</wsse:Security>" in record["request"]
    assert "c2lnbmF0dXJl" not in record["request"] and "cookie-value-123456" not in record["request"]
    assert record["method"] == "LoginByToken"


# -- headers, cookies, URLs ------------------------------------------------------------------------
def test_cookies_and_credentials_in_headers(wire: WireLog) -> None:
    cookie = "8d2f4e6a1b3c5d7e9f0a1b2c3d4e5f60718293a4"
    record = exchange(
        wire,
        LOGIN,
        "<LoginResponse/>",
        headers={
            "Cookie": f'vmware_soap_session="{cookie}"; other=plain-value',
            "Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
            "vmware-api-session-id": "rest-session-0123456789",
            "SOAPAction": "urn:vim25/8.0.3.0",
        },
        response_headers=[
            ("Set-Cookie", f'vmware_soap_session="{cookie}"; Path=/; HttpOnly; Secure; Max-Age=1800'),
            ("Set-Cookie", "second=another-cookie-value; Path=/x"),
            ("Content-Type", "text/xml"),
        ],
    )
    assert record["headers"] == {
        "Cookie": "vmware_soap_session=***; other=***",
        "Authorization": "Bearer ***",
        "vmware-api-session-id": "***",
        "SOAPAction": "urn:vim25/8.0.3.0",
    }
    assert record["response_headers"] == {
        "Set-Cookie": "vmware_soap_session=***; Path=/; HttpOnly; Secure; Max-Age=1800, second=***; Path=/x",
        "Content-Type": "text/xml",
    }
    # the cookie value, seen once, is masked wherever it turns up again
    fault = (
        "<soapenv:Fault><faultcode>ServerFaultCode</faultcode>"
        f"<faultstring>session vmware_soap_session={cookie} expired; id {cookie}</faultstring></soapenv:Fault>"
    )
    record = exchange(wire, "<CurrentTime/>", fault, status=500, fault="NotAuthenticated")
    assert "<faultstring>session vmware_soap_session=*** expired; id ***</faultstring>" in record["response"]
    assert record["fault"] == "NotAuthenticated"
    wire.transfer(method="GET", url=f"https://vc/folder/x?dsName=ds&c={cookie}", status=200, size=1, duration_s=0)
    assert lines(wire)[-1]["url"] == "https://vc/folder/x?dsName=ds&c=***"
    text = wire.path.read_text()
    for secret in (cookie, "eyJhbGciOiJIUzI1NiJ9", "rest-session-0123456789", "another-cookie-value", "pw-123456"):
        assert secret not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://127.0.0.1:443/lab/guestFile?id=5f2c9a0b7e3d4c1a", "https://127.0.0.1:443/lab/guestFile?id=***"),
        ("https://esx1/guestFile?id=1&token=52a3b4c5-d6e7-f809", "https://esx1/guestFile?id=***&token=***"),
        ("https://vc/cgi-bin/vm?ticket=abcdef0123&dsName=ds1", "https://vc/cgi-bin/vm?ticket=***&dsName=ds1"),
        ("https://vc/folder/a.vmx?dcPath=dc1&dsName=ds1", "https://vc/folder/a.vmx?dcPath=dc1&dsName=ds1"),
        ("https://root:pa55-w0rd@esx1/host?sessionId=s-1234567#top", "https://root:***@esx1/host?sessionId=***#top"),
        ("http://h/x?ID=abcdefgh&Signature=zzzzzz", "http://h/x?ID=***&Signature=***"),
    ],
)
def test_ticket_like_query_parameters_of_transfer_urls(wire: WireLog, url: str, expected: str) -> None:
    wire.transfer(method="PUT", url=url, status=200, size=3, duration_s=0, error=f"PUT {url} failed")
    (record,) = lines(wire)
    assert record["url"] == expected
    assert record["error"] == f"PUT {expected} failed"


def test_transfer_urls_in_soap_responses(wire: WireLog) -> None:
    token = "52a3b4c5-d6e7-f809-1a2b-3c4d5e6f7081"
    record = exchange(
        wire,
        '<InitiateFileTransferToGuest xmlns="urn:vim25"><guestFilePath>/tmp/x</guestFilePath>'
        "</InitiateFileTransferToGuest>",
        '<InitiateFileTransferToGuestResponse xmlns="urn:vim25">'
        f"<returnval>https://*:443/guestFile?id=1&amp;token={token}</returnval></InitiateFileTransferToGuestResponse>",
    )
    assert "<returnval>https://*:443/guestFile?id=***&amp;token=***</returnval>" in record["response"]
    wire.transfer(method="PUT", url=f"https://esx1:443/guestFile?id=1&token={token}", status=200, size=1, duration_s=0)
    assert token not in wire.path.read_text()


def test_a_registered_secret_is_masked_everywhere(wire: WireLog) -> None:
    secret = Secret("Reg1stered&<Secret>")
    value = secret.reveal()
    escaped = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    record = exchange(
        wire,
        '<StartProgramInGuest xmlns="urn:vim25"><spec><programPath>/bin/sh</programPath>'
        f"<arguments>-c 'echo {escaped} | chpasswd'</arguments></spec></StartProgramInGuest>",
        "",
        error=f"refused: {value}",
        headers={"X-Note": f"for {value}"},
    )
    assert "<arguments>-c 'echo *** | chpasswd'</arguments>" in record["request"]
    assert record["error"] == "refused: ***" and record["headers"] == {"X-Note": "for ***"}
    wire.transfer(method="GET", url=f"https://vc/folder/{value}", status=404, size=None, duration_s=0)
    text = wire.path.read_text()
    assert value not in text and escaped not in text and "Reg1stered" not in text


# -- bodies that are not well-formed ----------------------------------------------------------------
def test_a_truncated_body_is_masked_to_its_end(wire: WireLog) -> None:
    body = envelope(f"<Login><userName>admin</userName><password>{SECRET}</password></Login>").decode()
    truncated = body[: body.index(SECRET) + 7].encode()  # cut inside the password
    wire.soap(url="https://vc/sdk", request=truncated, response=b"", status=None, duration_s=0, error="timed out")
    (record,) = lines(wire)
    assert record["request"].endswith("<password>***")
    assert "<userName>admin</userName>" in record["request"] and record["method"] == "Login"
    assert "Hunter2" not in wire.path.read_text()


@pytest.mark.parametrize(
    "body",
    [
        f"<Login><password>{SECRET}</Password></Login>",  # mismatched end tag
        f'<Login><x:password xmlns:y="u">{SECRET}</x:password></Login>',  # unbound prefix
        f"<Login><password>{SECRET}</password>",  # unclosed document
        f"<Login><password >{SECRET}< /password></Login>",  # not XML at all
        f"<Login><password><![CDATA[</password>{SECRET}]]></password></Login>",  # an end tag inside CDATA
        f"<Login><password>{SECRET}",
        f"<Login><password a='>'>{SECRET}</password><bad",
    ],
)
def test_malformed_xml_still_has_its_secrets_masked(wire: WireLog, body: str) -> None:
    wire.soap(url="https://vc/sdk", request=envelope(body), response=b"", status=200, duration_s=0)
    assert "Hunter2" not in wire.path.read_text()


def test_a_document_type_declaration_is_not_expanded(wire: WireLog) -> None:
    body = (
        f'<?xml version="1.0"?><!DOCTYPE Login [<!ENTITY p "{SECRET}">]>'
        "<Login><userName>admin</userName><password>&p;</password><note>&p;</note></Login>"
    )
    wire.soap(url="https://vc/sdk", request=body.encode(), response=b"", status=200, duration_s=0)
    (record,) = lines(wire)
    assert "<password>***</password>" in record["request"]
    assert "Hunter2" not in record["request"]  # the entity's definition is the secret itself


def test_a_non_xml_response_is_kept_readable(wire: WireLog) -> None:
    html = b"<html><body><h1>503 Service Unavailable</h1></body></html>"
    record = exchange(wire, LOGIN, status=503)
    wire.soap(
        url="https://vc/sdk",
        request=envelope(LOGIN),
        response=html,
        status=503,
        duration_s=0,
        error="HTTPException: 503",
    )
    record = lines(wire)[-1]
    assert record["response"] == html.decode() and record["error"] == "HTTPException: 503"


def test_compressed_bodies_are_decoded() -> None:
    xml = envelope("<CurrentTimeResponse><returnval>2026-01-01T00:00:00Z</returnval></CurrentTimeResponse>")
    assert _decode_body(gzip.compress(xml), "gzip") == xml
    assert _decode_body(zlib.compress(xml), "deflate") == xml
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert _decode_body(raw.compress(xml) + raw.flush(), "Deflate") == xml
    assert _decode_body(xml, "") == xml
    assert _decode_body(b"\x00garbage", "gzip") == b"<8 bytes, content-encoding 'gzip' not decoded>"
    truncated = gzip.compress(xml)[:-20]
    assert xml.startswith(_decode_body(truncated, "gzip")[:40])


# -- pyvmomi hooks without a vCenter ---------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_instrumented_stub_records_a_failed_exchange_and_raises_as_before(wire: WireLog) -> None:
    port = _closed_port()
    stub = SoapStubAdapter(host="127.0.0.1", port=-port)  # negative: plain http
    instrument_stub(stub, wire)
    with pytest.raises(ConnectionRefusedError):
        vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
    (record,) = lines(wire)
    assert (record["kind"], record["method"], record["status"]) == ("soap", "RetrieveServiceContent", None)
    assert record["url"] == f"http://127.0.0.1:{port}/sdk"
    assert record["error"].startswith("ConnectionRefusedError")
    assert record["request"] == record["response"] == ""  # pyvmomi connects before it sends: nothing went out


def test_connect_logged_records_the_version_probe_and_puts_pyvim_back(wire: WireLog) -> None:
    originals = (pyvim_connect.SoapStubAdapter, pyvim_connect.HTTPSConnection, pyvim_connect.HTTPConnection)
    port = _closed_port()
    with pytest.raises(ConnectionRefusedError):
        connect_logged(wire, host="127.0.0.1", port=port, user="u", pwd=SECRET, protocol="http")
    with recording_connects(wire), recording_connects(wire):
        assert pyvim_connect.SoapStubAdapter is not originals[0]
    assert (pyvim_connect.SoapStubAdapter, pyvim_connect.HTTPSConnection, pyvim_connect.HTTPConnection) == originals
    (record,) = lines(wire)
    assert (record["kind"], record["method"], record["status"]) == ("transfer", "GET", None)
    assert record["url"] == f"http://127.0.0.1:{port}/sdk/vimServiceVersions.xml"
    assert record["error"].startswith("ConnectionRefusedError")


def test_other_threads_connect_unrecorded_while_one_records(wire: WireLog) -> None:
    port = _closed_port()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with recording_connects(wire):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        with pytest.raises(ConnectionRefusedError):
            pyvim_connect.SmartConnect(host="127.0.0.1", port=port, user="u", pwd="p", protocol="http")
    finally:
        release.set()
        holder.join()
    assert lines(wire) == []


# -- aiohttp --------------------------------------------------------------------------------------
BIG = os.urandom(256 * 1024)


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1: upload, download, redirect and a large body."""
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        received.append(len(await request.read()))
        return web.Response(text="ok")

    async def download(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query.get("n", "100")))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/download?n=7")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    app = web.Application()
    app.router.add_put("/lab/guestFile", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_trace_config_records_uploads(wire: WireLog, http_server: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 1000

    async with aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session:
        async with session.put(f"{http_server}/lab/guestFile?id=0123456789abcdef", data=b"z" * 1234) as response:
            assert response.status == 200
        async with session.put(f"{http_server}/lab/guestFile?id=fedcba9876543210", data=chunks()) as response:
            assert await response.text() == "ok"
    first, second = lines(wire)
    assert (first["kind"], first["method"], first["status"], first["size"], first["sent"]) == (
        "transfer",
        "PUT",
        200,
        1234,
        1234,
    )
    assert first["url"] == f"{http_server}/lab/guestFile?id=***" and first["duration_s"] >= 0
    assert (second["size"], second["sent"]) == (4000, 4000)
    assert "0123456789abcdef" not in wire.path.read_text() and "fedcba9876543210" not in wire.path.read_text()


async def test_trace_config_records_downloads_redirects_and_failures(wire: WireLog, http_server: str) -> None:
    port = _closed_port()
    async with aiohttp.ClientSession(trace_configs=[wire.trace_config()]) as session:
        async with session.get(f"{http_server}/download?n=5000&ticket=t-0123456789") as response:
            assert len(await response.read()) == 5000
        async with session.get(f"{http_server}/redirect") as response:
            assert await response.read() == b"x" * 7
        async with session.get(f"{http_server}/big") as response:
            assert len(await response.read()) == len(BIG)
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/guestFile?id=abcdef123456")
    download, hop, redirected, big, refused = lines(wire)
    assert (download["method"], download["status"], download["size"], download["received"]) == ("GET", 200, 5000, 5000)
    assert download["url"] == f"{http_server}/download?n=5000&ticket=***"
    assert (hop["status"], hop["url"]) == (302, f"{http_server}/redirect")
    assert (redirected["status"], redirected["size"]) == (200, 7)
    assert (big["status"], big["size"]) == (200, len(BIG))
    assert (refused["status"], refused["size"], refused["url"]) == (
        None,
        None,
        f"http://127.0.0.1:{port}/guestFile?id=***",
    )
    assert refused["error"].startswith("ClientConnectorError")
    assert "abcdef123456" not in wire.path.read_text() and "t-0123456789" not in wire.path.read_text()


async def test_a_response_released_unread_is_recorded_at_close(tmp_path: Path, http_server: str) -> None:
    wire_log = WireLog(tmp_path / "wire.jsonl")
    async with (
        aiohttp.ClientSession(trace_configs=[wire_log.trace_config()]) as session,
        session.get(f"{http_server}/big") as response,
    ):
        assert response.status == 200
        await response.content.readexactly(10)
    wire_log.close()
    (record,) = lines(wire_log)
    assert (record["method"], record["status"]) == ("GET", 200)
    assert record["error"] == "response body not read to the end"
    assert 10 <= record["received"] <= len(BIG)
