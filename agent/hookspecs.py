"""The pluggy hook specifications: what a Beachhead plugin can provide.

A plugin is a module (or object) with functions marked by :data:`hookimpl`, found
through the ``beachhead.plugins`` entry-point group (``beachhead.channels``, the group's
older name, is read too). The built-in channels, step kinds and commands register
exactly as a third party's do. Each hook hands the plugin a ``register`` callable (or
the command group) instead of asking it to answer for names it may not know, as tox's
``tox_register_tox_env`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from beachhead.agent.channel import Channel
    from beachhead.agent.stepkinds import ConditionKind, StepKind

PROJECT = "beachhead"
ENTRY_POINT_GROUPS = ("beachhead.plugins", "beachhead.channels")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def beachhead_register_channels(register: Callable[[Channel], None]) -> None:
    """Register the channels this plugin provides (:class:`beachhead.agent.channel.Channel`):
    each with its taxonomy entry, its live prerequisites and how it connects."""


@hookspec
def beachhead_register_steps(register: Callable[[StepKind | ConditionKind], None]) -> None:
    """Register plan step kinds (:class:`beachhead.agent.stepkinds.StepKind`: schema,
    execution, description, journal operations and how each is reverted) and wait
    conditions (:class:`beachhead.agent.stepkinds.ConditionKind`)."""


@hookspec
def beachhead_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``beachhead`` command line."""
