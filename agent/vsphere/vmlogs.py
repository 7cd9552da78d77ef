"""A VM's logs: its ``vmware.log`` files from the VM's directory on the datastore,
fetched through the datastore file HTTP API (``/folder/...``), and the logs vCenter's
DiagnosticManager offers, where it offers them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from beachhead.agent.vsphere.connection import VCenter, VSphereError

DATASTORE_PATH = re.compile(r"^\[(?P<datastore>[^\]]+)\]\s*(?P<path>.*)$")
VMWARE_LOGS = "vmware*.log"
DIAGNOSTIC_LINES = 5000


@dataclass(frozen=True)
class LogFile:
    """One fetched log: a name to save it under, and its text."""

    name: str
    text: str


def _datastore_dir(vm: Any) -> tuple[str, str]:
    """The datastore and folder of the VM's logs, from ``[ds] folder/vm.vmx``."""
    files = vm.config.files
    location = files.logDirectory or files.vmPathName
    match = DATASTORE_PATH.match(location or "")
    if not match:
        raise VSphereError(f"{vm.name}: no datastore path for its files ({location!r})")
    path = match.group("path")
    folder = path if location == files.logDirectory else path.rpartition("/")[0]
    return match.group("datastore"), folder.strip("/")


def _datacenter_of(entity: Any) -> str:
    while entity is not None and not isinstance(entity, vim.Datacenter):
        entity = entity.parent
    if entity is None:
        raise VSphereError("the VM is in no datacenter")
    return str(entity.name)


def _log_names(vm: Any, datastore: str, folder: str) -> list[str]:
    """The VM's vmware*.log files (current first), through the datastore's browser;
    just vmware.log when the datastore cannot be searched."""
    try:
        store = next(store for store in vm.datastore if store.name == datastore)
        spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=[VMWARE_LOGS])
        task = store.browser.SearchDatastore_Task(datastorePath=f"[{datastore}] {folder}", searchSpec=spec)
        WaitForTask(task)
        names = [file.path for file in task.info.result.file or ()]
    except (vmodl.MethodFault, StopIteration, AttributeError):
        names = []
    current = [name for name in names if name == "vmware.log"]
    return current + sorted(name for name in names if name != "vmware.log") or ["vmware.log"]


def log_location(vm: Any) -> tuple[str, str, str]:
    """Where the VM's logs are: its datastore, folder and datacenter."""
    datastore, folder = _datastore_dir(vm)
    return datastore, folder, _datacenter_of(vm)


def datastore_file_url(base: str, location: tuple[str, str, str], name: str) -> str:
    """The datastore file API URL (``/folder/...``) of file ``name`` at ``location``."""
    datastore, folder, datacenter = location
    return f"{base}/folder/{quote(folder)}/{quote(name)}?dcPath={quote(datacenter)}&dsName={quote(datastore)}"


async def vm_logs(vcenter: VCenter, vm: Any) -> list[LogFile]:
    """The VM's vmware.log (and rotated ones), read through the datastore file API."""
    name, location = await vcenter.call(lambda: (vm.name, log_location(vm)))
    datastore, folder, _ = location
    names = await vcenter.call(_log_names, vm, datastore, folder)
    logs = []
    async with vcenter.http_session(aiohttp.ClientTimeout(total=300)) as http:
        for log_name in names:
            async with http.get(datastore_file_url(vcenter.http_base(), location, log_name)) as response:
                if response.status == 404:
                    continue
                if response.status >= 300:
                    raise VSphereError(f"{name}: {log_name}: HTTP {response.status} from the datastore")
                logs.append(LogFile(log_name, await response.text(errors="replace")))
    if not logs:
        raise VSphereError(f"{name}: no vmware.log in [{datastore}] {folder}")
    return logs


def _diagnostic_logs(vcenter: VCenter) -> list[LogFile]:
    manager = vcenter.content.diagnosticManager
    if manager is None:
        return []
    logs = []
    for description in manager.QueryDescriptions() or ():
        header = manager.BrowseDiagnosticLog(key=description.key, start=None, lines=DIAGNOSTIC_LINES)
        lines = header.lineText or []
        logs.append(LogFile(f"vcenter-{description.key}.log", "\n".join(lines) + ("\n" if lines else "")))
    return logs


async def diagnostic_logs(vcenter: VCenter) -> list[LogFile]:
    """The last lines of each log vCenter's DiagnosticManager offers (none when the
    server offers no such manager or method)."""
    try:
        return await vcenter.call(_diagnostic_logs, vcenter)
    except (vmodl.fault.MethodNotFound, vmodl.fault.NotSupported, vim.fault.CannotAccessFile):
        return []
