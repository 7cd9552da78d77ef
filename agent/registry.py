"""Loads the plugins and holds what they registered: channels, step kinds, wait
conditions, journal operations and commands."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

from beachhead.agent import hookspecs
from beachhead.agent.channel import Capability, Channel, ChannelInfo
from beachhead.agent.errors import BeachheadError
from beachhead.agent.stepkinds import ConditionKind, Operation, StepKind
from beachhead.agent.targets import OsFamily, Target

if TYPE_CHECKING:
    import click


class PluginError(BeachheadError):
    """Plugins declared something inconsistent (a name registered twice)."""


class Plugins:
    """Everything the installed plugins registered, checked for clashes."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self.channels: dict[str, Channel] = {}
        self.steps: dict[str, StepKind] = {}
        self.conditions: dict[str, ConditionKind] = {}
        self.operations: dict[str, Operation] = {}
        manager.hook.beachhead_register_channels(register=self._add_channel)
        manager.hook.beachhead_register_steps(register=self._add_kind)

    def _add_channel(self, channel: Channel) -> None:
        name = channel.info.name
        if name in self.channels:
            raise PluginError(f"two plugins register the channel {name!r}")
        self.channels[name] = channel

    def _add_kind(self, kind: StepKind | ConditionKind) -> None:
        if isinstance(kind, ConditionKind):
            for name in kind.names:
                if name in self.conditions:
                    raise PluginError(f"two plugins register the wait condition {name!r}")
                self.conditions[name] = kind
            return
        if not isinstance(kind, StepKind):
            raise PluginError(f"not a step kind or wait condition: {kind!r}")
        if kind.name in self.steps:
            raise PluginError(f"two plugins register the step kind {kind.name!r}")
        self.steps[kind.name] = kind
        for operation in kind.operations:
            known = self.operations.setdefault(operation.name, operation)
            if known is not operation:
                raise PluginError(f"two step kinds define the journal operation {operation.name!r}")

    # -- channels -----------------------------------------------------------------------------
    @property
    def infos(self) -> dict[str, ChannelInfo]:
        """Every channel's taxonomy entry, by name."""
        return {name: channel.info for name, channel in self.channels.items()}

    def ordered(self, os_family: OsFamily | None = None, pinned: Iterable[str] = ()) -> list[Channel]:
        """Channels in the order a step tries them: the plan's order when it pins some,
        otherwise by the preference declared for ``os_family`` (every channel, by its
        highest preference, when no family is given)."""
        pinned = list(pinned)
        if pinned:
            return [self.channels[name] for name in pinned]

        def rank(channel: Channel) -> tuple[int, str]:
            preference = channel.info.preference
            score = preference.get(os_family) if os_family is not None else max(preference.values(), default=None)
            return (-(score if score is not None else -1), channel.info.name)

        return sorted(self.channels.values(), key=rank)

    def candidates(
        self, capability: Capability, target: Target, os_family: OsFamily, pinned: Iterable[str] = ()
    ) -> list[Channel]:
        """Channels that have ``capability``, reach this kind of target and serve its OS,
        in the order to try them."""
        return [
            channel
            for channel in self.ordered(os_family, pinned)
            if capability in channel.info.capabilities
            and target.scheme in channel.info.target_schemes
            and os_family in channel.info.os_families
        ]

    # -- commands -------------------------------------------------------------------------------
    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its subcommands to ``cli``."""
        self.manager.hook.beachhead_add_commands(cli=cli)


def plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs and every plugin of the entry-point groups."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if load_entry_points:
        for group in hookspecs.ENTRY_POINT_GROUPS:
            manager.load_setuptools_entrypoints(group)
    return manager


@functools.cache
def default_plugins() -> Plugins:
    """What every installed plugin registered, loaded once per process."""
    return Plugins(plugin_manager())
