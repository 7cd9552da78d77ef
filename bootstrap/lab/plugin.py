"""Adds ``beachhead lab`` to the command line, as a plugin (the core CLI does not import
the lab); the lab's modules load only when the command runs or is listed."""

from __future__ import annotations

import click

from beachhead.agent.hookspecs import hookimpl


@hookimpl
def beachhead_add_commands(cli: click.Group) -> None:
    """Add ``beachhead lab``."""
    from beachhead.bootstrap.lab.cli import lab

    cli.add_command(lab)
