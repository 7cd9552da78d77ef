"""Host plumbing for the lab: commands, the bridge, network namespaces, processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from beachhead.agent.errors import BeachheadError

NETNS_PREFIX = "bhlab-"
NETNS_DIR = Path("/run/netns")


class LabError(BeachheadError):
    """The lab could not be brought up, inspected or taken down."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command; a failure raises :class:`LabError` with its stderr."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed (run bootstrap/install.sh)") from None
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or f'exit status {result.returncode}'}")
    return result


def run_batch(netns: str, commands: list[str]) -> None:
    """Run ``ip`` commands (``link set lo up``) in namespace ``netns`` in one ``ip -batch``;
    a failure raises :class:`LabError` with its stderr."""
    try:
        result = subprocess.run(
            ["ip", "-n", netns, "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise LabError("ip is not installed (run bootstrap/install.sh)") from None
    if result.returncode != 0:
        raise LabError(f"ip -n {netns} -batch ({'; '.join(commands)}): {result.stderr.strip()}")


def link_exists(name: str) -> bool:
    """Whether a network interface ``name`` exists on the host."""
    return Path("/sys/class/net", name).exists()


def make_bridge(name: str, address: str) -> None:
    """Create the lab bridge with ``address`` (CIDR) and bring it up (idempotent).

    IPv4 forwarding is off for packets arriving on it, even on a host that forwards
    (``net.ipv4.ip_forward=1``): guests reach the host and never leave it."""
    if not link_exists(name):
        run("ip", "link", "add", name, "type", "bridge")
    Path(f"/proc/sys/net/ipv4/conf/{name}/forwarding").write_text("0\n")
    run("ip", "address", "replace", address, "dev", name)
    run("ip", "link", "set", name, "up")


def netns_name(vm: str) -> str:
    """The network namespace of lab VM ``vm``."""
    return f"{NETNS_PREFIX}{vm}"


def lab_namespaces() -> list[str]:
    """Network namespaces the lab made (by name prefix), including leftovers."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX))


def make_guest_network(netns: str, host_if: str, bridge: str, mac: str) -> None:
    """A namespace joined to the bridge by a veth pair: ``eth0`` inside with ``mac``,
    up and without an address (the guest's DHCP client configures it), ``host_if`` on
    the bridge."""
    if not (NETNS_DIR / netns).exists():
        run("ip", "netns", "add", netns)
    if link_exists(host_if):
        run("ip", "link", "del", host_if)
    # Three commands, not one per setting: `up --vms 500` runs this 500 times.
    peer = ("peer", "name", "eth0", "address", mac, "netns", netns)
    run("ip", "link", "add", host_if, "master", bridge, "up", "type", "veth", *peer)
    run_batch(netns, ["link set lo up", "link set eth0 up"])


def namespace_pids(netns: str) -> list[int]:
    """Processes running in network namespace ``netns``."""
    result = run("ip", "netns", "pids", netns, check=False)
    return [int(line) for line in result.stdout.split() if line.isdigit()]


def delete_namespace(netns: str) -> None:
    """Kill what runs in ``netns`` and delete it (its veth pair goes with it)."""
    deadline = time.monotonic() + 5
    while (pids := namespace_pids(netns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    run("ip", "netns", "del", netns, check=False)


def delete_link(name: str) -> None:
    """Delete a host interface if it exists."""
    if link_exists(name):
        run("ip", "link", "del", name, check=False)


def alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (and, given ``marker``, its command line contains it)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if marker is None or marker.encode() in cmdline:
        return True
    if cmdline:
        return False  # another program has the pid now
    # Empty: a zombie, or a process inside execve (nsenter becoming dhclient) whose new
    # command line is not set up yet; taking the second for dead failed a lab clone.
    return process_state(pid) not in {None, "Z", "X"}


def process_state(pid: int) -> str | None:
    """The state letter of ``/proc/PID/stat`` (R, S, Z, …), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def stop_process(
    pid: int | None, marker: str | None = None, timeout: float = 10, first: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``pid`` the ``first`` signal (SIGTERM), then SIGKILL if it outlives
    ``timeout`` seconds."""
    stop_processes([pid] if pid is not None else [], marker, timeout, first)


def stop_processes(
    pids: list[int], marker: str | None = None, timeout: float = 10, first: signal.Signals = signal.SIGTERM
) -> None:
    """:func:`stop_process` for many processes at once: the ``first`` signal to all,
    then SIGKILL to those still alive ``timeout`` seconds later."""
    running = [pid for pid in pids if alive(pid, marker)]
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, first)
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in running if alive(pid, marker)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
