"""Recognising guests through vCenter: the VMs whose VMware Tools report a guest
address (``SearchIndex.FindAllByIp``), and their network adapters' MACs, which the
server matches against instances published by MAC.

Answers are cached briefly, so a guest crawling a metadata tree costs one vCenter
lookup, and an unknown address is asked about again only after a short pause (its
tools may not have reported the address yet at first boot).
"""

from __future__ import annotations

import time

import structlog

from beachhead.agent.targets import Target
from beachhead.agent.vsphere.connection import VCenter, VCenterPool
from beachhead.agent.vsphere.vmconfig import nic_macs

log = structlog.get_logger("beachhead.metadata")
FOUND_TTL_S = 60.0
NOT_FOUND_TTL_S = 2.0


def _macs_at(vcenter: VCenter, address: str) -> list[str]:
    found = vcenter.content.searchIndex.FindAllByIp(ip=address, vmSearch=True) or ()
    return [mac for vm in found for mac in nic_macs(vm)]


class VSphereLookup:
    """A :data:`beachhead.metadata_server.identify.MacLookup` backed by one vCenter."""

    def __init__(self, pool: VCenterPool, target: Target, connect_timeout: float = 30.0) -> None:
        self.pool = pool
        self.target = target
        self.connect_timeout = connect_timeout
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def __call__(self, address: str) -> list[str]:
        """The MACs of the VMs vCenter reports at ``address``."""
        now = time.monotonic()
        cached = self._cache.get(address)
        if cached is not None and cached[0] > now:
            return cached[1]
        vcenter = await self.pool.get(self.target, self.connect_timeout)
        try:
            macs = await vcenter.call(_macs_at, vcenter, address)
        except Exception as exc:  # vCenter trouble must not turn into a 5xx: the guest is just unknown
            log.warning("metadata.vsphere_lookup_failed", address=address, error=str(exc))
            macs = []
        self._cache[address] = (now + (FOUND_TTL_S if macs else NOT_FOUND_TTL_S), macs)
        return macs
