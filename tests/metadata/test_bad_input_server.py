"""Bad input against the real server: what was once answered 500 is answered 400, and
a property-based run (hypothesis, bounded) of arbitrary headers, bodies and paths
through every route gets no 5xx and leaves no traceback in the server log."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.metadata.conftest import MetadataServer, raw_request, status_of
from tests.metadata.strategies import alias_bomb, body_documents, digits_and_lookalikes, nested, publish_documents

GUEST = "127.0.0.2"  # the published guest the fuzzed requests come from
FETCHED = "127.0.0.9"  # a guest that fetched its user-data: a long-poll on it answers at once
TTL = "X-aws-ec2-metadata-token-ttl-seconds"


def request(
    server: MetadataServer,
    method: str,
    path: str,
    headers: dict[str, bytes | str] | None = None,
    body: bytes = b"",
    source: str = GUEST,
    admin: bool = False,
) -> tuple[int, bytes]:
    """One request over its own connection, header values sent as given (bytes
    unencoded); the status and the whole answer."""
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {server.host}".encode(), b"Connection: close"]
    if admin:
        lines.append(f"Authorization: Bearer {server.token}".encode())
    for name, value in (headers or {}).items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    if (body or method in ("PUT", "POST")) and "Transfer-Encoding" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}".encode())
    answer = raw_request(server, b"\r\n".join(lines) + b"\r\n\r\n" + body, source)
    return status_of(answer), answer


def publish_body(**fields: object) -> bytes:
    return json.dumps({"ip": GUEST, "user_data": base64.b64encode(b"#cloud-config\n").decode(), **fields}).encode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_ttl_header_takes_ascii_digits_only(server: MetadataServer) -> None:
    server.publish("i-two", "--ip", GUEST)
    for ttl in ("²", "\uff11\uff12\uff10", "٣", "9" * 5000, "1\u00a0", "0", "21601"):
        status, answer = request(server, "PUT", "/latest/api/token", {TTL: ttl})
        assert status == 400 and b"whole number of seconds" in answer, (ttl, answer)
    for ttl in ("60", " 60 ", "000060", "21600"):
        assert request(server, "PUT", "/latest/api/token", {TTL: ttl})[0] == 200, ttl


def test_deeply_nested_admin_bodies_get_400(server: MetadataServer) -> None:
    for body in (nested(100_000, "list"), nested(100_000, "dict"), '{"ip": ' + nested(990, "list") + "}"):
        status, answer = request(server, "PUT", "/admin/instances/i-deep", body=body.encode(), admin=True)
        assert status == 400 and b'"field": "' in answer, answer[-200:]
    for field, document in (
        ("meta_data", nested(100_000, "list")),
        ("meta_data", "a: " + nested(5000, "dict")),
        ("meta_data", alias_bomb(9)),  # 9**8 values once expanded
        ("meta_data", "big: " + "9" * 5000),
        ("network_config", nested(9000, "list")),
    ):
        body = publish_body(**{field: b64(document)})
        status, answer = request(server, "PUT", "/admin/instances/i-m", body=body, admin=True)
        assert status == 400 and f'"field": "{field}"'.encode() in answer, answer[-200:]


def test_odd_headers_paths_and_bodies_get_4xx(server: MetadataServer) -> None:
    server.publish("i-two", "--ip", GUEST)
    status, _ = request(server, "PUT", "/admin/instances/i-x%0A", body=publish_body(ip="127.0.0.8"), admin=True)
    assert status == 400, "an instance id ending in a newline"
    assert request(server, "GET", "/admin/instances", {"Authorization": b"Bearer \xff\xfe"})[0] == 401
    chunked = b"zz\r\nhello\r\n0\r\n\r\n"
    assert 400 <= request(server, "POST", "/phone-home", {"Transfer-Encoding": "chunked"}, chunked)[0] < 500
    assert 400 <= request(server, "POST", "/phone-home", {"Content-Encoding": "gzip"}, b"not gzip")[0] < 500
    assert request(server, "POST", "/phone-home", {"Content-Encoding": "gzip"}, gzip.compress(b"a=1&b=2"))[0] == 200


@pytest.mark.parametrize(
    "meta_data",
    ["public-keys: 5", "public-keys: [1, {a: b}]", "public_keys: true", "when: 2024-01-01\n2024-01-02: key"],
)
def test_odd_but_valid_meta_data_is_served(server: MetadataServer, meta_data: str) -> None:
    status, answer = request(
        server, "PUT", "/admin/instances/i-odd", body=publish_body(meta_data=b64(meta_data)), admin=True
    )
    assert status in (200, 201), answer
    for path in (
        "/meta-data",
        "/latest/meta-data/",
        "/latest/meta-data/public-keys/0/openssh-key",
        "/openstack/latest/meta_data.json",
    ):
        status, answer = request(server, "GET", path)
        assert status in (200, 404), (path, answer)


header_values = (
    digits_and_lookalikes.map(str.encode)
    | st.text(max_size=80).map(lambda text: text.encode("utf-8", "surrogatepass"))
    | st.binary(max_size=80)
).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
path_parts = st.text(max_size=30).map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe=""))
GUEST_PATHS = (
    "/",
    "/meta-data",
    "/user-data",
    "/vendor-data",
    "/network-config",
    "/latest/meta-data/",
    "/latest/user-data",
    "/openstack/latest/meta_data.json",
    "/openstack/latest/network_data.json",
    "/openstack/latest/user_data",
)


@pytest.fixture
def fuzzed(start_server: Callable[..., MetadataServer]) -> MetadataServer:
    """A server that trusts loopback as a proxy (so X-Forwarded-For is parsed), with a
    guest that has fetched its user-data."""
    server = start_server("--trusted-proxy", "127.0.0.0/8", "--body-timeout", "5")
    server.publish("i-fetched", "--ip", FETCHED)
    server.publish("i-fuzz", "--ip", GUEST)
    assert request(server, "GET", "/user-data", source=FETCHED)[0] == 200
    return server


def fuzz_one(server: MetadataServer, draw: Callable[..., object]) -> list[tuple[str, int, bytes]]:
    """One drawn request (a publish is followed by a guest's fetches); what each got."""
    kind = draw(
        st.sampled_from(
            ["token", "ec2", "forwarded", "publish", "phone-home", "auth", "wait", "path", "garbage", "chunked"]
        )
    )
    done = []

    def send(label: str, *args: object, **kwargs: object) -> None:
        status, answer = request(server, *args, **kwargs)  # type: ignore[arg-type]
        done.append((label, status, answer[:300]))

    if kind == "token":
        headers: dict[str, bytes | str] = {TTL: draw(header_values)}
        if draw(st.booleans()):
            headers["X-Forwarded-For"] = draw(header_values)
        send(kind, "PUT", "/latest/api/token", headers)
    elif kind == "ec2":
        version = draw(st.sampled_from(["latest", "2009-04-04"]) | path_parts)
        path = "/".join(draw(st.lists(path_parts, max_size=4)))
        send(kind, "GET", f"/{version}/meta-data/{path}", {"X-aws-ec2-metadata-token": draw(header_values)})
    elif kind == "forwarded":
        send(kind, "GET", draw(st.sampled_from(GUEST_PATHS)), {"X-Forwarded-For": draw(header_values)})
    elif kind == "publish":
        mostly_valid = draw(st.integers(0, 3)) > 0
        document = draw(publish_documents if mostly_valid else body_documents)
        if mostly_valid:
            document["ip"] = GUEST
        instance_id = draw(st.just("i-fuzz") if mostly_valid else path_parts.filter(lambda part: "fetched" not in part))
        send(kind, "PUT", f"/admin/instances/{instance_id}", body=json.dumps(document).encode(), admin=True)
        if 200 <= done[-1][1] < 300:
            for path in (*GUEST_PATHS, "/latest/meta-data/public-keys/0/openssh-key", "/latest/meta-data/network/"):
                send(f"{kind} then {path}", "GET", path)
            send(f"{kind} then data", "GET", f"/admin/instances/{instance_id}/data", admin=True)
    elif kind == "phone-home":
        form = draw(
            st.binary(max_size=200) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass"))
        )
        path = draw(st.sampled_from(["/phone-home", "/phone-home/i-fuzz"]) | path_parts.map("/phone-home/{}".format))
        send(kind, "POST", path, {"Content-Type": "application/x-www-form-urlencoded"}, form)
    elif kind == "auth":
        send(kind, "GET", "/admin/instances", {"Authorization": draw(header_values)})
    elif kind == "wait":
        event = draw(st.sampled_from(["fetched", "phoned_home"]) | path_parts)
        timeout = draw(path_parts | st.sampled_from(["0", "nan", "1e999", "-1", "٣"]))
        instance_id = draw(st.sampled_from(["i-fetched", "nobody"]))
        if event != "fetched" and instance_id == "i-fetched":
            timeout = "0"  # a valid wait would last its timeout
        send(kind, "GET", f"/admin/instances/{instance_id}/wait?event={event}&timeout={timeout}", admin=True)
    elif kind == "path":
        send(kind, "GET", "/" + "/".join(draw(st.lists(path_parts, min_size=1, max_size=5))))
    elif kind == "garbage":
        line = draw(st.binary(min_size=1, max_size=60)).replace(b"\r", b"").replace(b"\n", b"")
        answer = raw_request(server, line + b"\r\nConnection: close\r\n\r\n", GUEST)
        done.append((kind, status_of(answer) or 400, answer[:300]))  # closing without an answer is fine too
    else:
        chunks = draw(st.binary(max_size=60))
        send(
            kind,
            "PUT",
            "/admin/instances/i-fuzz",
            {"Transfer-Encoding": "chunked"},
            chunks + b"\r\n0\r\n\r\n",
            admin=True,
        )
    return done


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzzed_requests_get_no_5xx_and_leave_no_traceback(fuzzed: MetadataServer, data: st.DataObject) -> None:
    for label, status, answer in fuzz_one(fuzzed, data.draw):
        event(f"{label.split(' ')[0]} {status}")  # shown by --hypothesis-show-statistics
        assert 0 < status < 500, (label, status, answer)
    assert fuzzed.internal_errors() == []
