"""Target URIs and target files: what is accepted, and how bad input is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.agent.secrets import Secret
from beachhead.agent.targets import OsFamily, load_targets_file, parse_target
from tests.conftest import write_plan


def test_full_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "id"
    key.write_text("k")
    known = tmp_path / "kh"
    known.write_text("")
    monkeypatch.setenv("PW", "s3cret-value")
    target = parse_target(
        f"ssh://deploy@web1.example:2222?key={key}&known_hosts={known}&password_env=PW&name=web1&os=linux"
    )
    assert (target.user, target.host, target.port, target.name) == ("deploy", "web1.example", 2222, "web1")
    assert target.key_file == key and target.known_hosts == known and not target.known_hosts_ignore
    assert target.password == Secret("s3cret-value")
    assert "s3cret" not in repr(target)
    assert target.os is OsFamily.LINUX


def test_defaults_and_ignore() -> None:
    target = parse_target("ssh://10.0.0.5?known_hosts=ignore")
    assert target.port == 22 and target.user is None and target.name == "10.0.0.5"
    assert target.known_hosts_ignore and target.known_hosts is None


def test_ipv6_host() -> None:
    target = parse_target("ssh://root@[::1]:2200")
    assert target.host == "::1" and target.address == "[::1]:2200"


@pytest.mark.parametrize(
    ("uri", "field", "reason"),
    [
        ("ssh://root:hunter2@host", "password", "password_env"),
        ("ssh://host?pasword_env=X", "pasword_env", "unknown parameter"),
        ("ssh://host?password_env=BEACHHEAD_UNSET_VARIABLE", "password_env", "is not set"),
        ("ssh://host?key=/nonexistent/key", "key", "file not found"),
        ("ftp://host", "scheme", "unknown scheme"),
        ("ssh://host:99999", "port", "invalid port"),
        ("ssh://host?os=beos", "os", "unknown OS family"),
        ("host-without-scheme", None, "not a target URI"),
        ("ssh://host/path", "path", "no path"),
    ],
)
def test_bad_uris_name_field(uri: str, field: str | None, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.source == "--target"
    assert caught.value.where == field
    assert reason in caught.value.reason
    assert "hunter2" not in str(caught.value)


def test_targets_file_uris_and_mappings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "x" * 8)
    path = write_plan(
        tmp_path,
        """
        - ssh://root@a:2201?known_hosts=ignore
        - {host: b, user: admin, port: 2202, password_env: PW, name: bee}
        - {uri: "ssh://c", known_hosts: ignore}
        """,
        "targets.yaml",
    )
    a, b, c = load_targets_file(path)
    assert (a.host, a.port, a.user) == ("a", 2201, "root")
    assert (b.host, b.port, b.user, b.name) == ("b", 2202, "admin", "bee")
    assert b.password == Secret("x" * 8)
    assert c.host == "c" and c.known_hosts_ignore


def test_targets_file_errors_name_entry_and_line(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "- ssh://ok\n- {host: b, colour: red}\n", "targets.yaml")
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.source == str(path)
    assert caught.value.where == "entry 2.colour (line 2)"
    assert "unknown field" in caught.value.reason


def test_targets_file_must_be_list(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "host: a\n", "targets.yaml")
    with pytest.raises(InputError, match="expected a list"):
        load_targets_file(path)


def test_vsphere_target(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VC_PW", "vc-secret")
    monkeypatch.setenv("GUEST_PW", "guest-secret")
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    target = parse_target(
        f"vsphere://administrator%40vsphere.local@vc.example:8443/web%2001"
        f"?password_env=VC_PW&guest_user=root&guest_password_env=GUEST_PW&ca_file={ca}"
    )
    assert (target.scheme, target.host, target.port, target.user) == (
        "vsphere",
        "vc.example",
        8443,
        "administrator@vsphere.local",
    )
    assert (target.vm, target.name, target.guest_user, target.ca_file) == ("web 01", "web 01", "root", ca)
    assert target.password is not None and target.password.reveal() == "vc-secret"
    assert target.guest_password is not None and target.guest_password.reveal() == "guest-secret"
    assert not target.http and not target.insecure
    uuid = "4213a3c5-0c1a-4c4f-9d3e-6f1b2a3c4d5e"
    plain = parse_target(f"vsphere://u@vc/{uuid}?password_env=VC_PW&scheme=http&insecure=1")
    assert (plain.port, plain.http, plain.insecure, plain.vm) == (80, True, True, uuid)


@pytest.mark.parametrize(
    ("uri", "field", "reason"),
    [
        ("vsphere://u@vc?password_env=VC_PW", "path", "no VM"),
        ("vsphere://vc/vm1?password_env=VC_PW", "user", "no vCenter user"),
        ("vsphere://u@vc/vm1", "password_env", "needs the vCenter password"),
        ("vsphere://u@vc/vm1?password_env=VC_PW&scheme=ftp", "scheme", "http or https"),
        ("vsphere://u@vc/vm1?password_env=VC_PW&insecure=maybe", "insecure", "1 or 0"),
        ("vsphere://u@vc/vm1?password_env=VC_PW&key=x", "key", "unknown parameter"),
    ],
)
def test_bad_vsphere_targets(monkeypatch: pytest.MonkeyPatch, uri: str, field: str, reason: str) -> None:
    monkeypatch.setenv("VC_PW", "x")
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == field
    assert reason in caught.value.reason


def test_vsphere_target_as_a_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VC_PW", "x")
    listing = tmp_path / "targets.yaml"
    listing.write_text("- {scheme: vsphere, user: admin, host: vc, vm: db-01, password_env: VC_PW, guest_user: root}\n")
    [target] = load_targets_file(listing)
    assert (target.scheme, target.vm, target.guest_user, target.port) == ("vsphere", "db-01", "root", 443)
