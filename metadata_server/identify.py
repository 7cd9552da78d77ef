"""Which instance a request comes from: the guest's address, mapped to a published
record directly, through a dnsmasq lease file (address -> MAC), or through a lookup
(vSphere: the VM with that guest address and its NICs' MACs).

A guest never gets another instance's data: when the record names a MAC and a lease or
lookup says the address belongs to another MAC, the guest is not recognised. A
forwarded-for header counts only when the connection comes from a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from beachhead.metadata_server.errors import BadRequest
from beachhead.metadata_server.records import Instance
from beachhead.metadata_server.store import Store

FORWARDED_FOR = "X-Forwarded-For"
MacLookup = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True)
class Requester:
    """Where a request comes from: the guest's address and the connection's peer."""

    address: str
    peer: str
    forwarded: bool


class LeaseFile:
    """A dnsmasq lease file (``EXPIRY MAC IP NAME CLIENT-ID`` per line), re-read when it
    changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._mac_of: dict[str, str] = {}

    def mac_of(self, ip: str) -> str | None:
        """The MAC that holds ``ip``, per the lease file (None when unknown)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._mac_of = self._read()
            self._stamp = stamp
        return self._mac_of.get(ip)

    def _read(self) -> dict[str, str]:
        leases: dict[str, str] = {}
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except OSError:
            return leases
        for line in lines:
            fields = line.split()
            if len(fields) >= 3 and ":" in fields[1]:
                leases[fields[2]] = fields[1].lower()
        return leases


class Identifier:
    """Maps requests to instances."""

    def __init__(
        self,
        store: Store,
        *,
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        leases: LeaseFile | None = None,
        lookup: MacLookup | None = None,
    ) -> None:
        self.store = store
        self.trusted_proxies = tuple(trusted_proxies)
        self.leases = leases
        self.lookup = lookup

    def requester(self, peer: str, forwarded_for: str | None) -> Requester:
        """The guest's address: the peer's, or the last hop a trusted proxy forwarded."""
        peer = _plain(peer)
        if forwarded_for is None or not in_networks(peer, self.trusted_proxies):
            return Requester(peer, peer, False)
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        try:
            address = str(ipaddress.ip_address(hops[-1]))
        except (ValueError, IndexError):
            raise BadRequest(FORWARDED_FOR, "not an address") from None
        return Requester(address, peer, True)

    async def instance(self, requester: Requester) -> Instance | None:
        """The requester's instance, or None. On a miss the store looks in its database
        once (another server may have just published the instance) and the index is
        asked again."""
        address = requester.address
        macs: list[str] | None = None  # the lease file's or vCenter's answer, asked once
        for retry in (False, True):
            found = self.store.by_ip(address)
            if found is not None:
                # Only a record that names a MAC needs the lease or vCenter asked (a hot path).
                if found.mac:
                    macs = await self._macs_of(address) if macs is None else macs
                    if macs and found.mac not in macs:
                        return None  # the address now belongs to another machine
                return found
            macs = await self._macs_of(address) if macs is None else macs
            for mac in macs:
                found = self.store.by_mac(mac)
                if found is not None and found.ip in (None, address):
                    return found
            if retry or not await self.store.look_up(address, macs):
                return None
        return None

    async def _macs_of(self, address: str) -> list[str]:
        if self.leases is not None and (mac := self.leases.mac_of(address)):
            return [mac]
        if self.lookup is not None:
            return [mac.lower() for mac in await self.lookup(address)]
        return []


def in_networks(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``address`` (an IP address as text) is in one of ``networks``."""
    if not networks:
        return False
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


def _plain(address: str) -> str:
    """``::ffff:10.0.0.5`` as ``10.0.0.5``; anything else unchanged. The socket layer
    already gives addresses in canonical form, so a prefix check does (it runs on every
    request)."""
    if address.startswith("::ffff:") and "." in address:
        return address.removeprefix("::ffff:")
    return address
