"""Hypothesis strategies for the metadata server's input: JSON values, look-alike
digits, YAML documents (odd types, deep nesting, alias bombs), publish bodies."""

from __future__ import annotations

import base64

import yaml
from hypothesis import strategies as st

from beachhead.metadata_server.records import MAC

FIELDS = ("ip", "mac", "hostname", "user_data", "meta_data", "vendor_data", "network_config")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
digits_and_lookalikes = st.text(alphabet="0123456789 \t+-.x²³¹\uff10\uff11\uff12\uff13٣߁\u00a0\u2007", max_size=12)


def nested(depth: int, kind: str) -> str:
    """JSON (or YAML flow) nested ``depth`` deep: ``[[[...]]]`` or ``{"a":{"a":...}}``."""
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def alias_bomb(levels: int) -> str:
    """YAML whose aliases expand ninefold per level."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


yaml_documents = st.one_of(
    st.text(max_size=200),
    json_values.map(lambda value: yaml.safe_dump(value, default_flow_style=None)),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(yaml.safe_dump),
    st.sampled_from(
        [
            "public-keys: 5",
            "public-keys: [1, {a: b}]",
            "public-keys: {k: [1, 2]}",
            "public_keys: true",
            "when: 2024-01-01",
            "2024-01-01: date key",
            "? [a, b]\n: list key",
            "blob: !!binary aGVsbG8=",
            "set: !!set {a, b}",
            "omap: !!omap [a: 1, b: 2]",
            "big: " + "9" * 5000,
            "hex: 0x" + "f" * 5000,
            "nan: .nan\ninf: -.inf",
            "a: &x 1\nb: *x\n<<: {c: 2}",
            "bad: 2024-13-45",
            "tab:\t1",
            "\x00",
            "a: b\n---\nc: d",
        ]
    ),
    st.builds(nested, st.integers(1, 3000), st.sampled_from(["list", "dict"])),
    st.integers(2, 9).map(alias_bomb),
)


body_documents = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6),
    st.one_of(
        json_values,
        st.ip_addresses().map(str),
        st.from_regex(MAC, fullmatch=True),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
        st.binary(max_size=100).map(lambda data: base64.b64encode(data).decode()),
        yaml_documents.map(lambda text: base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()),
    ),
    max_size=8,
)


b64_yaml = yaml_documents.map(lambda text: base64.b64encode(text.encode("utf-8", "surrogatepass")).decode())
# Mostly valid documents, so that the checks past the first get exercised too.
publish_documents = st.fixed_dictionaries(
    {"user_data": st.binary(max_size=50).map(lambda data: base64.b64encode(data).decode())},
    optional={
        "ip": st.ip_addresses().map(str) | json_values,
        "mac": st.from_regex(MAC, fullmatch=True) | st.text(max_size=20),
        "hostname": st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9]{1,5})?", fullmatch=True) | json_values,
        "meta_data": b64_yaml,
        "network_config": b64_yaml,
        "vendor_data": st.binary(max_size=50).map(lambda data: base64.b64encode(data).decode()) | json_values,
    },
)
