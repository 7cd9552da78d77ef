"""``beachhead lab``: bring the local vSphere lab up, report on it, take it down."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from beachhead.agent.exits import errors_exit


def _print(description: dict[str, Any], json_output: bool, headline: str) -> None:
    if json_output:
        click.echo(json.dumps(description))
        return
    vcenter = description["vcenter"]
    click.echo(headline)
    click.echo(f"vCenter  {vcenter['url']}  user {vcenter['username']}  CA {vcenter['ca_file'] or '(plain http)'}")
    for vm in description["vms"]:
        login = vm["guest_username"] or f"({vm.get('console')} console, no login)"
        click.echo(f"  {vm['name']:<12} {vm['os']:<8} {vm['guest_id']:<26} {vm['ip']:<15} {login}")
    if network := description.get("network"):
        click.echo(
            f"Network  {network['bridge']} {network['subnet']}  gateway {network['gateway']}  "
            f"metadata {network['metadata_address']}  DHCP leases {network['dhcp_leases']}"
        )
    click.echo("Passwords: beachhead lab status --json")


@click.group()
def lab() -> None:
    """The local vSphere lab: govmomi's simulator as vCenter (https on loopback) with
    Linux guests (network namespaces running sshd, addressed by the lab's DHCP server)
    and a Windows stand-in.

    Needs root. State lives in /run/beachhead-lab ($BEACHHEAD_LAB_DIR)."""


@lab.command("up")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Lab YAML (VMs, network, vCenter port) [default: bootstrap/lab/default.yaml].",
)
@click.option(
    "--vms",
    "fleet",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also bring up this many Linux VMs (fleet-0001, fleet-0002, ...: namespace guests "
    "with sshd, root login, DHCP addresses after the configured VMs'), beside those of the YAML.",
)
@click.option("--http", is_flag=True, help="Serve vCenter over plain http instead of https.")
@click.option("--json", "json_output", is_flag=True, help="Print the lab as one JSON object.")
def lab_up(config_path: Path | None, fleet: int, http: bool, json_output: bool) -> None:
    """Start the lab; when it already runs, report it. The first start builds the
    vCenter launcher (cached afterwards). `--vms 500` adds a fleet of 500 Linux VMs
    (the default subnet, a /22, has room for about 1,000)."""
    from beachhead.bootstrap.lab.config import load_config, with_fleet
    from beachhead.bootstrap.lab.lab import up

    with errors_exit():
        config = with_fleet(load_config(config_path), fleet)
        state, started = up(config, http=http, progress=None if json_output else _progress)
    if not started and state.data.get("config") != str(config.source.resolve()):
        click.echo(
            f"beachhead: note: the running lab was started from {state.data.get('config')}; "
            f"run `beachhead lab down` first to start it from {config.source}",
            err=True,
        )
    elif not started and len(config.vms) != sum(not vm.get("clone_of") for vm in state.data["vms"]):
        click.echo(
            f"beachhead: note: the running lab has {sum(not vm.get('clone_of') for vm in state.data['vms'])} VMs, "
            f"not {len(config.vms)}; run `beachhead lab down` first to start it with --vms {fleet}",
            err=True,
        )
    _print(state.public(), json_output, "lab started" if started else "lab already running")


def _progress(message: str) -> None:
    click.echo(f"lab: {message}", err=True)


@lab.command("status")
@click.option("--json", "json_output", is_flag=True, help="Print the lab as one JSON object.")
def lab_status(json_output: bool) -> None:
    """Report the running lab; exit 1 when it is not running."""
    from beachhead.bootstrap.lab.lab import status

    with errors_exit():
        state = status()
    if state is None:
        if json_output:
            click.echo(json.dumps({"running": False}))
        click.echo("the lab is not running (beachhead lab up)", err=True)
        sys.exit(1)
    _print(state.public(), json_output, "lab running")


@lab.command("restart-vcenter")
@click.option(
    "--down-seconds",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="How long vCenter stays down before it starts again.",
)
def lab_restart_vcenter(down_seconds: float) -> None:
    """Restart the lab's vCenter as a vCenter service restart would: every session and
    property collector filter is lost, the VMs come back powered on with the same ids.
    For testing clients that must survive it."""
    from beachhead.bootstrap.lab.lab import restart_vcenter

    with errors_exit():
        restart_vcenter(down_seconds, progress=_progress)
    click.echo("vCenter restarted")


@lab.command("down")
def lab_down() -> None:
    """Stop every lab process and remove every namespace and interface it made."""
    from beachhead.bootstrap.lab.lab import down

    with errors_exit():
        removed = down()
    for item in removed:
        click.echo(f"removed {item}")
    click.echo("lab down")
