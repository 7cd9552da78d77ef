"""VNC servers on loopback for the vnc console tests: TigerVNC's Xvnc, whose xterms run
shells that write what is typed to a file, and QEMU's own VNC server in front of the
lab's console VM image (a root shell on tty1, its serial port a file)."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.console.peer_processes import HOST, free_display, free_port, stop, wait_listening, x_lock

XTERM_FONT = ("-fa", "DejaVu Sans Mono", "-fs", "14")
# Bytes go to the file as typed: no line editing, echo, flow control or signals.
RAW_INPUT = "stty -icanon -echo -ixon -isig"
QEMU_VNC_BASE_PORT = 5900


@dataclass
class XvncPeer:
    """A running Xvnc: its VNC port, password and X display."""

    display: int
    port: int
    password: str
    directory: Path
    process: subprocess.Popen[bytes]
    xterms: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def xterm(self, script: str, name: str = "xterm") -> subprocess.Popen[bytes]:
        """An xterm over the whole screen (the newest window, so it has the keyboard:
        X's focus follows the pointer, which stays in the middle) running ``sh -c script``."""
        log = self.directory / f"{name}.log"
        process = subprocess.Popen(
            ["xterm", "-display", f":{self.display}", "-geometry", "90x28+0+0", *XTERM_FONT, "-e", "sh", "-c", script],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.xterms.append(process)
        return process

    def set_layout(self, layout: str) -> None:
        """The X session's keyboard layout (``setxkbmap``)."""
        subprocess.run(["setxkbmap", "-display", f":{self.display}", layout], check=True, timeout=30)

    def stop(self) -> None:
        """Stop the xterms and the server."""
        for process in self.xterms:
            stop(process)
        stop(self.process)
        x_lock(self.display).unlink(missing_ok=True)  # left behind by a server killed outright


def start_xvnc(directory: Path, security: str = "VncAuth") -> XvncPeer:
    """Xvnc on loopback with the ``security`` types (TigerVNC's -SecurityTypes) and a
    fresh password in a 0600 file made by ``vncpasswd -f``."""
    password = secrets.token_hex(4)  # VNC passwords are 8 bytes at most
    password_file = directory / "passwd"
    obfuscated = subprocess.run(["vncpasswd", "-f"], input=password.encode(), capture_output=True, check=True).stdout
    password_file.touch(mode=0o600)
    password_file.write_bytes(obfuscated)
    for _attempt in range(3):
        display, port = free_display(40), free_port()
        log = directory / "xvnc.log"
        process = subprocess.Popen(
            [
                "Xvnc",
                f":{display}",
                "-localhost",
                "-nolisten",
                "tcp",
                "-rfbport",
                str(port),
                "-SecurityTypes",
                security,
                "-PasswordFile",
                str(password_file),
                "-geometry",
                "1024x768",
                "-depth",
                "24",
                "-BlacklistThreshold",
                "1000",  # the wrong-password tests must not lock the others out
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_listening(port, process, log)
        except RuntimeError:
            stop(process)
            continue
        return XvncPeer(display, port, password, directory, process)
    raise RuntimeError(f"Xvnc did not start: {(directory / 'xvnc.log').read_text(errors='replace')[-2000:]}")


@dataclass
class QemuPeer:
    """A running QEMU console VM whose VNC server wants :attr:`password` (None: no password)."""

    port: int
    password: str | None
    serial: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop QEMU."""
        stop(self.process)


def start_qemu(directory: Path, *, password: bool = True, boot: bool = True, key_delay_ms: int | None = 0) -> QemuPeer:
    """QEMU's VNC server on loopback: with ``boot`` the lab's console VM (Debian's
    kernel, the busybox initramfs, a root shell on tty1), else an empty machine. The
    password reaches QEMU in a 0600 file (``-object secret``); keys are not delayed by
    QEMU (``key-delay-ms=0``: the client paces them) unless ``key_delay_ms`` says
    otherwise (None: QEMU's default, as the lab's con-01 has it)."""
    from beachhead.bootstrap.lab import qemu_vm

    secret = secrets.token_hex(4) if password else None
    serial = directory / "serial.log"
    log = directory / "qemu.log"
    command = [str(qemu_vm.QEMU), "-nodefaults", "-display", "none", "-accel", "tcg", "-m", str(qemu_vm.MEMORY_MB)]
    if boot:
        image = qemu_vm.console_image()
        command += ["-machine", "pc", "-vga", "std", "-nic", "none", "-serial", f"file:{serial}"]
        command += ["-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", qemu_vm.KERNEL_APPEND]
    else:
        command += ["-machine", "none"]
    port = free_port(QEMU_VNC_BASE_PORT + 10)
    vnc = f"{HOST}:{port - QEMU_VNC_BASE_PORT}"
    if key_delay_ms is not None:
        vnc += f",key-delay-ms={key_delay_ms}"
    if secret is not None:
        secret_file = directory / "vnc-password"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secret)
        command += ["-object", f"secret,id=vncpass,file={secret_file}"]
        vnc += ",password-secret=vncpass"
    command += ["-vnc", vnc]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_listening(port, process, log)
    return QemuPeer(port, secret, serial, process)
