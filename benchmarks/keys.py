"""Keys: 1 KiB of mixed text typed over each keys backend into a console on loopback,
compared byte for byte with what arrived.

Consoles, each started by the console tests' own peer starters (tests/console/):

- ``xvnc``: TigerVNC's Xvnc, an xterm whose shell (raw tty) writes what arrives to a
  file; the tests' VNC text (``vnc_typing.mixed_text``): every printable ASCII
  character, shifted ones included, newlines, named keys and Ctrl combinations;
- ``qemu``: QEMU's own VNC server in front of the lab's console VM (``key-delay-ms=0``
  as the tests start it), its shell's ``cat`` copying to the serial port, a file; the
  same text without named keys and Ctrl (the guest's tty edits lines);
- ``xrdp``: Debian's xrdp (xorgxrdp) whose session appends what is typed to a file
  (needs root: the session's account files are mounted in a namespace);
- ``shadow``: FreeRDP 2's X11 shadow server over an Xvfb xterm doing the same; the
  RDP tests' text (``test_rdp_console.mixed_text``: letters, digits, shifted symbols,
  spaces, newlines);
- ``con-01``: the vSphere lab's QEMU console VM through the ``usb`` backend
  (``PutUsbScanCodes``, one key a call when paced, as ``plugins/keys_usb.py`` types),
  QEMU with its own default ``key-delay-ms``; its shell's ``cat`` copies to the serial
  port, a file; the ``qemu`` console's text. It needs root and the lab: the benchmark
  holds the lab lock, brings the default lab up unless one runs, and takes it down
  again if it started it.

Each run types the text at the backend's default pace (``plugins/keys.py``
``DEFAULT_PACE_MS``: usb 10 ms between calls, VNC 10 ms between key events, RDP none) and unpaced, one after the
other, and waits (bounded) until every byte arrived or nothing more arrives. Reported per
console, medians of ``--runs``: characters per second from the start of typing to the
last byte's arrival, and how many of the characters arrived in place (the longest
matching blocks; exact means byte for byte). Packer's default pacing, 100 ms after
every key event (``PACKER_KEY_INTERVAL``), is not typed: its time is computed from the
text's key-event count (press and release of each key, modifiers included).

Run it from the repository root (as root for ``xrdp`` and ``con-01``):

    .venv/bin/python -m benchmarks.keys [--runs 3] [--consoles xvnc,qemu,xrdp,shadow,con-01] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from beachhead.agent.targets import ConsoleKind
from beachhead.plugins.keyboard import (
    LEFT_ALT,
    LEFT_CTRL,
    LEFT_SHIFT,
    RIGHT_ALT,
    RIGHT_CTRL,
    RIGHT_SHIFT,
    KeyEvent,
    load_layout,
)
from beachhead.plugins.keys import DEFAULT_PACE_MS

PACKER_INTERVAL_S = 0.1
ARRIVAL_TIMEOUT_S = 60.0  # at 10 ms per event 1 KiB takes about 25 s
QUIET_S = 2.0  # nothing more arrived for this long: what is lost stays lost
END = "END-OF-TYPING"
CONSOLES = ("xvnc", "qemu", "xrdp", "shadow", "con-01")
LAB_CONSOLES = frozenset({"con-01"})
MODIFIERS = (LEFT_SHIFT, RIGHT_SHIFT, LEFT_CTRL, RIGHT_CTRL, LEFT_ALT, RIGHT_ALT)


class Backend(Protocol):
    """What the benchmark needs of an open console (VncConsole, RdpConsole)."""

    async def send(self, events: Sequence[KeyEvent], pace_s: float = 0.0) -> None:
        """Type ``events``, ``pace_s`` apart."""
        ...

    async def close(self) -> None:
        """Release the console."""
        ...


@dataclass
class Console:
    """One console under test: the text to type, where it arrives, and how to type it."""

    name: str
    kind: ConsoleKind
    backend: Backend
    events: list[KeyEvent]
    expected: bytes
    received: Callable[[], bytes]  # what arrived since :attr:`reset`
    reset: Callable[[], None]
    after: list[KeyEvent] = field(default_factory=list)  # typed after the text, untimed, at the default pace


@dataclass
class Figures:
    """One console's runs at one pace."""

    seconds: list[float] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)


async def settle(console: Console, started: float) -> tuple[bytes, float]:
    """What arrived once all of it did, or nothing more arrived for QUIET_S (bounded by
    ARRIVAL_TIMEOUT_S), and the seconds from ``started`` to the last byte's arrival."""
    got, last = console.received(), time.monotonic()
    deadline = started + ARRIVAL_TIMEOUT_S
    while len(got) < len(console.expected) and time.monotonic() - last < QUIET_S and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        now = console.received()
        if now != got:
            got, last = now, time.monotonic()
    return got, last - started


def in_place(expected: bytes, got: bytes) -> int:
    """How many of ``expected``'s bytes arrived, in order (the matching blocks)."""
    matcher = difflib.SequenceMatcher(None, expected, got, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks())


async def type_once(console: Console, pace_s: float) -> tuple[float, int, bool]:
    """Type the text once at ``pace_s``: seconds until it arrived, bytes in place, exact."""
    console.reset()
    started = time.monotonic()
    await console.backend.send(console.events, pace_s)
    if console.after:
        await console.backend.send(console.after, DEFAULT_PACE_MS[console.kind] / 1000)
    got, seconds = await settle(console, started)
    exact = got == console.expected
    if not exact:
        # A console that dropped events may have dropped a modifier's release, and part
        # of a line: release them all, end the line, so the next run starts clean.
        release = [KeyEvent(key, False, key.keysym) for key in MODIFIERS]
        await console.backend.send([*release, *console.after], DEFAULT_PACE_MS[console.kind] / 1000)
        await asyncio.sleep(QUIET_S)
    await asyncio.sleep(0.3)  # let a late key (repeat) land before the next reset
    return seconds, in_place(console.expected, got), exact


# -- consoles -------------------------------------------------------------------------


async def open_xvnc(stack: ExitStack, directory: Path) -> Console:
    """Xvnc and an xterm writing what it receives to a file."""
    from beachhead.plugins.keyboard import NAMED_KEYS, press
    from beachhead.plugins.vnc_console import VncConsole
    from tests.console.peer_processes import HOST
    from tests.console.vnc_peers import RAW_INPUT, start_xvnc
    from tests.console.vnc_typing import mixed_text

    peer = start_xvnc(directory)
    stack.callback(peer.stop)
    typed = directory / "typed"
    peer.xterm(f"{RAW_INPUT}; exec cat > {typed}")
    console = await VncConsole.open(HOST, peer.port, peer.password, timeout_s=20)
    await wait_for(typed.exists, 20, "the xterm's shell")
    # The window takes the keyboard once it is mapped: Enter until one arrives.
    for _ in range(50):
        await console.send(press(NAMED_KEYS["enter"]))
        if typed.stat().st_size:
            break
        await asyncio.sleep(0.2)
    events, expected = mixed_text()
    offset = [0]

    def reset() -> None:
        offset[0] = typed.stat().st_size

    return Console("xvnc", ConsoleKind.VNC, console, events, expected, lambda: typed.read_bytes()[offset[0] :], reset)


async def open_qemu(stack: ExitStack, directory: Path) -> Console:
    """QEMU's VNC console to the booted console VM, its shell copying lines to the serial port."""
    from beachhead.plugins.vnc_console import VncConsole
    from tests.console.peer_processes import HOST
    from tests.console.vnc_peers import start_qemu

    peer = start_qemu(directory)
    stack.callback(peer.stop)

    def serial() -> bytes:
        return peer.serial.read_bytes().replace(b"\r\n", b"\n")

    await wait_for(lambda: b"beachhead-console: ready" in serial(), 120, "the console VM's boot")
    console = await VncConsole.open(HOST, peer.port, peer.password, timeout_s=20)
    us = load_layout("us")
    pace_s = DEFAULT_PACE_MS[ConsoleKind.VNC] / 1000
    await console.send(us.events_for_text("stty -echo; cat > /dev/ttyS0\n"), pace_s)
    return serial_console("qemu", ConsoleKind.VNC, console, serial)


async def open_rdp(stack: ExitStack, directory: Path, name: str) -> Console:
    """xrdp or freerdp-shadow, its session appending what is typed to a file."""
    from tests.console.rdp_peers import start_shadow, start_xrdp
    from tests.console.test_rdp_console import mixed_text, open_ready

    peer = start_xrdp(directory) if name == "xrdp" else start_shadow(directory)
    stack.callback(peer.stop)
    console = await open_ready(peer, security="tls")
    text = mixed_text()
    events = load_layout("us").events_for_text(text)
    return Console(name, ConsoleKind.RDP, console, events, text.encode(), peer.typed.read_bytes, peer.clear)


class UsbOnLab:
    """The usb backend on a lab VM, with the vCenter session it types through; closing
    ends the shell's ``cat`` and turns echo back on, as the console was found."""

    def __init__(self, console: Any, vcenter: Any) -> None:
        self.console, self.vcenter = console, vcenter

    async def send(self, events: Sequence[KeyEvent], pace_s: float = 0.0) -> None:
        """Type ``events``, ``pace_s`` apart."""
        await self.console.send(events, pace_s)

    async def close(self) -> None:
        """Ctrl-D to ``cat``, ``stty echo``, log out of vCenter."""
        from beachhead.plugins.keyboard import hold

        us, pace_s = load_layout("us"), DEFAULT_PACE_MS[ConsoleKind.USB] / 1000
        try:
            end_cat = hold([LEFT_CTRL], us.events_for_text("d"))
            await self.console.send([*end_cat, *us.events_for_text("stty echo\n")], pace_s)
        finally:
            await self.vcenter.close()


async def open_con01(lab: dict[str, Any]) -> Console:
    """The lab's con-01 through PutUsbScanCodes, its shell copying lines to the serial port."""
    from beachhead.agent.secrets import Secret
    from beachhead.agent.vsphere.connection import VCenter, VCenterAddress
    from beachhead.plugins.keys_usb import UsbConsole

    entry = next(vm for vm in lab["vms"] if vm["name"] == "con-01")
    serial_log = Path(entry["serial_log"])

    def serial() -> bytes:
        return serial_log.read_bytes().replace(b"\r\n", b"\n") if serial_log.exists() else b""

    await wait_for(lambda: b"beachhead-console: ready" in serial(), 120, "con-01's boot")
    info = lab["vcenter"]
    address = VCenterAddress("127.0.0.1", 443, info["username"], ca_file=Path(info["ca_file"]))
    vcenter = await VCenter(address, Secret(info["password"])).open()
    backend = UsbOnLab(UsbConsole(vcenter, await vcenter.find_vm("con-01"), "con-01"), vcenter)
    us = load_layout("us")
    pace_s = DEFAULT_PACE_MS[ConsoleKind.USB] / 1000
    await asyncio.sleep(2)  # the shell starts on tty1 a moment after the ready line
    await backend.send(us.events_for_text("\nstty -echo; cat > /dev/ttyS0\n"), pace_s)
    return serial_console("con-01", ConsoleKind.USB, backend, serial)


def serial_console(name: str, kind: ConsoleKind, backend: Any, serial: Callable[[], bytes]) -> Console:
    """A console whose guest copies what is typed to its serial port (``cat >
    /dev/ttyS0``): the mixed text, what arrived since the last reset, and the END line."""
    from tests.console.vnc_typing import mixed_text

    us = load_layout("us")
    events, expected = mixed_text(control_keys=False, seed=21)
    offset = [0]

    def reset() -> None:
        offset[0] = len(serial())

    def received() -> bytes:
        text = serial()[offset[0] :]
        head, marker, _ = text.partition(f"\n{END}".encode())
        return head if marker else text.removesuffix(b"\n")  # the newline before END is not the text's

    return Console(name, kind, backend, events, expected, received, reset, us.events_for_text(f"\n{END}\n"))


async def wait_for(condition: Callable[[], object], limit_s: float, what: str) -> None:
    """Wait, bounded, until ``condition()`` holds."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {limit_s}s")
        await asyncio.sleep(0.05)


# -- measuring and reporting -------------------------------------------------------------


async def measure(name: str, runs: int, scratch: Path, lab: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start console ``name``, type the text ``runs`` times at each pace, summarise."""
    with ExitStack() as stack:
        directory = scratch / name
        directory.mkdir()
        if name == "xvnc":
            console = await open_xvnc(stack, directory)
        elif name == "qemu":
            console = await open_qemu(stack, directory)
        elif name == "con-01":
            assert lab is not None
            console = await open_con01(lab)
        else:
            console = await open_rdp(stack, directory, name)
        try:
            default_s = DEFAULT_PACE_MS[console.kind] / 1000
            paces = {"default": default_s, "unpaced": 0.0}
            figures = {pace: Figures() for pace in paces}
            for _run in range(runs):
                for pace, pace_s in paces.items():
                    seconds, arrived, exact = await type_once(console, pace_s)
                    figures[pace].seconds.append(seconds)
                    figures[pace].arrived.append(arrived)
                    figures[pace].exact.append(exact)
        finally:
            await console.backend.close()
    characters = len(console.expected)
    events = len(console.events)
    result: dict[str, Any] = {
        "console": name,
        "backend": console.kind.value,
        "characters": characters,
        "key_events": events,
        "default_pace_ms": DEFAULT_PACE_MS[console.kind],
    }
    for pace, f in figures.items():
        median_s = statistics.median(f.seconds)
        result[pace] = {
            "median_s": round(median_s, 3),  # to the last byte's arrival, lost ones or not
            # only where nothing was lost: keys/s with loss is no rate to type at
            "chars_per_s": round(characters / median_s, 1) if all(f.exact) else None,
            "arrived_median": statistics.median(f.arrived),
            "arrived_min": min(f.arrived),
            "exact_runs": sum(f.exact),
            "runs": runs,
        }
    packer_s = events * PACKER_INTERVAL_S
    result["packer_100ms_computed"] = {"seconds": round(packer_s, 1), "chars_per_s": round(characters / packer_s, 2)}
    return result


def print_table(document: dict[str, Any]) -> None:
    """The figures as a table."""
    print(f"\nkeys: 1 KiB typed into each console, nproc {os.cpu_count()}, {document['runs']} runs, medians")
    print(f"{'console':<8} {'events':>6}  {'pace':<22} {'s':>7} {'chars/s':>8} {'arrived':>13} {'exact':>6}")
    for row in document["consoles"]:
        if "unavailable" in row:
            print(f"{row['console']:<8} {row['unavailable']}")
            continue
        chars = row["characters"]
        for pace, label in (("default", f"default {row['default_pace_ms']:g} ms/event"), ("unpaced", "unpaced")):
            f = row[pace]
            arrived = f"{f['arrived_median']:g}/{chars} (min {f['arrived_min']})"
            rate = "lossy" if f["chars_per_s"] is None else f"{f['chars_per_s']:.1f}"
            print(
                f"{row['console']:<8} {row['key_events']:>6}  {label:<22} {f['median_s']:>7.2f} "
                f"{rate:>8} {arrived:>13} {f['exact_runs']:>3}/{f['runs']}"
            )
        packer = row["packer_100ms_computed"]
        label = "Packer 100 ms/event"
        print(
            f"{row['console']:<8} {row['key_events']:>6}  {label:<22} {packer['seconds']:>7.1f} "
            f"{packer['chars_per_s']:>8.2f} {'(computed: events x 0.1 s, not typed)':>13}"
        )


@contextmanager
def running_lab() -> Iterator[dict[str, Any]]:
    """Hold the lab lock; bring the default lab up unless one runs; down again after if
    this started it. Yields the lab's description (``lab status --json``)."""
    from beachhead.bootstrap.lab.config import load_config
    from beachhead.bootstrap.lab.lab import down, up
    from beachhead.bootstrap.lab.lock import lab_lock

    with lab_lock():
        state, started = up(load_config(None), progress=lambda message: print(f"lab: {message}", file=sys.stderr))
        try:
            yield state.public()
        finally:
            if started:
                down()


def main() -> int:
    """Parse options, start each console, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per console and pace [default: 3]")
    parser.add_argument(
        "--consoles", default=",".join(CONSOLES), help=f"comma-separated, of {', '.join(CONSOLES)} [default: all]"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    options = parser.parse_args()
    names = [name for name in options.consoles.split(",") if name]
    if unknown := sorted(set(names) - set(CONSOLES)):
        parser.error(f"--consoles: unknown {', '.join(unknown)}")
    if options.runs < 1:
        parser.error("--runs: at least 1")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="beachhead-bench-keys-") as scratch, ExitStack() as lab_stack:
        lab: dict[str, Any] | None = None
        for name in names:
            if name in ("xrdp", *LAB_CONSOLES) and os.geteuid() != 0:
                why = "its session mounts account files" if name == "xrdp" else "the vSphere lab"
                rows.append({"console": name, "unavailable": f"needs root ({why})"})
                continue
            try:
                if name in LAB_CONSOLES and lab is None:
                    lab = lab_stack.enter_context(running_lab())
                rows.append(asyncio.run(measure(name, options.runs, Path(scratch), lab)))
            except Exception as exc:  # a console that cannot start is reported, the others still run
                print(f"{name}: {exc}", file=sys.stderr)
                rows.append({"console": name, "unavailable": f"failed: {exc}"})
    document = {"runs": options.runs, "consoles": rows}
    if options.json:
        print(json.dumps(document, indent=2))
    else:
        print_table(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
