"""SOAP 1.2 / WS-Addressing envelopes as the Windows WS-Management service writes them.

Requests are parsed namespace-aware (any prefixes a client chooses); answers are written
with the prefixes, namespace declarations and header order of real Windows answers
(``s``, ``a``, ``x``, ``w``, ``rsp``, ``p`` on the envelope, ``xml:lang="en-US"``).
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

S = "http://www.w3.org/2003/05/soap-envelope"
A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
E = "http://schemas.xmlsoap.org/ws/2004/08/eventing"
N = "http://schemas.xmlsoap.org/ws/2004/09/enumeration"
W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
P = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CFG = "http://schemas.microsoft.com/wbem/wsman/1/config"
F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
XML = "http://www.w3.org/XML/1998/namespace"

ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
SHELL_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
CONFIG_URI = "http://schemas.microsoft.com/wbem/wsman/1/config"

#: The prefixes Windows uses, in the order it declares them.
PREFIXES = {"s": S, "a": A, "x": X, "e": E, "n": N, "w": W, "rsp": RSP, "p": P, "cfg": CFG, "f": F}

_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class EnvelopeError(ValueError):
    """The request is not a WS-Management envelope this endpoint can read."""


@dataclass
class Node:
    """An element to write: a prefixed name (``rsp:Stream``), attributes, text, children."""

    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    children: list[Node] = field(default_factory=list)

    def add(self, child: Node) -> Node:
        """Append ``child`` and return it."""
        self.children.append(child)
        return child


def node(name: str, text: str | None = None, /, *children: Node, **attrs: str) -> Node:
    """Shorthand for :class:`Node` (attribute ``xmlns_f`` is written ``xmlns:f``)."""
    return Node(name, {k.replace("_", ":"): v for k, v in attrs.items()}, text, list(children))


def serialize(item: Node) -> str:
    """The element as XML text, empty elements written ``<x></x>`` unless childless and
    textless ones the caller marks with text ``None`` (then ``<x/>``)."""
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in item.attrs.items())
    if item.text is None and not item.children:
        return f"<{item.name}{attrs}/>"
    inner = escape(item.text or "") + "".join(serialize(c) for c in item.children)
    return f"<{item.name}{attrs}>{inner}</{item.name}>"


def new_message_id() -> str:
    """A WS-Addressing message id as Windows writes one: ``uuid:`` and upper-case hex."""
    return f"uuid:{str(uuid.uuid4()).upper()}"


def build(
    action: str,
    relates_to: str,
    body: Sequence[Node],
    namespaces: Iterable[str] = ("x", "w", "rsp", "p"),
    header_extra: Sequence[Node] = (),
) -> bytes:
    """A response envelope: header (Action, MessageID, extra, To, RelatesTo) and body.

    ``namespaces`` are the prefixes declared on the envelope after ``s`` and ``a``, as
    the matching Windows answer declares them.
    """
    decls = {"xml:lang": "en-US", "xmlns:s": S, "xmlns:a": A}
    decls.update({f"xmlns:{p}": PREFIXES[p] for p in namespaces})
    header = node(
        "s:Header",
        None,
        node("a:Action", action),
        node("a:MessageID", new_message_id()),
        *header_extra,
        node("a:To", ANONYMOUS),
        node("a:RelatesTo", relates_to),
    )
    envelope = Node("s:Envelope", decls, None, [header, Node("s:Body", {}, "" if not body else None, list(body))])
    return serialize(envelope).encode("utf-8")


@dataclass
class Request:
    """What the endpoint reads from a request envelope."""

    action: str
    message_id: str
    resource_uri: str
    to: str
    selectors: dict[str, str]
    options: dict[str, str]
    operation_timeout_s: float | None
    max_envelope_size: int | None
    body: ET.Element


def parse_duration(text: str) -> float:
    """Seconds in an xs:duration such as ``PT60S`` or ``PT7200.000S``."""
    match = _DURATION.match(text.strip())
    if not match:
        raise EnvelopeError(f"bad duration {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def _text(parent: ET.Element, path: str) -> str:
    found = parent.find(path, PREFIXES)
    return (found.text or "").strip() if found is not None else ""


def parse(data: bytes) -> Request:
    """Read a request envelope (UTF-8 or UTF-16 with a byte-order mark)."""
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8"
    try:
        text = data.decode(encoding).lower()
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"not {encoding}") from exc
    if "<!doctype" in text or "<!entity" in text:
        raise EnvelopeError("DTDs are not allowed")
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs refused above: no entity expansion
    except ET.ParseError as exc:
        raise EnvelopeError(f"not XML: {exc}") from exc
    if root.tag != f"{{{S}}}Envelope":
        raise EnvelopeError("not a SOAP 1.2 envelope")
    header = root.find("s:Header", PREFIXES)
    body = root.find("s:Body", PREFIXES)
    if header is None or body is None:
        raise EnvelopeError("envelope without Header or Body")
    selectors = {
        sel.get("Name", ""): (sel.text or "").strip() for sel in header.iterfind("w:SelectorSet/w:Selector", PREFIXES)
    }
    options = {
        opt.get("Name", ""): (opt.text or "").strip() for opt in header.iterfind("w:OptionSet/w:Option", PREFIXES)
    }
    timeout = _text(header, "w:OperationTimeout")
    size = _text(header, "w:MaxEnvelopeSize")
    return Request(
        action=_text(header, "a:Action"),
        message_id=_text(header, "a:MessageID"),
        resource_uri=_text(header, "w:ResourceURI"),
        to=_text(header, "a:To"),
        selectors=selectors,
        options=options,
        operation_timeout_s=parse_duration(timeout) if timeout else None,
        max_envelope_size=int(size) if size.isdigit() else None,
        body=body,
    )
