"""The lab's console VM: a QEMU machine (TCG) booting Debian's kernel and a small
busybox initramfs to a root shell on tty1, with no network configured.

Both are made at lab build time and cached under the lab's build cache
(:func:`beachhead.bootstrap.lab.build.cache_dir`): the kernel is Debian's, fetched as a
package with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (nothing is
installed on the host); the initramfs is a gzipped ``newc`` cpio archive written here,
named after a hash of everything that goes into it, so it is rebuilt exactly when one
of its inputs (this file, busybox, dropbear, their libraries, the kernel) changes.

The initramfs holds busybox (every applet linked), the kernel's ``e1000`` module (the
NIC QEMU gives the VM), dropbear with ``dropbearkey`` and the shared libraries they
need, and a busybox ``init`` whose start script loads the NIC driver, makes an ed25519
host key for dropbear, and writes one ready line to the serial port. The vCenter
launcher starts QEMU at power-on (``launcher/qemu_console.go``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beachhead.bootstrap.lab import system
from beachhead.bootstrap.lab.build import cache_dir
from beachhead.bootstrap.lab.system import LabError, run

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = (Path("/usr/sbin/dropbear"), Path("/usr/bin/dropbearkey"))
# OpenSSH's SFTP server (openssh-server's dependency), where Debian's dropbear runs it,
# so an SSH session's file transfers work once a recipe has started dropbear.
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
SFTP_SERVER_IN_GUEST = "usr/lib/sftp-server"
QEMU = Path("/usr/bin/qemu-system-x86_64")
NIC_MODULE = "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"
READY_LINE = "beachhead-console: ready"
MEMORY_MB = 256
QEMU_MARKER = "qemu-system"
# Kernel messages go to the serial port only, so tty1 shows nothing but the shell.
KERNEL_APPEND = "console=ttyS0 quiet panic=-1"

RC_SCRIPT = f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
for word in $(cat /proc/cmdline); do
  case "$word" in beachhead.hostname=*) hostname "${{word#*=}}" ;; esac
done
insmod /lib/modules/e1000.ko
ip link set lo up
dropbearkey -t ed25519 -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null 2>&1
echo "{READY_LINE} $(hostname) $(dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep '^ssh-')" > /dev/ttyS0
"""
INITTAB = """::sysinit:/etc/rcS
tty1::respawn:/etc/console-shell
::ctrlaltdel:/bin/reboot
"""
CONSOLE_SHELL = """#!/bin/sh
printf '\\033[H\\033[2J'
cd /root
exec /bin/sh -l
"""
PROFILE = """export HOME=/root PATH=/sbin:/bin:/usr/sbin:/usr/bin
PS1='\\h:\\w# '
"""
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/shells": "/bin/sh\n",
    "etc/profile": PROFILE,
    "etc/inittab": INITTAB,
}


@dataclass(frozen=True)
class ConsoleImage:
    """What QEMU boots: Debian's kernel and the lab's initramfs."""

    kernel: Path
    initrd: Path
    kernel_package: str


def _kernel_package() -> tuple[str, str] | None:
    """The versioned kernel package apt's kernel metapackage depends on, and its
    version (None when apt's lists lack it)."""
    shown = run("apt-cache", "show", "--no-all-versions", KERNEL_METAPACKAGE, check=False).stdout
    match = re.search(r"^Depends: .*?(linux-image-\S+-amd64) \(= ([^)\s]+)\)", shown, re.MULTILINE)
    return (match.group(1), match.group(2)) if match else None


def kernel_dir() -> Path:
    """A directory with Debian's ``vmlinuz`` and the NIC module of that kernel, from
    the kernel package unpacked into the cache (downloaded the first time)."""
    kernels = cache_dir() / "kernels"
    wanted = _kernel_package()
    if wanted is None:
        cached = sorted(kernels.glob("linux-image-*"), key=lambda path: path.stat().st_mtime)
        if cached:
            return cached[-1]  # apt's lists are gone: the newest kernel unpacked before
        raise LabError(f"apt knows no {KERNEL_METAPACKAGE} package: run `apt-get update` (bootstrap/install.sh)")
    package, version = wanted
    target = kernels / f"{package}_{version.replace(':', '%')}"
    if (target / "vmlinuz").is_file() and (target / "e1000.ko").is_file():
        return target
    kernels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernels) as scratch:
        work = Path(scratch)
        download = subprocess.run(
            ["apt-get", "download", "-q", f"{package}={version}"],
            cwd=work,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        debs = list(work.glob("*.deb"))
        if download.returncode != 0 or not debs:
            raise LabError(f"apt-get download {package}={version} failed: {download.stderr.strip()}")
        run("dpkg-deb", "-x", str(debs[0]), str(work / "root"))
        release = package.removeprefix("linux-image-")
        partial = work / "kernel"
        partial.mkdir()
        shutil.copyfile(work / "root/boot" / f"vmlinuz-{release}", partial / "vmlinuz")
        module = work / "root/lib/modules" / release / NIC_MODULE
        compressed = module.with_name(module.name + ".xz")
        data = module.read_bytes() if module.exists() else lzma.decompress(compressed.read_bytes())
        (partial / "e1000.ko").write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    for old in kernels.glob("linux-image-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _libraries(binaries: tuple[Path, ...]) -> list[Path]:
    """The shared libraries (dynamic loader included) ``binaries`` load, per ``ldd``."""
    found: set[Path] = set()
    for binary in binaries:
        for line in run("ldd", str(binary)).stdout.splitlines():
            match = re.search(r"(/\S+) \(0x", line)
            if match:
                found.add(Path(match.group(1)))
    return sorted(found)


class _Cpio:
    """A ``newc`` cpio archive, the format the kernel unpacks an initramfs from."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 0
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self.inode += 1
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-self.out.tell() % 4) + data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        """Add ``name`` and its parents as directories (once each)."""
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path and path not in self.dirs:
                self.dirs.add(path)
                self._entry(path, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        """Add a character device node (no mknod, hence no root, needed)."""
        self.directory(os.path.dirname(name))
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        """The archive, with its trailer."""
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def _busybox_applets() -> list[str]:
    return [line.strip("/") for line in run(str(BUSYBOX), "--list-full").stdout.split() if line]


def _fingerprint(kernel: Path, libraries: list[Path]) -> str:
    """A hash of every host file the initramfs is made of, and of this file."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in (BUSYBOX, *DROPBEAR, SFTP_SERVER, *libraries, kernel / "e1000.ko"):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _build_initramfs(kernel: Path, libraries: list[Path]) -> bytes:
    archive = _Cpio()
    for name in ("proc", "sys", "dev", "tmp", "root", "etc/dropbear", "var/log", "run"):
        archive.directory(name)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _busybox_applets():
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    archive.symlink("init", "/bin/busybox")
    for binary in DROPBEAR:
        archive.file(str(binary).lstrip("/"), binary.read_bytes(), 0o755)
    archive.file(SFTP_SERVER_IN_GUEST, SFTP_SERVER.read_bytes(), 0o755)
    for library in libraries:
        archive.file(str(library).lstrip("/"), library.resolve().read_bytes(), 0o755)
    archive.file("lib/modules/e1000.ko", (kernel / "e1000.ko").read_bytes())
    archive.file("etc/rcS", RC_SCRIPT.encode(), 0o755)
    archive.file("etc/console-shell", CONSOLE_SHELL.encode(), 0o755)
    for name, text in ETC_FILES.items():
        archive.file(name, text.encode(), 0o600 if name == "etc/shadow" else 0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def console_image() -> ConsoleImage:
    """The kernel and initramfs the console VMs boot, made first if the cache lacks them."""
    if not QEMU.exists() or not BUSYBOX.exists() or not all(path.exists() for path in (*DROPBEAR, SFTP_SERVER)):
        raise LabError("the console VM needs qemu-system-x86, busybox-static and dropbear-bin (bootstrap/install.sh)")
    kernel = kernel_dir()
    libraries = _libraries((*DROPBEAR, SFTP_SERVER))
    initrd = cache_dir() / f"console-initramfs-{_fingerprint(kernel, libraries)}.cpio.gz"
    if not initrd.exists():
        partial = initrd.with_suffix(".part")
        partial.write_bytes(_build_initramfs(kernel, libraries))
        partial.replace(initrd)
        for old in cache_dir().glob("console-initramfs-*.cpio.gz"):
            if old != initrd:
                old.unlink(missing_ok=True)
    return ConsoleImage(kernel / "vmlinuz", initrd, kernel.name)


def tap_name(index: int) -> str:
    """The host tap interface of the ``index``-th lab VM, a console VM's NIC."""
    return f"bhlab-q{index}"


def make_tap(name: str, bridge: str) -> None:
    """A tap interface on the bridge, up, for QEMU to attach the VM's NIC to."""
    system.delete_link(name)
    run("ip", "tuntap", "add", "dev", name, "mode", "tap")
    run("ip", "link", "set", name, "master", bridge, "up")


def prepare(
    name: str, guest_id: str, ip: str, mac: str, index: int, bridge: str, directory: Path, image: ConsoleImage
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A console VM's tap interface and file names. Returns its public description
    (``lab up --json``) and its entry in the launcher's configuration; the launcher
    starts QEMU when the VM powers on."""
    guests_dir = directory / "guests"
    guests_dir.mkdir(parents=True, exist_ok=True)
    tap = tap_name(index)
    make_tap(tap, bridge)
    base = guests_dir / name
    qemu = {
        "binary": str(QEMU),
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "append": KERNEL_APPEND,
        "launcher_qmp_socket": f"{base}.launcher.qmp",
        "qmp_socket": f"{base}.qmp",
        "serial_log": f"{base}.serial.log",
        "log": f"{base}.qemu.log",
        "pid_file": f"{base}.qemu.pid",
        "tap": tap,
        "memory_mb": MEMORY_MB,
    }
    public = {
        "name": name,
        "os": "linux",
        "guest_id": guest_id,
        "ip": ip,  # not configured in the guest: a typed recipe adds it
        "guest_username": None,
        "guest_password": None,
        "ssh_host_key": None,
        "cloudbase_init": False,
        "console": "qemu",
        "rdp_port": None,
        "rdp_shadow_port": None,
        "qmp_socket": qemu["qmp_socket"],
        "serial_log": qemu["serial_log"],
    }
    runtime = {
        "name": name,
        "os": "linux",
        "guest_id": guest_id,
        "ip": ip,
        "guest_username": "",
        "guest_password": "",
        "mac": mac,
        "hostname": name,
        "holder_pid": 0,
        "root": str(base),
        "sshd_config": "",
        "console_log": "",
        "guest_uid": 0,
        "wsman": None,
        "cloudbase_init": None,
        "qemu": qemu,
    }
    return public, runtime


def stop_leftovers(guests_dir: Path) -> list[str]:
    """End the QEMU processes whose pid files are in ``guests_dir`` (what a launcher
    that crashed left running). Returns what it stopped."""
    stopped = []
    for pid_file in sorted(guests_dir.glob("*.qemu.pid")) if guests_dir.is_dir() else ():
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        marker = str(pid_file)  # QEMU's command line names its pid file
        if system.alive(pid, marker):
            system.stop_process(pid, marker, timeout=5)
            stopped.append(f"QEMU {pid_file.name.removesuffix('.qemu.pid')} (pid {pid})")
    return stopped
