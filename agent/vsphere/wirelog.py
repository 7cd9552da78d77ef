"""The wire log: every SOAP exchange and HTTP transfer of a run with vCenter, one JSON
object a line, secrets redacted before anything reaches the file.

Three ways in:

- :func:`instrument_stub` hooks a pyvmomi ``SoapStubAdapter`` (``si._stub``): every
  request it sends and every response (faults included) it reads is recorded.
- :func:`connect_logged` (or the :func:`recording_connects` block around any
  ``SmartConnect``/``SmartStubAdapter`` call) instruments the stub from its creation, so
  the version probe, ``RetrieveServiceContent`` and ``Login`` of the connect are recorded too.
- :meth:`WireLog.trace_config` records every request of an ``aiohttp.ClientSession``
  (guest file transfers, datastore downloads).

What is masked (``***``) before a record is written:

- headers: cookie values (``vmware_soap_session`` and every other; cookie attributes
  stay), credentials of ``Authorization``, headers named for sessions, tokens, tickets;
- XML bodies, parsed with expat (the original text is kept, only secret content is
  replaced, so the log stays readable XML): the content of elements and the values of
  attributes whose names say password, pwd, passwd, passphrase, secret, cookie, token,
  ticket, session id or private key (any namespace prefix, any case); the ``key`` of a
  ``UserSession`` and of a ``Login*`` result; the results of ``*Ticket`` operations;
  WS-Security headers; the values (not the names) of guest ``envVariables``; an option's
  ``value`` when its ``key`` names a secret. A body expat cannot parse (truncated, not XML,
  or with a DTD) goes through a tag scanner that masks a secret element's content up to
  its end tag, or to the end of the text when there is none;
- URLs anywhere (record URLs, XML text, error messages): the password of the user info and
  ticket-like query parameters (``id=``, ``ticket=``, ``token=``, ``sessionId=``…);
- every value masked so far, wherever it turns up again in this log (a session key inside
  a managed object id, a transfer id in a later URL);
- last, everything :data:`beachhead.agent.secrets.REDACTOR` knows (every :class:`~beachhead.agent.secrets.Secret`),
  in XML text also in its escaped form.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.client import HTTPSConnection
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO
from xml.parsers import expat
from xml.sax.saxutils import escape

import aiohttp
import pyVim.connect as pyvim_connect
import structlog
from pyVim.connect import SmartConnect
from pyVmomi import vmodl

from beachhead.agent.secrets import MASK, REDACTOR

log = structlog.get_logger("beachhead.wirelog")

# -- what counts as a secret ---------------------------------------------------------------
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "cookie")
_SECRET_SUFFIXES = ("token", "ticket")
_SECRET_NAMES = frozenset({"pwd", "sessionid", "session_id", "privatekey", "private_key", "keydata"})
# Elements masked whatever their name says: WS-Security headers and SAML assertions.
_SECRET_ELEMENTS = frozenset({"Security", "Assertion"})
# Guest environment settings (``NAME=value``): values masked, names kept, as in the journal.
_ENVIRONMENT = "envVariables"
# Children of a ticket operation's result that carry the ticket itself.
_TICKET_FIELDS = frozenset({"id", "key", "sessionid", "ticket"})
# Query parameters that carry tickets, tokens or session ids.
_SECRET_PARAMS = frozenset(
    {"id", "ticket", "token", "session", "sessionid", "session_id", "key", "apikey", "api_key"}
    | {"access_token", "auth", "sig", "signature", "code", "password", "pwd", "passwd", "secret"}
)
_COOKIE_HEADERS = frozenset({"cookie", "set-cookie", "set-cookie2"})
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_SECRET_HEADER_WORDS = ("session", "token", "ticket", "secret", "password", "api-key", "apikey", "auth")
_COOKIE_ATTRIBUTES = frozenset(
    {"path", "domain", "expires", "max-age", "samesite", "secure", "httponly", "version", "comment", "partitioned"}
)
# Values shorter than this are masked where they stand, but not hunted for elsewhere.
_MIN_LEARNED = 6
# One-shot values (transfer ids) remembered at most: they only ever reappear in URLs.
_MAX_TRANSIENT = 1024

_XSI_TYPE = "http://www.w3.org/2001/XMLSchema-instance type"
_START_TAG_REST = re.compile(rb"""(?:[^>"']|"[^"]*"|'[^']*')*>""")
_URL = re.compile(r"""(?i)\b(?:https?|wss?)://[^\s<>"'`]+""")
_URL_USERINFO = re.compile(r"^([a-zA-Z][\w+.-]*://[^/@:?#]*):([^/@?#]*)@")
_QUERY_SEPARATOR = re.compile(r"(&amp;|&|;)")
_VMWARE_COOKIE = re.compile(
    r"""(?i)\b(vmware_soap_session|vmware_cgi_ticket|vmware-api-session-id)(\s*[=:]\s*)(&quot;|"|')?([^"';,\s&<>]+)"""
)
# The fallback scanner for text expat cannot parse.
_FALLBACK_OPEN = re.compile(r"""<\s*(?:[\w.-]+:)?([\w.-]+)((?:[^>"']|"[^"]*"|'[^']*')*)>""")
_FALLBACK_CDATA = re.compile(r"<!\[CDATA\[(.*?)(?:\]\]>|$)", re.S)
_FALLBACK_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_FALLBACK_DTD_SUBSET = re.compile(r"(<!DOCTYPE[^\[>]*)\[.*?(?:\]\s*>|$)", re.S | re.I)
_FALLBACK_ATTRIBUTE = re.compile(r"""(\s(?:[\w.-]+:)?([\w.-]+)\s*=\s*)("[^"]*"|'[^']*')""")
_FALLBACK_BODY_OP = re.compile(r"<\s*(?:[\w.-]+:)?Body\b[^>]*>\s*<\s*(?:[\w.-]+:)?([\w.-]+)")


def is_secret_name(name: str) -> bool:
    """Whether an element, parameter or option called ``name`` holds a secret."""
    lowered = name.lower()
    return (
        lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS) or lowered.endswith(_SECRET_SUFFIXES)
    )


def _is_login(operation: str) -> bool:
    return operation.startswith("Login") or operation in ("ImpersonateUser", "CloneSession")


def _is_ticket(operation: str) -> bool:
    return "Ticket" in operation or operation == "AcquireCredentialsInGuest"


# -- XML ------------------------------------------------------------------------------------
class _UnsafeXml(Exception):
    """A document type declaration: not SOAP, and not worth expanding entities for."""


@dataclass
class _Element:
    name: str
    xsi_type: str
    content_start: int
    empty: bool
    mask: bool = False
    mask_if_leaf: bool = False
    environment: bool = False
    has_children: bool = False
    option_key: str | None = None  # the text of a ``key`` child, for OptionValue-like pairs


class _XmlScrubber:
    """Redacts one XML document: expat finds the elements and their byte offsets, the
    output is the original text with only the secret parts replaced."""

    def __init__(
        self, data: bytes, operation: str | None, scrub: Callable[..., str], learn: Callable[[str], None]
    ) -> None:
        self.data = data
        self.operations = {operation} if operation else set()
        self.scrub = scrub
        self.learn = learn
        self.body_op: str | None = None
        self._edits: list[tuple[int, int, str]] = []
        self._stack: list[_Element] = []
        self._text_start = 0
        self._text: list[str] = []
        self._masking: _Element | None = None
        self._secret: list[str] = []
        self._parser: Any = None
        self._kinds = self._operation_kinds()

    # -- entry points --
    def run(self) -> str:
        """The redacted document (expat, or the fallback scanner if it is not well-formed)."""
        try:
            return self._parse()
        except (expat.ExpatError, _UnsafeXml, ValueError, IndexError):
            return self._fallback(self.data.decode("utf-8", "replace"))

    def _parse(self) -> str:
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chars
        parser.StartDoctypeDeclHandler = self._refuse
        parser.EntityDeclHandler = self._refuse
        self._parser = parser
        parser.Parse(self.data, True)
        self._flush_text(len(self.data))
        out: list[bytes] = []
        position = 0
        for start, end, replacement in sorted(self._edits):
            if start < position:  # cannot happen; never keep text that was to be replaced
                raise ValueError("overlapping redactions")
            out += [self.data[position:start], replacement.encode()]
            position = end
        out.append(self.data[position:])
        return b"".join(out).decode("utf-8", "replace")

    def _refuse(self, *_: Any) -> None:
        raise _UnsafeXml

    # -- expat handlers --
    def _start(self, name: str, attributes: dict[str, str]) -> None:
        index: int = self._parser.CurrentByteIndex
        self._flush_text(index)
        self._end_secret_segment()
        local = name.rsplit(" ", 1)[-1]
        rest = _START_TAG_REST.match(self.data, index + 1)
        if rest is None:
            raise ValueError("start tag without end")
        tag_end = rest.end()
        element = _Element(
            local,
            attributes.get(_XSI_TYPE, "").rsplit(":", 1)[-1],
            tag_end,
            empty=self.data[tag_end - 2 : tag_end - 1] == b"/",
        )
        if self._masking is None:
            self._mask_attributes(index, tag_end, attributes)
        parent = self._stack[-1] if self._stack else None
        if parent is not None:
            parent.has_children = True
            if parent.name == "Body" and self.body_op is None:
                self.body_op = local
                self.operations.add(local.removesuffix("Response"))
                self._kinds = self._operation_kinds()
        if self._masking is None and parent is not None and not element.empty:
            verdict = self._verdict(element, parent)
            if verdict == "mask":
                element.mask = True
                self._masking = element
                self._secret = []
            elif verdict == "leaf":
                element.mask_if_leaf = True
            elif verdict == "environment":
                element.environment = True
        self._stack.append(element)
        self._text_start = tag_end
        self._text = []

    def _end(self, name: str) -> None:
        index: int = self._parser.CurrentByteIndex
        element = self._stack.pop()
        if element.empty:  # <a/>: expat reports its end after the tag we already passed
            return
        end_tag_end = self.data.index(b">", index) + 1
        if element is self._masking:
            self._end_secret_segment()
            self._edits.append((element.content_start, index, MASK))
            self._masking = None
        elif self._masking is not None:
            self._end_secret_segment()
        elif element.mask_if_leaf and not element.has_children:
            self.learn("".join(self._text).strip())
            self._edits.append((element.content_start, index, MASK))
        elif element.environment and not element.has_children:
            name, _, value = "".join(self._text).partition("=")
            self.learn(value)
            self._edits.append((element.content_start, index, f"{escape(self.scrub(name))}={MASK}"))
        else:
            text = "".join(self._text)
            self._flush_text(index)
            parent = self._stack[-1] if self._stack else None
            if parent is not None and element.name == "key" and not element.has_children:
                parent.option_key = text.strip()
        self._text_start = end_tag_end
        self._text = []

    def _chars(self, text: str) -> None:
        if self._masking is not None:
            self._secret.append(text)
        else:
            self._text.append(text)

    # -- helpers --
    def _verdict(self, element: _Element, parent: _Element) -> str | None:
        name = element.name
        if parent.name == "Body":  # the operation or the fault itself: judged by its children
            return None
        login, ticket = self._kinds
        if is_secret_name(name) or name in _SECRET_ELEMENTS:
            return "mask"
        if name == "key" and (
            "UserSession" in (parent.xsi_type, parent.name) or (parent.name == "returnval" and login)
        ):
            return "mask"
        if name == "value" and parent.option_key and is_secret_name(parent.option_key):
            return "mask"
        if name == _ENVIRONMENT:
            return "environment"
        if ticket and name == "returnval":
            return "leaf"
        if ticket and parent.name == "returnval" and name.lower() in _TICKET_FIELDS:
            return "mask"
        return None

    def _operation_kinds(self) -> tuple[bool, bool]:
        """Whether the operation is a login, whether it hands out tickets."""
        return any(_is_login(op) for op in self.operations), any(_is_ticket(op) for op in self.operations)

    def _mask_attributes(self, start: int, end: int, attributes: dict[str, str]) -> None:
        for qualified, value in attributes.items():
            name = qualified.rsplit(" ", 1)[-1]
            if not is_secret_name(name):
                continue
            self.learn(value)
            pattern = rb"""\s(?:[\w.-]+:)?""" + re.escape(name.encode()) + rb"""\s*=\s*("[^"]*"|'[^']*')"""
            for found in re.finditer(pattern, self.data[start:end]):
                self._edits.append((start + found.start(1) + 1, start + found.end(1) - 1, MASK))

    def _flush_text(self, end: int) -> None:
        if self._masking is not None:
            return
        text, self._text = "".join(self._text), []
        if text.strip():
            # Text written as is gets the known values masked by the record's last pass;
            # text with references, CDATA or comments must be searched in its decoded form.
            verbatim = self.data[self._text_start : end] == text.encode()
            scrubbed = self.scrub(text, known_values=not verbatim)
            if scrubbed != text:
                self._edits.append((self._text_start, end, escape(scrubbed)))
        self._text_start = end

    def _end_secret_segment(self) -> None:
        if self._masking is not None:
            self.learn("".join(self._secret).strip())
            self._secret = []

    # -- not well-formed --
    def _fallback(self, text: str) -> str:
        if (found := _FALLBACK_BODY_OP.search(text)) is not None:
            self.body_op = found.group(1)
            self.operations.add(found.group(1).removesuffix("Response"))
        ticket = any(_is_ticket(op) for op in self.operations)
        text = _FALLBACK_COMMENT.sub("", text)
        text = _FALLBACK_DTD_SUBSET.sub(lambda m: f"{m.group(1)}[{MASK}]>", text)  # SOAP has none; entities hide values
        text = _FALLBACK_CDATA.sub(lambda m: escape(m.group(1)), text)
        out: list[str] = []
        position = 0
        while (tag := _FALLBACK_OPEN.search(text, position)) is not None:
            out.append(text[position : tag.end()])
            position = tag.end()
            name = tag.group(1)
            secret = is_secret_name(name) or name in (*_SECRET_ELEMENTS, _ENVIRONMENT, "key")
            if tag.group(2).rstrip().endswith("/") or not (secret or (ticket and name == "returnval")):
                continue
            close = re.compile(rf"<\s*/\s*(?:[\w.-]+:)?{re.escape(name)}\s*>", re.I).search(text, position)
            end = close.start() if close else len(text)
            self.learn(text[position:end].strip())
            out.append(MASK)
            position = end
        out.append(text[position:])
        return self.scrub(_FALLBACK_ATTRIBUTE.sub(self._mask_attribute_match, "".join(out)))

    def _mask_attribute_match(self, match: re.Match[str]) -> str:
        if not is_secret_name(match.group(2)):
            return match.group(0)
        self.learn(match.group(3)[1:-1])
        quote = match.group(3)[0]
        return f"{match.group(1)}{quote}{MASK}{quote}"


# -- the log -----------------------------------------------------------------------------------
class WireLog:
    """Append-only JSON-lines record of a run's traffic to vCenter, secrets redacted.

    Writes are thread-safe (pyvmomi calls come from worker threads) and never raise into
    the call being recorded; records that arrive after :meth:`close` are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        self._file: TextIO | None = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()
        # Values masked once and hunted for in everything written after: session keys,
        # cookies, passwords and tickets for the whole run; one-shot URL ids, the latest only.
        self._learned: set[str] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._learned_sorted: list[str] = []
        self._learned_lock = threading.Lock()
        self._pending: dict[int, tuple[dict[str, Any], Callable[[], int | None]]] = {}

    def __enter__(self) -> WireLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- records --
    def soap(
        self,
        *,
        url: str,
        request: bytes,
        response: bytes,
        status: int | None,
        duration_s: float,
        headers: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        method: str | None = None,
        fault: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record one SOAP exchange. ``method`` is the operation's name, read from the
        request body when it names one; ``fault`` the fault type of a 500 response;
        ``error`` what went wrong when the exchange did not complete."""
        redacted_headers = self.redact_headers(headers or {})
        redacted_response_headers = self.redact_headers(response_headers or {})
        request_xml, operation = self._redact_xml(request, method)
        response_xml, _ = self._redact_xml(response, operation or method)
        record: dict[str, Any] = {
            "time": _started(duration_s),
            "kind": "soap",
            "url": self.redact_url(url),
            "method": operation or method,
            "status": status,
            "duration_s": round(duration_s, 6),
            "headers": redacted_headers,
            "response_headers": redacted_response_headers,
            "request": request_xml,
            "response": response_xml,
        }
        if fault is not None:
            record["fault"] = fault
        if error is not None:
            record["error"] = self.redact_text(error)
        self._write(record)

    def transfer(
        self,
        *,
        method: str,
        url: str,
        status: int | None,
        size: int | None,
        duration_s: float,
        error: str | None = None,
        sent: int | None = None,
        received: int | None = None,
    ) -> None:
        """Record one HTTP transfer (``size``: the body's bytes; ``sent``/``received``
        when both directions were counted)."""
        record: dict[str, Any] = {
            "time": _started(duration_s),
            "kind": "transfer",
            "method": method,
            "url": self.redact_url(url),
            "status": status,
            "size": size,
            "duration_s": round(duration_s, 6),
        }
        if sent is not None:
            record["sent"] = sent
        if received is not None:
            record["received"] = received
        if error is not None:
            record["error"] = self.redact_text(error)
        self._write(record)

    def close(self) -> None:
        """Write the transfers whose response bodies were never read to the end, then
        close the file (idempotent)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for record, received in pending:
            with contextlib.suppress(Exception):
                self._finish_transfer(record, received(), "response body not read to the end")
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()

    # -- redaction (public so that callers with their own records can use it) --
    def redact_text(self, text: str, *, known_values: bool = True) -> str:
        """Mask ticket-like URL parameters, vSphere session cookies and (unless
        ``known_values`` is false: the caller's last pass does it) every value redacted so
        far and every registered :class:`beachhead.agent.secrets.Secret`."""
        if "://" in text:
            text = _URL.sub(lambda match: self.redact_url(match.group(0)), text)
        text = _VMWARE_COOKIE.sub(self._mask_cookie_match, text)
        return str(REDACTOR.redact(self._replace_learned(text))) if known_values else text

    def redact_url(self, url: str) -> str:
        """``url`` with the password of its user info and its ticket-like query
        parameters masked (``&amp;``-separated queries inside XML too)."""

        def userinfo(match: re.Match[str]) -> str:
            self._learn(match.group(2))
            return f"{match.group(1)}:{MASK}@"

        url = _URL_USERINFO.sub(userinfo, url)
        base, question, rest = url.partition("?")
        if question:
            query, hash_, fragment = rest.partition("#")
            pieces = _QUERY_SEPARATOR.split(query)
            for n, piece in enumerate(pieces):
                name, equals, value = piece.partition("=")
                if equals and value and (name.lower() in _SECRET_PARAMS or is_secret_name(name)):
                    self._learn(value, durable=False)
                    pieces[n] = f"{name}={MASK}"
            url = f"{base}?{''.join(pieces)}{hash_}{fragment}"
        return str(REDACTOR.redact(self._replace_learned(url)))

    def redact_headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers with cookie values, credentials and session or token headers masked
        (repeated headers joined with ``, ``)."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        redacted: dict[str, str] = {}
        for name, value in pairs:
            lowered, value = name.lower(), str(value)
            if lowered in _COOKIE_HEADERS:
                value = self._mask_cookies(value)
            elif lowered in _AUTH_HEADERS:
                scheme, _, credentials = value.strip().partition(" ")
                self._learn(credentials or scheme)
                value = f"{scheme} {MASK}" if credentials else MASK
            elif any(word in lowered for word in _SECRET_HEADER_WORDS):
                self._learn(value.strip())
                value = MASK
            else:
                value = self.redact_text(value)
            redacted[name] = f"{redacted[name]}, {value}" if name in redacted else value
        return redacted

    def _redact_xml(self, body: bytes | str, operation: str | None) -> tuple[str, str | None]:
        data = body.encode() if isinstance(body, str) else bytes(body)
        if not data:
            return "", None
        try:
            scrubber = _XmlScrubber(data, operation, self.redact_text, self._learn)
            return scrubber.run(), scrubber.body_op
        except Exception as exc:  # never write what could not be redacted
            return f"<not recorded: redaction failed ({type(exc).__name__}), {len(data)} bytes>", None

    def _mask_cookies(self, value: str) -> str:
        parts = re.split(r"([;,])", value)
        for n, part in enumerate(parts):
            name, equals, cookie = part.partition("=")
            if equals and name.strip().lower() not in _COOKIE_ATTRIBUTES:
                self._learn(cookie.strip().strip('"'))
                parts[n] = f"{name}={MASK}"
        return "".join(parts)

    def _mask_cookie_match(self, match: re.Match[str]) -> str:
        self._learn(match.group(4))
        return f"{match.group(1)}{match.group(2)}{match.group(3) or ''}{MASK}"

    def _learn(self, value: str, *, durable: bool = True) -> None:
        value = value.strip()
        if len(value) < _MIN_LEARNED or value == MASK or "<" in value:
            return
        with self._learned_lock:
            if value in self._learned or value in self._transient:
                if value in self._transient:
                    self._transient.move_to_end(value)
                return
            if durable:
                self._learned.add(value)
            else:
                self._transient[value] = None
                if len(self._transient) > _MAX_TRANSIENT:
                    self._transient.popitem(last=False)
            self._learned_sorted = sorted({*self._learned, *self._transient}, key=len, reverse=True)

    def _replace_learned(self, text: str) -> str:
        with self._learned_lock:
            values = self._learned_sorted
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _final(self, data: Any) -> Any:
        if isinstance(data, str):
            return REDACTOR.redact(self._replace_learned(data))
        if isinstance(data, dict):
            return {key: self._final(value) for key, value in data.items()}
        return data

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(self._final(record), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    # -- aiohttp ----------------------------------------------------------------------------
    def trace_config(self) -> aiohttp.TraceConfig:
        """An aiohttp TraceConfig recording every request of a ClientSession created with
        it: method, redacted URL, status, bytes and duration. A record is written when
        the response body has arrived in full (or when the request failed); responses
        released before their end are written by :meth:`close`."""
        config: aiohttp.TraceConfig = aiohttp.TraceConfig()
        config.on_request_start.append(self._on_request_start)
        config.on_request_chunk_sent.append(self._on_request_chunk_sent)
        config.on_request_redirect.append(self._on_request_redirect)
        config.on_request_end.append(self._on_request_end)
        config.on_request_exception.append(self._on_request_exception)
        return config

    async def _on_request_start(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        context.wire_start = time.perf_counter()
        context.wire_sent = 0

    async def _on_request_chunk_sent(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        context.wire_sent = getattr(context, "wire_sent", 0) + len(params.chunk)

    async def _on_request_redirect(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        self._guarded(self._record_response, context, params.method, str(params.url), params.response, False)
        context.wire_start = time.perf_counter()
        context.wire_sent = 0

    async def _on_request_end(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self._guarded(self._record_response, context, params.method, str(params.url), params.response, True)

    async def _on_request_exception(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        def record() -> None:
            sent = int(getattr(context, "wire_sent", 0))
            self.transfer(
                method=params.method,
                url=str(params.url),
                status=None,
                size=sent or None,
                duration_s=time.perf_counter() - getattr(context, "wire_start", time.perf_counter()),
                error=f"{type(params.exception).__name__}: {params.exception}",
                sent=sent,
            )

        self._guarded(record)

    def _record_response(
        self, context: SimpleNamespace, method: str, url: str, response: aiohttp.ClientResponse, wait: bool
    ) -> None:
        record: dict[str, Any] = {
            "method": method,
            "url": url,
            "status": response.status,
            "start": getattr(context, "wire_start", time.perf_counter()),
            "sent": int(getattr(context, "wire_sent", 0)),
        }
        # Held weakly: a response released before its end must not stay in memory until close.
        held = weakref.ref(response)

        def received() -> int | None:
            alive = held()
            return None if alive is None else int(getattr(alive.content, "total_bytes", 0))

        if not wait:
            self._finish_transfer(record, received())
            return
        key = id(record)
        with self._lock:
            self._pending[key] = (record, received)

        def at_eof() -> None:
            with self._lock:
                mine = self._pending.pop(key, None) is not None
            if mine:
                self._guarded(self._finish_transfer, record, received())

        response.content.on_eof(at_eof)

    def _finish_transfer(self, record: dict[str, Any], received: int | None, error: str | None = None) -> None:
        sent = int(record["sent"])
        self.transfer(
            method=str(record["method"]),
            url=str(record["url"]),
            status=record["status"],
            size=sent or received,
            duration_s=time.perf_counter() - float(record["start"]),
            error=error,
            sent=sent,
            received=received,
        )

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # the wire log never breaks the traffic it records
            log.warning("wirelog.record_failed", error=type(exc).__name__)


def _started(duration_s: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=max(duration_s, 0.0))
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- pyvmomi -----------------------------------------------------------------------------------
_EXCHANGE = threading.local()


@dataclass
class _Exchange:
    hook: _StubHook
    operation: str | None
    path: str = ""
    request: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


def _current(hook: _StubHook) -> _Exchange | None:
    exchange: _Exchange | None = getattr(_EXCHANGE, "current", None)
    return exchange if exchange is not None and exchange.hook is hook else None


class _TeeResponse:
    """An ``http.client.HTTPResponse`` whose body bytes are also kept for the log."""

    def __init__(self, response: Any, exchange: _Exchange) -> None:
        self._response = response
        self._exchange = exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def read(self, amt: int | None = None) -> bytes:
        data: bytes = self._response.read() if amt is None else self._response.read(amt)
        self._exchange.chunks.append(data)
        return data

    def read1(self, n: int = -1) -> bytes:
        data: bytes = self._response.read1(n)
        self._exchange.chunks.append(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._response.readinto(buffer)
        self._exchange.chunks.append(bytes(memoryview(buffer)[:n]))
        return n

    def readline(self, limit: int = -1) -> bytes:
        data: bytes = self._response.readline(limit)
        self._exchange.chunks.append(data)
        return data


class _RecordingConnection:
    """A pooled ``HTTP(S)Connection`` of the stub, seen by the exchange in progress."""

    def __init__(self, connection: Any, hook: _StubHook) -> None:
        self.__dict__["_connection"] = connection
        self.__dict__["_hook"] = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        exchange = _current(self._hook)
        if exchange is not None:
            exchange.path = url
            if isinstance(body, str):
                exchange.request = body.encode()
            elif isinstance(body, bytes | bytearray | memoryview):
                exchange.request = bytes(body)
            elif body is not None:  # a stream: not ours to read
                exchange.request = f"<{type(body).__name__} body, not recorded>".encode()
            with contextlib.suppress(Exception):
                exchange.headers = {str(k): str(v) for k, v in dict(headers or {}).items()}
        if headers is None:
            return self._connection.request(method, url, body, **kwargs)
        return self._connection.request(method, url, body, headers, **kwargs)

    def getresponse(self) -> Any:
        response = self._connection.getresponse()
        exchange = _current(self._hook)
        if exchange is None:
            return response
        exchange.status = response.status
        exchange.response_headers = list(response.getheaders())
        return _TeeResponse(response, exchange)


class _StubHook:
    """What :func:`instrument_stub` installs on one ``SoapStubAdapter``."""

    def __init__(self, stub: Any, wire_log: WireLog) -> None:
        self.stub = stub
        self.wire_log = wire_log
        self._invoke_method = stub.InvokeMethod  # the bound originals
        self._get_connection = stub.GetConnection
        self.replaced = {name: stub.__dict__.get(name) for name in ("InvokeMethod", "GetConnection")}
        scheme = getattr(stub, "scheme", None)
        if isinstance(scheme, type) and scheme.__name__ == "_UnixSocketConnection":
            self.base = f"http+unix://{stub.host}"
        elif isinstance(scheme, type) and not issubclass(scheme, HTTPSConnection):
            self.base = f"http://{stub.host}"
        else:
            self.base = f"https://{stub.host}"

    def invoke_method(self, mo: Any, info: Any, args: Any, *more: Any, **options: Any) -> Any:
        """``SoapStubAdapter.InvokeMethod`` (``outerStub`` passed through), recorded."""
        exchange = _Exchange(self, getattr(info, "wsdlName", None))
        previous = getattr(_EXCHANGE, "current", None)
        _EXCHANGE.current = exchange
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return self._invoke_method(mo, info, args, *more, **options)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _EXCHANGE.current = previous
            self.wire_log._guarded(self._record, exchange, time.perf_counter() - start, error)

    def get_connection(self) -> Any:
        """``SoapStubAdapter.GetConnection``, its connection observed."""
        connection = self._get_connection()
        if isinstance(connection, _RecordingConnection):
            return connection
        return _RecordingConnection(connection, self)

    def _record(self, exchange: _Exchange, duration_s: float, error: BaseException | None) -> None:
        encoding = next((v for k, v in exchange.response_headers if k.lower() == "content-encoding"), "")
        fault = message = None
        if isinstance(error, vmodl.MethodFault):
            fault = str(getattr(error, "_wsdlName", type(error).__name__))
        elif error is not None:
            message = f"{type(error).__name__}: {error}"
        self.wire_log.soap(
            url=self.base + (exchange.path or getattr(self.stub, "path", "")),
            request=exchange.request,
            response=_decode_body(b"".join(exchange.chunks), encoding),
            status=exchange.status,
            duration_s=duration_s,
            headers=exchange.headers,
            response_headers=exchange.response_headers,
            method=exchange.operation,
            fault=fault,
            error=message,
        )


def _decode_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    attempts = {"gzip": (16 + zlib.MAX_WBITS,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}.get(encoding, ())
    for wbits in attempts:
        with contextlib.suppress(zlib.error):
            decompressor = zlib.decompressobj(wbits)
            return decompressor.decompress(data) + decompressor.flush()
    return f"<{len(data)} bytes, content-encoding {encoding!r} not decoded>".encode()


def instrument_stub(stub: Any, wire_log: WireLog) -> None:
    """Make every SOAP exchange through pyvmomi's SoapStubAdapter ``stub`` (``si._stub``;
    a ``SessionOrientedStub``'s inner stub is found) land in ``wire_log``.

    The stub's ``InvokeMethod`` and ``GetConnection`` are wrapped on the instance: the
    connections it hands out are observed while they send and read, so the log holds the
    exact bytes of the request and of the response (gzip undone), faults included;
    errors, pooling and locking are pyvmomi's own. Instrumenting again switches the log."""
    stub = getattr(stub, "soapStub", stub)
    hook = stub.__dict__.get("_beachhead_wire_hook")
    if isinstance(hook, _StubHook):
        hook.wire_log = wire_log
        return
    hook = _StubHook(stub, wire_log)
    stub.InvokeMethod = hook.invoke_method
    stub.GetConnection = hook.get_connection
    stub._beachhead_wire_hook = hook


def uninstrument_stub(stub: Any) -> None:
    """Stop recording ``stub``'s exchanges (pooled connections stay, unobserved)."""
    stub = getattr(stub, "soapStub", stub)
    hook = stub.__dict__.pop("_beachhead_wire_hook", None)
    if isinstance(hook, _StubHook):
        for name, previous in hook.replaced.items():
            if previous is None:
                delattr(stub, name)
            else:
                setattr(stub, name, previous)


# -- connecting with the log on ------------------------------------------------------------
class _ProbeConnection:
    """The version probe ``SmartConnect`` sends before the stub exists (``GET
    /sdk/vimServiceVersions.xml``), recorded as a transfer when it is closed."""

    def __init__(self, connection: Any, base: str, wire_log: WireLog) -> None:
        self._connection = connection
        self._base = base
        self._wire_log = wire_log
        self._start = time.perf_counter()
        self._method = "GET"
        self._path = ""
        self._status: int | None = None
        self._received = 0
        self._done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        self._start, self._method, self._path = time.perf_counter(), method, url
        try:
            return self._connection.request(method, url, body, headers or {}, **kwargs)
        except BaseException as exc:
            self._finish(exc)
            raise

    def getresponse(self) -> Any:
        try:
            response = self._connection.getresponse()
        except BaseException as exc:
            self._finish(exc)
            raise
        self._status = response.status
        return _CountingResponse(response, self)

    def count(self, n: int) -> None:
        self._received += n

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._wire_log._guarded(
            lambda: self._wire_log.transfer(
                method=self._method,
                url=self._base + self._path,
                status=self._status,
                size=self._received,
                duration_s=time.perf_counter() - self._start,
                error=None if error is None else f"{type(error).__name__}: {error}",
            )
        )


class _CountingResponse:
    def __init__(self, response: Any, probe: _ProbeConnection) -> None:
        self._response = response
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def read(self, amt: int | None = None) -> bytes:
        data: bytes = self._response.read() if amt is None else self._response.read(amt)
        self._probe.count(len(data))
        return data


class _ConnectPatch:
    """While any thread is inside :func:`recording_connects`, ``pyVim.connect`` builds its
    stubs and probe connections through these factories; they hook only those made by a
    thread that asked for it, every other thread gets exactly what it would have."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._originals: dict[str, Any] = {}
        self._local = threading.local()

    @property
    def wire_log(self) -> WireLog | None:
        """The wire log of this thread's :func:`recording_connects` block, if any."""
        wire_log: WireLog | None = getattr(self._local, "wire_log", None)
        return wire_log

    @wire_log.setter
    def wire_log(self, wire_log: WireLog | None) -> None:
        self._local.wire_log = wire_log

    def stub(self, *args: Any, **kwargs: Any) -> Any:
        """``SoapStubAdapter(...)``, instrumented for a recording thread."""
        stub = self._originals["SoapStubAdapter"](*args, **kwargs)
        if (wire_log := self.wire_log) is not None:
            instrument_stub(stub, wire_log)
        return stub

    def https(self, host: str, port: int | None = None, **kwargs: Any) -> Any:
        """``HTTPSConnection(...)``, recorded for a recording thread."""
        return self._probe("https", "HTTPSConnection", host, port, kwargs)

    def http(self, host: str, port: int | None = None, **kwargs: Any) -> Any:
        """``HTTPConnection(...)``, recorded for a recording thread."""
        return self._probe("http", "HTTPConnection", host, port, kwargs)

    def _probe(self, scheme: str, name: str, host: str, port: int | None, kwargs: dict[str, Any]) -> Any:
        connection = self._originals[name](host, port=port, **kwargs)
        if (wire_log := self.wire_log) is None:
            return connection
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return _ProbeConnection(connection, f"{scheme}://{netloc}{'' if port is None else f':{port}'}", wire_log)

    def enter(self) -> None:
        """Install the factories (the first user does)."""
        with self._lock:
            if self._users == 0:
                factories = {"SoapStubAdapter": self.stub, "HTTPSConnection": self.https, "HTTPConnection": self.http}
                for name, factory in factories.items():
                    self._originals[name] = getattr(pyvim_connect, name)
                    setattr(pyvim_connect, name, factory)
            self._users += 1

    def leave(self) -> None:
        """Put pyVim.connect's own back (the last user does)."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name, original in self._originals.items():
                    setattr(pyvim_connect, name, original)
                self._originals.clear()


_CONNECT_PATCH = _ConnectPatch()


@contextlib.contextmanager
def recording_connects(wire_log: WireLog) -> Iterator[None]:
    """Within the block, the stubs ``pyVim.connect`` creates in this thread
    (``SmartConnect``, ``Connect``, ``SmartStubAdapter``) are instrumented from their
    creation, and the version probe is recorded as a transfer."""
    _CONNECT_PATCH.enter()
    previous, _CONNECT_PATCH.wire_log = _CONNECT_PATCH.wire_log, wire_log
    try:
        yield
    finally:
        _CONNECT_PATCH.wire_log = previous
        _CONNECT_PATCH.leave()


def connect_logged(wire_log: WireLog, **smartconnect_kwargs: Any) -> Any:
    """``pyVim.connect.SmartConnect(**smartconnect_kwargs)`` with every exchange recorded,
    its own login included; returns the service instance."""
    with recording_connects(wire_log):
        return SmartConnect(**smartconnect_kwargs)
