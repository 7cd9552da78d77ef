"""Loads channel plugins and picks the channel for each step."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import pluggy

from beachhead.agent import hookspecs
from beachhead.agent.channel import ChannelInfo, ChannelSession
from beachhead.agent.errors import BeachheadError, ChannelUnavailable
from beachhead.agent.plans import Capability
from beachhead.agent.targets import OsFamily, Target


class PluginError(BeachheadError):
    """A plugin declared something inconsistent (a duplicate channel name)."""


@dataclass(frozen=True)
class Candidate:
    """A channel that could serve a step, or the reason it cannot."""

    info: ChannelInfo
    unmet: tuple[str, ...]

    @property
    def usable(self) -> bool:
        """True when every prerequisite holds."""
        return not self.unmet


class ChannelRegistry:
    """The channels every registered plugin declared, and how to reach them."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self.channels: dict[str, ChannelInfo] = {}
        for declared in manager.hook.beachhead_channels():
            for info in declared:
                if info.name in self.channels:
                    raise PluginError(f"two plugins declare the channel {info.name!r}")
                self.channels[info.name] = info

    def ordered(self, pinned: Iterable[str] = ()) -> list[ChannelInfo]:
        """Channels in the order a step tries them: the plan's order when it pins some,
        otherwise by declared preference."""
        pinned = list(pinned)
        if pinned:
            return [self.channels[name] for name in pinned]
        return sorted(self.channels.values(), key=lambda info: (-info.preference, info.name))

    def candidates(
        self, capability: Capability, target: Target, os_family: OsFamily | None, pinned: Iterable[str] = ()
    ) -> list[Candidate]:
        """Channels that have ``capability``, reach this kind of target and support its OS,
        in the order to try them, each with the prerequisites that do not hold now."""
        result = []
        for info in self.ordered(pinned):
            if capability not in info.capabilities or target.scheme not in info.target_schemes:
                continue
            if os_family is not None and os_family not in info.os_families:
                continue
            unmet = self.manager.hook.beachhead_unmet_prerequisites(channel=info.name, target=target)
            result.append(Candidate(info, tuple(unmet or ())))
        return result

    async def connect(self, channel: str, target: Target, connect_timeout: float) -> ChannelSession:
        """Open a session on ``target`` through ``channel``."""
        opener = self.manager.hook.beachhead_connect(channel=channel, target=target, connect_timeout=connect_timeout)
        if opener is None:
            raise ChannelUnavailable(channel, target.name, "no plugin opens this channel")
        session: ChannelSession = await opener
        return session


def plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs and every plugin of the entry-point group."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if load_entry_points:
        manager.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
    return manager


@functools.cache
def default_registry() -> ChannelRegistry:
    """The registry of every installed channel plugin, loaded once per process."""
    return ChannelRegistry(plugin_manager())
