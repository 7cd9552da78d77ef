"""The lab's YAML configuration: vCenter endpoint, guest network and VMs.

Bad input raises :class:`beachhead.agent.errors.InputError` naming the file, the field and the
reason. Passwords left out are generated when the lab comes up.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from beachhead.agent.errors import InputError
from beachhead.agent.yamlio import LineDict, at_line, load_yaml

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
OS_FAMILIES = ("linux", "windows")
CONSOLES = ("pty", "qemu")  # a shell on a pseudo-terminal in the guest; a QEMU machine (qemu_vm.py)
VM_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")  # also a namespace and a host name
DEFAULT_SUBNET = "10.213.0.0/22"  # guests from .0.11 on: room for the configured VMs plus a fleet of 1000
FLEET_PREFIX = "fleet-"
_GUEST_ID = re.compile(r"^[A-Za-z0-9_]+Guest$")
_USERNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]{0,63}$")
_BRIDGE = re.compile(r"^[a-z][a-z0-9]{0,14}$")


def generated_password() -> str:
    """A password for a lab account (URL-safe, 20 characters)."""
    return secrets.token_urlsafe(15)


@dataclass(frozen=True)
class VmSpec:
    """One lab VM as configured."""

    name: str
    guest_id: str
    os: str
    guest_username: str  # empty for a console VM (it has no guest login)
    guest_password: str | None = None
    cloudbase_init: bool = False  # Windows: run the cloudbase-init stand-in at each boot
    console: str = "pty"  # "qemu": a QEMU console VM, with no VMware Tools, sshd or guest login


@dataclass(frozen=True)
class LabConfig:
    """The whole lab as configured."""

    source: Path
    host: str = "127.0.0.1"
    port: int = 443
    username: str = "administrator@vsphere.local"
    password: str | None = None
    bridge: str = "bhlab0"
    subnet: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(DEFAULT_SUBNET))
    boot_delay_s: float = 2.0
    vms: tuple[VmSpec, ...] = ()

    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the first of the subnet."""
        return self.subnet.network_address + 1

    def guest_ip(self, index: int) -> ipaddress.IPv4Address:
        """The address of the ``index``-th VM (0-based): .11, .12, ..."""
        return self.subnet.network_address + 11 + index


class _Reader:
    """Validates one mapping of the file, naming fields in errors."""

    def __init__(self, source: Path, mapping: Any, where: str) -> None:
        if not isinstance(mapping, dict):
            raise InputError(source, where or None, "must be a mapping")
        self.source, self.mapping, self.where = source, mapping, where

    def bad(self, key: str | None, reason: str) -> InputError:
        name = ".".join(part for part in (self.where, key) if part)
        return InputError(self.source, at_line(name, self.mapping, key), reason)

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.mapping:
            if key not in allowed:
                raise self.bad(str(key), f"unknown field; expected one of {', '.join(sorted(allowed))}")

    def text(self, key: str, default: str | None, pattern: re.Pattern[str] | None = None) -> str | None:
        value = self.mapping.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.bad(key, "must be a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise self.bad(key, f"{value!r} does not match {pattern.pattern}")
        return value

    def required(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self.text(key, None, pattern)
        if value is None:
            raise self.bad(key, "is required")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.bad(key, f"must be a number from {low:g} to {high:g}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.mapping.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "must be true or false")
        return value


def capacity(subnet: ipaddress.IPv4Network) -> int:
    """How many VMs have an address in ``subnet``: .11 up to the last before the broadcast."""
    return subnet.num_addresses - 12


def with_fleet(config: LabConfig, count: int) -> LabConfig:
    """``config`` plus ``count`` Linux VMs named ``fleet-0001``, ``fleet-0002``, ... after
    the configured ones (so their addresses follow theirs), with root logins sharing one
    generated password. Refuses, naming the largest
    fleet that fits, when they do not fit in the subnet or a configured VM has one of
    their names."""
    if count < 0:
        raise InputError("--vms", None, f"{count}: must be 0 or more")
    room = capacity(config.subnet) - len(config.vms)
    if count > room:
        raise InputError(
            "--vms",
            None,
            f"{len(config.vms)} configured VMs and {count} more do not fit in {config.subnet} "
            f"(at most {max(room, 0)} more); give network.subnet a wider one in the lab YAML",
        )
    password = generated_password()  # one for the whole fleet, hashed once
    fleet = tuple(
        VmSpec(f"{FLEET_PREFIX}{n:04d}", "debian12_64Guest", "linux", "root", password) for n in range(1, count + 1)
    )
    taken = {vm.name for vm in config.vms} & {vm.name for vm in fleet}
    if taken:
        raise InputError("--vms", None, f"the lab YAML already has a VM named {sorted(taken)[0]}")
    return replace(config, vms=config.vms + fleet)


def load_config(path: Path | None = None) -> LabConfig:
    """Read and validate a lab file (the shipped default when ``path`` is None)."""
    source = path or DEFAULT_CONFIG
    top = _Reader(source, load_yaml(source), "")
    top.check_keys({"vcenter", "network", "boot_delay_s", "vms"})

    vcenter = _Reader(source, top.mapping.get("vcenter", LineDict()), "vcenter")
    vcenter.check_keys({"host", "port", "username", "password"})
    host = vcenter.text("host", "127.0.0.1")
    assert host is not None
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise vcenter.bad("host", "the lab's vCenter listens on loopback only")
    except ValueError:
        raise vcenter.bad("host", "must be a loopback IP address") from None

    network = _Reader(source, top.mapping.get("network", LineDict()), "network")
    network.check_keys({"bridge", "subnet"})
    try:
        subnet = ipaddress.IPv4Network(network.text("subnet", DEFAULT_SUBNET))
    except ValueError as exc:
        raise network.bad("subnet", f"not an IPv4 network: {exc}") from None
    if not subnet.is_private or subnet.prefixlen > 26:
        raise network.bad("subnet", "must be a private IPv4 network of /26 or larger")

    vms_data = top.mapping.get("vms")
    if not isinstance(vms_data, list) or not vms_data:
        raise top.bad("vms", "must be a non-empty list of VMs")
    if len(vms_data) > capacity(subnet):
        raise top.bad("vms", f"{len(vms_data)} VMs do not fit in {subnet}")
    vms: list[VmSpec] = []
    for index, entry in enumerate(vms_data, start=1):
        vm = _Reader(source, entry, f"vms[{index}]")
        vm.check_keys({"name", "guest_id", "os", "guest_username", "guest_password", "cloudbase_init", "console"})
        name = vm.required("name", VM_NAME)
        if any(existing.name == name for existing in vms):
            raise vm.bad("name", f"VM name {name!r} appears twice")
        os_family = vm.required("os")
        if os_family not in OS_FAMILIES:
            raise vm.bad("os", f"must be one of {', '.join(OS_FAMILIES)}")
        cloudbase_init = vm.flag("cloudbase_init", False)
        if cloudbase_init and os_family != "windows":
            raise vm.bad("cloudbase_init", "cloudbase-init runs on Windows guests only")
        console = vm.text("console", "pty") or "pty"
        if console not in CONSOLES:
            raise vm.bad("console", f"must be one of {', '.join(CONSOLES)}")
        if console == "qemu":
            if os_family != "linux":
                raise vm.bad("console", "a QEMU console VM runs Linux (os: linux)")
            for key in ("guest_username", "guest_password", "cloudbase_init"):
                if key in vm.mapping:
                    raise vm.bad(key, "a QEMU console VM has no guest login, VMware Tools or cloudbase-init")
        vms.append(
            VmSpec(
                name=name,
                guest_id=vm.required("guest_id", _GUEST_ID),
                os=os_family,
                guest_username="" if console == "qemu" else vm.required("guest_username", _USERNAME),
                guest_password=vm.text("guest_password", None),
                cloudbase_init=cloudbase_init,
                console=console,
            )
        )

    return LabConfig(
        source=source,
        host=host,
        port=int(vcenter.number("port", 443, 1, 65535)),
        username=vcenter.text("username", "administrator@vsphere.local") or "",
        password=vcenter.text("password", None),
        bridge=network.text("bridge", "bhlab0", _BRIDGE) or "bhlab0",
        subnet=subnet,
        boot_delay_s=top.number("boot_delay_s", 2.0, 0, 600),
        vms=tuple(vms),
    )
