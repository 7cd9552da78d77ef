"""Targets from the pyVmomi objects a provisioning tool already holds.

A tool that has just cloned a VM has the clone (a ``vim.VirtualMachine``) and a
logged-in ``ServiceInstance``; :func:`vsphere_target` turns them into a
:class:`~beachhead.agent.targets.Target` that runs over that same session (no second
login, and the session is left logged in afterwards)::

    vm = WaitForTask(template.Clone(folder, "web-01", spec)).result   # or task.info.result
    target = await beachhead.vsphere_target(vm, guest_user="root", guest_password=password)
    result = await beachhead.customize(target, plan)

Secrets are given as values, never put in the URI. The target's URI, which its run's
journal records, names the VM by its managed object id and each secret by a variable
of its own (``vsphere://USER@VCENTER/vm-42?password_env=BEACHHEAD_VCENTER_PASSWORD
&guest_user=root&guest_password_env=BEACHHEAD_GUEST_PASSWORD``): ``beachhead undo``
from a shell reaches the VM again when those variables hold the passwords.
"""

from __future__ import annotations

import asyncio
import dataclasses
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote, urlencode

from pyVmomi import vim

from beachhead.agent.errors import InputError
from beachhead.agent.targets import Target, parse_target

SOURCE = "vsphere_target"

# Secret keyword arguments and the URI parameter each stands in for; each variable is
# named BEACHHEAD_<KEYWORD> in the URI.
_SECRETS = {
    "vcenter_password": "password_env",
    "guest_password": "guest_password_env",
    "ssh_password": "ssh_password_env",
    "ssh_passphrase": "ssh_passphrase_env",
    "winrm_password": "winrm_password_env",
}


def _session_user(service_instance: Any) -> str:
    session = service_instance.content.sessionManager.currentSession
    if session is None:
        raise InputError(SOURCE, "service_instance", "the ServiceInstance is not logged in")
    return str(session.userName)


async def vsphere_target(
    vm: Any,
    service_instance: Any | None = None,
    *,
    guest_user: str | None = None,
    guest_password: str | None = None,
    ssh_password: str | None = None,
    ssh_passphrase: str | None = None,
    winrm_password: str | None = None,
    **parameters: str,
) -> Target:
    """A target for ``vm`` (a ``vim.VirtualMachine``, or its managed object id such as
    ``"vm-42"`` together with ``service_instance``) over the caller's logged-in session.

    ``parameters`` are the vsphere:// URI's other parameters (``name``, ``os``,
    ``ssh_user``, ``ssh_key``, ``known_hosts``, ``winrm_user``, ``console``,
    ``address``, ...), checked as in a URI; passwords are given as values (``guest_password``,
    ``ssh_password``, ``ssh_passphrase``, ``winrm_password``), the SSH and WinRM
    routes chaining from the guest login as they do in a URI."""
    if isinstance(vm, vim.VirtualMachine):
        moid, stub = vm._moId, vm._stub
        service_instance = service_instance or vim.ServiceInstance("ServiceInstance", stub)  # type: ignore[no-untyped-call]
    elif isinstance(vm, str) and service_instance is not None:
        moid, stub = vm, service_instance._stub
    else:
        raise InputError(
            SOURCE, "vm", "expected a vim.VirtualMachine, or a managed object id together with service_instance"
        )
    for name in parameters:
        if name in _SECRETS.values():
            raise InputError(SOURCE, name, "give the secret's value as a keyword argument instead of an *_env name")
    user = await asyncio.to_thread(_session_user, service_instance)
    secrets = {
        "vcenter_password": "",  # the session is logged in: the name is for a later `beachhead undo`
        "guest_password": guest_password,
        "ssh_password": ssh_password,
        "ssh_passphrase": ssh_passphrase,
        "winrm_password": winrm_password,
    }
    environ: dict[str, str] = {}
    query: dict[str, str] = dict(parameters)
    if guest_user is not None:
        query["guest_user"] = guest_user
    for keyword, value in secrets.items():
        if value is not None:
            variable = f"BEACHHEAD_{keyword.upper()}"  # looked up in `environ`, not the process's
            environ[variable] = value
            query[_SECRETS[keyword]] = variable
    if getattr(stub, "scheme", None) is HTTPConnection:
        query["scheme"] = "http"
    uri = f"vsphere://{quote(user, safe='')}@{stub.host}/{moid}"
    target = parse_target(f"{uri}?{urlencode(query)}", source=SOURCE, environ=environ)
    return dataclasses.replace(target, session=service_instance, password=None)
