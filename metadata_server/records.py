"""What the metadata server holds per instance, and the checks a published record
passes before it is stored."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from beachhead.metadata_server.errors import BadRequest

INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Published YAML (meta-data, network config) is small: bounded so that a document
# cannot exhaust the parser's stack, or expand through its aliases, when it is used.
MAX_YAML_DEPTH = 32
MAX_YAML_ALIASES = 100
MAX_META_DATA_VALUES = 10_000
# WinRM client certificates published per instance (a few per admin is plenty).
MAX_CLIENT_CERTS = 8
MAX_CLIENT_CERT_BYTES = 16 * 1024
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


class YamlTooLarge(yaml.YAMLError):
    """A published YAML document past one of the bounds."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents nested more than ``MAX_YAML_DEPTH``
    deep or holding more than ``MAX_YAML_ALIASES`` aliases."""

    depth = 0
    aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose as PyYAML does, counting depth and aliases."""
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise YamlTooLarge(f"more than {MAX_YAML_ALIASES} aliases")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise YamlTooLarge(f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


@dataclass(frozen=True)
class Status:
    """When the instance's guest fetched its data and when it reported done."""

    fetched_at: float | None = None
    phoned_home_at: float | None = None
    phone_home: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PostedPassword:
    """The administrator password a guest posted (cloudbase-init's SetUserPasswordPlugin):
    base64 text of the password encrypted to the instance's first public key, kept as
    posted; only the holder of that key's private half can read it."""

    encrypted: str
    posted_at: float


@dataclass(frozen=True)
class Instance:
    """One published instance: how its guest is recognised and what it is served."""

    instance_id: str
    ip: str | None
    mac: str | None
    hostname: str
    user_data: bytes
    meta_data: dict[str, Any] = field(default_factory=dict)
    vendor_data: bytes | None = None
    network_config: bytes | None = None
    created: float = 0.0
    updated: float = 0.0
    status: Status = Status()
    client_certs: tuple[str, ...] = ()  # PEM X.509 certificates for WinRM client-certificate auth
    password: PostedPassword | None = None

    def with_status(self, status: Status) -> Instance:
        """The same instance with another status."""
        return replace(self, status=status)

    @property
    def public_keys(self) -> list[str]:
        """SSH public keys from the meta-data's ``public-keys`` (a list, a mapping or one key)."""
        keys = self.meta_data.get("public-keys") or self.meta_data.get("public_keys") or []
        if isinstance(keys, dict):
            keys = list(keys.values())
        return [str(key) for key in (keys if isinstance(keys, list) else [keys])]

    def summary(self) -> dict[str, Any]:
        """The record without its data, as the admin API lists it."""
        return {
            "instance_id": self.instance_id,
            "ip": self.ip,
            "mac": self.mac,
            "hostname": self.hostname,
            "user_data_bytes": len(self.user_data),
            "has_vendor_data": self.vendor_data is not None,
            "has_network_config": self.network_config is not None,
            "created": self.created,
            "updated": self.updated,
            "fetched_at": self.status.fetched_at,
            "phoned_home_at": self.status.phoned_home_at,
            "client_certs": len(self.client_certs),
            "password_posted_at": self.password.posted_at if self.password else None,
        }


def _shown(value: Any) -> str:
    """``value`` for an error message: a string's first 64 characters, else its type
    (never a rendering of a structure, which may be deep or large)."""
    return repr(value[:64]) if isinstance(value, str) else f"a JSON {type(value).__name__}"


def check_instance_id(value: Any) -> str:
    """A valid instance id (letters, digits, ``._:-``; at most 128)."""
    if not isinstance(value, str) or not INSTANCE_ID.fullmatch(value):
        raise BadRequest("instance_id", "must be 1-128 letters, digits or . _ : - (starting with a letter or digit)")
    return value


def check_ip(value: Any) -> str | None:
    """A normalised IP address, or None."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise BadRequest("ip", f"not an IP address: {_shown(value)}") from None


def check_mac(value: Any) -> str | None:
    """A MAC address in lower case with colons, or None."""
    if value is None or value == "":
        return None
    text = value.strip().lower().replace("-", ":") if isinstance(value, str) else ""
    if not MAC.fullmatch(text):
        raise BadRequest("mac", f"not a MAC address: {_shown(value)}")
    return text


def default_hostname(instance_id: str) -> str:
    """A host name from an instance id: its first label, made valid."""
    return re.sub(r"[^A-Za-z0-9-]", "-", instance_id.split(".")[0]).strip("-")[:63] or "instance"


def check_hostname(value: Any, instance_id: str) -> str:
    """A valid host name; the instance id's first label when none is given."""
    if value is None or value == "":
        value = default_hostname(instance_id)
    if not isinstance(value, str) or not HOSTNAME.fullmatch(value):
        raise BadRequest("hostname", f"not a host name: {_shown(value)}")
    return value


def load_yaml(data: bytes, field: str) -> Any:
    """One YAML (or JSON) document, within the bounds above; 400 naming ``field``."""
    try:
        return yaml.load(data.decode("utf-8"), Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader
    except YamlTooLarge as exc:
        raise BadRequest(field, str(exc)) from None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: not UTF-8, an int past 4300 digits, ...
        raise BadRequest(field, f"not YAML: {str(exc).splitlines()[0][:120] if str(exc) else 'invalid'}") from None


def _plain(value: Any, budget: list[int]) -> Any:
    """``value`` as JSON carries it (dates as ISO text), its aliases expanded while the
    budget of values lasts; 400 for a value JSON cannot carry."""
    budget[0] -= 1
    if budget[0] < 0:
        raise BadRequest("meta_data", f"more than {MAX_META_DATA_VALUES} values (with aliases expanded)")
    if isinstance(value, dict):
        return {_plain_key(key): _plain(item, budget) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item, budget) for item in value]
    if isinstance(value, datetime.date):  # datetimes too
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        raise BadRequest("meta_data", "an integer past 64 bits (quote it to keep it as text)")
    if value is None or isinstance(value, str | int | float):
        return value
    kind = type(value).__name__
    raise BadRequest("meta_data", f"holds a {kind}: only text, numbers, booleans, null, lists and mappings")


def _plain_key(key: Any) -> str:
    """A mapping key as JSON text (``1`` -> ``"1"``, ``null`` -> ``"null"``)."""
    if isinstance(key, str):
        return key
    if isinstance(key, datetime.date):
        return key.isoformat()
    if key is None or isinstance(key, bool | float) or (isinstance(key, int) and key.bit_length() <= 64):
        return json.dumps(key)
    raise BadRequest("meta_data", f"a {type(key).__name__} as a key: keys must be text or numbers")


def parse_meta_data(data: bytes | None) -> dict[str, Any]:
    """Extra meta-data: a YAML (or JSON) mapping, as JSON would carry it."""
    if not data:
        return {}
    parsed = load_yaml(data, "meta_data")
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise BadRequest("meta_data", "must be a YAML mapping")
    plain: dict[str, Any] = _plain(parsed, [MAX_META_DATA_VALUES])
    return plain


def check_client_certs(value: Any) -> tuple[str, ...]:
    """``client_certs``: a list of at most ``MAX_CLIENT_CERTS`` PEM X.509 certificates
    (text, each at most ``MAX_CLIENT_CERT_BYTES``), each one certificate that parses;
    kept as PEM re-encoded from the parsed certificate."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest("client_certs", "must be a list of PEM certificates")
    if len(value) > MAX_CLIENT_CERTS:
        raise BadRequest("client_certs", f"at most {MAX_CLIENT_CERTS} certificates")
    certs = []
    for index, text in enumerate(value):
        certs.append(_pem_certificate(text, f"client_certs[{index}]"))
    return tuple(dict.fromkeys(certs))


def _pem_certificate(text: Any, field: str) -> str:
    """One PEM certificate, parsed and re-encoded; 400 naming ``field``."""
    if not isinstance(text, str):
        raise BadRequest(field, "must be PEM text")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CLIENT_CERT_BYTES:
        raise BadRequest(field, f"longer than {MAX_CLIENT_CERT_BYTES} bytes")
    if text.count(PEM_BEGIN) != 1:
        raise BadRequest(field, f"must hold exactly one {PEM_BEGIN} block")
    try:
        cert = x509.load_pem_x509_certificate(text.encode("ascii"))
    except (UnicodeEncodeError, ValueError):
        raise BadRequest(field, "not a PEM X.509 certificate") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def check_network_config(data: bytes | None) -> bytes | None:
    """Network configuration (cloud-init v1/v2 YAML, or JSON): must parse as a mapping."""
    if not data:
        return None
    if not isinstance(load_yaml(data, "network_config"), dict):
        raise BadRequest("network_config", "must be a mapping")
    return data
