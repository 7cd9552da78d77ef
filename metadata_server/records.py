"""What the metadata server holds per instance, and the checks a published record
passes before it is stored."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from beachhead.metadata_server.errors import BadRequest

INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Status:
    """When the instance's guest fetched its data and when it reported done."""

    fetched_at: float | None = None
    phoned_home_at: float | None = None
    phone_home: dict[str, str] = field(default_factory=dict)


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

    def with_status(self, status: Status) -> Instance:
        """The same instance with another status."""
        return replace(self, status=status)

    @property
    def public_keys(self) -> list[str]:
        """SSH public keys from the meta-data's ``public-keys`` (a list or a mapping)."""
        keys = self.meta_data.get("public-keys") or self.meta_data.get("public_keys") or []
        if isinstance(keys, str):
            return [keys]
        if isinstance(keys, dict):
            return [str(value) for value in keys.values()]
        return [str(key) for key in keys]

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
        }


def check_instance_id(value: Any) -> str:
    """A valid instance id (letters, digits, ``._:-``; at most 128)."""
    if not isinstance(value, str) or not INSTANCE_ID.match(value):
        raise BadRequest("instance_id", "must be 1-128 letters, digits or . _ : - (starting with a letter or digit)")
    return value


def check_ip(value: Any) -> str | None:
    """A normalised IP address, or None."""
    if value in (None, ""):
        return None
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise BadRequest("ip", f"not an IP address: {str(value)[:64]!r}") from None


def check_mac(value: Any) -> str | None:
    """A MAC address in lower case with colons, or None."""
    if value in (None, ""):
        return None
    text = str(value).strip().lower().replace("-", ":")
    if not MAC.match(text):
        raise BadRequest("mac", f"not a MAC address: {str(value)[:64]!r}")
    return text


def default_hostname(instance_id: str) -> str:
    """A host name from an instance id: its first label, made valid."""
    return re.sub(r"[^A-Za-z0-9-]", "-", instance_id.split(".")[0]).strip("-")[:63] or "instance"


def check_hostname(value: Any, instance_id: str) -> str:
    """A valid host name; the instance id's first label when none is given."""
    if value in (None, ""):
        value = default_hostname(instance_id)
    if not isinstance(value, str) or not HOSTNAME.match(value):
        raise BadRequest("hostname", f"not a host name: {str(value)[:64]!r}")
    return value


def parse_meta_data(data: bytes | None) -> dict[str, Any]:
    """Extra meta-data: a YAML (or JSON) mapping."""
    if not data:
        return {}
    try:
        parsed = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadRequest("meta_data", f"not YAML: {str(exc).splitlines()[0][:120]}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise BadRequest("meta_data", "must be a YAML mapping")
    return parsed


def check_network_config(data: bytes | None) -> bytes | None:
    """Network configuration (cloud-init v1/v2 YAML, or JSON): must parse as a mapping."""
    if not data:
        return None
    try:
        parsed = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise BadRequest("network_config", "not YAML or JSON") from None
    if not isinstance(parsed, dict):
        raise BadRequest("network_config", "must be a mapping")
    return data
