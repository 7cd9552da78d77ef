"""A VM's serial port output, where the port is backed by a file on a datastore
(``VirtualSerialPortFileBackingInfo``: ``[datastore] folder/name``), read through the
datastore file HTTP API (``/folder/...``) as vmware.log is; and the SSH host public keys
the guest printed there.

This is how ``known_hosts=serial`` pins an SSH host key for a guest that has no VMware
Tools (a console-only VM a typed recipe gave an SSH server): the guest prints its
``ssh-ed25519 AAAA...`` line to its serial port, and the key is read back over vCenter's
authenticated API, not over the guest network an impostor could answer on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from pyVmomi import vim

from beachhead.agent.vsphere.connection import VCenter, VSphereError
from beachhead.agent.vsphere.vmlogs import DATASTORE_PATH, datastore_file_url, log_location

#: The most read of one serial port file: its tail, where the latest boot's lines are.
MAX_BYTES = 4 * 1024 * 1024
#: An OpenSSH public key as ``ssh-keygen -y`` / ``dropbearkey -y`` print it, anywhere on
#: a line (a console prefixes its own words): the algorithm and the base64 key blob.
PUBLIC_KEY = re.compile(
    r"(?<![\w-])((?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com)"
    r" AAAA[A-Za-z0-9+/]+={0,3})(?![A-Za-z0-9+/=])"
)


@dataclass(frozen=True)
class SerialPortFile:
    """One file-backed serial port: where its file is on which datastore."""

    datastore: str
    folder: str
    name: str
    datacenter: str

    def __str__(self) -> str:
        return f"[{self.datastore}] {'/'.join(part for part in (self.folder, self.name) if part)}"


def serial_port_files(vm: Any) -> list[SerialPortFile]:
    """The VM's serial ports that write to a datastore file (blocking pyvmomi calls)."""
    files = []
    for device in vm.config.hardware.device or ():
        backing = getattr(device, "backing", None)
        if not isinstance(device, vim.vm.device.VirtualSerialPort) or not isinstance(
            backing, vim.vm.device.VirtualSerialPort.FileBackingInfo
        ):
            continue
        match = DATASTORE_PATH.match(backing.fileName or "")
        if match is None:
            continue
        folder, _, name = match.group("path").strip("/").rpartition("/")
        files.append(SerialPortFile(match.group("datastore"), folder, name, log_location(vm)[2]))
    return files


async def read_serial_ports(vcenter: VCenter, vm: Any) -> dict[str, str]:
    """What each of the VM's file-backed serial ports holds (the last :data:`MAX_BYTES`),
    by its datastore path; an empty mapping when the VM has no such port. A file not
    there yet (the guest wrote nothing) reads as empty."""
    ports = await vcenter.call(serial_port_files, vm)
    texts: dict[str, str] = {}
    if not ports:
        return texts
    async with vcenter.http_session(aiohttp.ClientTimeout(total=60)) as http:
        for port in ports:
            location = (port.datastore, port.folder, port.datacenter)
            url = datastore_file_url(vcenter.http_base(), location, port.name)
            try:
                async with http.get(url, headers={"Range": f"bytes=-{MAX_BYTES}"}) as response:
                    # 404: not written yet; 416: an empty file has no range to give.
                    if response.status >= 300 and response.status not in (404, 416):
                        raise VSphereError(f"serial port file {port}: HTTP {response.status} from the datastore")
                    data = await response.read() if response.status < 300 else b""
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise VSphereError(f"serial port file {port}: {exc!r}") from None
            texts[str(port)] = data.decode("utf-8", "replace")
    return texts


def printed_host_keys(text: str) -> list[str]:
    """The SSH public keys (``ALGORITHM BASE64``) printed in ``text``, each once, in the
    order first printed."""
    return list(dict.fromkeys(match.group(1) for match in PUBLIC_KEY.finditer(text.replace("\r", ""))))
