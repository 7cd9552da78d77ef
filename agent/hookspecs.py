"""The pluggy hook specifications every channel plugin implements.

A plugin is a module (or object) with functions marked by :data:`hookimpl`. Built-in
channels and third-party ones register the same way: through the ``beachhead.channels``
entry-point group. A plugin answers only for the channels it declared and returns None
for the others, so the first non-None answer wins.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pluggy

from beachhead.agent.channel import ChannelInfo, ChannelSession
from beachhead.agent.targets import Target

PROJECT = "beachhead"
ENTRY_POINT_GROUP = "beachhead.channels"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def beachhead_channels() -> list[ChannelInfo]:  # type: ignore[empty-body]
    """Declare the channels this plugin provides: their taxonomy entries."""


@hookspec(firstresult=True)
def beachhead_unmet_prerequisites(channel: str, target: Target) -> list[str] | None:
    """For a channel of this plugin, list the prerequisites that do not hold now for
    ``target`` (empty when it can be used); None for channels of other plugins."""


@hookspec(firstresult=True)
def beachhead_connect(
    channel: str, target: Target, connect_timeout: float
) -> Coroutine[Any, Any, ChannelSession] | None:
    """For a channel of this plugin, return a coroutine that opens a session on
    ``target`` (raising :class:`beachhead.agent.errors.ChannelUnavailable` when it cannot); None
    for channels of other plugins."""
