"""Property-based tests (hypothesis) of every parser of the metadata server's input, run
directly: for any input each one returns what it documents or refuses with a 4xx
(:class:`RequestRefused`), never another exception; and whatever a publish accepts
can be stored and served in every format without an error."""

from __future__ import annotations

import ipaddress
import json
import re
import string
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from beachhead.metadata_server import formats
from beachhead.metadata_server.admin_api import MAX_WAIT_S, instance_from_body, parse_json_object, wait_timeout
from beachhead.metadata_server.errors import BadRequest, RequestRefused, Unauthorized
from beachhead.metadata_server.guest_api import PHONE_HOME_FIELDS, form_fields
from beachhead.metadata_server.identify import Identifier
from beachhead.metadata_server.records import (
    HOSTNAME,
    INSTANCE_ID,
    MAC,
    MAX_META_DATA_VALUES,
    MAX_YAML_DEPTH,
    Instance,
    check_hostname,
    check_instance_id,
    check_ip,
    check_mac,
    check_network_config,
    parse_meta_data,
)
from beachhead.metadata_server.store import _instance, _row
from beachhead.metadata_server.tokens import MAX_TTL_S, TokenIssuer
from tests.metadata.strategies import (
    FIELDS,
    body_documents,
    digits_and_lookalikes,
    json_values,
    nested,
    publish_documents,
    yaml_documents,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(digits_and_lookalikes | st.text(max_size=40) | st.none())
@example("²")
@example("\uff11\uff12\uff10")
@example("9" * 5000)
@example("0" * 3000 + "60")
def test_ttl_is_ascii_digits_from_1_to_21600(header: str | None) -> None:
    text = None if header is None else header.strip(" \t")
    significant = None if text is None else text.lstrip("0")
    valid = (
        text is not None
        and significant is not None
        and text.isascii()
        and text.isdigit()
        and len(significant) <= 5
        and 1 <= int(significant or "0") <= MAX_TTL_S
    )
    if valid:
        assert TokenIssuer.ttl_from(header) == int(significant or "0")
    else:
        with pytest.raises(BadRequest):
            TokenIssuer.ttl_from(header)


@PROPERTY
@given(st.text(max_size=600), st.text(max_size=40))
def test_a_token_header_is_checked_or_refused_401(token: str, address: str) -> None:
    issuer = TokenIssuer()
    try:
        issuer.remaining(token, address)
    except Unauthorized:
        return
    raise AssertionError("an arbitrary token was accepted")


@PROPERTY
@given(st.integers(1, MAX_TTL_S), st.integers(0, 200), st.characters())
def test_an_issued_token_is_accepted_and_any_change_to_it_refused(ttl: int, position: int, replacement: str) -> None:
    issuer = TokenIssuer()
    token = issuer.issue("127.0.0.2", ttl)
    assert 0 < issuer.remaining(token, "127.0.0.2") <= ttl
    with pytest.raises(Unauthorized):
        issuer.remaining(token, "127.0.0.3")
    index = position % len(token)
    altered = token[:index] + replacement + token[index + 1 :]
    if altered != token:
        with pytest.raises(Unauthorized):
            issuer.remaining(altered, "127.0.0.2")


@PROPERTY
@given(
    st.sampled_from(["127.0.0.1", "10.0.0.1", "::1", "::ffff:127.0.0.5", ""]) | st.text(max_size=20),
    st.none() | st.text(max_size=100) | st.lists(st.ip_addresses().map(str), max_size=4).map(", ".join),
)
def test_forwarded_for_gives_an_address_or_400(peer: str, forwarded_for: str | None) -> None:
    identifier = Identifier(None, trusted_proxies=[ipaddress.ip_network("127.0.0.0/8")])  # type: ignore[arg-type]
    try:
        requester = identifier.requester(peer, forwarded_for)
    except BadRequest as refused:
        assert refused.field == "X-Forwarded-For"
        return
    if requester.forwarded:
        ipaddress.ip_address(requester.address)
    else:
        assert requester.address == requester.peer


@PROPERTY
@given(json_values | st.from_regex(INSTANCE_ID) | st.text(alphabet=string.printable + "é\n\x00", max_size=140))
@example("i-x\n")
def test_instance_ids(value: Any) -> None:
    try:
        accepted = check_instance_id(value)
    except BadRequest:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", accepted, re.ASCII)


@PROPERTY
@given(json_values | st.ip_addresses().map(str) | st.from_regex(MAC) | st.text(max_size=40))
@example([[[[[]]]]])
@example("00:11:22:33:44:55\n")
def test_ip_mac_and_hostname_fields(value: Any) -> None:
    for check, valid in (
        (check_ip, lambda text: str(ipaddress.ip_address(text)) == text),
        (check_mac, lambda text: re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", text)),
        (lambda v: check_hostname(v, "i-x"), lambda text: HOSTNAME.fullmatch(text) and "\n" not in text),
    ):
        try:
            accepted = check(value)
        except BadRequest as refused:
            assert len(refused.reason) < 200
            continue
        assert accepted is None or valid(accepted), (value, accepted)


@PROPERTY
@given(yaml_documents.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=200))
def test_meta_data_and_network_config(data: bytes) -> None:
    try:
        meta_data = parse_meta_data(data)
    except BadRequest as refused:
        assert refused.field == "meta_data"
    else:
        assert isinstance(meta_data, dict)
        assert _values(meta_data) <= MAX_META_DATA_VALUES  # aliases cannot blow it up
        instance = Instance("i-x", "127.0.0.2", "00:11:22:33:44:55", "x", b"", meta_data=meta_data)
        _serve_everything(instance)
    try:
        check_network_config(data)
    except BadRequest as refused:
        assert refused.field == "network_config"


def _values(value: Any) -> int:
    """How many values ``value`` holds, itself included."""
    if isinstance(value, dict):
        return 1 + sum(_values(item) for item in value.values())
    if isinstance(value, list):
        return 1 + sum(_values(item) for item in value)
    return 1


def _serve_everything(instance: Instance, path: str = "") -> None:
    """Everything a guest or the admin API can ask of an instance, and a store round trip."""
    yaml.safe_load(formats.nocloud_meta_data(instance))
    tree = formats.ec2_tree(instance)
    for lookup in ("", "public-keys", "public-keys/0", "public-keys/0/openssh-key", "network/interfaces/macs", path):
        node = formats.ec2_lookup(tree, lookup)
        if isinstance(node, dict):
            formats.ec2_listing(node, lookup)
    json.loads(formats.openstack_meta_data(instance))
    json.loads(formats.openstack_network_data(instance))
    json.dumps(instance.summary())
    assert repr(_row(_instance(_row(instance)))) == repr(_row(instance))  # repr: NaN == NaN


@PROPERTY
@given(
    body_documents.map(lambda document: json.dumps(document).encode())
    | publish_documents.map(lambda document: json.dumps({"ip": "127.0.0.2", **document}).encode())
    | st.binary(max_size=100)
    | st.builds(nested, st.integers(1, 100_000), st.sampled_from(["list", "dict"])).map(str.encode)
    | st.builds(
        lambda depth, field: f'{{"{field}": {nested(depth, "list")}}}'.encode(),
        st.integers(1, 995),
        st.sampled_from(FIELDS),
    ),
    st.text(max_size=30),
)
@example(nested(100_000, "list").encode(), "i-x")
@example(nested(100_000, "dict").encode(), "i-x")
def test_admin_bodies_are_an_instance_or_400(body: bytes, path_id: str) -> None:
    try:
        instance_id = check_instance_id(path_id)
    except BadRequest:
        instance_id = "i-x"
    try:
        instance = instance_from_body(instance_id, body, None, 1.0)
    except BadRequest as refused:
        assert len(refused.reason) < 200 and len(refused.field) <= 64
        return
    _serve_everything(instance)


@PROPERTY
@given(st.integers(1, 200_000), st.sampled_from(["list", "dict"]))
def test_deep_json_is_refused_400(depth: int, kind: str) -> None:
    try:
        parse_json_object(nested(depth, kind).encode())
    except BadRequest as refused:
        assert refused.field == "body"


@PROPERTY
@given(
    st.binary(max_size=300)
    | st.lists(st.tuples(st.text(max_size=70), st.text(max_size=100)), max_size=40).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    )
)
def test_phone_home_form_bodies(body: bytes) -> None:
    try:
        fields = form_fields(body)
    except BadRequest as refused:
        assert refused.field == "body"
        return
    assert len(fields) <= PHONE_HOME_FIELDS
    assert all(len(key) <= 64 and len(value) <= 4096 and "\x00" not in key + value for key, value in fields.items())
    json.dumps(fields)


@PROPERTY
@given(st.text(max_size=20) | st.floats().map(str) | st.integers().map(str))
@example("٣")
@example("nan")
@example("1e999")
def test_wait_timeouts(text: str) -> None:
    try:
        value = wait_timeout(text)
    except BadRequest:
        return
    assert text.isascii() and 0 <= value <= MAX_WAIT_S


@PROPERTY
@given(st.text(max_size=60))
def test_meta_data_paths(path: str) -> None:
    instance = Instance("i-x", "127.0.0.2", "00:11:22:33:44:55", "x", b"", meta_data={"public-keys": ["k1", "k2"]})
    _serve_everything(instance, path)


def test_nesting_is_bounded_not_merely_caught() -> None:
    depth_ok = "a: " + nested(MAX_YAML_DEPTH - 1, "list")
    assert parse_meta_data(depth_ok.encode())
    with pytest.raises(RequestRefused, match="nested"):
        parse_meta_data(("a: " + nested(MAX_YAML_DEPTH, "list")).encode())
