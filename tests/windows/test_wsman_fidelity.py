"""The endpoint's answers, element by element, against what real Windows answered.

tests/windows/recorded/winrs.yaml holds the skeletons of real Windows answers (see its
header for where the facts come from). Requests built like the recorded ones go to the
endpoint in order (over https with Basic, so the test reads the raw SOAP); each answer
must match its skeleton: HTTP status, the namespace prefixes the envelope declares and
their order, ``xml:lang``, the header (Action, MessageID, To, RelatesTo), and the body's
elements, attributes, order and fixed texts. Ids, payloads and addresses are
placeholders. A Receive that Windows answered at once may be answered in several parts
here (``Running`` first, as Windows also does for slower programs): every part must be
a well-formed Running answer and the parts together must match the recorded answer.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.windows.conftest import WsmanEndpoint

RECORDED = Path(__file__).parent / "recorded" / "winrs.yaml"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "e": "http://schemas.xmlsoap.org/ws/2004/08/eventing",
    "n": "http://schemas.xmlsoap.org/ws/2004/09/enumeration",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "cfg": "http://schemas.microsoft.com/wbem/wsman/1/config",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
SHELL_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
PLACEHOLDERS = {
    "{uuid}": r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}",
    "{msgid}": r"uuid:[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}",
    "{b64}": r"[A-Za-z0-9+/]+={0,2}",
    "{int}": r"-?\d+",
    "{any}": r".*",
}

Shape = tuple[str, tuple[tuple[str, str], ...], str, tuple[Any, ...]]


def _value_matches(expected: str, actual: str) -> bool:
    pattern = re.escape(expected)
    for name, regex in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(name), regex)
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def shape(element: ET.Element) -> Shape:
    """Tag, attributes, text and children; runs of equal sibling shapes collapsed."""
    children: list[Shape] = []
    for child in element:
        child_shape = shape(child)
        if not children or children[-1] != child_shape:
            children.append(child_shape)
    text = (element.text or "").strip() if len(element) == 0 else ""
    return element.tag, tuple(sorted(element.attrib.items())), text, tuple(children)


def generalise(actual: Shape, expected: Shape) -> Shape:
    """``actual`` with its texts and attribute values replaced by ``expected``'s where
    they match the placeholders there, so that equal shapes mean a match."""
    tag, attrs, text, children = actual
    _, e_attrs, e_text, e_children = expected
    e_attr_map = dict(e_attrs)
    attrs = tuple((k, e_attr_map[k] if k in e_attr_map and _value_matches(e_attr_map[k], v) else v) for k, v in attrs)
    text = e_text if _value_matches(e_text, text) else text
    out: list[Shape] = []
    for index, child in enumerate(children):
        general = generalise(child, e_children[min(index, len(e_children) - 1)]) if e_children else child
        if not out or out[-1] != general:
            out.append(general)
    if len(out) != len(e_children):  # realign after collapsing: try each expected child in turn
        out = []
        for child in children:
            for candidate in e_children:
                general = generalise(child, candidate)
                if general == candidate:
                    break
            if not out or out[-1] != general:
                out.append(general)
    return tag, attrs, text, tuple(out)


def skeleton(body: str) -> list[Shape]:
    """The recorded body skeleton's shapes."""
    declarations = " ".join(f'xmlns:{p}="{uri}"' for p, uri in NS.items())
    wrapper = ET.fromstring(f"<s:Body {declarations}>{body}</s:Body>")
    return [shape(child) for child in wrapper]


def declared_prefixes(raw: str) -> list[str]:
    """The prefixes the envelope's start tag declares, in order."""
    start = re.match(r"<s:Envelope([^>]*)>", raw)
    assert start, raw[:200]
    return re.findall(r'xmlns:(\w+)="', start.group(1))


def envelope(
    action: str, resource: str, selectors: dict[str, str], options: dict[str, str], timeout: str, body: str
) -> tuple[str, str]:
    """A request built as the recorded clients built theirs; its MessageID and text."""
    message_id = f"uuid:{str(uuid.uuid4()).upper()}"
    option_set = "".join(f'<wsman:Option Name="{k}">{v}</wsman:Option>' for k, v in options.items())
    selector_set = "".join(f'<wsman:Selector Name="{k}">{v}</wsman:Selector>' for k, v in selectors.items())
    text = (
        '<s:Envelope xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
        'xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        'xmlns:wsmv="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f'<s:Header><wsa:Action s:mustUnderstand="true">{action}</wsa:Action>'
        '<wsmv:DataLocale s:mustUnderstand="false" xml:lang="en-US" />'
        '<wsman:Locale s:mustUnderstand="false" xml:lang="en-US" />'
        '<wsman:MaxEnvelopeSize s:mustUnderstand="true">153600</wsman:MaxEnvelopeSize>'
        f"<wsa:MessageID>{message_id}</wsa:MessageID><wsman:OperationTimeout>{timeout}</wsman:OperationTimeout>"
        '<wsa:ReplyTo><wsa:Address s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:Address></wsa:ReplyTo>'
        f'<wsman:ResourceURI s:mustUnderstand="true">{resource}</wsman:ResourceURI>'
        f'<wsmv:SessionId s:mustUnderstand="false">uuid:{str(uuid.uuid4()).upper()}</wsmv:SessionId>'
        "<wsa:To>https://127.0.0.1/wsman</wsa:To>"
        + (f'<wsman:OptionSet s:mustUnderstand="true">{option_set}</wsman:OptionSet>' if options else "")
        + (f"<wsman:SelectorSet>{selector_set}</wsman:SelectorSet>" if selectors else "")
        + f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
    return message_id, text


def check_header(root: ET.Element, action: str, message_id: str, anonymous: str) -> None:
    header = root.find("s:Header", NS)
    assert header is not None
    names = [child.tag for child in header]
    assert names == [f"{{{NS['a']}}}{n}" for n in ("Action", "MessageID", "To", "RelatesTo")]
    assert header.findtext("a:Action", namespaces=NS) == action
    assert _value_matches("{msgid}", header.findtext("a:MessageID", "", NS))
    assert header.findtext("a:To", namespaces=NS) == anonymous
    assert header.findtext("a:RelatesTo", namespaces=NS) == message_id


@pytest.fixture
def session(wsman_endpoint: WsmanEndpoint) -> requests.Session:
    http = requests.Session()
    http.auth = (wsman_endpoint.user, wsman_endpoint.password)
    http.verify = str(wsman_endpoint.ca_file)
    http.headers["Content-Type"] = "application/soap+xml;charset=UTF-8"
    return http


def test_answers_match_real_windows(wsman_endpoint: WsmanEndpoint, session: requests.Session) -> None:
    recorded = yaml.safe_load(RECORDED.read_text())
    anonymous = recorded["anonymous"]
    kept: dict[str, str] = {}
    for exchange in recorded["exchanges"]:
        name, request, expected = exchange["name"], exchange["request"], exchange["response"]
        body = request["body"]
        for key, value in kept.items():
            body = body.replace("{" + key + "}", value)
        selectors = {k: kept[v] for k, v in request.get("selectors", {}).items()}
        args = (request["action"], request.get("resource", SHELL_CMD), selectors, request.get("options", {}))
        timeout = request.get("timeout", "PT20S")
        expected_body = skeleton(expected["body"])
        streams: list[ET.Element] = []
        while True:
            message_id, text = envelope(*args, timeout, body)
            answer = session.post(
                wsman_endpoint.https_url, data=text.encode(), timeout=60, verify=str(wsman_endpoint.ca_file)
            )
            assert answer.status_code == expected["status"], f"{name}: {answer.status_code} {answer.text[:500]}"
            assert answer.headers["Content-Type"].startswith("application/soap+xml"), name
            raw = answer.text
            assert declared_prefixes(raw) == expected["namespaces"], name
            root = ET.fromstring(raw)
            assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en-US", name
            check_header(root, expected["action"], message_id, anonymous)
            received = root.find("s:Body/rsp:ReceiveResponse", NS)
            state = received.find("rsp:CommandState", NS) if received is not None else None
            if "output" in exchange and state is not None and state.get("State") == RUNNING:
                # A part of the answer: data streams without End, then the Running state.
                parts = list(received)
                assert all(p.tag == f"{{{NS['rsp']}}}Stream" and "End" not in p.attrib for p in parts[:-1]), name
                assert state.findtext("rsp:ExitCode", namespaces=NS) is None and not (state.text or "").strip()
                streams += parts[:-1]
                continue
            if received is not None and streams:
                for part in reversed(streams):
                    received.insert(0, part)
            break
        body_element = root.find("s:Body", NS)
        assert body_element is not None
        if expected["body"] == "":
            assert len(body_element) == 0 and raw.endswith("<s:Body></s:Body></s:Envelope>"), name
        actual_body = [shape(child) for child in body_element]
        general = [generalise(a, e) for a, e in zip(actual_body, expected_body, strict=False)]
        assert general == expected_body, f"{name}:\n got      {actual_body}\n expected {expected_body}"
        if "output" in exchange:
            assert received is not None
            output = {"stdout": b"", "stderr": b""}
            for stream in received.iterfind("rsp:Stream", NS):
                output[stream.get("Name", "")] += base64.b64decode(stream.text or "")
            want = exchange["output"]
            assert output["stdout"] == want.get("stdout", "").encode(), name
            assert output["stderr"] == want.get("stderr", "").encode(), name
            assert received.findtext("rsp:CommandState/rsp:ExitCode", namespaces=NS) == want["exit"], name
        for key, id_name in exchange.get("keep", {}).items():
            found = next(el for el in root.iter() if el.tag.endswith(id_name) or el.get("Name") == id_name)
            kept[key] = (found.text or "").strip()


def test_unknown_shell_is_an_invalid_selectors_fault(wsman_endpoint: WsmanEndpoint, session: requests.Session) -> None:
    shell = str(uuid.uuid4()).upper()
    action = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
    body = '<rsp:Receive><rsp:DesiredStream CommandId="0">stdout stderr</rsp:DesiredStream></rsp:Receive>'
    message_id, text = envelope(action, SHELL_CMD, {"ShellId": shell}, {}, "PT20S", body)
    answer = session.post(wsman_endpoint.https_url, data=text.encode(), timeout=60, verify=str(wsman_endpoint.ca_file))
    assert answer.status_code == 500
    root = ET.fromstring(answer.text)
    check_header(root, "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", message_id, NS["a"] + "/role/anonymous")
    assert root.findtext("s:Body/s:Fault/s:Code/s:Subcode/s:Value", namespaces=NS) == "w:InvalidSelectors"
    fault = root.find("s:Body/s:Fault/s:Detail/f:WSManFault", NS)
    assert fault is not None and fault.get("Code") == "2150858843"
    assert shell in (fault.findtext("f:Message", "", NS))


def test_documents_with_a_dtd_are_refused(wsman_endpoint: WsmanEndpoint, session: requests.Session) -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaaaaaa">]><s:Envelope xmlns:s="' + NS["s"].encode()
    bomb += b'"><s:Header/><s:Body>&a;</s:Body></s:Envelope>'
    answer = session.post(wsman_endpoint.https_url, data=bomb, timeout=30, verify=str(wsman_endpoint.ca_file))
    assert answer.status_code == 400


def test_receive_answers_only_the_desired_streams(wsman_endpoint: WsmanEndpoint, session: requests.Session) -> None:
    def post(action: str, selectors: dict[str, str], body: str) -> ET.Element:
        _, text = envelope(action, SHELL_CMD, selectors, {}, "PT20S", body)
        answer = session.post(
            wsman_endpoint.https_url, data=text.encode(), timeout=60, verify=str(wsman_endpoint.ca_file)
        )
        assert answer.status_code == 200, answer.text
        return ET.fromstring(answer.text)

    shell_body = (
        "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
        "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
    )
    created = post("http://schemas.xmlsoap.org/ws/2004/09/transfer/Create", {}, shell_body)
    shell = created.findtext(".//rsp:ShellId", namespaces=NS) or ""
    line = "<rsp:CommandLine><rsp:Command>echo out&amp; echo err&gt;&amp;2</rsp:Command></rsp:CommandLine>"
    started = post("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command", {"ShellId": shell}, line)
    command = started.findtext(".//rsp:CommandId", namespaces=NS) or ""
    receive = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive"
    seen: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for wanted in ("stderr", "stdout"):
        done = False
        while not done:
            desired = (
                f'<rsp:Receive><rsp:DesiredStream CommandId="{command}">{wanted}</rsp:DesiredStream></rsp:Receive>'
            )
            answer = post(receive, {"ShellId": shell}, desired)
            for stream in answer.iterfind(".//rsp:Stream", NS):
                assert stream.get("Name") == wanted
                seen[wanted] += base64.b64decode(stream.text or "")
            state = answer.find(".//rsp:CommandState", NS)
            done = state is not None and state.get("State", "").endswith("/Done")
    assert seen == {"stdout": b"out\r\n", "stderr": b"err\r\n"}
