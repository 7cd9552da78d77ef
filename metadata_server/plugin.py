"""Adds ``beachhead metadata-server`` and ``beachhead metadata`` to the command line, as
a plugin (the core CLI does not import the server)."""

from __future__ import annotations

import click

from beachhead.agent.hookspecs import hookimpl


@hookimpl
def beachhead_add_commands(cli: click.Group) -> None:
    """Add the metadata server and its admin client."""
    from beachhead.metadata_server.cli import metadata, metadata_server

    cli.add_command(metadata_server)
    cli.add_command(metadata)
