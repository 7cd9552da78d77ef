"""The WS-Management side of the ``winrm`` channel: pywinrm's blocking client run in a
bounded pool of worker threads, every exchange written to the wire log (secrets and
environment values masked), the WinRS messages pywinrm has no streaming helper for
(Send, Receive, Signal, the configuration Get), and its errors mapped onto Beachhead's.

The messages follow the WS-Management shell protocol (MS-WSMV): Receive answers carry
base64 ``rsp:Stream`` elements and a ``rsp:CommandState``; a Receive that waits longer
than its ``w:OperationTimeout`` ends in the fault 2150858793 and is simply issued
again; a shell the endpoint no longer knows answers 2150858843 (invalid selectors).
"""

from __future__ import annotations

import base64
import re
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from beachhead.agent.errors import BeachheadError, ChannelError, ChannelUnavailable
from beachhead.agent.secrets import MASK
from beachhead.agent.targets import WinrmRoute, WinrmScheme, WinrmTransport

if TYPE_CHECKING:
    from beachhead.agent.vsphere.wirelog import WireLog

NAME = "winrm"

# At most this many WS-Man calls block worker threads at once in this process (shared by
# every target): enough for a few targets' commands, transfers and Ctrl-C signals.
POOL_WORKERS = 8
# How long a Receive may wait in the endpoint before it answers the operation-timeout
# fault (then it is issued again); the HTTP read timeout exceeds it.
OPERATION_TIMEOUT_S = 20
READ_MARGIN_S = 10
# What the endpoint accepts when its configuration cannot be read: the protocol's own
# default (Windows before 2012 configured 150 KB; current ones 500 KB).
DEFAULT_MAX_ENVELOPE = 153600
# Stream texts longer than this are abbreviated in the wire log (file contents in bulk).
WIRE_STREAM_LIMIT = 4096

TIMED_OUT = 2150858793
INVALID_SELECTORS = 2150858843
ENVELOPE_TOO_LARGE = 2150858817  # w:EncodingLimit: the request envelope exceeds MaxEnvelopeSizekb
ACCESS_DENIED = 5

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
CONFIG_URI = "http://schemas.microsoft.com/wbem/wsman/1/config"
SHELL_NS = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER_GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
SEND = f"{SHELL_NS}/Send"
RECEIVE = f"{SHELL_NS}/Receive"
SIGNAL = f"{SHELL_NS}/Signal"
TERMINATE = f"{SHELL_NS}/signal/terminate"
CTRL_C = f"{SHELL_NS}/signal/ctrl_c"
DONE = f"{SHELL_NS}/CommandState/Done"

_ENVELOPE = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"'
    ' xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"'
    ' xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"'
    ' xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"'
    f' xmlns:rsp="{SHELL_NS}">'
    "<s:Header>"
    "<a:To>{to}</a:To>"
    '<a:ReplyTo><a:Address s:mustUnderstand="true">'
    "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>"
    '<a:Action s:mustUnderstand="true">{action}</a:Action>'
    '<w:MaxEnvelopeSize s:mustUnderstand="true">{max_envelope}</w:MaxEnvelopeSize>'
    "<a:MessageID>uuid:{message_id}</a:MessageID>"
    '<w:Locale xml:lang="en-US" s:mustUnderstand="false"/>'
    '<p:DataLocale xml:lang="en-US" s:mustUnderstand="false"/>'
    "<w:OperationTimeout>PT{timeout}S</w:OperationTimeout>"
    '<w:ResourceURI s:mustUnderstand="true">{resource}</w:ResourceURI>'
    "{selectors}"
    "</s:Header>"
    "<s:Body>{body}</s:Body>"
    "</s:Envelope>"
)
_VARIABLE = re.compile(r"(<(?:\w+:)?Variable\b[^>]*>)([^<]*)(</)")
_STREAM = re.compile(r"(<(?:\w+:)?Stream\b[^>]*>)([^<]{" + str(WIRE_STREAM_LIMIT + 1) + r",})(</)")
_ACTION = re.compile(r"<(?:\w+:)?Action\b[^>]*>([^<]*)<")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadPoolExecutor:
    """The process's worker threads for pywinrm calls (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="beachhead-winrm")
        return _pool


def endpoint_url(host: str, route: WinrmRoute) -> str:
    """``http(s)://HOST:PORT/wsman``."""
    shown = f"[{host}]" if ":" in host else host
    return f"{route.scheme}://{shown}:{route.port}/wsman"


def _system_ca_bundle() -> str | None:
    """The system's CA bundle as OpenSSL knows it (requests would use certifi's)."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Exchange:
    """What the last failed call said, for messages: its action and HTTP status."""

    action: str = ""
    status: int | None = None


class LoggedProtocol(Protocol):
    """pywinrm's Protocol with every exchange written to the wire log: the SOAP as it is
    before message encryption, environment values masked, bulk stream data abbreviated."""

    def __init__(self, endpoint: str, wire_log: WireLog | None, **options: Any) -> None:
        super().__init__(endpoint, **options)
        self.endpoint = endpoint
        self.wire_log = wire_log
        self.last = Exchange()

    def send_message(self, message: str | bytes) -> bytes:
        """Send one envelope; record it and its answer (or fault, or failure)."""
        text = message.decode() if isinstance(message, bytes) else message
        found = _ACTION.search(text)
        action = found.group(1) if found else ""
        self.last = Exchange(action.rpartition("/")[2])
        started = time.perf_counter()
        status: int | None = 200
        response = b""
        fault: str | None = None
        error: str | None = None
        try:
            response = bytes(super().send_message(text))
            return response
        except WSManFaultError as exc:
            status, response, fault = exc.code, str(exc.response).encode(), str(exc.wsman_fault_code or exc.fault_code)
            raise
        except WinRMOperationTimeoutError:
            status, fault = 500, str(TIMED_OUT)
            raise
        except WinRMTransportError as exc:
            status, response = int(exc.code), str(exc.response_text).encode()
            raise
        except InvalidCredentialsError as exc:
            status, error = 401, str(exc)
            raise
        except Exception as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.last.status = status
            if self.wire_log is not None:
                self.wire_log.guarded(self._record, text, response, status, time.perf_counter() - started, fault, error)

    def _record(
        self, request: str, response: bytes, status: int | None, duration: float, fault: str | None, error: str | None
    ) -> None:
        assert self.wire_log is not None
        self.wire_log.soap(
            url=self.endpoint,
            request=_for_log(request).encode(),
            response=_for_log(response.decode("utf-8", "replace")).encode(),
            status=status,
            duration_s=duration,
            method=self.last.action,
            fault=fault,
            error=error,
        )


def _for_log(xml: str) -> str:
    """Environment values masked (names kept), long streams abbreviated."""
    xml = _VARIABLE.sub(lambda m: m.group(1) + (MASK if m.group(2) else "") + m.group(3), xml)
    return _STREAM.sub(lambda m: f"{m.group(1)}[{len(m.group(2))} base64 characters]{m.group(3)}", xml)


def make_protocol(host: str, route: WinrmRoute, wire_log: WireLog | None) -> LoggedProtocol:
    """A Protocol for ``route``: NTLM (message encryption over http, channel binding over
    https), Basic or a client certificate; the server's certificate checked against
    ``ca_file`` or the system's CAs unless ``insecure``; no proxy from the environment."""
    options: dict[str, Any] = {
        "username": route.user,
        "password": route.password.reveal() if route.password is not None else None,
        "read_timeout_sec": OPERATION_TIMEOUT_S + READ_MARGIN_S,
        "operation_timeout_sec": OPERATION_TIMEOUT_S,
        "proxy": None,
    }
    if route.transport is WinrmTransport.CERTIFICATE:
        options.update(
            transport="certificate",
            cert_pem=str(route.cert_pem) if route.cert_pem else None,
            cert_key_pem=str(route.cert_key_pem) if route.cert_key_pem else None,
        )
    else:
        options["transport"] = str(route.transport)
    options["ca_trust_path"] = None  # no CA bundle from the environment (REQUESTS_CA_BUNDLE)
    if route.scheme is WinrmScheme.HTTPS:
        options["server_cert_validation"] = "ignore" if route.insecure else "validate"
        options["ca_trust_path"] = str(route.ca_file) if route.ca_file else _system_ca_bundle()
    return LoggedProtocol(endpoint_url(host, route), wire_log, **options)


# -- messages ------------------------------------------------------------------------------
def envelope(
    protocol: LoggedProtocol,
    action: str,
    body: str,
    *,
    resource: str = SHELL_URI,
    shell_id: str | None = None,
    max_envelope: int = DEFAULT_MAX_ENVELOPE,
) -> str:
    """A WS-Management request envelope (``max_envelope``: the largest answer we take)."""
    selectors = (
        f'<w:SelectorSet><w:Selector Name="ShellId">{escape(shell_id)}</w:Selector></w:SelectorSet>' if shell_id else ""
    )
    return _ENVELOPE.format(
        to=escape(protocol.endpoint),
        action=action,
        max_envelope=max_envelope,
        message_id=str(uuid.uuid4()).upper(),
        timeout=protocol.operation_timeout_sec,
        resource=resource,
        selectors=selectors,
        body=body,
    )


def send(protocol: LoggedProtocol, shell_id: str, command_id: str, data: bytes, end: bool) -> None:
    """WinRS Send: ``data`` to the command's stdin (closed after it when ``end``)."""
    last = ' End="true"' if end else ""
    stream = (
        f'<rsp:Stream Name="stdin" CommandId={quoteattr(command_id)}{last}>'
        f"{base64.b64encode(data).decode('ascii')}</rsp:Stream>"
    )
    protocol.send_message(envelope(protocol, SEND, f"<rsp:Send>{stream}</rsp:Send>", shell_id=shell_id))


@dataclass(frozen=True)
class Received:
    """One Receive answer: output blocks in the order they came, and the exit code once done."""

    blocks: list[tuple[str, bytes]]
    done: bool
    exit_code: int | None


def receive(protocol: LoggedProtocol, shell_id: str, command_id: str, max_envelope: int) -> Received:
    """WinRS Receive: the output available now (waiting up to the operation timeout;
    raises WinRMOperationTimeoutError when none came)."""
    desired = f"<rsp:DesiredStream CommandId={quoteattr(command_id)}>stdout stderr</rsp:DesiredStream>"
    body = f"<rsp:Receive>{desired}</rsp:Receive>"
    answer = protocol.send_message(envelope(protocol, RECEIVE, body, shell_id=shell_id, max_envelope=max_envelope))
    root = _parse(answer)
    blocks: list[tuple[str, bytes]] = []
    done, exit_code = False, None
    for element in root.iter():
        tag = element.tag.rpartition("}")[2]
        if tag == "Stream" and element.text:
            blocks.append((element.get("Name", "stdout"), base64.b64decode(element.text)))
        elif tag == "CommandState" and element.get("State") == DONE:
            done = True
        elif tag == "ExitCode" and element.text is not None:
            exit_code = int(element.text.strip())
    return Received(blocks, done, exit_code)


def signal(protocol: LoggedProtocol, shell_id: str, command_id: str, code: str = TERMINATE) -> None:
    """WinRS Signal: ``terminate`` ends the command's process (with its job, the whole
    process tree) and releases the command; ``ctrl_c`` sends it a Ctrl+C."""
    body = f"<rsp:Signal CommandId={quoteattr(command_id)}><rsp:Code>{code}</rsp:Code></rsp:Signal>"
    protocol.send_message(envelope(protocol, SIGNAL, body, shell_id=shell_id))


def max_envelope_size(protocol: LoggedProtocol) -> int | None:
    """The endpoint's ``MaxEnvelopeSizekb`` in bytes, read with a WS-Transfer Get of its
    configuration as ``winrm get winrm/config`` does; None when it cannot be read (a
    non-administrator may not read it)."""
    answer = protocol.send_message(envelope(protocol, TRANSFER_GET, "", resource=CONFIG_URI))
    for element in _parse(answer).iter():
        if element.tag.rpartition("}")[2] == "MaxEnvelopeSizekb" and (element.text or "").strip().isdigit():
            return int((element.text or "").strip()) * 1024
    return None


def _parse(answer: bytes) -> ET.Element:
    # The stdlib's expat expands no external entities and (expat >= 2.4) bounds entity
    # amplification; pywinrm parses the same answers the same way.
    return ET.fromstring(answer)  # noqa: S314


# -- errors ---------------------------------------------------------------------------------
def fault_code(exc: BaseException) -> int | None:
    """The WSManFault code of a fault, if it is one."""
    if isinstance(exc, WinRMOperationTimeoutError):
        return TIMED_OUT
    return exc.wsman_fault_code if isinstance(exc, WSManFaultError) else None


def too_large(exc: BaseException) -> bool:
    """Whether the endpoint refused a request for its size (HTTP 413 or the fault)."""
    if isinstance(exc, WSManFaultError):
        return exc.wsman_fault_code == ENVELOPE_TOO_LARGE or "EncodingLimit" in str(exc.fault_subcode or "")
    return isinstance(exc, WinRMTransportError) and exc.code == 413


def as_error(
    exc: BaseException, target: str, protocol: LoggedProtocol, route: WinrmRoute, *, connecting: bool
) -> BeachheadError:
    """``exc`` from pywinrm or requests as a Beachhead error: :class:`ChannelUnavailable`
    while connecting (retryable when trying later may help), :class:`ChannelError` after."""
    kind: Callable[..., ChannelError] = ChannelUnavailable if connecting else ChannelError
    where = protocol.endpoint
    if isinstance(exc, InvalidCredentialsError | WinRMError) and getattr(exc, "code", None) == 401:
        what = "client certificate" if route.transport is WinrmTransport.CERTIFICATE else "user name or password"
        return kind(NAME, target, f"{where} refused the {what} of {route.user} ({route.transport}): HTTP 401")
    if isinstance(exc, requests.exceptions.SSLError):
        return kind(NAME, target, f"TLS with {where} failed (certificate not trusted?): {_first_line(exc)}")
    if isinstance(exc, requests.exceptions.Timeout):
        return kind(NAME, target, f"no answer from {where} in time", retryable=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        refused = "refused" in str(exc).lower()
        reason = "connection refused" if refused else f"cannot reach it: {_first_line(exc)}"
        return kind(NAME, target, f"{where}: {reason}", retryable=True)
    if isinstance(exc, WSManFaultError):
        denied = exc.wsman_fault_code == ACCESS_DENIED
        reason = f"{protocol.last.action} refused: {exc.reason.strip()} (WSManFault {exc.wsman_fault_code})"
        return kind(NAME, target, reason, retryable=not denied and int(exc.code) >= 500 and connecting)
    if isinstance(exc, WinRMTransportError):
        return kind(
            NAME, target, f"{protocol.last.action}: HTTP {exc.code} from {where}", retryable=int(exc.code) >= 500
        )
    if isinstance(exc, WinRMOperationTimeoutError):
        return kind(NAME, target, f"{protocol.last.action} timed out in the endpoint", retryable=True)
    if isinstance(exc, WinRMError):
        return kind(NAME, target, str(exc))
    if isinstance(exc, ET.ParseError | ValueError | StopIteration):
        return kind(NAME, target, f"{protocol.last.action}: unreadable answer from {where}: {exc}")
    return kind(NAME, target, f"{type(exc).__name__}: {exc}", retryable=isinstance(exc, OSError))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__
