"""Targets: which guest to reach and how to authenticate, parsed from URIs or YAML.

``ssh://user@host:port?key=PATH&known_hosts=PATH|ignore&password_env=VAR&name=LABEL``

``vsphere://user@vcenter:port/VM?password_env=VAR&guest_user=NAME&guest_password_env=VAR``
(VM by name or instance uuid; ``scheme=http|https``, ``insecure=1``, ``ca_file=PATH``)

Credentials never travel on the command line in clear: a password is named by the
environment variable that holds it, a key by its file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from beachhead.agent.errors import InputError
from beachhead.agent.secrets import Secret
from beachhead.agent.yamlio import LineDict, at_line, load_yaml


class OsFamily(StrEnum):
    """The guest operating system families Beachhead renders commands for."""

    LINUX = "linux"
    WINDOWS = "windows"


IGNORE = "ignore"

#: Query parameters each scheme understands; anything else is rejected as a typo.
SCHEME_PARAMETERS: dict[str, frozenset[str]] = {
    "ssh": frozenset({"key", "known_hosts", "password_env", "passphrase_env", "name", "os", "connect_timeout"}),
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
        }
    ),
}
DEFAULT_PORTS = {"ssh": 22, "vsphere": 443}
HTTP_PORT = 80
TRUE_WORDS, FALSE_WORDS = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})


@dataclass(frozen=True)
class Target:
    """One guest: where it is, what it runs, and the credentials to reach it.

    ``uri`` is the canonical form without secrets; it is what journals record so that
    ``beachhead undo`` can reach the same guest again.
    """

    scheme: str
    host: str
    port: int
    user: str | None
    name: str
    uri: str
    os: OsFamily | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    known_hosts_ignore: bool = False
    password: Secret | None = field(default=None, repr=False)
    passphrase: Secret | None = field(default=None, repr=False)
    connect_timeout: float | None = None
    # vsphere:// only: the VM (name or instance uuid), the guest login, and how to
    # reach the vCenter (plain http when asked; certificate checks on unless insecure).
    vm: str | None = None
    guest_user: str | None = None
    guest_password: Secret | None = field(default=None, repr=False)
    http: bool = False
    insecure: bool = False
    ca_file: Path | None = None

    @property
    def address(self) -> str:
        """``host:port`` for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(uri: str, *, source: str = "--target", where: str | None = None, require_vm: bool = True) -> Target:
    """Parse one target URI; errors name ``source`` and ``where`` (e.g. file and entry).
    ``require_vm=False`` accepts a vsphere:// URI that names only the vCenter."""

    def bad(field_name: str | None, reason: str) -> InputError:
        location = ".".join(part for part in (where, field_name) if part) or None
        return InputError(source, location, reason)

    if not isinstance(uri, str) or "://" not in uri:
        raise bad(None, f"not a target URI: {uri!r} (expected e.g. ssh://user@host:22)")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PARAMETERS:
        known = ", ".join(sorted(SCHEME_PARAMETERS))
        raise bad("scheme", f"unknown scheme {scheme!r} (known: {known})")
    if parts.password is not None:
        raise bad(
            "password",
            "a password may not be written in the URI; name the environment variable "
            "that holds it with ?password_env=VAR",
        )
    host = parts.hostname
    if not host:
        raise bad("host", f"no host in {uri!r}")
    vm = unquote(parts.path[1:]) if scheme == "vsphere" else None
    if scheme == "vsphere" and not vm and require_vm:
        raise bad("path", f"no VM in {uri!r} (expected vsphere://user@vcenter/VM-NAME-OR-UUID)")
    if scheme != "vsphere" and parts.path not in ("", "/"):
        raise bad("path", f"{scheme}:// targets take no path, got {parts.path!r}")

    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in SCHEME_PARAMETERS[scheme]:
            allowed = ", ".join(sorted(SCHEME_PARAMETERS[scheme]))
            raise bad(key, f"unknown parameter {key!r} (allowed: {allowed})")
        if key in params:
            raise bad(key, f"parameter {key!r} given twice")
        params[key] = value

    http = _http_scheme(params, bad)
    try:
        port = parts.port or (HTTP_PORT if http else DEFAULT_PORTS[scheme])
    except ValueError:
        raise bad("port", f"invalid port in {uri!r}") from None
    user = unquote(parts.username) if parts.username else None
    if scheme == "vsphere" and not user:
        raise bad("user", f"no vCenter user in {uri!r} (expected vsphere://user@vcenter/VM)")
    known_hosts: Path | None = None
    ignore = False
    if "known_hosts" in params:
        if params["known_hosts"] == IGNORE:
            ignore = True
        else:
            known_hosts = _existing_file(params["known_hosts"], bad, "known_hosts")
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
            raise bad("os", f"unknown OS family {params['os']!r} (linux or windows)") from None
    connect_timeout = None
    if "connect_timeout" in params:
        try:
            connect_timeout = float(params["connect_timeout"])
        except ValueError:
            raise bad("connect_timeout", "must be a number of seconds") from None
        if connect_timeout <= 0:
            raise bad("connect_timeout", "must be positive")

    default_name = f"{user}@{host}" if user else host
    if parts.port:
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
        key_file=key_file,
        known_hosts=known_hosts,
        known_hosts_ignore=ignore,
        password=password,
        passphrase=passphrase,
        connect_timeout=connect_timeout,
        vm=vm,
        guest_user=params.get("guest_user") or None,
        guest_password=guest_password,
        http=http,
        insecure=insecure,
        ca_file=ca_file,
    )


def _http_scheme(params: dict[str, str], bad: Any) -> bool:
    value = params.get("scheme", "https")
    if value not in ("http", "https"):
        raise bad("scheme", f"must be http or https, got {value!r}")
    return value == "http"


def _flag(value: str | None, bad: Any, field_name: str) -> bool:
    if value is None:
        return False
    if value.lower() in TRUE_WORDS or value == "":
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise bad(field_name, f"must be 1 or 0, got {value!r}")


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
    value = os.environ.get(variable)
    if value is None:
        raise bad(field_name, f"environment variable {variable} is not set")
    return Secret(value)


#: Fields of a mapping entry in a targets file, in URI order: ``scheme`` is the URI's
#: (ssh, vsphere), ``vm`` a vsphere:// path; a plain-http vCenter is written as a ``uri``.
MAPPING_FIELDS = (
    "uri",
    "scheme",
    "user",
    "host",
    "port",
    "vm",
    *sorted(set().union(*SCHEME_PARAMETERS.values()) - {"scheme"}),
)


def uri_from_mapping(entry: dict[str, Any], bad: Any) -> str:
    """Build the URI equivalent of a mapping entry (``host``, ``user``, ``key``, …)."""
    unknown = sorted(set(entry) - set(MAPPING_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field (allowed: {', '.join(MAPPING_FIELDS)})")
    if "uri" in entry:
        uri = entry["uri"]
        if not isinstance(uri, str):
            raise bad("uri", "must be a string")
        extra = {k: v for k, v in entry.items() if k != "uri"}
        if not extra:
            return uri
        parts = urlsplit(uri)
        if {"scheme", "user", "host", "port", "vm"} & set(extra):
            raise bad("uri", "give either uri or scheme/user/host/port/vm, not both")
        query = "&".join(filter(None, [parts.query, _query(extra)]))
        return parts._replace(query=query).geturl()
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
    return f"{scheme}://{userinfo}{host}{port}{path}" + (f"?{query}" if query else "")


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

        def bad(field_name: str | None, reason: str, where: str = where, entry: Any = entry) -> InputError:
            label = at_line(".".join(p for p in (where, field_name) if p), entry, field_name)
            return InputError(path, label, reason)

        if isinstance(entry, dict):
            uri = uri_from_mapping(entry, bad)
        elif isinstance(entry, str):
            uri = entry
        else:
            raise bad(None, "must be a URI string or a mapping")
        targets.append(parse_target(uri, source=str(path), where=at_line(where, entry)))
    return targets


def check_unique_names(targets: list[Target], source: str) -> None:
    """Two targets with the same display name would mix their results and journals."""
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise InputError(
                source, "name", f"target name {target.name!r} appears twice; set ?name= to tell them apart"
            )
        seen.add(target.name)
