"""Redaction for the wire log: secrets masked (``***``) in SOAP XML, HTTP headers, URLs and
free text, every masked value remembered and masked again wherever it turns up later.

What is masked:

- headers: cookie values (``vmware_soap_session`` and every other; cookie attributes
  stay), credentials of ``Authorization``, headers named for sessions, tokens, tickets;
- XML bodies, parsed with expat (the original text is kept, only secret content is
  replaced, so the log stays readable XML): the content of elements and the values of
  attributes whose names say password, pwd, passwd, passphrase, secret, cookie, token,
  ticket, session id or private key (any namespace prefix, any case); the ``key`` of a
  ``UserSession`` and of a ``Login*`` result; the results of ``*Ticket`` operations;
  WS-Security headers; the values (not the names) of guest ``envVariables``; an option's
  ``value`` when its ``key`` names a secret or is one of cloud-init's guestinfo data keys
  (``guestinfo.userdata``, ``guestinfo.metadata``, ``guestinfo.vendordata``: gzip+base64
  decodes to what may hold passwords). A body expat cannot parse (truncated, not XML,
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

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat
from xml.sax.saxutils import escape

from beachhead.agent.secrets import MASK, REDACTOR

# -- what counts as a secret ---------------------------------------------------------------
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "cookie")
_SECRET_SUFFIXES = ("token", "ticket")
# ``usbHidCode``: keystrokes PutUsbScanCodes types, which may spell a password.
_SECRET_NAMES = frozenset({"pwd", "sessionid", "session_id", "privatekey", "private_key", "keydata", "usbhidcode"})
# Elements masked whatever their name says: WS-Security headers and SAML assertions.
_SECRET_ELEMENTS = frozenset({"Security", "Assertion"})
# Guest environment settings (``NAME=value``): values masked, names kept, as in the journal.
_ENVIRONMENT = "envVariables"
# extraConfig keys whose values are cloud-init's data for the VMware datasource.
_DATA_OPTIONS = frozenset({"guestinfo.userdata", "guestinfo.metadata", "guestinfo.vendordata"})
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


def is_secret_option(key: str) -> bool:
    """Whether the value of the option (extraConfig key) ``key`` is to be masked."""
    return is_secret_name(key) or key.lower() in _DATA_OPTIONS


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
        if name == "value" and parent.option_key and is_secret_option(parent.option_key):
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


# -- the redactor --------------------------------------------------------------------------------
class WireRedactor:
    """Masks the secrets of one wire log's records; thread-safe.

    Values masked once are hunted for in everything redacted after: session keys,
    cookies, passwords and tickets for the whole run; one-shot URL ids, the latest only."""

    def __init__(self) -> None:
        self._learned: set[str] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._learned_sorted: list[str] = []
        self._learned_lock = threading.Lock()

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

    def redact_xml(self, body: bytes | str, operation: str | None) -> tuple[str, str | None]:
        """``body`` with its secrets masked, and the operation its SOAP body names."""
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

    def final_pass(self, data: Any) -> Any:
        """``data`` (a record: strings in nested dicts) with every value redacted so far and
        every registered :class:`beachhead.agent.secrets.Secret` masked in its strings."""
        if isinstance(data, str):
            return REDACTOR.redact(self._replace_learned(data))
        if isinstance(data, dict):
            return {key: self.final_pass(value) for key, value in data.items()}
        return data
