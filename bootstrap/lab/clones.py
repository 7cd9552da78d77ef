"""Guests for clones: what the lab's vCenter runs when ``CloneVM_Task`` or
``Destroy_Task`` of a clone completes (``bootstrap/lab/launcher/clones.go``).

    python -m beachhead.bootstrap.lab.clones add --source lin-01 --name web-01 --moref vm-42
    python -m beachhead.bootstrap.lab.clones remove --name web-01

``add`` gives the clone a guest as ``lab up`` gives the lab's own VMs one (a network
namespace on the bridge, a holder, a DHCP client), from a copy of the source guest's
files, with the next free index (so its own MAC and address, which dnsmasq learns from
a file in its hosts directory) and its own SSH host key. It records the guest in the
lab's state (``lab status`` lists it with ``clone_of``; ``lab down`` removes it) and in
the launcher's configuration (a vCenter restart creates it again), then prints the
launcher's entry for it as JSON. ``remove`` undoes all of that. Both run under a lock
on the lab's state, so clones made at the same time get different indices.

Indices, and with them MACs and addresses, are never reused while the lab runs: a
removed clone's lease stays in dnsmasq's lease file.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import ipaddress
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from beachhead.bootstrap.lab import dhcp, guests, system
from beachhead.bootstrap.lab.config import VM_NAME, VmSpec, load_config
from beachhead.bootstrap.lab.lab import LabState, guest_mac, host_interface, lab_dir, make_guest
from beachhead.bootstrap.lab.system import LabError


@contextmanager
def _locked_state() -> Iterator[LabState]:
    """The lab's state under an exclusive lock, written back however the block ends
    (so that ``lab down`` can undo whatever a failed ``add`` left)."""
    with (lab_dir() / "state.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = LabState.load()
        if state is None:
            raise LabError("the lab is not running (beachhead lab up)")
        try:
            yield state
        finally:
            state.save()


def _network(state: LabState) -> dhcp.LabNetwork:
    network = state.data["network"]
    return dhcp.LabNetwork(
        state.data["bridge"],
        ipaddress.IPv4Network(network["subnet"]),
        ipaddress.IPv4Address(network["gateway"]),
        lab_dir(),
    )


def _launcher_config(update: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Apply ``update`` to the VM list of the launcher's configuration (0600)."""
    path = lab_dir() / "launcher.json"
    runtime = json.loads(path.read_text())
    runtime["vms"] = update(runtime["vms"])
    partial = path.with_suffix(".part")
    partial.touch(mode=0o600)
    partial.write_text(json.dumps(runtime))
    partial.replace(path)


def add(source: str, name: str, moref: str) -> dict[str, Any]:
    """Make the guest of clone ``name`` of lab VM ``source``; return the launcher's entry."""
    if not VM_NAME.match(name):
        raise LabError(f"clone name {name!r}: the lab's VM names match {VM_NAME.pattern}")
    with _locked_state() as state:
        vms = state.data["vms"]
        parent = next((vm for vm in vms if vm["name"] == source), None)
        if parent is None:
            raise LabError(f"{source} is not a lab VM")
        if parent.get("console") == "qemu" or parent["os"] != "linux":
            raise LabError(f"{source}: the lab gives guests to clones of Linux namespace guests only")
        if any(vm["name"] == name for vm in vms):
            raise LabError(f"a lab VM named {name!r} exists already: give the clone a name of its own")
        network = _network(state)
        config = dataclasses.replace(
            load_config(Path(state.data["config"])), bridge=network.bridge, subnet=network.subnet
        )
        index = state.data.get("next_index", len(vms))
        if config.guest_ip(index) >= config.subnet.broadcast_address:
            raise LabError(f"no address left in {config.subnet} for another clone; bring the lab down and up")
        state.data["next_index"] = index + 1
        spec = VmSpec(
            name=name,
            guest_id=parent["guest_id"],
            os="linux",
            guest_username=parent["guest_username"],
            guest_password=parent["guest_password"],
        )
        record: dict[str, Any] = {"netns": system.netns_name(name), "host_interface": host_interface(index)}
        state.data.setdefault("clones", {})[name] = record
        try:
            public, runtime, client = make_guest(config, index, spec, lab_dir(), state, clone_of=source)
            record["holder"] = runtime["holder_pid"]
            dhcp.add_host(network, dhcp.DhcpHost(guest_mac(index), public["ip"], name))
            record["dhclient"] = dhcp.start_dhclient(client)
            state.data["dhclients"].append(record["dhclient"])
            dhcp.wait_for_leases({record["dhclient"]: client}, network)
        except BaseException:
            _remove(state, name)
            raise
        vms.append({**public, "moref": moref})
        _launcher_config(lambda entries: [*entries, runtime])
        return runtime


def remove(name: str) -> None:
    """Take clone ``name``'s guest away: its processes, namespace, files and records."""
    with _locked_state() as state:
        if name not in state.data.get("clones", {}):
            raise LabError(f"{name} is not a clone in the lab")
        _remove(state, name)


def _remove(state: LabState, name: str) -> None:
    data = state.data
    record = data["clones"].pop(name)
    system.stop_process(record.get("dhclient"), dhcp.DHCLIENT_MARKER, timeout=2)
    system.stop_process(record.get("holder"), guests.HOLDER_MARKER, timeout=2)
    if record["netns"] in system.lab_namespaces():
        system.delete_namespace(record["netns"])  # the veth pair goes with it
    if system.link_exists(record["host_interface"]):
        system.delete_link(record["host_interface"])
    for key, field in (
        ("dhclients", "dhclient"),
        ("holders", "holder"),
        ("namespaces", "netns"),
        ("host_interfaces", "host_interface"),
    ):
        data[key] = [item for item in data[key] if item != record.get(field)]
    data["vms"] = [vm for vm in data["vms"] if vm["name"] != name]
    dhcp.remove_host(_network(state), name)
    guests_dir = lab_dir() / "guests"
    for leftover in [guests_dir / name, *guests_dir.glob(f"{name}.*")]:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink(missing_ok=True)
    _launcher_config(lambda entries: [entry for entry in entries if entry["name"] != name])


def main(argv: list[str] | None = None) -> int:
    """The launcher's entry point: ``add`` prints the clone's launcher entry as JSON."""
    parser = argparse.ArgumentParser(prog="python -m beachhead.bootstrap.lab.clones", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="make a clone's guest")
    adding.add_argument("--source", required=True, help="the lab VM cloned")
    adding.add_argument("--name", required=True, help="the clone's name")
    adding.add_argument("--moref", required=True, help="the clone's managed object id")
    removing = commands.add_parser("remove", help="remove a clone's guest")
    removing.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            print(json.dumps(add(args.source, args.name, args.moref)))
        else:
            remove(args.name)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
