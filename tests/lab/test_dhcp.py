"""The lab's guest network: every guest gets its address from the lab's dnsmasq by DHCP
(Debian's dhclient in the guest), a route to 169.254.169.254 via the gateway, reaches
servers on the host at the gateway and metadata addresses, and still resolves no names
through a real resolver. Checked with plain tools: ``ip``, the lease files, sockets."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from beachhead.bootstrap.lab.lab import lab_dir

LAB_DIR = lab_dir()
METADATA = "169.254.169.254"
GATEWAY = "10.213.0.1"
# Connects to ADDRESS:PORT and prints what the server says (run inside a guest).
CLIENT = (
    "import socket, sys\n"
    "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:\n"
    "    print(c.recv(200).decode())\n"
)


def _ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True, timeout=10).stdout


def _mac(vm: str) -> str:
    """The MAC of the guest's eth0, as the guest's namespace has it."""
    fields = _ip("-n", f"bhlab-{vm}", "-o", "link", "show", "dev", "eth0").split()
    return fields[fields.index("link/ether") + 1]


def _dnsmasq_leases() -> dict[str, tuple[str, str, str]]:
    """dnsmasq's leases by MAC: (expiry, address, name)."""
    leases = {}
    for line in (LAB_DIR / "dnsmasq.leases").read_text().splitlines():
        expiry, mac, address, name = line.split()[:4]
        leases[mac] = (expiry, address, name)
    return leases


def _holder(vm: str) -> int:
    """The pid of the process that holds the guest's mount namespace."""
    for pid in _ip("netns", "pids", f"bhlab-{vm}").split():
        if b"beachhead-lab-holder" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError(f"no namespace holder for {vm}")


@contextmanager
def _one_shot_server(address: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP server on the host at ``address`` (a free port) that answers one client
    with ``hello PEER``; yields the port and, once served, the peer's address."""
    server = socket.create_server((address, 0))
    server.settimeout(15)
    peers: list[str] = []

    def serve() -> None:
        with server, server.accept()[0] as client:
            peer = client.getpeername()[0]
            peers.append(peer)
            client.sendall(f"hello {peer}".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], peers
    finally:
        thread.join(timeout=20)


def test_up_json_describes_the_network(lab: dict[str, Any]) -> None:
    assert lab["network"] == {
        "bridge": "bhlab0",
        "gateway": GATEWAY,
        "subnet": "10.213.0.0/24",
        "dhcp_leases": str(LAB_DIR / "dnsmasq.leases"),
        "metadata_address": METADATA,
    }
    assert set(lab) == {"vcenter", "vms", "network"}


def test_every_guest_got_its_address_by_dhcp(lab: dict[str, Any]) -> None:
    leases = _dnsmasq_leases()
    for vm in (vm for vm in lab["vms"] if vm["console"] == "pty"):  # a console VM has no network configured
        name, ip = vm["name"], vm["ip"]
        mac = _mac(name)
        assert leases.get(mac) == ("0", ip, name), f"{name}: dnsmasq's lease for {mac}"  # 0: infinite
        dhclient_lease = (LAB_DIR / "guests" / f"{name}.dhclient.leases").read_text()
        assert f"fixed-address {ip};" in dhclient_lease, name
        assert "domain-name-servers" not in dhclient_lease, f"{name} was offered a name server"
        assert f" {ip}/24 " in _ip("-n", f"bhlab-{name}", "-4", "-o", "address", "show", "dev", "eth0"), name


def test_every_guest_routes_the_metadata_address_via_the_gateway(lab: dict[str, Any]) -> None:
    for vm in (vm for vm in lab["vms"] if vm["console"] == "pty"):
        netns = f"bhlab-{vm['name']}"
        assert _ip("-n", netns, "route", "get", METADATA).startswith(f"{METADATA} via {GATEWAY} dev eth0 "), netns
        assert f"default via {GATEWAY} dev eth0" in _ip("-n", netns, "route", "show"), netns


@pytest.mark.parametrize("address", [METADATA, GATEWAY])
@pytest.mark.parametrize("guest", ["lin-01", "win-01"])
def test_host_servers_are_reachable_from_a_guest(lab: dict[str, Any], guest: str, address: str) -> None:
    ip = next(vm["ip"] for vm in lab["vms"] if vm["name"] == guest)
    with _one_shot_server(address) as (port, peers):
        done = subprocess.run(
            ["ip", "netns", "exec", f"bhlab-{guest}", "python3", "-c", CLIENT, address, str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"hello {ip}\n"
    assert peers == [ip]


@pytest.mark.parametrize("guest", ["lin-01", "lin-03"])
def test_guest_resolv_conf_names_no_real_resolver(lab: dict[str, Any], guest: str) -> None:
    resolv_conf = subprocess.run(
        ["nsenter", "--target", str(_holder(guest)), "--mount", "--net", "cat", "/etc/resolv.conf"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    servers = [line.split()[1] for line in resolv_conf.splitlines() if line.startswith("nameserver")]
    assert servers == ["127.0.0.1"], resolv_conf  # nothing listens there in the guest
    assert "search" not in resolv_conf and "domain" not in resolv_conf


def test_dhcp_serves_the_bridge_only(lab: dict[str, Any]) -> None:
    """dnsmasq serves no DNS and its DHCP socket is tied to the bridge."""
    pid = int((LAB_DIR / "dnsmasq.pid").read_text())
    sockets = subprocess.run(["ss", "-Htulnp"], capture_output=True, text=True, check=True).stdout
    mine = [line for line in sockets.splitlines() if f"pid={pid}," in line]
    assert mine and all("%bhlab0:67 " in line for line in mine), mine


def test_nothing_from_the_guests_is_forwarded_off_the_host(lab: dict[str, Any]) -> None:
    assert Path("/proc/sys/net/ipv4/conf/bhlab0/forwarding").read_text() == "0\n"
