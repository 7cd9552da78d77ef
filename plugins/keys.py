"""The ``keys`` channel: keystrokes typed into the guest's console, and the console's
picture read back, through one of three backends chosen by the target's ``console=``:

- ``usb`` (the default for ``vsphere://`` targets): vSphere ``PutUsbScanCodes``
  (:mod:`beachhead.plugins.keys_usb`), needing only the vCenter API;
- ``vnc``: RFB (:mod:`beachhead.plugins.vnc_console`) to a ``vnc://HOST:PORT`` target,
  or to a vSphere VM's own VNC console (``RemoteDisplay.vnc.*`` extraConfig, read at
  power-on), which a ``type`` step enables when it is not (journaled as
  ``extra_config``, so undo restores it; a random password, masked everywhere);
- ``rdp``: an RDP session (:mod:`beachhead.plugins.rdp_console`) to a Windows guest at
  its address, port ``rdp_port`` (default 3389), with the target's Windows login
  (``winrm_user``, else ``guest_user``).

Each backend implements :class:`ConsoleBackend`. Keys are paced per the step's or the
target's ``pace_ms``, else the backend's ``default_pace_ms``: the pace that loses
nothing on the lab's consoles (QEMU's input queue drops keys sent in a flood).
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from beachhead.agent.channel import Capability, ChannelInfo, Direction, Medium, Prerequisite, Unmet
from beachhead.agent.errors import ChannelError, ChannelUnavailable, InputError
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.secrets import Secret
from beachhead.agent.targets import ConsoleKind, OsFamily, Target
from beachhead.plugins.keyboard import KeyEvent

if TYPE_CHECKING:
    from beachhead.agent.context import StepContext, TargetContext

NAME = "keys"
VNC_BASE_PORT = 5900
#: Default pace (ms between key events) per backend, where the backend does not say.
#: usb, measured on the lab's QEMU console (1 KiB): batched calls lose most keys (50 of
#: 1,025 arrived); one key per call arrived intact at 0.5, 1 and 5 ms on a quiet machine,
#: but at 5 ms a loaded one (the whole test suite beside it) once lost a Shift release,
#: so 10. vnc: 10 ms an event is the fastest that loses nothing on QEMU's VNC server.
DEFAULT_PACE_MS = {ConsoleKind.USB: 10.0, ConsoleKind.VNC: 10.0, ConsoleKind.RDP: 0.0}

INFO = ChannelInfo(
    name=NAME,
    summary="keystrokes at the VM's console (USB scan codes, VNC or RDP); reads the screen back",
    direction=Direction.PUSH,
    medium=Medium.CONSOLE,
    prerequisites=(Prerequisite.CONSOLE,),
    capabilities=frozenset({Capability.TYPE_KEYS}),
    preference={OsFamily.LINUX: 10, OsFamily.WINDOWS: 10},
    target_schemes=frozenset({"vsphere", "vnc"}),
)


class ConsoleBackend(Protocol):
    """What every console backend implements."""

    async def send(self, events: Sequence[KeyEvent], pace_s: float) -> None:
        """Type ``events`` in order, ``pace_s`` seconds between events (0: as fast as
        the console takes them)."""
        ...

    async def screenshot(self) -> bytes:
        """What the console shows now, as PNG."""
        ...

    async def close(self) -> None:
        """Release the console."""
        ...


def console_kind(target: Target) -> ConsoleKind:
    """The backend the target's console is typed through: its ``console=``, else VNC
    for a ``vnc://`` target and USB scan codes for a VM."""
    if target.console is not None:
        return target.console
    return ConsoleKind.VNC if target.scheme == "vnc" else ConsoleKind.USB


def _windows_login(target: Target) -> tuple[str | None, Secret | None]:
    route = target.winrm
    if route is not None and route.user:
        return route.user, route.password or target.guest_password
    return target.guest_user, target.guest_password


class KeysSession:
    """An open console on one target. The backend is opened by :meth:`ready` (a VM's
    own VNC console must first be enabled by a journaled step)."""

    channel = NAME

    def __init__(self, target: TargetContext, kind: ConsoleKind, backend: ConsoleBackend | None = None) -> None:
        self.target = target
        self.kind = kind
        self.backend = backend

    @property
    def default_pace_ms(self) -> float:
        """The backend's own default pace, else this channel's for its kind."""
        return float(getattr(self.backend, "default_pace_ms", DEFAULT_PACE_MS[self.kind]))

    async def ready(self, ctx: StepContext | None = None) -> ConsoleBackend:
        """The open backend, opening it now if needed (``ctx`` journals what opening a
        VM's VNC console changes; without one, as for ``beachhead screenshot``, the VM's
        VNC console must already be enabled)."""
        if self.backend is None:
            self.backend = await open_backend(self.target, self.kind, ctx)
        return self.backend

    async def send(self, events: Sequence[KeyEvent], pace_s: float) -> None:
        """Type ``events`` through the backend."""
        await (await self.ready()).send(events, pace_s)

    async def screenshot(self) -> bytes:
        """The console's picture, as PNG."""
        return await (await self.ready()).screenshot()

    async def close(self) -> None:
        """Close the backend."""
        if self.backend is not None:
            backend, self.backend = self.backend, None
            await backend.close()


async def open_backend(target: TargetContext, kind: ConsoleKind, ctx: StepContext | None) -> ConsoleBackend:
    """Open the ``kind`` backend on ``target`` (see the module's description)."""
    name = target.target.name
    timeout = target.target.connect_timeout or target.settings.connect_timeout
    if kind is ConsoleKind.USB:
        from beachhead.plugins.keys_usb import UsbConsole

        vcenter, vm = await target.vm()
        return UsbConsole(vcenter, vm, name)
    if kind is ConsoleKind.RDP:
        from beachhead.plugins.keyboard import load_layout
        from beachhead.plugins.rdp_console import RdpConsole

        address = target.guest_address()
        user, password = _windows_login(target.target)
        if address is None or user is None or password is None:
            raise ChannelUnavailable(NAME, name, "rdp needs the guest's address and a Windows login", retryable=True)
        domain, _, account = user.rpartition("\\")
        layout = load_layout(str(target.notes.get("keys.layout") or target.target.layout or "us"))
        rdp: ConsoleBackend = await RdpConsole.open(
            address,
            target.target.rdp_port,
            account,
            password.reveal(),
            domain=domain,
            layout_id=layout.windows_layout_id,
            security="tls",
            timeout_s=timeout,
        )
        return rdp
    from beachhead.plugins.vnc_console import VncConsole

    if target.target.scheme == "vnc":
        secret = target.target.password
        vnc: ConsoleBackend = await VncConsole.open(
            target.target.host, target.target.port, secret.reveal() if secret else None, timeout_s=timeout
        )
        return vnc
    host, port, password = await _vm_vnc_console(target, ctx)
    vm_vnc: ConsoleBackend = await VncConsole.open(host, port, password.reveal(), timeout_s=timeout)
    return vm_vnc


VNC_KEYS = ("RemoteDisplay.vnc.enabled", "RemoteDisplay.vnc.port", "RemoteDisplay.vnc.password")


async def _vm_vnc_console(target: TargetContext, ctx: StepContext | None) -> tuple[str, int, Secret]:
    """Where the VM's own VNC console listens (its ESXi host's management address) and
    its password. A console not enabled yet is enabled through ``ctx``'s journaled
    extraConfig write (undone by ``beachhead undo``), with a random password; as ESXi
    reads ``RemoteDisplay.vnc.*`` at power-on, a VM that is already on must then be
    powered off and on before it can be typed into."""
    from beachhead.agent.vsphere.vmconfig import read_extra_config

    vcenter, vm = await target.vm()
    name = target.target.name
    current = await read_extra_config(vcenter, vm, VNC_KEYS)
    enabled, port, password = current[VNC_KEYS[0]], current[VNC_KEYS[1]], current[VNC_KEYS[2]]
    if (enabled or "").lower() != "true" or not port:
        if ctx is None:
            raise ChannelUnavailable(NAME, name, "the VM's VNC console is not enabled (a type step enables it)")
        from beachhead.plugins.steps.extra_config import apply_extra_config

        moid = await vcenter.call(lambda: str(vm._moId))
        port = port or str(VNC_BASE_PORT + 1 + zlib.crc32(moid.encode()) % 99)
        password = password or secrets.token_urlsafe(6)[:8]  # VNC passwords are 8 characters at most
        Secret(password)  # masked from here on
        values = {VNC_KEYS[0]: "TRUE", VNC_KEYS[1]: port, VNC_KEYS[2]: password}
        await apply_extra_config(ctx, values, "enable the VM's VNC console for the keys channel")
        raise ChannelError(
            NAME,
            name,
            "enabled the VM's VNC console (RemoteDisplay.vnc.*); ESXi starts it at power-on: "
            "power the VM off and on (power steps) before typing with console=vnc",
        )
    host = await vcenter.call(_host_address, vm)
    return host, int(port), Secret(password or "")


def _host_address(vm: Any) -> str:
    """The management address of the VM's ESXi host (its first VMkernel NIC), else its name."""
    host = vm.runtime.host
    for nic in getattr(host.config.network, "vnic", None) or ():
        if nic.spec.ip and nic.spec.ip.ipAddress:
            return str(nic.spec.ip.ipAddress)
    return str(host.name)


class KeysChannel:
    """The keys channel (see the module's description)."""

    info = INFO

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """A console to type into: a powered-on VM (usb, a VM's vnc), the guest's
        address and a Windows login (rdp); a vnc:// target always has one."""
        if target.target.scheme == "vnc":
            return []
        if unmet := target.powered_on_unmet("the VM is powered off: its console types nothing"):
            return unmet
        if console_kind(target.target) is ConsoleKind.RDP:
            user, password = _windows_login(target.target)
            if user is None or password is None:
                return [Unmet("console=rdp needs a Windows login (winrm_user or guest_user, and its password)")]
            if target.guest_address() is None:
                return [Unmet("no guest address yet (console=rdp)", transient=True)]
        return []

    async def connect(self, target: TargetContext) -> Any:
        """A session on the target's console; USB and RDP backends open now, a VM's own
        VNC console when the first step types (it must be enabled first)."""
        kind = console_kind(target.target)
        if kind is ConsoleKind.VNC and target.target.scheme == "vsphere":
            return KeysSession(target, kind)
        try:
            return KeysSession(target, kind, await open_backend(target, kind, None))
        except ImportError as exc:
            raise ChannelUnavailable(NAME, target.target.name, f"console={kind} is not installed ({exc})") from None


async def take_screenshot(target: Target, connect_timeout: float) -> bytes:
    """What ``target``'s console shows now, as PNG, through its console backend (a
    VM's own VNC console only when a run has enabled it)."""
    from beachhead.agent.context import RunContext, TargetContext
    from beachhead.agent.plans import Plan
    from beachhead.agent.registry import default_plugins
    from beachhead.agent.settings import RunSettings

    run = RunContext(default_plugins(), RunSettings(connect_timeout=connect_timeout))
    try:
        context = TargetContext(run, Plan(name="screenshot", steps=()), target)
        await context.refresh()
        unmet = KeysChannel().unmet(context)
        if unmet:
            raise ChannelUnavailable(NAME, target.name, "; ".join(item.reason for item in unmet))
        session = await KeysChannel().connect(context)
        try:
            png: bytes = await session.screenshot()
            return png
        finally:
            await session.close()
    finally:
        await run.close()


@hookimpl
def beachhead_register_channels(register: Any) -> None:
    """Register the keys channel."""
    register(KeysChannel())


@hookimpl
def beachhead_add_commands(cli: click.Group) -> None:
    """Add ``beachhead screenshot``."""
    cli.add_command(screenshot)


@click.command()
@click.argument("target_uri", metavar="URI")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write the PNG to FILE (default: VM-NAME.png in the current directory).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the vCenter or the console to answer.",
)
def screenshot(target_uri: str, output: Path | None, connect_timeout: float) -> None:
    """Save what a guest's console shows now as a PNG, through the keys channel's
    backend for the target (its console=): vSphere's CreateScreenshot_Task for usb (the
    default for a VM), the framebuffer for vnc, the session's bitmap for rdp.

    \b
    URI: vsphere://USER@VCENTER[:PORT]/VM?password_env=VAR[&console=usb|vnc|rdp]
         vnc://HOST:PORT?password_env=VAR

    Exit status: 0 saved, 1 the console could not be read, 2 bad input.
    """
    from beachhead.agent.exits import errors_exit, run_async
    from beachhead.agent.targets import parse_target

    with errors_exit():
        target = parse_target(target_uri, source="URI")
        if target.scheme not in INFO.target_schemes:
            schemes = ", ".join(f"{scheme}://" for scheme in sorted(INFO.target_schemes))
            raise InputError("URI", "scheme", f"a console is reached through {schemes}, not {target.scheme}://")
        png = run_async(take_screenshot(target, connect_timeout))
        path = output or Path(f"{(target.vm or target.name).replace('/', '_')}.png")
        try:
            path.write_bytes(png)
        except OSError as exc:
            raise InputError(str(path), None, f"cannot write the screenshot: {exc.strerror}") from None
    click.echo(f"{path}  {len(png)} bytes")
