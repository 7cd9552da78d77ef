"""DHCP on the lab bridge: Debian's dnsmasq serves it on the host side, Debian's
dhclient asks for it inside each guest.

dnsmasq listens on the bridge only (``--interface --bind-interfaces``, DNS off with
``--port=0``) and hands every lab VM the address it is configured with
(``--dhcp-host=MAC,IP,NAME,infinite``), plus option 121 routes: the metadata address
(169.254.169.254/32) and the default route, both via the gateway. The host gives the
bridge the metadata address too, so a server listening on it answers the guests.

Each guest runs ``dhclient`` in its own namespaces (the holder's network, mount and UTS
namespaces) with the stock ``/sbin/dhclient-script``. The guest's ``/etc/dhcp`` is its
own (bind-mounted by the holder from ``GUEST_ROOT/etc/dhcp``): a ``dhclient.conf``
asking for address and routes only, Debian's RFC 3442 exit hook (it installs the option
121 routes) and an enter hook that keeps ``/etc/resolv.conf`` as it is, so no host hook
runs and no name server reaches the guest.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beachhead.bootstrap.lab import system
from beachhead.bootstrap.lab.system import LabError

METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")
DNSMASQ = Path("/usr/sbin/dnsmasq")
DHCLIENT = Path("/sbin/dhclient")
DHCLIENT_SCRIPT = Path("/sbin/dhclient-script")
# Debian's exit hook that turns option 121 into routes (isc-dhcp-client ships it).
RFC3442_HOOK = Path("/etc/dhcp/dhclient-exit-hooks.d/rfc3442-classless-routes")
DHCLIENT_MARKER = ".dhclient.leases"
DNSMASQ_START_S = 10.0
LEASE_WAIT_S = 30.0
DYNAMIC_LEASE = "1h"

GUEST_DHCLIENT_CONF = """\
# The lab guest's DHCP client (beachhead lab): its address and routes, never a name
# server (guests resolve from /etc/hosts only).
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
send host-name = gethostname();
request subnet-mask, broadcast-address, routers, rfc3442-classless-static-routes, interface-mtu;
initial-interval 1;
backoff-cutoff 2;
"""
# Sourced by dhclient-script before it acts: its make_resolv_conf becomes a no-op.
GUEST_KEEP_RESOLV_CONF = """\
# beachhead lab: leave /etc/resolv.conf alone (no name server from DHCP).
make_resolv_conf() { :; }
"""


@dataclass(frozen=True)
class DhcpHost:
    """One fixed DHCP assignment: the VM's MAC gets ``ip`` under ``name``."""

    mac: str
    ip: str
    name: str


@dataclass(frozen=True)
class LabNetwork:
    """The lab's guest network: the bridge, its subnet, its (host side) address and the
    DHCP server's files."""

    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    directory: Path

    @property
    def leases(self) -> Path:
        """dnsmasq's lease file."""
        return self.directory / "dnsmasq.leases"

    @property
    def pid_file(self) -> Path:
        """dnsmasq's pid file."""
        return self.directory / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        """dnsmasq's log (every DHCP exchange, with the options sent)."""
        return self.directory / "dnsmasq.log"

    @property
    def hosts_dir(self) -> Path:
        """Fixed assignments added while dnsmasq runs (clones): one file per VM, read
        by dnsmasq as it appears (``--dhcp-hostsdir``). Beside the state directory,
        not in it: dnsmasq reads it after dropping root, and the state directory is
        root's only (it holds the passwords)."""
        return hosts_dir(self.directory)

    def public(self) -> dict[str, Any]:
        """The ``network`` object of ``lab up --json``."""
        return {
            "bridge": self.bridge,
            "gateway": str(self.gateway),
            "subnet": str(self.subnet),
            "dhcp_leases": str(self.leases),
            "metadata_address": str(METADATA_ADDRESS),
        }


@dataclass(frozen=True)
class GuestDhcp:
    """One guest's DHCP client: where it runs and what it writes."""

    name: str
    netns: str
    holder: int
    ip: str
    leases: Path
    pid_file: Path
    log: Path


def require_tools() -> None:
    """Refuse early, naming the package, when dnsmasq or dhclient is missing."""
    for tool, package in ((DNSMASQ, "dnsmasq-base"), (DHCLIENT, "isc-dhcp-client"), (RFC3442_HOOK, "isc-dhcp-client")):
        if not tool.exists():
            raise LabError(f"{tool} is missing: install {package} (bootstrap/install.sh)")


def add_metadata_address(bridge: str) -> None:
    """Give the bridge 169.254.169.254/32, so guest traffic for it is delivered here."""
    system.run("ip", "address", "replace", f"{METADATA_ADDRESS}/32", "dev", bridge)


def remove_metadata_address(bridge: str) -> bool:
    """Take 169.254.169.254/32 off the bridge; whether it was there."""
    if not system.link_exists(bridge):
        return False
    return system.run("ip", "address", "del", f"{METADATA_ADDRESS}/32", "dev", bridge, check=False).returncode == 0


def dnsmasq_argv(network: LabNetwork, hosts: Sequence[DhcpHost], first_guest: ipaddress.IPv4Address) -> list[str]:
    """dnsmasq's command line: DHCP only, on the bridge only, a fixed address per VM."""
    gateway = network.gateway
    last = network.subnet.broadcast_address - 1
    routes = f"{METADATA_ADDRESS}/32,{gateway},0.0.0.0/0,{gateway}"
    return [
        str(DNSMASQ),
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        f"--interface={network.bridge}",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--listen-address={gateway}",
        f"--dhcp-range={first_guest},{last},{network.subnet.netmask},{DYNAMIC_LEASE}",
        *(f"--dhcp-host={_host_line(host)}" for host in hosts),
        f"--dhcp-hostsdir={network.hosts_dir}",
        f"--dhcp-option=option:classless-static-route,{routes}",
        "--dhcp-authoritative",
        f"--dhcp-leasefile={network.leases}",
        f"--pid-file={network.pid_file}",
        f"--log-facility={network.log}",
        "--log-dhcp",
    ]


def spawn_dnsmasq(
    network: LabNetwork, hosts: Sequence[DhcpHost], first_guest: ipaddress.IPv4Address
) -> subprocess.Popen[bytes]:
    """Start dnsmasq (in the foreground of its own session, logging to its log)."""
    network.pid_file.unlink(missing_ok=True)
    network.hosts_dir.mkdir(mode=0o755, exist_ok=True)
    with network.log.open("ab") as log:
        return subprocess.Popen(
            dnsmasq_argv(network, hosts, first_guest),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def hosts_dir(directory: Path) -> Path:
    """The DHCP hosts directory of the lab whose state directory is ``directory``."""
    return directory.with_name(directory.name + "-dhcp-hosts")


def _host_line(host: DhcpHost) -> str:
    return f"{host.mac},{host.ip},{host.name},infinite"


def add_host(network: LabNetwork, host: DhcpHost) -> None:
    """Give ``host`` its fixed address from now on (the running dnsmasq reads the file
    as it appears)."""
    partial = network.hosts_dir / f".{host.name}.part"
    partial.write_text(_host_line(host) + "\n")
    partial.replace(network.hosts_dir / host.name)


def remove_host(network: LabNetwork, name: str) -> None:
    """Forget ``name``'s fixed assignment: dnsmasq drops records of removed files only
    when it rereads them, on SIGHUP."""
    (network.hosts_dir / name).unlink(missing_ok=True)
    pid = leftover_dnsmasq(network.directory)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


def wait_for_dnsmasq(process: subprocess.Popen[bytes], network: LabNetwork) -> None:
    """Wait (bounded) until dnsmasq serves: it writes its pid file once its sockets are
    bound."""
    deadline = time.monotonic() + DNSMASQ_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"the lab's dnsmasq exited while starting:\n{_tail(network.log)}")
        if _read_pid(network.pid_file) == process.pid:
            return
        time.sleep(0.05)
    raise LabError(f"the lab's dnsmasq did not start within {DNSMASQ_START_S:g}s; see {network.log}")


def dnsmasq_marker(directory: Path) -> str:
    """What the lab's dnsmasq has on its command line and no other process has."""
    return str(directory / "dnsmasq.leases")


def leftover_dnsmasq(directory: Path) -> int | None:
    """The pid in the lab's dnsmasq pid file, if that process still runs."""
    pid = _read_pid(directory / "dnsmasq.pid")
    return pid if system.alive(pid, dnsmasq_marker(directory)) else None


def write_guest_dhcp_config(dhcp_dir: Path) -> None:
    """The guest's own ``/etc/dhcp``: dhclient.conf, Debian's RFC 3442 exit hook and an
    enter hook that keeps ``/etc/resolv.conf``."""
    enter, exit_ = dhcp_dir / "dhclient-enter-hooks.d", dhcp_dir / "dhclient-exit-hooks.d"
    enter.mkdir(parents=True, exist_ok=True)
    exit_.mkdir(parents=True, exist_ok=True)
    (dhcp_dir / "dhclient.conf").write_text(GUEST_DHCLIENT_CONF)
    (enter / "beachhead-lab-keep-resolv-conf").write_text(GUEST_KEEP_RESOLV_CONF)
    shutil.copyfile(RFC3442_HOOK, exit_ / RFC3442_HOOK.name)


def dhclient_argv(guest: GuestDhcp) -> list[str]:
    """dhclient for the guest's eth0, in the foreground, inside the holder's mount and
    UTS namespaces (``/etc/dhcp`` there is the guest's own) and the guest's network
    namespace, named as such so that it can never be another."""
    return [
        "nsenter",
        f"--target={guest.holder}",
        "--mount",
        f"--net={system.NETNS_DIR / guest.netns}",
        "--uts",
        "--",
        str(DHCLIENT),
        "-4",
        "-d",
        "-v",
        "-cf",
        "/etc/dhcp/dhclient.conf",
        "-sf",
        str(DHCLIENT_SCRIPT),
        "-lf",
        str(guest.leases),
        "-pf",
        str(guest.pid_file),
        "eth0",
    ]


def start_dhclient(guest: GuestDhcp) -> int:
    """Start the guest's DHCP client and return its pid (nsenter execs dhclient)."""
    for stale in (guest.leases, guest.pid_file):
        stale.unlink(missing_ok=True)
    with guest.log.open("ab") as log:
        process = subprocess.Popen(
            dhclient_argv(guest), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    return process.pid


def guest_configured(guest: GuestDhcp, prefixlen: int, gateway: ipaddress.IPv4Address) -> bool:
    """Whether the guest's eth0 has its address and the route to the metadata address
    via the gateway (dhclient-script's last step)."""
    inside = ("ip", "-n", guest.netns, "-4", "-o")
    addresses = system.run(*inside, "address", "show", "dev", "eth0", check=False).stdout
    if f" {guest.ip}/{prefixlen} " not in addresses:
        return False
    route = system.run(*inside, "route", "show", f"{METADATA_ADDRESS}/32", check=False).stdout
    return f"via {gateway} " in route


def wait_for_leases(clients: Mapping[int, GuestDhcp], network: LabNetwork) -> None:
    """Wait (bounded) until every guest is configured by DHCP (``clients`` maps each
    dhclient's pid to its guest); a guest whose client exits or that gets nothing in
    time raises :class:`LabError` naming it and the logs."""
    waiting = dict(clients)
    deadline = time.monotonic() + LEASE_WAIT_S
    while waiting:
        for pid, guest in list(waiting.items()):
            # The lease file first (a read, where the check is two `ip` processes):
            # dhclient writes it once dhclient-script has configured the lease.
            if _lease_written(guest) and guest_configured(guest, network.subnet.prefixlen, network.gateway):
                del waiting[pid]
            elif not system.alive(pid, DHCLIENT_MARKER):
                raise LabError(f"guest {guest.name}: dhclient exited without an address:\n{_tail(guest.log)}")
        if waiting and time.monotonic() > deadline:
            guest = next(iter(waiting.values()))
            # `up` takes a failed lab down, logs included, so quote them.
            raise LabError(
                f"guest {guest.name}: no address {guest.ip} by DHCP within {LEASE_WAIT_S:g}s\n"
                f"dnsmasq log {network.log}:\n{_tail(network.log)}\n"
                f"dhclient log {guest.log}:\n{_tail(guest.log)}"
            )
        if waiting:
            time.sleep(0.05)


def _lease_written(guest: GuestDhcp) -> bool:
    try:
        return f"fixed-address {guest.ip};" in guest.leases.read_text()
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return f"(no {path})"
