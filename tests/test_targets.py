"""Target URIs and target files: what is accepted, and how bad input is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.agent.secrets import Secret
from beachhead.agent.targets import (
    MAPPING_FIELDS,
    SCHEME_PARAMETERS,
    ConsoleKind,
    HostKeyPolicy,
    OsFamily,
    SshRoute,
    WinrmRoute,
    WinrmScheme,
    WinrmTransport,
    load_targets_file,
    parse_target,
    preferred_address,
)
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
    assert target.ssh == SshRoute(
        user="deploy", port=2222, key_file=key, password=Secret("s3cret-value"), known_hosts=known
    )
    assert target.ssh.host_keys is HostKeyPolicy.FILE and target.ssh.declared
    assert target.password == Secret("s3cret-value") and target.ssh.password is target.password
    assert "s3cret" not in repr(target)
    assert target.os is OsFamily.LINUX


def test_defaults_and_ignore() -> None:
    target = parse_target("ssh://10.0.0.5?known_hosts=ignore")
    assert target.port == 22 and target.user is None and target.name == "10.0.0.5"
    assert target.ssh == SshRoute(user=None, port=22, host_keys=HostKeyPolicy.IGNORE)
    assert (target.winrm, target.console, target.address) == (None, None, None)


def test_ipv6_host() -> None:
    target = parse_target("ssh://root@[::1]:2200")
    assert target.host == "::1" and target.endpoint == "[::1]:2200"


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
    assert c.host == "c" and c.ssh is not None and c.ssh.host_keys is HostKeyPolicy.IGNORE


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


# --- one machine, every route: ssh:// routes, vsphere:// channel parameters -------------


VC = "vsphere://admin@vc.example/web-01?password_env=VC_PW"
LOGIN = "&guest_user=root&guest_password_env=GUEST_PW"


@pytest.fixture
def vsphere_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in [
        ("VC_PW", "vc-secret"),
        ("GUEST_PW", "guest-secret"),
        ("SSH_PW", "ssh-secret"),
        ("SSH_PHRASE", "phrase-secret"),
        ("WINRM_PW", "winrm-secret"),
    ]:
        monkeypatch.setenv(variable, value)


def test_ssh_uri_route_carries_the_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "id"
    key.write_text("k")
    monkeypatch.setenv("PHRASE", "phrase-value")
    target = parse_target(f"ssh://deploy@web1?key={key}&passphrase_env=PHRASE")
    assert target.ssh is not None and target.ssh.passphrase == Secret("phrase-value")
    assert target.ssh.password is None and target.password is None
    assert "phrase-value" not in repr(target)
    assert target.ssh.host_keys is HostKeyPolicy.FILE and target.ssh.known_hosts is None


@pytest.mark.parametrize("parameter", ["ssh_user=x", "winrm_user=x", "console=usb", "address=10.0.0.1", "guest_user=x"])
def test_ssh_uri_takes_no_vsphere_parameters(parameter: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(f"ssh://host?{parameter}")
    assert caught.value.where == parameter.partition("=")[0]
    assert "unknown parameter" in caught.value.reason


def test_vsphere_target_with_every_route(vsphere_env: None, tmp_path: Path) -> None:
    key, known = tmp_path / "id", tmp_path / "kh"
    key.write_text("k")
    known.write_text("")
    target = parse_target(
        VC + LOGIN + f"&ssh_user=deploy&ssh_key={key}&ssh_password_env=SSH_PW&ssh_passphrase_env=SSH_PHRASE"
        f"&ssh_port=2222&known_hosts={known}"
        "&winrm_user=Administrator&winrm_password_env=WINRM_PW&winrm_transport=basic&winrm_port=15986"
        "&winrm_scheme=https&console=vnc&address=192.0.2.7"
    )
    assert target.ssh == SshRoute(
        user="deploy",
        port=2222,
        key_file=key,
        password=Secret("ssh-secret"),
        passphrase=Secret("phrase-secret"),
        known_hosts=known,
        host_keys=HostKeyPolicy.FILE,
        declared=True,
    )
    assert target.winrm == WinrmRoute(
        user="Administrator",
        password=Secret("winrm-secret"),
        transport=WinrmTransport.BASIC,
        scheme=WinrmScheme.HTTPS,
        port=15986,
        declared=True,
    )
    assert (target.console, target.address) == (ConsoleKind.VNC, "192.0.2.7")
    assert (target.guest_user, target.guest_password) == ("root", Secret("guest-secret"))
    shown = repr(target)
    for secret in ("vc-secret", "guest-secret", "ssh-secret", "phrase-secret", "winrm-secret"):
        assert secret not in shown


def test_routes_chain_from_the_guest_login(vsphere_env: None) -> None:
    target = parse_target(VC + LOGIN)
    assert target.ssh == SshRoute(
        user="root", port=22, password=Secret("guest-secret"), host_keys=HostKeyPolicy.VSPHERE, declared=False
    )
    assert target.ssh.password is target.guest_password
    assert target.winrm == WinrmRoute(user="root", password=Secret("guest-secret"), declared=False)
    assert (target.winrm.transport, target.winrm.scheme, target.winrm.port) == ("ntlm", "http", 5985)
    assert target.winrm.password is target.guest_password
    assert (target.console, target.address) == (None, None)


def test_no_guest_login_no_routes(vsphere_env: None) -> None:
    target = parse_target(VC)
    assert (target.ssh, target.winrm, target.guest_user) == (None, None, None)


def test_another_user_gets_no_guest_password(vsphere_env: None) -> None:
    target = parse_target(VC + LOGIN + "&ssh_user=deploy&winrm_user=Administrator")
    assert target.ssh is not None and target.winrm is not None
    assert (target.ssh.user, target.ssh.password, target.ssh.declared) == ("deploy", None, True)
    assert (target.winrm.user, target.winrm.password, target.winrm.declared) == ("Administrator", None, True)
    assert target.ssh.host_keys is HostKeyPolicy.VSPHERE  # the guest login still reads the keys


def test_the_guest_user_named_again_keeps_the_guest_password(vsphere_env: None) -> None:
    target = parse_target(VC + LOGIN + "&ssh_user=root&winrm_user=root")
    assert target.ssh is not None and target.winrm is not None
    assert target.ssh.password is target.guest_password and target.ssh.declared
    assert target.winrm.password is target.guest_password and target.winrm.declared


def test_own_passwords_win_over_the_guest_password(vsphere_env: None) -> None:
    target = parse_target(VC + LOGIN + "&ssh_password_env=SSH_PW&winrm_password_env=WINRM_PW")
    assert target.ssh is not None and target.winrm is not None
    assert (target.ssh.user, target.ssh.password) == ("root", Secret("ssh-secret"))
    assert (target.winrm.user, target.winrm.password) == ("root", Secret("winrm-secret"))


def test_declared_only_by_the_routes_own_parameters(vsphere_env: None) -> None:
    ssh_only = parse_target(VC + LOGIN + "&known_hosts=ignore")
    assert ssh_only.ssh is not None and ssh_only.winrm is not None
    assert ssh_only.ssh.declared and ssh_only.ssh.host_keys is HostKeyPolicy.IGNORE
    assert not ssh_only.winrm.declared
    winrm_only = parse_target(VC + LOGIN + "&winrm_scheme=https")
    assert winrm_only.ssh is not None and winrm_only.winrm is not None
    assert not winrm_only.ssh.declared and winrm_only.winrm.declared


def test_routes_without_a_guest_login(vsphere_env: None) -> None:
    target = parse_target(VC + "&ssh_user=deploy&winrm_user=Administrator&winrm_password_env=WINRM_PW")
    assert target.ssh == SshRoute(user="deploy", host_keys=HostKeyPolicy.FILE, declared=True)
    assert target.winrm == WinrmRoute(user="Administrator", password=Secret("winrm-secret"))
    assert target.guest_user is None


def test_host_keys_from_vsphere_only_with_a_guest_login(vsphere_env: None) -> None:
    """A guest user without its password is no guest-operations login: keys come from a file."""
    without_password = parse_target(VC + "&guest_user=root")
    assert without_password.ssh is not None
    assert without_password.ssh.host_keys is HostKeyPolicy.FILE
    assert (without_password.ssh.user, without_password.ssh.password) == ("root", None)
    explicit = parse_target(VC + LOGIN + "&known_hosts=vsphere")
    assert explicit.ssh is not None and explicit.ssh.host_keys is HostKeyPolicy.VSPHERE and explicit.ssh.declared


def test_winrm_ports_follow_the_scheme(vsphere_env: None) -> None:
    https = parse_target(VC + LOGIN + "&winrm_scheme=https")
    assert https.winrm is not None and (https.winrm.scheme, https.winrm.port) == (WinrmScheme.HTTPS, 5986)
    assert WinrmRoute("u").port == 5985 and WinrmRoute("u", scheme=WinrmScheme.HTTPS).port == 5986
    certificate = parse_target(VC + LOGIN + "&winrm_transport=certificate&winrm_port=8443")
    assert certificate.winrm is not None
    assert (certificate.winrm.transport, certificate.winrm.port) == (WinrmTransport.CERTIFICATE, 8443)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("2001:DB8:0:0::7", "2001:db8::7"),
        ("web-01", "web-01"),
        ("web-01.lab.example.", "web-01.lab.example."),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_address_override(vsphere_env: None, value: str, expected: str) -> None:
    assert parse_target(VC + f"&address={value}").address == expected


def test_console_kinds(vsphere_env: None) -> None:
    assert [parse_target(VC + f"&console={kind}").console for kind in ("usb", "vnc", "rdp")] == list(ConsoleKind)


def test_rdp_port(vsphere_env: None) -> None:
    assert parse_target(VC + "&console=rdp").rdp_port == 3389
    assert parse_target(VC + "&console=rdp&rdp_port=3390").rdp_port == 3390


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("&ssh_port=0", "ssh_port", "1-65535"),
        ("&ssh_port=65536", "ssh_port", "1-65535"),
        ("&ssh_port=-1", "ssh_port", "1-65535"),
        ("&ssh_port=ssh", "ssh_port", "1-65535"),
        ("&ssh_port=", "ssh_port", "1-65535"),
        ("&winrm_port=0", "winrm_port", "1-65535"),
        ("&winrm_port=5985.0", "winrm_port", "1-65535"),
        ("&winrm_transport=kerberos", "winrm_transport", "allowed: ntlm, basic, certificate"),
        ("&winrm_scheme=ftp", "winrm_scheme", "allowed: http, https"),
        ("&winrm_transport=basic", "winrm_transport", "in clear"),
        ("&winrm_transport=basic&winrm_scheme=http", "winrm_transport", "winrm_scheme=https"),
        ("&console=serial", "console", "allowed: usb, vnc, rdp"),
        ("&console=rdp&rdp_port=0", "rdp_port", "1-65535"),
        ("&console=rdp&rdp_port=rdp", "rdp_port", "1-65535"),
        ("&console=rdp&rdp_port=", "rdp_port", "1-65535"),
        ("&address=web_01", "address", "neither an IP address nor a host name"),
        ("&address=10.0.0.300", "address", "neither an IP address nor a host name"),
        ("&address=-web", "address", "neither an IP address nor a host name"),
        ("&address=", "address", "neither an IP address nor a host name"),
        ("&address=" + "a" * 64 + ".example", "address", "neither an IP address nor a host name"),
        ("&ssh_password_env=BEACHHEAD_UNSET_VARIABLE", "ssh_password_env", "is not set"),
        ("&ssh_passphrase_env=BEACHHEAD_UNSET_VARIABLE", "ssh_passphrase_env", "is not set"),
        ("&winrm_password_env=BEACHHEAD_UNSET_VARIABLE", "winrm_password_env", "is not set"),
        ("&ssh_password_env=", "ssh_password_env", "names no environment variable"),
        ("&ssh_key=/nonexistent/key", "ssh_key", "file not found"),
        ("&known_hosts=/nonexistent/known_hosts", "known_hosts", "file not found"),
        ("&ssh_user=", "ssh_user", "names no user"),
        ("&winrm_user=", "winrm_user", "names no user"),
        ("&ssh_password=hunter2", "ssh_password", "unknown parameter"),
        ("&winrm_password=hunter2", "winrm_password", "unknown parameter"),
    ],
)
def test_bad_route_parameters_name_their_field(vsphere_env: None, query: str, field: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(VC + LOGIN + query)
    assert caught.value.where == field
    assert reason in caught.value.reason
    assert caught.value.exit_status == 2
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("&ssh_port=2222", "ssh_user", "needs a user"),
        ("&ssh_key=/nonexistent/key", "ssh_user", "needs a user"),
        ("&known_hosts=ignore", "ssh_user", "needs a user"),
        ("&winrm_scheme=https", "winrm_user", "needs a user"),
        ("&ssh_user=deploy&known_hosts=vsphere", "known_hosts", "guest-operations login"),
        ("&known_hosts=vsphere", "known_hosts", "guest-operations login"),
        ("&guest_user=root&known_hosts=vsphere", "known_hosts", "guest-operations login"),
        ("&guest_user=root&guest_password_env=BEACHHEAD_UNSET_VARIABLE", "guest_password_env", "is not set"),
    ],
)
def test_routes_that_cannot_work(vsphere_env: None, query: str, field: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(VC + query)
    assert caught.value.where == field
    assert reason in caught.value.reason


def test_ssh_uri_cannot_pin_keys_from_vsphere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vsphere").write_text("")  # not read as a file: the word is the policy
    with pytest.raises(InputError) as caught:
        parse_target("ssh://root@host?known_hosts=vsphere")
    assert caught.value.where == "known_hosts"
    assert "vsphere://" in caught.value.reason


def test_host_keys_from_the_serial_port_need_no_guest_login(vsphere_env: None) -> None:
    serial = parse_target(VC + "&ssh_user=root&known_hosts=serial")
    assert serial.ssh is not None and serial.ssh.host_keys is HostKeyPolicy.SERIAL and serial.ssh.known_hosts is None
    with pytest.raises(InputError) as caught:
        parse_target("ssh://root@host?known_hosts=serial")
    assert caught.value.where == "known_hosts" and "vsphere://" in caught.value.reason


@pytest.mark.parametrize("uri", ["ssh://host:0", "vsphere://u@vc:0/vm?password_env=VC_PW"])
def test_port_zero_is_rejected(vsphere_env: None, uri: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == "port"
    assert "invalid port" in caught.value.reason and "1-65535" in caught.value.reason


def test_new_fields_are_listed() -> None:
    vsphere = SCHEME_PARAMETERS["vsphere"]
    new = {"ssh_user", "ssh_key", "ssh_password_env", "ssh_passphrase_env", "ssh_port", "known_hosts"}
    new |= {"winrm_user", "winrm_password_env", "winrm_transport", "winrm_port", "winrm_scheme"}
    assert new | {"console", "address"} <= vsphere
    assert SCHEME_PARAMETERS["ssh"] == {
        "key",
        "known_hosts",
        "password_env",
        "passphrase_env",
        "name",
        "os",
        "connect_timeout",
    }
    assert set(vsphere) | {"guest", "ssh", "winrm"} <= set(MAPPING_FIELDS)


# --- targets files: flat and nested channel settings -------------------------------------


def test_nested_channel_settings_equal_flat_ones(vsphere_env: None, tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text("k")
    path = write_plan(
        tmp_path,
        f"""
        - scheme: vsphere
          user: admin
          host: vc
          vm: flat
          password_env: VC_PW
          guest_user: root
          guest_password_env: GUEST_PW
          ssh_user: deploy
          ssh_key: {key}
          ssh_password_env: SSH_PW
          ssh_passphrase_env: SSH_PHRASE
          ssh_port: 2222
          known_hosts: ignore
          winrm_user: Administrator
          winrm_password_env: WINRM_PW
          winrm_transport: basic
          winrm_port: 15986
          winrm_scheme: https
          console: rdp
          address: web-01.lab
        - scheme: vsphere
          user: admin
          host: vc
          vm: nested
          password_env: VC_PW
          guest: {{user: root, password_env: GUEST_PW}}
          ssh:
            user: deploy
            key: {key}
            password_env: SSH_PW
            passphrase_env: SSH_PHRASE
            port: 2222
            known_hosts: ignore
          winrm: {{user: Administrator, password_env: WINRM_PW, transport: basic, port: 15986, scheme: https}}
          console: rdp
          address: web-01.lab
        """,
        "targets.yaml",
    )
    flat, nested = load_targets_file(path)
    assert (flat.vm, nested.vm) == ("flat", "nested")
    assert flat.ssh == nested.ssh
    assert nested.ssh == SshRoute(
        user="deploy",
        port=2222,
        key_file=key,
        password=Secret("ssh-secret"),
        passphrase=Secret("phrase-secret"),
        host_keys=HostKeyPolicy.IGNORE,
    )
    assert flat.winrm == nested.winrm
    assert nested.winrm is not None and nested.winrm.port == 15986
    for attribute in ("guest_user", "guest_password", "console", "address", "password"):
        assert getattr(flat, attribute) == getattr(nested, attribute), attribute


def test_nested_settings_add_to_a_uri(vsphere_env: None, tmp_path: Path) -> None:
    path = write_plan(
        tmp_path,
        f"""
        - uri: "{VC}"
          guest: {{user: root, password_env: GUEST_PW}}
          ssh: {{port: 2200}}
        """,
        "targets.yaml",
    )
    [target] = load_targets_file(path)
    assert target.ssh == SshRoute(
        user="root", port=2200, password=Secret("guest-secret"), host_keys=HostKeyPolicy.VSPHERE, declared=True
    )
    assert target.winrm is not None and not target.winrm.declared


VSPHERE_ENTRY = """
- scheme: vsphere
  user: admin
  host: vc
  vm: db-01
  password_env: VC_PW
"""


@pytest.mark.parametrize(
    ("extra", "where", "reason"),
    [
        ("  ssh_user: a\n  ssh:\n    user: b\n", "entry 1.ssh.user (line 9)", "given both as ssh.user and as ssh_user"),
        (
            "  known_hosts: ignore\n  ssh:\n    known_hosts: ignore\n",
            "entry 1.ssh.known_hosts (line 9)",
            "given both as ssh.known_hosts and as known_hosts",
        ),
        (
            "  guest:\n    user: root\n  guest_user: root\n",
            "entry 1.guest.user (line 8)",
            "given both as guest.user and as guest_user",
        ),
        (
            "  winrm:\n    usr: x\n",
            "entry 1.winrm.usr (line 8)",
            "unknown field (allowed: user, password_env, transport, port, scheme, "
            "ca_file, cert_pem, cert_key_pem, insecure)",
        ),
        (
            "  ssh:\n    user: a\n    identity: x\n",
            "entry 1.ssh.identity (line 9)",
            "allowed: user, key, password_env, passphrase_env, port, known_hosts",
        ),
        ("  guest: root\n", "entry 1.guest (line 7)", "must be a mapping of user, password_env"),
        ("  ssh:\n    user: a\n    port: 0\n", "entry 1.ssh.port (line 9)", "1-65535"),
        ("  ssh:\n    port: 22\n", "entry 1.ssh.user (line 7)", "needs a user"),
        ("  ssh:\n    user: a\n    known_hosts: vsphere\n", "entry 1.ssh.known_hosts (line 9)", "guest-operations"),
        (
            "  winrm:\n    user: a\n    transport: basic\n",
            "entry 1.winrm.transport (line 9)",
            "would send the password in clear",
        ),
        ("  guest:\n    password_env: NOPE_UNSET\n", "entry 1.guest.password_env (line 8)", "is not set"),
        ("  winrm_transport: basic\n  winrm_user: a\n", "entry 1 (line 2).winrm_transport", "in clear"),
    ],
)
def test_targets_file_channel_errors(vsphere_env: None, tmp_path: Path, extra: str, where: str, reason: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(VSPHERE_ENTRY + extra)  # the entry starts on line 2
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.source == str(path)
    assert caught.value.where == where
    assert reason in caught.value.reason


def test_nested_settings_are_for_vsphere_targets(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "- {host: b, ssh: {user: root}}\n", "targets.yaml")
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.where == "entry 1.ssh (line 1)"
    assert "vsphere:// targets" in caught.value.reason


# --- the address network channels use ------------------------------------------------------


MAC1, MAC2 = "00:50:56:00:00:01", "00:50:56:00:00:02"


@pytest.mark.parametrize(
    ("nics", "reported", "expected"),
    [
        # the first NIC with a usable IPv4 address wins over the reported one elsewhere
        ([(MAC1, ["10.0.0.5", "fe80::1"]), (MAC2, ["192.168.1.9"])], "192.168.1.9", "10.0.0.5"),
        # on that NIC, the reported address is preferred
        ([(MAC1, ["10.0.0.5", "10.0.0.6"])], "10.0.0.6", "10.0.0.6"),
        ([(MAC1, ["10.0.0.5", "10.0.0.6"])], "", "10.0.0.5"),
        # link-local and loopback IPv4 are skipped; a later NIC's IPv4 beats the first's IPv6
        ([(MAC1, ["169.254.3.4", "2001:db8::5"]), (MAC2, ["127.0.0.1", "172.16.0.2"])], "", "172.16.0.2"),
        # a prefix length is tolerated, garbage ignored
        ([(MAC1, ["not-an-ip", "10.0.0.5/24"])], "", "10.0.0.5"),
        # no usable IPv4 on any NIC: the reported IPv4 address, if usable
        ([(MAC1, ["fe80::1", "2001:db8::5"])], "192.0.2.1", "192.0.2.1"),
        # else a usable IPv6 address (not fe80::/10), the reported one if among the NIC's
        ([(MAC1, ["fe80::1", "2001:db8::5"])], "169.254.1.1", "2001:db8::5"),
        ([(MAC1, ["2001:db8::5", "2001:db8::6"])], "2001:db8::6", "2001:db8::6"),
        ([(MAC1, ["fe80::1"]), (MAC2, ["2001:DB8::7"])], "", "2001:db8::7"),
        # nothing on the NICs: the reported address if usable, else nothing
        ([], "10.9.8.7", "10.9.8.7"),
        ([], "2001:db8::9", "2001:db8::9"),
        ([(MAC1, [])], "fe80::2", None),
        ([(MAC1, ["169.254.0.1", "::1", "0.0.0.0"])], "127.0.0.1", None),
        ([], "", None),
    ],
)
def test_preferred_address(nics: list[tuple[str, list[str]]], reported: str, expected: str | None) -> None:
    assert preferred_address(nics, reported) == expected


# --- vnc:// consoles ---------------------------------------------------------------------


def test_vnc_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VNC_PW", "s3cret")
    target = parse_target("vnc://127.0.0.1:5901?password_env=VNC_PW&layout=de&name=con&os=linux&connect_timeout=5")
    assert (target.scheme, target.host, target.port, target.user) == ("vnc", "127.0.0.1", 5901, None)
    assert target.console is ConsoleKind.VNC
    assert target.password == Secret("s3cret")
    assert (target.name, target.os, target.layout, target.connect_timeout) == ("con", OsFamily.LINUX, "de", 5.0)
    assert target.ssh is None and target.winrm is None
    assert "s3cret" not in target.uri and "s3cret" not in repr(target)


def test_vnc_target_defaults() -> None:
    target = parse_target("vnc://console.example.invalid")
    assert (target.port, target.password, target.os, target.name) == (5900, None, None, "console.example.invalid")
    assert target.console is ConsoleKind.VNC
    assert parse_target("vnc://[::1]:5905").name == "::1:5905"


@pytest.mark.parametrize(
    ("uri", "field", "reason"),
    [
        ("vnc://user@host", "user", "VNC has no user"),
        ("vnc://host/display", "path", "take no path"),
        ("vnc://host?key=/x", "key", "unknown parameter"),
        ("vnc://host?console=rdp", "console", "unknown parameter"),
        ("vnc://host?password_env=BEACHHEAD_UNSET_VARIABLE", "password_env", "is not set"),
        ("vnc://host?layout=../de", "layout", "not a keyboard layout"),
        ("vnc://host:0", "port", "invalid port"),
    ],
)
def test_bad_vnc_targets(uri: str, field: str, reason: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == field
    assert reason in caught.value.reason


def test_vnc_target_as_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("- {scheme: vnc, host: 127.0.0.1, port: 5901, layout: fr}\n")
    (target,) = load_targets_file(path)
    assert (target.uri, target.port, target.layout, target.console) == (
        "vnc://127.0.0.1:5901?layout=fr",
        5901,
        "fr",
        ConsoleKind.VNC,
    )


SK_KEY = "AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB"


def test_a_known_hosts_file_with_a_malformed_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    # asyncssh would skip such lines silently, so the mistake would show only as host
    # keys that cannot be verified.
    ed25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIEb3LWeX9pDCAsOG5rIkG4xKquOCmD2c2zwfe7dpZBqF"
    known = tmp_path / "kh"
    good = [
        "# comment",
        "",
        f"127.0.0.5 ssh-ed25519 {ed25519} root@web1",
        f"|1|c2FsdA==|aGFzaA== ssh-ed25519 {ed25519}",
        f"@cert-authority *.lab ssh-ed25519 {ed25519}",
        "127.0.0.6 sk-ssh-ed25519@openssh.com " + SK_KEY,  # a type asyncssh may not know
    ]
    known.write_text("\n".join(good) + "\n")
    assert parse_target(f"ssh://127.0.0.5?known_hosts={known}").ssh.known_hosts == known.resolve()
    for line, reason in [
        (f"ssh-ed25519 {ed25519}", "line 7: expected host names, a key type and a base64 key"),
        ("127.0.0.7 ssh-ed25519 AAAA!!!!", "line 7: the ssh-ed25519 key is not base64"),
        (f"127.0.0.7 ssh-rsa {ed25519}", "line 7: the key is not a ssh-rsa key"),
        (f"@revokd 127.0.0.7 ssh-ed25519 {ed25519}", "line 7: unknown marker @revokd"),
    ]:
        known.write_text("\n".join([*good, line]) + "\n")
        with pytest.raises(InputError, match="known_hosts") as raised:
            parse_target(f"ssh://127.0.0.5?known_hosts={known}")
        assert reason in str(raised.value)
