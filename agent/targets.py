"""Targets: one machine each, with every route into it, parsed from URIs or YAML.

``ssh://[USER@]HOST[:PORT]?PARAMETERS`` — a plain host reached over SSH:
``key=PATH``, ``known_hosts=PATH|ignore``, ``password_env=VAR``, ``passphrase_env=VAR``,
``name=LABEL``, ``os=linux|windows``, ``connect_timeout=SECONDS``.

``winrm://USER@HOST[:PORT]?PARAMETERS`` — a plain Windows host reached over WinRM:
``password_env=VAR``, ``transport=ntlm|basic|certificate``, ``scheme=http|https``,
``ca_file=PATH``, ``cert_pem=PATH``, ``cert_key_pem=PATH``, ``insecure=1``, ``name=LABEL``,
``connect_timeout=SECONDS`` (the port defaults to 5985 for http, 5986 for https; the OS
family is Windows).

``vnc://HOST[:PORT]?PARAMETERS`` — a console reached over VNC (RFB), typed into by
``type`` steps: ``password_env=VAR`` (VNC password authentication; none when absent),
``name=LABEL``, ``os=linux|windows`` (undeclared unless given), ``layout=us|uk|de|fr|…``,
``pace_ms=N``, ``connect_timeout=SECONDS`` (the port defaults to 5900; VNC has no user).

``vsphere://USER@VCENTER[:PORT]/VM?PARAMETERS`` — a VM by name or instance uuid, with:

- the vCenter: ``password_env=VAR`` (required), ``scheme=http|https``, ``insecure=1``,
  ``ca_file=PATH``;
- the guest-operations login: ``guest_user=NAME``, ``guest_password_env=VAR``;
- SSH: ``ssh_user=NAME``, ``ssh_key=PATH``, ``ssh_password_env=VAR``,
  ``ssh_passphrase_env=VAR``, ``ssh_port=N``, ``known_hosts=PATH|ignore|vsphere|serial``;
- WinRM: ``winrm_user=NAME``, ``winrm_password_env=VAR``,
  ``winrm_transport=ntlm|basic|certificate``, ``winrm_port=N``, ``winrm_scheme=http|https``,
  ``winrm_ca_file=PATH``, ``winrm_cert_pem=PATH``, ``winrm_cert_key_pem=PATH``, ``winrm_insecure=1``;
- ``console=usb|vnc|rdp``, ``address=IP-OR-HOSTNAME`` (instead of the address VMware Tools
  reports), ``rdp_port=N`` (where ``console=rdp`` connects; default 3389),
  ``name=LABEL``, ``os=linux|windows``, ``connect_timeout=SECONDS``;
- for ``type`` steps: ``layout=us|uk|de|fr|…`` (the guest's keyboard layout) and
  ``pace_ms=N`` (milliseconds between key events), unless a step gives its own.

The SSH and WinRM routes of a VM chain from its guest login: each exists when
``guest_user`` or one of its own parameters is given, its user defaults to ``guest_user``
and its password to the guest password when the users are the same. Host keys are pinned
from the guest (``known_hosts=vsphere``) by default when there is a guest login; a VM
without one (no VMware Tools: a console-only guest) can have them pinned from what the
guest printed to its file-backed serial port (``known_hosts=serial``).

A targets file is a YAML list of such URIs or of mappings with the same fields
(``host``, ``user``, ``port``, ``vm``, ``scheme`` and the parameters above); a mapping may
also nest the channel settings: ``guest: {user, password_env}``,
``ssh: {user, key, password_env, passphrase_env, port, known_hosts}``,
``winrm: {user, password_env, transport, port, scheme, ca_file, cert_pem, cert_key_pem, insecure}``.

Credentials never travel on the command line in clear: a password is named by the
environment variable that holds it, a key by its file.
"""

from __future__ import annotations

import contextvars
import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from beachhead.agent.errors import InputError, brief
from beachhead.agent.known_hosts import known_hosts_problem
from beachhead.agent.secrets import Secret
from beachhead.agent.yamlio import LineDict, at_line, load_yaml

# Where the *_env parameters of the URI being parsed are looked up (see parse_target).
_ENVIRON: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("target_environ")


class OsFamily(StrEnum):
    """The guest operating system families Beachhead renders commands for."""

    LINUX = "linux"
    WINDOWS = "windows"


class HostKeyPolicy(StrEnum):
    """How an SSH route checks the guest's host key."""

    #: Strictly, against a known_hosts file (``~/.ssh/known_hosts`` unless one is named).
    FILE = "file"
    #: Not at all: any key is accepted.
    IGNORE = "ignore"
    #: Against the keys read from the guest through VMware Tools guest operations.
    VSPHERE = "vsphere"
    #: Against the keys the guest printed to its serial port (a VM serial port backed by
    #: a datastore file), read through vCenter's datastore file access.
    SERIAL = "serial"


class WinrmTransport(StrEnum):
    """How a WinRM route authenticates."""

    NTLM = "ntlm"
    BASIC = "basic"
    CERTIFICATE = "certificate"


class WinrmScheme(StrEnum):
    """Whether a WinRM route speaks plain HTTP or HTTPS."""

    HTTP = "http"
    HTTPS = "https"


class ConsoleKind(StrEnum):
    """Which console types keystrokes into a VM: vSphere USB scan codes, VNC or RDP."""

    USB = "usb"
    VNC = "vnc"
    RDP = "rdp"


IGNORE = "ignore"

SSH_PORT = 22
RDP_PORT = 3389
WINRM_PORTS = {WinrmScheme.HTTP: 5985, WinrmScheme.HTTPS: 5986}
#: The URI parameters that declare a vsphere:// target's SSH route, and its WinRM route.
SSH_ROUTE_PARAMETERS = ("ssh_user", "ssh_key", "ssh_password_env", "ssh_passphrase_env", "ssh_port", "known_hosts")
WINRM_ROUTE_PARAMETERS = (
    "winrm_user",
    "winrm_password_env",
    "winrm_transport",
    "winrm_port",
    "winrm_scheme",
    "winrm_ca_file",
    "winrm_cert_pem",
    "winrm_cert_key_pem",
    "winrm_insecure",
)
#: The parameters of a winrm:// URI that describe its route (the same, unprefixed).
WINRM_URI_PARAMETERS = ("password_env", "transport", "scheme", "ca_file", "cert_pem", "cert_key_pem", "insecure")

#: Query parameters each scheme understands; anything else is rejected as a typo.
SCHEME_PARAMETERS: dict[str, frozenset[str]] = {
    "ssh": frozenset({"key", "known_hosts", "password_env", "passphrase_env", "name", "os", "connect_timeout"}),
    "winrm": frozenset({*WINRM_URI_PARAMETERS, "name", "connect_timeout"}),
    "vnc": frozenset({"password_env", "name", "os", "layout", "pace_ms", "connect_timeout"}),
    "vsphere": frozenset(
        {
            "password_env",
            "guest_user",
            "guest_password_env",
            "scheme",
            "insecure",
            "ca_file",
            "name",
            "os",
            "connect_timeout",
            *SSH_ROUTE_PARAMETERS,
            *WINRM_ROUTE_PARAMETERS,
            "console",
            "address",
            "rdp_port",
            "layout",
            "pace_ms",
        }
    ),
}
VNC_PORT = 5900
DEFAULT_PORTS = {"ssh": SSH_PORT, "vsphere": 443, "winrm": WINRM_PORTS[WinrmScheme.HTTP], "vnc": VNC_PORT}
HTTP_PORT = 80
MAX_PORT = 65535
TRUE_WORDS, FALSE_WORDS = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
MAX_HOST_NAME = 253


@dataclass(frozen=True)
class SshRoute:
    """How to reach a target over SSH: the login and how the host key is checked.

    ``known_hosts`` is the file for policy ``file`` (None: ``~/.ssh/known_hosts``).
    ``declared`` is False when the route exists only because it was chained from a
    vsphere:// target's guest-operations login, so a failure to connect is no surprise.
    """

    user: str | None
    port: int = SSH_PORT
    key_file: Path | None = None
    password: Secret | None = field(default=None, repr=False)
    passphrase: Secret | None = field(default=None, repr=False)
    known_hosts: Path | None = None
    host_keys: HostKeyPolicy = HostKeyPolicy.FILE
    declared: bool = True


@dataclass(frozen=True)
class WinrmRoute:
    """How to reach a target over WinRM.

    ``port`` 0 stands for the scheme's standard port (5985 for http, 5986 for https) and
    is replaced by it. ``declared`` is False when the route was chained from the guest login.
    Over https the server's certificate is checked against ``ca_file`` (the system's CAs
    when None) unless ``insecure``; ``cert_pem``/``cert_key_pem`` are the client
    certificate and key of the ``certificate`` transport.
    """

    user: str
    password: Secret | None = field(default=None, repr=False)
    transport: WinrmTransport = WinrmTransport.NTLM
    scheme: WinrmScheme = WinrmScheme.HTTP
    port: int = 0
    declared: bool = True
    ca_file: Path | None = None
    cert_pem: Path | None = None
    cert_key_pem: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.port:
            object.__setattr__(self, "port", WINRM_PORTS[self.scheme])


@dataclass(frozen=True)
class Target:
    """One machine, with every route into it: where it is, what it runs, the credentials.

    ``uri`` is the canonical form without secrets; it is what journals record so that
    ``beachhead undo`` can reach the same guest again. ``ssh`` and ``winrm`` are the
    network routes (an ssh:// target always has ``ssh``); ``address`` overrides the
    address network channels use for a VM (by default the one VMware Tools reports).
    """

    scheme: str
    host: str
    port: int
    user: str | None
    name: str
    uri: str
    os: OsFamily | None = None
    password: Secret | None = field(default=None, repr=False)
    connect_timeout: float | None = None
    # vsphere:// only: the VM (name or instance uuid), the guest login, and how to
    # reach the vCenter (plain http when asked; certificate checks on unless insecure).
    vm: str | None = None
    guest_user: str | None = None
    guest_password: Secret | None = field(default=None, repr=False)
    http: bool = False
    insecure: bool = False
    ca_file: Path | None = None
    ssh: SshRoute | None = None
    winrm: WinrmRoute | None = None
    console: ConsoleKind | None = None
    address: str | None = None
    rdp_port: int = RDP_PORT  # where the keys channel's rdp backend connects (console=rdp)
    layout: str | None = None  # keyboard layout for type steps (checked by the keys plugin)
    pace_ms: float | None = None  # milliseconds between key events for type steps
    # A pyVmomi ServiceInstance its caller already logged in (beachhead.vsphere_target):
    # used instead of a login of Beachhead's own; never part of the URI or the journal.
    session: Any = field(default=None, repr=False, compare=False)

    @property
    def endpoint(self) -> str:
        """``host:port`` for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _pace_ms(value: str, bad: Callable[[str | None, str], InputError]) -> float:
    """``pace_ms=N``: 0 to 10,000 milliseconds."""
    try:
        pace = float(value)
    except ValueError:
        raise bad("pace_ms", f"must be a number of milliseconds, got {brief(value)}") from None
    if not 0 <= pace <= 10_000:
        raise bad("pace_ms", f"must be 0 to 10000 milliseconds, got {brief(value)}")
    return pace


def parse_target(
    uri: str,
    *,
    source: str = "--target",
    where: str | None = None,
    require_vm: bool = True,
    labels: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Parse one target URI; errors name ``source`` and ``where`` (e.g. file and entry).
    ``require_vm=False`` accepts a vsphere:// URI that names only the vCenter. ``labels``
    gives the whole location of some parameters in errors instead of ``where.PARAMETER``
    (a targets file's nested ``ssh.port`` and its line). ``environ`` is where the
    ``*_env`` parameters' variables are looked up (default: the process environment;
    a library caller may hand its secrets over in a mapping of its own)."""
    token = _ENVIRON.set(environ if environ is not None else os.environ)
    try:
        return _parse_target(uri, source, where, require_vm, labels)
    finally:
        _ENVIRON.reset(token)


def _parse_target(
    uri: str, source: str, where: str | None, require_vm: bool, labels: Mapping[str, str] | None
) -> Target:

    def bad(field_name: str | None, reason: str) -> InputError:
        if field_name is not None and labels and field_name in labels:
            return InputError(source, labels[field_name], reason)
        location = ".".join(part for part in (where, field_name) if part) or None
        return InputError(source, location, reason)

    if not isinstance(uri, str) or "://" not in uri:
        raise bad(None, f"not a target URI: {brief(uri)} (expected e.g. ssh://user@host:22)")
    parts = _split(uri, bad, "host")
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PARAMETERS:
        known = ", ".join(sorted(SCHEME_PARAMETERS))
        raise bad("scheme", f"unknown scheme {brief(scheme)} (known: {known})")
    if parts.password is not None:
        raise bad(
            "password",
            "a password may not be written in the URI; name the environment variable "
            "that holds it with ?password_env=VAR",
        )
    host = parts.hostname
    if not host:
        raise bad("host", f"no host in {brief(uri)}")
    vm = unquote(parts.path[1:]) if scheme == "vsphere" else None
    if scheme == "vsphere" and not vm and require_vm:
        raise bad("path", f"no VM in {brief(uri)} (expected vsphere://user@vcenter/VM-NAME-OR-UUID)")
    if scheme != "vsphere" and parts.path not in ("", "/"):
        raise bad("path", f"{scheme}:// targets take no path, got {brief(parts.path)}")

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in SCHEME_PARAMETERS[scheme]:
            allowed = ", ".join(sorted(SCHEME_PARAMETERS[scheme]))
            raise bad(key, f"unknown parameter {brief(key)} (allowed: {allowed})")
        if key in params:
            raise bad(key, f"parameter {brief(key)} given twice")
        params[key] = value

    http = _http_scheme(params, bad) if scheme != "winrm" else False
    try:
        uri_port = parts.port
    except ValueError:
        raise bad("port", f"invalid port in {brief(uri)}") from None
    if uri_port == 0:
        raise bad("port", f"invalid port in {brief(uri)} (must be 1-{MAX_PORT})")
    port = uri_port or (HTTP_PORT if http else DEFAULT_PORTS[scheme])
    user = unquote(parts.username) if parts.username else None
    if scheme == "vsphere" and not user:
        raise bad("user", f"no vCenter user in {brief(uri)} (expected vsphere://user@vcenter/VM)")
    if scheme == "winrm" and not user:
        raise bad("user", f"no user in {brief(uri)} (expected winrm://USER@HOST)")
    if scheme == "vnc" and user:
        raise bad("user", f"VNC has no user, only a password (?password_env=VAR): {brief(uri)}")
    if scheme == "ssh" and params.get("known_hosts") == HostKeyPolicy.VSPHERE:
        raise bad(
            "known_hosts",
            "known_hosts=vsphere reads the host keys from the guest through VMware Tools: it needs a "
            "vsphere:// target with guest_user and guest_password_env (for ssh:// give a file or ignore)",
        )
    if scheme == "ssh" and params.get("known_hosts") == HostKeyPolicy.SERIAL:
        raise bad(
            "known_hosts",
            "known_hosts=serial reads the host keys from the VM's serial port through vCenter: it needs a "
            "vsphere:// target (for ssh:// give a file or ignore)",
        )
    host_keys, known_hosts = _host_key_check(params.get("known_hosts"), bad)
    key_file = _existing_file(params["key"], bad, "key") if "key" in params else None
    ca_file = _existing_file(params["ca_file"], bad, "ca_file") if "ca_file" in params else None
    password = _secret_from_env(params.get("password_env"), bad, "password_env")
    guest_password = _secret_from_env(params.get("guest_password_env"), bad, "guest_password_env")
    insecure = _flag(params.get("insecure"), bad, "insecure")
    if scheme == "vsphere" and password is None:
        raise bad("password_env", "a vsphere:// target needs the vCenter password: ?password_env=VAR")
    passphrase = _secret_from_env(params.get("passphrase_env"), bad, "passphrase_env")
    os_family = None
    if "os" in params:
        try:
            os_family = OsFamily(params["os"])
        except ValueError:
            raise bad("os", f"unknown OS family {brief(params['os'])} (linux or windows)") from None
    connect_timeout = None
    if "connect_timeout" in params:
        try:
            connect_timeout = float(params["connect_timeout"])
        except ValueError:
            raise bad("connect_timeout", "must be a number of seconds") from None
        if not 0 < connect_timeout < math.inf:  # nan and inf as well
            raise bad(
                "connect_timeout", f"must be a positive number of seconds, got {brief(params['connect_timeout'])}"
            )

    guest_user = params.get("guest_user") or None
    if scheme == "winrm":
        assert user is not None
        os_family = OsFamily.WINDOWS
        ssh: SshRoute | None = None
        route = _winrm_route(
            {f"winrm_{key}": value for key, value in params.items() if key in WINRM_URI_PARAMETERS},
            user,
            password,
            uri_port,
            bad,
            lambda name: name.removeprefix("winrm_"),
            complete=True,
        )
        winrm: WinrmRoute | None = route
        port = route.port
    elif scheme == "ssh":
        ssh = SshRoute(
            user=user,
            port=port,
            key_file=key_file,
            password=password,
            passphrase=passphrase,
            known_hosts=known_hosts,
            host_keys=host_keys or HostKeyPolicy.FILE,
        )
        winrm = None
    else:
        ssh = _chained_ssh_route(params, guest_user, guest_password, (host_keys, known_hosts), bad)
        winrm = _chained_winrm_route(params, guest_user, guest_password, bad)
    console = ConsoleKind.VNC if scheme == "vnc" else _choice(params.get("console"), ConsoleKind, bad, "console")
    address = _address(params["address"], bad) if "address" in params else None
    rdp_port = _port(params.get("rdp_port"), RDP_PORT, bad, "rdp_port")
    layout = params.get("layout") or None
    if layout is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", layout):
        raise bad("layout", f"not a keyboard layout name: {brief(layout)} (e.g. us, de, fr)")
    pace_ms = _pace_ms(params["pace_ms"], bad) if "pace_ms" in params else None

    default_name = f"{user}@{host}" if user else host
    if uri_port:
        default_name += f":{port}"
    if vm:
        default_name = vm
    return Target(
        scheme=scheme,
        host=host,
        port=port,
        user=user,
        name=params.get("name") or default_name,
        uri=uri,
        os=os_family,
        password=password,
        connect_timeout=connect_timeout,
        vm=vm,
        guest_user=guest_user,
        guest_password=guest_password,
        http=http,
        insecure=insecure,
        ca_file=ca_file,
        ssh=ssh,
        winrm=winrm,
        console=console,
        layout=layout,
        pace_ms=pace_ms,
        address=address,
        rdp_port=rdp_port,
    )


def _split(uri: str, bad: Any, field_name: str) -> SplitResult:
    """``urlsplit(uri)``; a URI it cannot split (an unclosed ``[``) is bad input."""
    try:
        return urlsplit(uri)
    except ValueError as exc:
        raise bad(field_name, f"not a valid URI ({exc}): {brief(uri)}") from None


def _chained_ssh_route(
    params: dict[str, str],
    guest_user: str | None,
    guest_password: Secret | None,
    host_key_check: tuple[HostKeyPolicy | None, Path | None],
    bad: Any,
) -> SshRoute | None:
    """A vsphere:// target's SSH route: declared by its ssh_* parameters and known_hosts,
    or chained from the guest login; ``host_key_check`` is what ``known_hosts`` said."""
    declared = any(name in params for name in SSH_ROUTE_PARAMETERS)
    if not declared and not guest_user:
        return None
    guest_login = guest_user is not None and guest_password is not None
    host_keys, known_hosts = host_key_check
    if host_keys is HostKeyPolicy.VSPHERE and not guest_login:
        raise bad(
            "known_hosts",
            "known_hosts=vsphere reads the host keys from the guest through VMware Tools: it needs the "
            "guest-operations login (guest_user and guest_password_env); give a known_hosts file or ignore",
        )
    user = _route_user(params, "ssh_user", guest_user, bad, "SSH")
    password = _secret_from_env(params.get("ssh_password_env"), bad, "ssh_password_env")
    if password is None and user == guest_user:
        password = guest_password
    return SshRoute(
        user=user,
        port=_port(params.get("ssh_port"), SSH_PORT, bad, "ssh_port"),
        key_file=_existing_file(params["ssh_key"], bad, "ssh_key") if "ssh_key" in params else None,
        password=password,
        passphrase=_secret_from_env(params.get("ssh_passphrase_env"), bad, "ssh_passphrase_env"),
        known_hosts=known_hosts,
        host_keys=host_keys or (HostKeyPolicy.VSPHERE if guest_login else HostKeyPolicy.FILE),
        declared=declared,
    )


def _chained_winrm_route(
    params: dict[str, str], guest_user: str | None, guest_password: Secret | None, bad: Any
) -> WinrmRoute | None:
    """A vsphere:// target's WinRM route: declared by its winrm_* parameters, or chained
    from the guest login (its user by default, and its password when the users are the same)."""
    declared = any(name in params for name in WINRM_ROUTE_PARAMETERS)
    if not declared and not guest_user:
        return None
    user = _route_user(params, "winrm_user", guest_user, bad, "WinRM")
    password = _secret_from_env(params.get("winrm_password_env"), bad, "winrm_password_env")
    if password is None and user == guest_user:
        password = guest_password
    route = _winrm_route(params, user, password, None, bad, lambda name: name, complete=False)
    return dataclasses.replace(route, declared=declared)


def _winrm_route(
    params: dict[str, str],
    user: str,
    password: Secret | None,
    port: int | None,
    bad: Any,
    label: Callable[[str], str],
    *,
    complete: bool,
) -> WinrmRoute:
    """A WinRM route from ``winrm_``-prefixed ``params`` (``label`` names a parameter as
    its URI spells it in errors); ``port`` None takes ``winrm_port`` or the scheme's. A route
    that need not be ``complete`` (a vsphere:// one) may lack its password or client
    certificate: the channel says so when it is to be used."""

    def wrong(name: str, reason: str) -> InputError:
        result: InputError = bad(label(name), reason)
        return result

    transport = _choice(params.get("winrm_transport"), WinrmTransport, wrong, "winrm_transport") or WinrmTransport.NTLM
    # Client certificates need TLS: the certificate transport is https unless told otherwise.
    default_scheme = WinrmScheme.HTTPS if transport is WinrmTransport.CERTIFICATE else WinrmScheme.HTTP
    scheme = _choice(params.get("winrm_scheme"), WinrmScheme, wrong, "winrm_scheme") or default_scheme
    if transport is not WinrmTransport.NTLM and scheme is WinrmScheme.HTTP:
        what = "would send the password in clear" if transport is WinrmTransport.BASIC else "needs TLS"
        raise wrong(
            "winrm_transport",
            f"{transport} authentication over http {what}; use {label('winrm_scheme')}=https (port 5986), "
            "or the ntlm transport",
        )
    files = {
        name: _existing_file(params[name], wrong, name) if name in params else None
        for name in ("winrm_ca_file", "winrm_cert_pem", "winrm_cert_key_pem")
    }
    if transport is WinrmTransport.CERTIFICATE and complete:
        for name in ("winrm_cert_pem", "winrm_cert_key_pem"):
            if files[name] is None:
                raise wrong(name, "the certificate transport needs the client certificate and its key (PEM files)")
    elif password is None and complete:
        raise wrong(
            "winrm_password_env", f"the {transport} transport needs a password: {label('winrm_password_env')}=VAR"
        )
    insecure = _flag(params.get("winrm_insecure"), wrong, "winrm_insecure")
    if insecure and scheme is WinrmScheme.HTTP:
        raise wrong("winrm_insecure", "turns off https certificate checks; over http there are none")
    return WinrmRoute(
        user=user,
        password=password,
        transport=transport,
        scheme=scheme,
        port=port if port is not None else _port(params.get("winrm_port"), WINRM_PORTS[scheme], wrong, "winrm_port"),
        ca_file=files["winrm_ca_file"],
        cert_pem=files["winrm_cert_pem"],
        cert_key_pem=files["winrm_cert_key_pem"],
        insecure=insecure,
    )


def _route_user(params: dict[str, str], field_name: str, guest_user: str | None, bad: Any, channel: str) -> str:
    if field_name in params and not params[field_name]:
        raise bad(field_name, "names no user")
    user = params.get(field_name) or guest_user
    if not user:
        raise bad(field_name, f"the {channel} route needs a user: give {field_name} (or guest_user, its default)")
    return user


def _host_key_check(value: str | None, bad: Any) -> tuple[HostKeyPolicy | None, Path | None]:
    """``known_hosts``: the policy it names and the file for policy ``file`` (None when
    the parameter is absent, so the caller picks the default)."""
    if value is None:
        return None, None
    if value == HostKeyPolicy.IGNORE:
        return HostKeyPolicy.IGNORE, None
    if value in (HostKeyPolicy.VSPHERE, HostKeyPolicy.SERIAL):
        return HostKeyPolicy(value), None
    path = _existing_file(value, bad, "known_hosts")
    if (problem := known_hosts_problem(path)) is not None:
        raise bad("known_hosts", f"{value}: {problem}")
    return HostKeyPolicy.FILE, path


def _port(value: str | None, default: int, bad: Any, field_name: str) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_PORT)) or not 1 <= int(value) <= MAX_PORT:
        raise bad(field_name, f"must be a port number 1-{MAX_PORT}, got {brief(value)}")
    return int(value)


Choice = TypeVar("Choice", bound=StrEnum)


def _choice(value: str | None, kind: type[Choice], bad: Any, field_name: str) -> Choice | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise bad(field_name, f"unknown value {brief(value)} (allowed: {allowed})") from None


def _address(value: str, bad: Any) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _is_host_name(value):
        return value
    raise bad("address", f"neither an IP address nor a host name: {brief(value)}")


def _is_host_name(name: str) -> bool:
    """RFC 1123 host names; a last label of digits only would be a mistyped IPv4 address."""
    name = name.removesuffix(".")
    labels = name.split(".")
    return (
        0 < len(name) <= MAX_HOST_NAME
        and all(HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def _http_scheme(params: dict[str, str], bad: Any) -> bool:
    value = params.get("scheme", "https")
    if value not in ("http", "https"):
        raise bad("scheme", f"must be http or https, got {brief(value)}")
    return value == "http"


def _flag(value: str | None, bad: Any, field_name: str) -> bool:
    if value is None:
        return False
    if value.lower() in TRUE_WORDS or value == "":
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise bad(field_name, f"must be 1 or 0, got {brief(value)}")


def _existing_file(value: str, bad: Any, field_name: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise bad(field_name, f"file not found: {value}")
    return path.resolve()


def _secret_from_env(variable: str | None, bad: Any, field_name: str) -> Secret | None:
    if variable is None:
        return None
    if not variable:
        raise bad(field_name, "names no environment variable")
    value = _ENVIRON.get().get(variable)
    if value is None:
        raise bad(field_name, f"environment variable {variable} is not set")
    return Secret(value)


def preferred_address(nics: Sequence[tuple[str, Sequence[str]]], reported: str | None) -> str | None:
    """The address network channels should use for a VM, from what VMware Tools reports.

    ``nics`` are the guest's NICs in order as (MAC, addresses) (``guest.net``), ``reported``
    is ``guest.ipAddress``. Usable means not loopback, link-local (169.254/16, fe80::/10),
    unspecified or multicast. The answer is an IPv4 address of the first NIC that has a
    usable one (the reported address when it is among them), else the reported address if
    it is a usable IPv4 one, else likewise for IPv6, else None.
    """
    usable = [[ip for ip in map(_usable_ip, addresses) if ip is not None] for _mac, addresses in nics]
    primary = _usable_ip(reported)
    for version in (4, 6):
        for ips in usable:
            candidates = [ip for ip in ips if ip.version == version]
            if candidates:
                return str(primary if primary in candidates else candidates[0])
        if primary is not None and primary.version == version:
            return str(primary)
    return None


def _usable_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.partition("/")[0].strip())
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return ip


#: Channel settings a targets-file mapping may nest, and the flat field each stands for.
NESTED_FIELDS: dict[str, dict[str, str]] = {
    "guest": {"user": "guest_user", "password_env": "guest_password_env"},
    "ssh": {
        "user": "ssh_user",
        "key": "ssh_key",
        "password_env": "ssh_password_env",
        "passphrase_env": "ssh_passphrase_env",
        "port": "ssh_port",
        "known_hosts": "known_hosts",
    },
    "winrm": {
        "user": "winrm_user",
        "password_env": "winrm_password_env",
        "transport": "winrm_transport",
        "port": "winrm_port",
        "scheme": "winrm_scheme",
        "ca_file": "winrm_ca_file",
        "cert_pem": "winrm_cert_pem",
        "cert_key_pem": "winrm_cert_key_pem",
        "insecure": "winrm_insecure",
    },
}

#: Fields of a mapping entry in a targets file, in URI order: ``scheme`` is the URI's
#: (ssh, vsphere), ``vm`` a vsphere:// path; a plain-http vCenter is written as a ``uri``.
#: ``guest``, ``ssh`` and ``winrm`` nest the fields of :data:`NESTED_FIELDS`.
MAPPING_FIELDS = (
    "uri",
    "scheme",
    "user",
    "host",
    "port",
    "vm",
    *sorted(set().union(*SCHEME_PARAMETERS.values()) - {"scheme"}),
    *NESTED_FIELDS,
)


def uri_from_mapping(entry: dict[str, Any], bad: Any) -> str:
    """Build the URI equivalent of a mapping entry (``host``, ``user``, ``key``, …)."""
    return _mapping_to_uri(entry, bad)[0]


def _mapping_to_uri(entry: dict[str, Any], bad: Any) -> tuple[str, dict[str, str]]:
    """The URI of a mapping entry, and the nested name (``ssh.port``) of each parameter
    that was written nested."""
    unknown = sorted(set(entry) - set(MAPPING_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field (allowed: {', '.join(MAPPING_FIELDS)})")
    for key, value in entry.items():
        if key not in NESTED_FIELDS:
            _check_scalar(value, bad, key)
    entry, nested = _flatten_channels(entry, bad)
    if "uri" in entry:
        uri = entry["uri"]
        if not isinstance(uri, str):
            raise bad("uri", "must be a string")
        extra = {k: v for k, v in entry.items() if k != "uri"}
        if not extra:
            return uri, nested
        parts = _split(uri, bad, "uri")
        if {"scheme", "user", "host", "port", "vm"} & set(extra):
            raise bad("uri", "give either uri or scheme/user/host/port/vm, not both")
        query = "&".join(filter(None, [parts.query, _query(extra)]))
        return parts._replace(query=query).geturl(), nested
    if "host" not in entry:
        raise bad("host", "missing (or give uri)")
    scheme = str(entry.get("scheme", "ssh"))
    userinfo = f"{quote(str(entry['user']), safe='')}@" if entry.get("user") else ""
    host = str(entry["host"])
    host = f"[{host}]" if ":" in host else host
    port = f":{entry['port']}" if entry.get("port") is not None else ""
    path = f"/{quote(str(entry['vm']), safe='')}" if entry.get("vm") is not None else ""
    params = {k: v for k, v in entry.items() if k not in ("scheme", "user", "host", "port", "vm")}
    query = _query(params)
    return f"{scheme}://{userinfo}{host}{port}{path}" + (f"?{query}" if query else ""), nested


def _flatten_channels(entry: dict[str, Any], bad: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace the nested ``guest``/``ssh``/``winrm`` settings by their flat fields."""
    present = [channel for channel in NESTED_FIELDS if channel in entry]
    if not present:
        return entry, {}
    uri = entry.get("uri")
    scheme = _split(uri, bad, "uri").scheme.lower() if isinstance(uri, str) else str(entry.get("scheme", "ssh")).lower()
    if scheme != "vsphere":
        raise bad(
            present[0],
            f"nested channel settings ({', '.join(NESTED_FIELDS)}) are for vsphere:// targets; "
            f"a {scheme}:// target takes its settings flat (user, port, key, known_hosts, ...)",
        )
    flat = {key: value for key, value in entry.items() if key not in NESTED_FIELDS}
    nested: dict[str, str] = {}
    for channel in present:
        fields, settings = NESTED_FIELDS[channel], entry[channel]
        if not isinstance(settings, dict):
            raise bad(channel, f"must be a mapping of {', '.join(fields)}")
        for key, value in settings.items():
            dotted = f"{channel}.{key}"
            if key not in fields:
                raise bad(dotted, f"unknown field (allowed: {', '.join(fields)})")
            if fields[key] in flat:
                raise bad(dotted, f"given both as {dotted} and as {fields[key]}; keep one")
            _check_scalar(value, bad, dotted)
            flat[fields[key]] = value
            nested[fields[key]] = dotted
    return flat, nested


def _check_scalar(value: Any, bad: Any, field_name: str) -> None:
    """A field of a mapping entry is written into a URI: it must be a string or a number
    (a list would be written out in full, however large its aliases make it)."""
    if isinstance(value, list | dict | set):
        raise bad(field_name, f"must be a string or a number, got {brief(value)}")


def _query(params: dict[str, Any]) -> str:
    return "&".join(f"{key}={quote(str(value), safe='/:')}" for key, value in params.items())


def load_targets_file(path: Path) -> list[Target]:
    """Read a YAML list of target URIs or mappings with the same fields."""
    data = load_yaml(path)
    if isinstance(data, LineDict) and "targets" in data:
        data = data["targets"]
    if not isinstance(data, list):
        raise InputError(path, None, "expected a list of target URIs or mappings")
    if not data:
        raise InputError(path, None, "the list of targets is empty")
    targets = []
    for index, entry in enumerate(data, start=1):
        where = f"entry {index}"

        def label(field_name: str | None, where: str = where, entry: Any = entry) -> str:
            """``entry N.FIELD (line L)``; a nested ``ssh.port`` gets the line of ``port``."""
            mapping, key = entry, field_name
            if field_name is not None and "." in field_name:
                channel, _, key = field_name.partition(".")
                mapping = entry.get(channel) if isinstance(entry, dict) else None
            return at_line(".".join(p for p in (where, field_name) if p), mapping, key)

        def bad(field_name: str | None, reason: str, label: Any = label) -> InputError:
            return InputError(path, label(field_name), reason)

        nested: dict[str, str] = {}
        if isinstance(entry, dict):
            uri, nested = _mapping_to_uri(entry, bad)
        elif isinstance(entry, str):
            uri = entry
        else:
            raise bad(None, "must be a URI string or a mapping")
        labels = {name: label(dotted) for name, dotted in nested.items()}
        for channel, fields in NESTED_FIELDS.items():  # a field missing from a nested block
            if isinstance(entry, dict) and isinstance(entry.get(channel), dict):
                for key, name in fields.items():
                    if name not in labels and name not in entry:
                        labels[name] = at_line(f"{where}.{channel}.{key}", entry, channel)
        targets.append(parse_target(uri, source=str(path), where=at_line(where, entry), labels=labels))
    return targets


def check_unique_names(targets: list[Target], source: str) -> None:
    """Two targets with the same display name would mix their results and journals."""
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise InputError(
                source, "name", f"target name {brief(target.name)} appears twice; set ?name= to tell them apart"
            )
        seen.add(target.name)
