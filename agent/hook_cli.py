"""``beachhead customize``: the command a provisioning tool runs right after it created a VM.

Terraform's ``local-exec`` provisioner and Packer's ``shell-local`` call it with the VM's
managed object id (Terraform's ``moid``), its uuid or its name, and a plan; the vCenter
comes from the variables the Terraform vSphere provider reads (``VSPHERE_SERVER``,
``VSPHERE_USER``, ``VSPHERE_PASSWORD``, ``VSPHERE_ALLOW_UNVERIFIED_SSL``) unless options
name it. It builds the VM's vsphere:// target and runs the plan exactly as ``beachhead
run`` does, with the same output and exit status.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, urlencode

import click

from beachhead.agent.errors import InputError
from beachhead.agent.exits import errors_exit
from beachhead.agent.targets import TRUE_WORDS

ENV_SERVER = "VSPHERE_SERVER"
ENV_USER = "VSPHERE_USER"
ENV_PASSWORD = "VSPHERE_PASSWORD"  # noqa: S105 (a variable's name, not a password)
ENV_INSECURE = "VSPHERE_ALLOW_UNVERIFIED_SSL"


def vm_target_uri(
    vm: str,
    *,
    vcenter: str,
    user: str,
    password_env: str,
    guest_user: str | None,
    guest_password_env: str | None,
    insecure: bool,
    parameters: tuple[str, ...],
) -> str:
    """The vsphere:// URI of ``vm`` on ``vcenter`` with the given routes; each of
    ``parameters`` is a further ``KEY=VALUE`` URI parameter (``ssh_key=PATH``, ...)."""
    query: dict[str, str] = {"password_env": password_env}
    if guest_user:
        query["guest_user"] = guest_user
    if guest_password_env:
        query["guest_password_env"] = guest_password_env
    if insecure:
        query["insecure"] = "1"
    for parameter in parameters:
        key, sep, value = parameter.partition("=")
        if not sep or not key:
            raise InputError("--param", parameter, "expected KEY=VALUE (a vsphere:// target parameter)")
        if key in query:
            raise InputError("--param", key, "given twice (or also set by an option)")
        query[key] = value
    return f"vsphere://{quote(user, safe='')}@{vcenter}/{quote(vm, safe='')}?{urlencode(query)}"


@click.command("customize")
@click.argument("plan", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vm", "vm", required=True, help="The VM: managed object id (vm-42), instance or BIOS uuid, or name.")
@click.option(
    "--vcenter",
    envvar=ENV_SERVER,
    metavar="HOST[:PORT]",
    required=True,
    help=f"The vCenter [default: ${ENV_SERVER}].",
)
@click.option("--user", envvar=ENV_USER, required=True, help=f"The vCenter user [default: ${ENV_USER}].")
@click.option(
    "--password-env",
    metavar="VAR",
    default=ENV_PASSWORD,
    show_default=True,
    help="The environment variable holding the vCenter password.",
)
@click.option("--guest-user", default=None, help="The guest-operations login (SSH and WinRM chain from it).")
@click.option("--guest-password-env", metavar="VAR", default=None, help="The variable holding its password.")
@click.option(
    "--insecure/--verify",
    default=None,
    help=f"Skip the vCenter certificate check [default: ${ENV_INSECURE}, else verify].",
)
@click.option(
    "--param",
    "parameters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other vsphere:// target parameter (ssh_key=PATH, ca_file=PATH, os=linux, console=usb, ...); repeatable.",
)
@click.option("--json", "json_output", is_flag=True, help="Print the target's result as one JSON line.")
@click.pass_context
def customize_command(
    ctx: click.Context,
    plan: Path,
    vm: str,
    vcenter: str,
    user: str,
    password_env: str,
    guest_user: str | None,
    guest_password_env: str | None,
    insecure: bool | None,
    parameters: tuple[str, ...],
    json_output: bool,
) -> None:
    """Run PLAN on one VM right after a provisioning tool created it.

    \b
    Terraform (vsphere_virtual_machine):
      provisioner "local-exec" {
        command = "beachhead customize plan.yaml --vm ${self.moid} --guest-user root --guest-password-env GUEST_PW"
      }
    Packer (shell-local provisioner):
      provisioner "shell-local" {
        inline = ["beachhead customize plan.yaml --vm ${var.vm_name} --guest-user root --guest-password-env GUEST_PW"]
      }

    The vCenter is $VSPHERE_SERVER and $VSPHERE_USER with the password in
    $VSPHERE_PASSWORD, as for Terraform's vSphere provider, unless options say otherwise.
    Passwords are never given on the command line, only the variables that hold them.

    Exit status: 0 the plan succeeded, 1 a step failed (its output is printed),
    2 bad input (nothing ran), 130 interrupted.
    """
    with errors_exit():
        if insecure is None:
            insecure = os.environ.get(ENV_INSECURE, "").lower() in TRUE_WORDS
        uri = vm_target_uri(
            vm,
            vcenter=vcenter,
            user=user,
            password_env=password_env,
            guest_user=guest_user,
            guest_password_env=guest_password_env,
            insecure=insecure,
            parameters=parameters,
        )
    run = ctx.find_root().command.get_command(ctx, "run")  # type: ignore[attr-defined]
    ctx.invoke(run, plan=plan, target_uris=(uri,), json_output=json_output)
