"""Bring the lab up, report on it, take it down.

The lab is machine-wide (a bridge, network namespaces, one vCenter), so its state lives
in ``/run/beachhead-lab`` (``$BEACHHEAD_LAB_DIR`` overrides), which a reboot clears
along with the namespaces. ``state.json`` there (mode 0600: it holds the passwords)
records everything ``down`` has to undo.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from beachhead.bootstrap.lab import dhcp, guests, qemu_vm, system
from beachhead.bootstrap.lab.build import launcher_binary
from beachhead.bootstrap.lab.certs import ensure_certificates
from beachhead.bootstrap.lab.config import LabConfig, VmSpec, generated_password
from beachhead.bootstrap.lab.system import LabError
from beachhead.bootstrap.lab.windows import firstboot
from beachhead.bootstrap.lab.windows.wsman import labsetup as wsman_files

READY_TIMEOUT_S = 45.0
GUEST_WORKERS = 8  # guests set up at once by `up` (each mostly waits on ip, ssh-keygen, openssl)
Progress = Callable[[str], None]
Item = TypeVar("Item")
LAUNCHER_MARKER = "launcher-"
DEFAULT_BRIDGE = LabConfig.bridge


RDP_PORT = 3389  # a Windows guest's RDP console (xrdp), at the guest's address
RDP_SHADOW_PORT = 3390  # its second RDP server (FreeRDP's shadow of an X display), same address


def lab_dir() -> Path:
    """The lab's state directory."""
    return Path(os.environ.get("BEACHHEAD_LAB_DIR", "/run/beachhead-lab"))


def host_interface(index: int) -> str:
    """The host side of the ``index``-th VM's veth pair."""
    return f"bhlab-v{index}"


def guest_mac(index: int) -> str:
    """The ``index``-th VM's MAC address."""
    # 00:50:56:00:00:00-00:50:56:3f:ff:ff is VMware's range for manually set addresses.
    return f"00:50:56:3a:{index // 256:02x}:{index % 256:02x}"


@dataclass
class LabState:
    """What a running lab is: the public description plus what ``down`` must undo."""

    data: dict[str, Any]

    @property
    def path(self) -> Path:
        """Where the state is stored."""
        return lab_dir() / "state.json"

    @classmethod
    def load(cls) -> LabState | None:
        """The stored state, or None when no lab was brought up."""
        path = lab_dir() / "state.json"
        try:
            return cls(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{path}: unreadable lab state ({exc}); run `beachhead lab down`") from None

    def save(self) -> None:
        """Write the state (0600) atomically."""
        partial = self.path.with_suffix(".part")
        partial.touch(mode=0o600)
        partial.write_text(json.dumps(self.data, indent=2) + "\n")
        partial.replace(self.path)

    def public(self) -> dict[str, Any]:
        """The ``--json`` description: vcenter, vms and the guest network."""
        description = {"vcenter": self.data["vcenter"], "vms": self.data["vms"]}
        if "network" in self.data:
            description["network"] = self.data["network"]
        return description

    def running(self) -> bool:
        """Whether the vCenter launcher runs and answers on its port."""
        if not system.alive(self.data.get("launcher_pid"), LAUNCHER_MARKER):
            return False
        listen = self.data["listen"]
        host, _, port = listen.rpartition(":")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=2):
            return True
        return False


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab makes network namespaces and a bridge: run it as root")


def up(config: LabConfig, http: bool = False, progress: Progress | None = None) -> tuple[LabState, bool]:
    """Start the lab, or report the one already running. Returns the state and whether
    this call started it. ``progress`` hears about each stage of a start."""
    say = progress or (lambda message: None)
    _require_root()
    existing = LabState.load()
    if existing is not None and existing.running():
        return existing, False
    down()
    say("building the vCenter launcher (cached after the first time)")
    binary = launcher_binary()
    directory = lab_dir()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    state = LabState({"bridge": config.bridge, "namespaces": [], "host_interfaces": [], "holders": [], "dhclients": []})
    try:
        _start(config, http, binary, directory, state, say)
    except BaseException:
        state.save()
        down()
        raise
    return state, True


def _start(config: LabConfig, http: bool, binary: Path, directory: Path, state: LabState, say: Progress) -> None:
    certificate = ensure_certificates(directory / "pki", config.host)
    network = dhcp.LabNetwork(config.bridge, config.subnet, config.gateway(), directory)
    _start_network(config, network, state, say)
    vms: list[dict[str, Any]] = []
    runtime_vms: list[dict[str, Any]] = []
    clients: dict[int, dhcp.GuestDhcp] = {}
    image: qemu_vm.ConsoleImage | None = None
    if any(vm.console == "qemu" for vm in config.vms):
        say("console VM: Debian's kernel and the busybox initramfs (cached after the first time)")
        image = qemu_vm.console_image()
    guest_indices = [index for index, vm in enumerate(config.vms) if vm.console != "qemu"]
    started: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def start_guest(index: int) -> None:
        public, launcher_entry, client = make_guest(config, index, config.vms[index], directory, state)
        pid = dhcp.start_dhclient(client)
        state.data["dhclients"].append(pid)
        clients[pid] = client
        started[index] = public, launcher_entry

    for index in guest_indices[:1]:  # alone: the first `ip netns add` sets up /run/netns
        say(f"guest {config.vms[index].name}: network namespace, files, accounts, DHCP client")
        start_guest(index)
    if rest := guest_indices[1:]:
        names = [config.vms[index].name for index in rest]
        say(
            f"{len(rest)} more guests ({', '.join(names) if len(names) < 6 else names[0] + ' … ' + names[-1]}), "
            f"{GUEST_WORKERS} at a time: network namespaces, files, accounts, DHCP clients"
        )
        _in_parallel(start_guest, rest)
    # Guests start in parallel; the state lists their holders in VM order all the same.
    state.data["holders"] = [started[index][1]["holder_pid"] for index in guest_indices]
    for index, vm in enumerate(config.vms):
        if vm.console == "qemu":
            assert image is not None
            say(f"console VM {vm.name}: tap interface on {config.bridge}")
            state.data["host_interfaces"].append(qemu_vm.tap_name(index))
            public, launcher_entry = qemu_vm.prepare(
                vm.name,
                vm.guest_id,
                str(config.guest_ip(index)),
                guest_mac(index),
                index,
                config.bridge,
                directory,
                image,
            )
        else:
            public, launcher_entry = started[index]
        vms.append(public)
        runtime_vms.append(launcher_entry)
    say(f"waiting for {len(clients)} guests to get their addresses by DHCP")
    dhcp.wait_for_leases(clients, network)
    password = config.password or generated_password()
    listen = f"{config.host}:{config.port}"
    runtime = directory / "launcher.json"
    runtime.touch(mode=0o600)
    runtime.write_text(
        json.dumps(
            {
                "listen": listen,
                "http": http,
                "cert_file": str(certificate.cert_file),
                "key_file": str(certificate.key_file),
                "username": config.username,
                "password": password,
                "boot_delay_s": config.boot_delay_s,
                "python": sys.executable,
                "vms": runtime_vms,
            }
        )
    )
    say(f"vCenter on {listen}: creating and powering on {len(config.vms)} VMs")
    ready = _start_launcher(binary, runtime, directory, state)
    scheme = "http" if http else "https"
    state.data.update(
        listen=listen,
        vcenter={
            "url": f"{scheme}://{listen}/sdk",
            "username": config.username,
            "password": password,
            "ca_file": None if http else str(certificate.ca_file),
            # SOAP requests served so far, by method (launcher/stats.go)
            "stats_url": f"{scheme}://{listen}/lab/stats",
        },
        vms=[{**vm, "moref": ready["vms"][vm["name"]]} for vm in vms],
        config=str(config.source.resolve()),
    )
    state.save()


def _in_parallel(work: Callable[[Item], None], items: Sequence[Item]) -> None:
    """Run ``work`` on each item, :data:`GUEST_WORKERS` at a time (it mostly waits for
    the commands it runs); the first failure cancels what has not started and is
    raised once the running ones end."""
    with concurrent.futures.ThreadPoolExecutor(GUEST_WORKERS, thread_name_prefix="lab-guest") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _start_network(config: LabConfig, network: dhcp.LabNetwork, state: LabState, say: Progress) -> None:
    """The bridge (gateway and metadata addresses) and dnsmasq serving DHCP on it."""
    dhcp.require_tools()
    say(f"bridge {config.bridge}: {network.gateway} and {dhcp.METADATA_ADDRESS}, DHCP by dnsmasq")
    system.make_bridge(config.bridge, f"{network.gateway}/{config.subnet.prefixlen}")
    dhcp.add_metadata_address(config.bridge)
    hosts = [dhcp.DhcpHost(guest_mac(i), str(config.guest_ip(i)), vm.name) for i, vm in enumerate(config.vms)]
    process = dhcp.spawn_dnsmasq(network, hosts, config.guest_ip(0))
    state.data["dnsmasq_pid"] = process.pid
    dhcp.wait_for_dnsmasq(process, network)
    state.data["network"] = network.public()


def make_guest(
    config: LabConfig, index: int, vm: VmSpec, directory: Path, state: LabState, clone_of: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], dhcp.GuestDhcp]:
    """One guest's namespace, veth pair, root directory and holder. Returns its public
    description, its entry in the launcher's configuration and its DHCP client. A
    Linux clone (``clone_of`` names its source VM) starts from a copy of the source
    guest's files."""
    netns, host_if = system.netns_name(vm.name), host_interface(index)
    state.data["namespaces"].append(netns)
    state.data["host_interfaces"].append(host_if)
    ip, mac = str(config.guest_ip(index)), guest_mac(index)
    system.make_guest_network(netns, host_if, config.bridge, mac)
    password = vm.guest_password or generated_password()
    layout = guests.GuestLayout(directory / "guests" / vm.name)
    linux, uid = vm.os == "linux", 0
    winrm: dict[str, str] | None = None
    cloudbase_init: dict[str, str | int] | None = None
    if linux and clone_of:
        guests.prepare_clone_root(guests.GuestLayout(layout.root.with_name(clone_of)), layout, vm.name, ip)
        uid = guests.login_uid(layout, vm.guest_username)
    elif linux:
        uid = guests.prepare_linux_root(layout, vm.name, ip, vm.guest_username, password)
    else:
        guests.prepare_windows_root(layout, vm.guest_username)
        tools = layout.root.with_name(vm.name + ".tools")
        winrm = wsman_files.prepare(tools, directory / "pki", vm.name, ip, vm.guest_username, password)
        if vm.cloudbase_init:
            cloudbase_init = firstboot.prepare(tools, winrm, vm.guest_username)
    dhcp.write_guest_dhcp_config(layout.dhcp_dir)
    holder = guests.start_holder(netns, layout, vm.name, linux)
    state.data["holders"].append(holder)
    public = {
        "name": vm.name,
        "os": vm.os,
        "guest_id": vm.guest_id,
        "ip": ip,
        "guest_username": vm.guest_username,
        "guest_password": password,
        "ssh_host_key": layout.ssh_host_public_key() if linux else None,
        "cloudbase_init": vm.cloudbase_init,
        "console": "pty",  # what PutUsbScanCodes types into
        "rdp_port": None if linux else RDP_PORT,  # a Windows guest's console is also xrdp's
        "rdp_shadow_port": None if linux else RDP_SHADOW_PORT,  # and FreeRDP's shadow server's
        "clone_of": clone_of,
    }
    runtime = {
        **{key: public[key] for key in ("name", "os", "guest_id", "ip", "guest_username", "guest_password")},
        "mac": mac,
        "hostname": vm.name,
        "holder_pid": holder,
        "root": str(layout.root),
        "sshd_config": str(layout.sshd_config) if linux else "",
        "console_log": str(layout.console_log),
        "guest_uid": uid,
        "wsman": winrm,
        "cloudbase_init": cloudbase_init,
        "clone_of": clone_of or "",
        # A Windows guest's console: xrdp at its address (bootstrap/lab/xrdp.py), and
        # FreeRDP's shadow server beside it (bootstrap/lab/rdp_shadow.py).
        "rdp": None
        if linux
        else {
            "dir": str(layout.root.with_name(vm.name + ".rdp")),
            "port": RDP_PORT,
            "log": str(layout.root.with_name(vm.name + ".rdp.log")),
            "shadow_dir": str(layout.root.with_name(vm.name + ".rdp-shadow")),
            "shadow_port": RDP_SHADOW_PORT,
            "shadow_log": str(layout.root.with_name(vm.name + ".rdp-shadow.log")),
        },
    }
    client = dhcp.GuestDhcp(
        vm.name, netns, holder, ip, layout.dhclient_leases, layout.dhclient_pid, layout.dhclient_log
    )
    return public, runtime, client


def _start_launcher(
    binary: Path, runtime: Path, directory: Path, state: LabState, *, adopt: bool = False
) -> dict[str, Any]:
    out, log = directory / "launcher.out", directory / "launcher.log"
    out.unlink(missing_ok=True)
    with out.open("wb") as stdout, log.open("ab") as stderr:
        process = subprocess.Popen(
            [str(binary), "--config", str(runtime), *(["--adopt-guests"] if adopt else [])],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            cwd=directory,
        )
    state.data["launcher_pid"] = process.pid
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = out.read_text().partition("\n")
        if line[1]:
            ready: dict[str, Any] = json.loads(line[0])
            return ready
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise LabError("the lab's vCenter exited while starting:\n" + "\n".join(tail))
        time.sleep(0.1)
    raise LabError(f"the lab's vCenter was not ready within {READY_TIMEOUT_S:g}s; see {log}")


def restart_vcenter(down_s: float = 0.0, progress: Progress | None = None) -> LabState:
    """Stop the lab's vCenter, keep it down ``down_s`` seconds, start it again.

    Like a vCenter service restart: sessions, property collector filters, tasks and
    transfer URLs are lost; the guests run on (services, programs started through guest
    operations, their exit codes) and the VMs come back in the power state they had,
    with the same managed object ids, which this checks. Only the guests' consoles
    start again."""
    say = progress or (lambda message: None)
    _require_root()
    state = status()
    if state is None:
        raise LabError("the lab is not running (beachhead lab up)")
    directory = lab_dir()
    runtime = directory / "launcher.json"
    say(f"stopping vCenter (pid {state.data['launcher_pid']}); the guests keep running")
    system.stop_process(state.data["launcher_pid"], LAUNCHER_MARKER, first=signal.SIGUSR1)
    time.sleep(max(down_s, 0.0))
    say("starting vCenter again")
    try:
        ready = _start_launcher(launcher_binary(), runtime, directory, state, adopt=True)
    finally:
        state.save()
    before = {vm["name"]: vm["moref"] for vm in state.data["vms"] if not vm.get("clone_of")}
    mine = {name: moref for name, moref in ready["vms"].items() if name in before}
    if mine != before:
        raise LabError(f"the restarted vCenter gave the VMs other ids: {mine} instead of {before}")
    # Clones are created again after the lab's own VMs, so their ids may change.
    for vm in state.data["vms"]:
        vm["moref"] = ready["vms"].get(vm["name"], vm["moref"])
    state.save()
    return state


def status() -> LabState | None:
    """The running lab's state, or None when it is not running."""
    state = LabState.load()
    return state if state is not None and state.running() else None


def down() -> list[str]:
    """Stop every process and remove every namespace and interface the lab made,
    leftovers of an earlier lab included. Returns what it removed."""
    _require_root()
    removed: list[str] = []
    state = LabState.load()
    data = state.data if state else {}
    if system.alive(data.get("launcher_pid"), LAUNCHER_MARKER):
        system.stop_process(data["launcher_pid"], LAUNCHER_MARKER)
        removed.append(f"vCenter launcher (pid {data['launcher_pid']})")
    removed += qemu_vm.stop_leftovers(lab_dir() / "guests")  # a crashed launcher's console VMs
    system.stop_processes(data.get("dhclients", []), dhcp.DHCLIENT_MARKER, timeout=2)
    system.stop_processes(data.get("holders", []), guests.HOLDER_MARKER, timeout=2)
    namespaces = sorted(set(data.get("namespaces", [])) | set(system.lab_namespaces()))
    _in_parallel(system.delete_namespace, namespaces)
    removed += [f"namespace {netns}" for netns in namespaces]
    for name in data.get("host_interfaces", []):
        if system.link_exists(name):
            system.delete_link(name)
            removed.append(f"interface {name}")
    removed += _stop_dnsmasq(data.get("dnsmasq_pid"))
    for bridge in sorted({data.get("bridge") or DEFAULT_BRIDGE, DEFAULT_BRIDGE}):
        if dhcp.remove_metadata_address(bridge):
            removed.append(f"address {dhcp.METADATA_ADDRESS} on {bridge}")
        if system.link_exists(bridge):
            system.delete_link(bridge)
            removed.append(f"bridge {bridge}")
    directory = lab_dir()
    shutil.rmtree(dhcp.hosts_dir(directory), ignore_errors=True)
    if directory.is_dir():
        # Keep the CA across labs so clients that trust it keep working.
        for child in directory.iterdir():
            if child.name != "pki":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return removed


def _stop_dnsmasq(recorded: int | None) -> list[str]:
    """Stop the lab's dnsmasq: the one the state records and, after a crash, the one
    its pid file names."""
    directory = lab_dir()
    marker = dhcp.dnsmasq_marker(directory)
    stopped = []
    for pid in sorted({pid for pid in (recorded, dhcp.leftover_dnsmasq(directory)) if pid}):
        if system.alive(pid, marker):
            system.stop_process(pid, marker)
            stopped.append(f"dnsmasq (pid {pid})")
    return stopped
