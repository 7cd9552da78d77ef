"""The ``usb`` backend of the ``keys`` channel: vSphere's ``PutUsbScanCodes``.

Each vSphere key event is one key pressed and released with a set of modifiers held, its
key named by its USB HID usage id (HID Usage Tables, keyboard page 0x07) as
``usage << 16 | 7``. Key events from :mod:`beachhead.plugins.keyboard` name keys by
their PC set-1 position; :data:`SET1_TO_HID` maps one to the other. Modifier keys going
down and up become the modifier state of the keys pressed meanwhile; a modifier pressed
and released alone is sent as its own key. A key held with ``<cOn>`` cannot be held
through this API: it is pressed once.

Unpaced, every event goes in as few calls as possible; paced, one call per key with the
pace between calls. Screenshots come from ``CreateScreenshot_Task``: a PNG vCenter
writes to the VM's folder on the datastore, downloaded through the datastore file API
and then deleted (where the server lets it: a file left behind is logged). The pyvmomi
calls run in the vCenter session's worker pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from beachhead.agent.errors import ChannelError
from beachhead.agent.vsphere.connection import VCenter
from beachhead.agent.vsphere.vmlogs import DATASTORE_PATH, datastore_file_url
from beachhead.plugins.keyboard import KeyEvent

log = structlog.get_logger("beachhead.keys")

NAME = "keys"
#: Events per PutUsbScanCodes call when unpaced (one SOAP request stays small).
BATCH = 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: PC set-1 make code (``0xE0xx`` for extended keys) -> USB HID usage id (page 0x07).
SET1_TO_HID: dict[int, int] = {
    0x01: 0x29,  # Escape
    **{0x02 + i: 0x1E + i for i in range(10)},  # 1 .. 0
    0x0C: 0x2D,
    0x0D: 0x2E,
    0x0E: 0x2A,  # Backspace
    0x0F: 0x2B,  # Tab
    **dict(zip(range(0x10, 0x1A), (0x14, 0x1A, 0x08, 0x15, 0x17, 0x1C, 0x18, 0x0C, 0x12, 0x13), strict=True)),
    0x1A: 0x2F,
    0x1B: 0x30,
    0x1C: 0x28,  # Enter
    0x1D: 0xE0,  # left Ctrl
    **dict(zip(range(0x1E, 0x27), (0x04, 0x16, 0x07, 0x09, 0x0A, 0x0B, 0x0D, 0x0E, 0x0F), strict=True)),
    0x27: 0x33,
    0x28: 0x34,
    0x29: 0x35,
    0x2A: 0xE1,  # left Shift
    0x2B: 0x31,  # backslash (US) / the ISO key beside Enter: both are this position
    **dict(zip(range(0x2C, 0x33), (0x1D, 0x1B, 0x06, 0x19, 0x05, 0x11, 0x10), strict=True)),
    0x33: 0x36,
    0x34: 0x37,
    0x35: 0x38,
    0x36: 0xE5,  # right Shift
    0x37: 0x55,  # keypad *
    0x38: 0xE2,  # left Alt
    0x39: 0x2C,  # space
    0x3A: 0x39,  # Caps Lock
    **{0x3B + i: 0x3A + i for i in range(10)},  # F1 .. F10
    0x45: 0x53,  # Num Lock
    0x46: 0x47,  # Scroll Lock
    **dict(
        zip(
            range(0x47, 0x54),
            (0x5F, 0x60, 0x61, 0x56, 0x5C, 0x5D, 0x5E, 0x57, 0x59, 0x5A, 0x5B, 0x62, 0x63),
            strict=True,
        )
    ),  # keypad 7 8 9 - 4 5 6 + 1 2 3 0 .
    0x56: 0x64,  # the ISO key between left Shift and Z
    0x57: 0x44,  # F11
    0x58: 0x45,  # F12
    0x70: 0x88,  # Katakana/Hiragana
    0x73: 0x87,  # Ro
    0x79: 0x8A,  # Henkan
    0x7B: 0x8B,  # Muhenkan
    0x7D: 0x89,  # Yen
    0xE01C: 0x58,  # keypad Enter
    0xE01D: 0xE4,  # right Ctrl
    0xE035: 0x54,  # keypad /
    0xE038: 0xE6,  # right Alt (AltGr)
    0xE047: 0x4A,  # Home
    0xE048: 0x52,  # Up
    0xE049: 0x4B,  # Page Up
    0xE04B: 0x50,  # Left
    0xE04D: 0x4F,  # Right
    0xE04F: 0x4D,  # End
    0xE050: 0x51,  # Down
    0xE051: 0x4E,  # Page Down
    0xE052: 0x49,  # Insert
    0xE053: 0x4C,  # Delete
    0xE05B: 0xE3,  # left GUI
    0xE05C: 0xE7,  # right GUI
    0xE05D: 0x65,  # Application (Menu)
}

#: Modifier usage ids -> the field of vSphere's UsbScanCodeSpecModifierType.
MODIFIER_FIELDS: dict[int, str] = {
    0xE0: "leftControl",
    0xE1: "leftShift",
    0xE2: "leftAlt",
    0xE3: "leftGui",
    0xE4: "rightControl",
    0xE5: "rightShift",
    0xE6: "rightAlt",
    0xE7: "rightGui",
}


@dataclass(frozen=True)
class UsbKey:
    """One vSphere key event: a usage id pressed with ``modifiers`` held."""

    usage: int
    modifiers: frozenset[str] = field(default_factory=frozenset)

    @property
    def hid_code(self) -> int:
        """vSphere's ``usbHidCode``."""
        return self.usage << 16 | 0x07


def usb_keys(events: Sequence[KeyEvent]) -> list[UsbKey]:
    """The vSphere key events that type ``events``; :class:`ValueError` names a key
    with no USB usage id."""
    held: dict[str, int] = {}
    alone: set[int] = set()  # modifiers pressed with no key after them yet
    keys: list[UsbKey] = []
    for event in events:
        usage = SET1_TO_HID.get(event.key.scancode)
        if usage is None:
            raise ValueError(f"no USB usage id for key {event.key.name} (set-1 0x{event.key.scancode:X})")
        modifier = MODIFIER_FIELDS.get(usage)
        if modifier is not None:
            if event.down:
                held[modifier] = held.get(modifier, 0) + 1
                alone.add(usage)
            else:
                if usage in alone:
                    keys.append(UsbKey(usage, frozenset(name for name, count in held.items() if count > 0)))
                    alone.discard(usage)
                held[modifier] = max(0, held.get(modifier, 0) - 1)
            continue
        if event.down:
            alone.clear()
            keys.append(UsbKey(usage, frozenset(name for name, count in held.items() if count > 0)))
    return keys


def _spec(keys: Sequence[UsbKey]) -> Any:
    events = []
    for key in keys:
        event = vim.vm.UsbScanCodeSpec.KeyEvent(usbHidCode=key.hid_code)
        if key.modifiers:
            event.modifiers = vim.vm.UsbScanCodeSpec.ModifierType(**dict.fromkeys(key.modifiers, True))
        events.append(event)
    return vim.vm.UsbScanCodeSpec(keyEvents=events)


class UsbConsole:
    """Types into a VM's console through ``PutUsbScanCodes`` (a :class:`ConsoleBackend`)."""

    def __init__(self, vcenter: VCenter, vm: Any, target_name: str) -> None:
        self.vcenter = vcenter
        self.vm = vm
        self.target_name = target_name

    def _failed(self, what: str, fault: Any) -> ChannelError:
        text = getattr(fault, "msg", None) or type(fault).__name__
        retryable = isinstance(fault, vim.fault.InvalidState | vim.fault.InvalidPowerState)
        return ChannelError(NAME, self.target_name, f"{what}: {text}", retryable=retryable)

    async def _put(self, keys: Sequence[UsbKey]) -> None:
        try:
            count = await self.vcenter.call(self.vm.PutUsbScanCodes, _spec(keys))
        except vim.fault.InvalidPowerState:
            raise ChannelError(NAME, self.target_name, "the VM is powered off") from None
        except vmodl.MethodFault as fault:
            raise self._failed("PutUsbScanCodes failed", fault) from None
        if count != len(keys):
            raise ChannelError(NAME, self.target_name, f"PutUsbScanCodes took {count} of {len(keys)} key events")

    async def send(self, events: Sequence[KeyEvent], pace_s: float) -> None:
        """Type ``events``: in batches when ``pace_s`` is 0, else one key per call with
        ``pace_s`` after each."""
        try:
            keys = usb_keys(events)
        except ValueError as exc:
            raise ChannelError(NAME, self.target_name, str(exc)) from None
        if pace_s <= 0:
            for start in range(0, len(keys), BATCH):
                await self._put(keys[start : start + BATCH])
            return
        for key in keys:
            await self._put([key])
            await asyncio.sleep(pace_s)

    async def screenshot(self) -> bytes:
        """What the console shows now, as PNG (``CreateScreenshot_Task``)."""
        try:
            path, datacenter = await self.vcenter.call(self._create_screenshot)
        except vmodl.MethodFault as fault:
            raise self._failed("CreateScreenshot_Task failed", fault) from None
        match = DATASTORE_PATH.match(path or "")
        if match is None:
            raise ChannelError(NAME, self.target_name, f"the screenshot's path is not a datastore path: {path!r}")
        folder, _, name = match.group("path").strip("/").rpartition("/")
        location = (match.group("datastore"), folder, str(datacenter.name))
        url = datastore_file_url(self.vcenter.http_base(), location, name)
        async with self.vcenter.http_session(aiohttp.ClientTimeout(total=60)) as http, http.get(url) as response:
            if response.status >= 300:
                raise ChannelError(NAME, self.target_name, f"screenshot download: HTTP {response.status}")
            png = await response.read()
        try:
            await self.vcenter.call(self._delete, path, datacenter)
        except Exception as exc:  # the picture is in hand; a file left behind is only noted
            log.warning("keys.screenshot_not_deleted", target=self.target_name, path=path, error=repr(exc))
        if not png.startswith(PNG_MAGIC):
            raise ChannelError(NAME, self.target_name, "the screenshot is not a PNG")
        return png

    def _create_screenshot(self) -> tuple[str, Any]:
        task = self.vm.CreateScreenshot_Task()
        WaitForTask(task)
        datacenter = self.vm.parent
        while datacenter is not None and not isinstance(datacenter, vim.Datacenter):
            datacenter = datacenter.parent
        if datacenter is None:
            raise ChannelError(NAME, self.target_name, "the VM is in no datacenter")
        return str(task.info.result), datacenter

    def _delete(self, path: str, datacenter: Any) -> None:
        manager = self.vcenter.content.fileManager
        WaitForTask(manager.DeleteDatastoreFile_Task(name=path, datacenter=datacenter))

    async def close(self) -> None:
        """Nothing to release: the vCenter session belongs to the run."""
