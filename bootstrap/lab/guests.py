"""Lab guests: a guest root directory and a holder process whose network, mount and
UTS namespaces are the guest's.

A Linux guest sees its own ``/tmp``, ``/root``, ``/home`` and ``/var/tmp``, bind-mounted
from its root directory, and the host's ``/etc``, ``/opt``, ``/srv``, ``/usr/local`` and
``/var`` through overlays whose upper layers are its own: what it writes there stays in
the guest, and its account files, sudoers (its login may sudo with its password),
``/etc/hosts`` (its own name) and ``/etc/resolv.conf`` (no name server) are its own
files in the upper ``/etc``. It shares the host's programs (``/usr``). Its sshd and
console are started by the vCenter launcher when the VM powers on, inside these
namespaces. A Windows stand-in has drive folders (``C/...``) under its root directory.
Every guest, Windows stand-in included, has its own ``/etc/dhcp`` (its DHCP client's
configuration and hooks, see :mod:`beachhead.bootstrap.lab.dhcp`).
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from beachhead.bootstrap.lab.system import NETNS_DIR, LabError
from beachhead.bootstrap.local_sshd import ensure_privsep_dir, keygen, password_hash, sudoers

PRIVATE_DIRS = ("tmp", "root", "home", "var/tmp")
# Host directories a guest sees through an overlay with an upper layer of its own (the
# upper layer of /etc is the guest root's etc/, which holds its own account files).
OVERLAID_DIRS = ("etc", "opt", "srv", "usr/local", "var")
HOLDER_MARKER = "beachhead-lab-holder"
HOLDER_START_S = 10.0
FIRST_GUEST_UID = 1000


@dataclass(frozen=True)
class GuestLayout:
    """Where one guest's files live on the host."""

    root: Path

    @property
    def sshd_config(self) -> Path:
        """The guest sshd's configuration."""
        return self.root / "etc/ssh/sshd_config"

    @property
    def ssh_host_key(self) -> Path:
        """The guest sshd's private host key (the public one is beside it, ``.pub``)."""
        return self.root / "etc/ssh/ssh_host_ed25519_key"

    def ssh_host_public_key(self) -> str:
        """The guest sshd's public host key, ``TYPE BASE64``, for a known_hosts entry."""
        return " ".join(self.ssh_host_key.with_suffix(".pub").read_text().split()[:2])

    @property
    def console_log(self) -> Path:
        """What the guest console printed."""
        return self.root.with_name(self.root.name + ".console.log")

    @property
    def dhcp_dir(self) -> Path:
        """The guest's ``/etc/dhcp``."""
        return self.root / "etc/dhcp"

    def overlay_upper(self, directory: str) -> Path:
        """The upper layer of the guest's overlay on host ``/directory``."""
        return self.root / "etc" if directory == "etc" else self.root / ".overlay" / directory

    def overlay_work(self, directory: str) -> Path:
        """The overlay's work directory (same file system as the upper layer)."""
        return self.root / ".overlay-work" / directory

    @property
    def dhclient_leases(self) -> Path:
        """The guest DHCP client's lease file."""
        return self.root.with_name(self.root.name + ".dhclient.leases")

    @property
    def dhclient_pid(self) -> Path:
        """The guest DHCP client's pid file."""
        return self.root.with_name(self.root.name + ".dhclient.pid")

    @property
    def dhclient_log(self) -> Path:
        """What the guest DHCP client printed."""
        return self.root.with_name(self.root.name + ".dhclient.log")


def prepare_linux_root(layout: GuestLayout, hostname: str, ip: str, username: str, password: str) -> int:
    """Create the guest's private directories, its login (``username`` with
    ``password``) and its sshd's host key and configuration; return the login's uid."""
    root = layout.root
    for sub in PRIVATE_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for directory in OVERLAID_DIRS:
        layout.overlay_upper(directory).mkdir(parents=True, exist_ok=True)
        layout.overlay_work(directory).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    etc = root / "etc"
    # No name server: lookups stay inside the guest (and fail fast) instead of waiting
    # on, or leaking to, the host's resolver.
    (etc / "resolv.conf").write_text("# lab guest: names resolve from /etc/hosts only\nnameserver 127.0.0.1\n")
    uid = _write_accounts(root, username, password)
    _write_identity(layout, hostname, ip)
    return uid


def prepare_clone_root(source: GuestLayout, layout: GuestLayout, hostname: str, ip: str) -> None:
    """A clone's guest root: a copy of the source guest's files (its accounts, its
    changes to ``/etc``, ``/var`` and the rest, its home directories), as a clone's
    disk is a copy of the source's, with its own host name, address and SSH host key
    (as a template generalized for cloning gets at first boot)."""
    # cp -a, not shutil: the overlays' upper layers hold whiteouts (device nodes) and
    # opaque directories (trusted.* xattrs) that record what the guest deleted.
    copied = subprocess.run(
        ["cp", "-a", "--no-target-directory", str(source.root), str(layout.root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if copied.returncode != 0:
        raise LabError(f"copying guest {source.root.name}'s files for its clone failed: {copied.stderr.strip()}")
    shutil.rmtree(layout.root / ".overlay-work")
    for directory in OVERLAID_DIRS:
        layout.overlay_work(directory).mkdir(parents=True, exist_ok=True)
    for key in (layout.ssh_host_key, layout.ssh_host_key.with_suffix(".pub")):
        key.unlink(missing_ok=True)
    _write_identity(layout, hostname, ip)


def _write_identity(layout: GuestLayout, hostname: str, ip: str) -> None:
    """What makes a Linux guest this machine: host name, ``/etc/hosts``, its sshd's
    host key (made when missing) and configuration (listening on ``ip``)."""
    etc = layout.root / "etc"
    (etc / "ssh").mkdir(parents=True, exist_ok=True)
    (etc / "hostname").write_text(hostname + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    ensure_privsep_dir()  # guests share the host's /run
    host_key = layout.ssh_host_key
    if not host_key.exists():
        keygen(host_key, f"root@{hostname}")
    layout.sshd_config.write_text(
        "\n".join(
            [
                f"ListenAddress {ip}:22",
                f"HostKey {host_key}",
                "PidFile none",
                "UsePAM no",
                "PermitRootLogin yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "Subsystem sftp internal-sftp",
                "MaxStartups 200",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )


@functools.lru_cache(maxsize=64)
def _password_hash(password: str) -> str:
    """:func:`password_hash`, once per password (a fleet's VMs share theirs)."""
    return password_hash(password)


def login_uid(layout: GuestLayout, username: str) -> int:
    """The uid of the guest login ``username`` in the guest's own ``/etc/passwd``."""
    for line in (layout.root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == username:
            return int(fields[2])
    raise LabError(f"guest {layout.root.name}: no account {username!r} in its /etc/passwd")


def _write_accounts(root: Path, username: str, password: str) -> int:
    """The host's system accounts, locked, plus the guest login with its password, under
    a uid no host account has. Returns that uid."""
    accounts = [line for line in Path("/etc/passwd").read_text().splitlines() if line.split(":")[0] != username]
    groups = [line for line in Path("/etc/group").read_text().splitlines() if line.split(":")[0] != username]
    uid = 0
    if username == "root":
        accounts.insert(0, "root:x:0:0:root:/root:/bin/bash")
        groups.insert(0, "root:x:0:")
    else:
        taken = {int(line.split(":")[2]) for line in accounts + groups if line.count(":") >= 2}
        uid = next(n for n in range(FIRST_GUEST_UID, 60000) if n not in taken)
        home = root / "home" / username
        home.mkdir(exist_ok=True)
        os.chown(home, uid, uid)
        accounts.append(f"{username}:x:{uid}:{uid}::/home/{username}:/bin/bash")
        groups.append(f"{username}:x:{uid}:")
    hashed = _password_hash(password)
    shadow_lines = []
    for line in accounts:
        name = line.split(":")[0]
        shadow_lines.append(f"{name}:{hashed if name == username else '*'}:19000:0:99999:7:::")
    etc = root / "etc"
    (etc / "passwd").write_text("\n".join(accounts) + "\n")
    (etc / "group").write_text("\n".join(groups) + "\n")
    shadow = etc / "shadow"
    shadow.write_text("\n".join(shadow_lines) + "\n")
    shadow.chmod(0o640)
    sudoers_file = etc / "sudoers"
    sudoers_file.write_text(sudoers(username))
    sudoers_file.chmod(0o440)
    return uid


def prepare_windows_root(layout: GuestLayout, username: str) -> None:
    """The Windows stand-in's drive: ``C/Users/USER``, ``C/Windows/Temp``."""
    for sub in (f"C/Users/{username}", "C/Windows/Temp"):
        (layout.root / sub).mkdir(parents=True, exist_ok=True)


def start_holder(netns: str, layout: GuestLayout, hostname: str, linux: bool) -> int:
    """Start the process that holds the guest's namespaces and return its pid."""
    mounts = _overlay_mounts(layout) if linux else []
    # The guest's /etc/dhcp replaces the host's whole (no host hook runs in a guest).
    mounts.append(f"mount --bind {shlex.quote(str(layout.dhcp_dir))} /etc/dhcp")
    if linux:
        mounts += [f"mount --bind {shlex.quote(str(layout.root / d))} /{d}" for d in PRIVATE_DIRS]
    script = " && ".join([*mounts, f"hostname {shlex.quote(hostname)}", f"exec -a {HOLDER_MARKER} sleep infinity"])
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--propagation", "private", "bash", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    # ip, unshare and sh exec one another, so the pid stays the holder's.
    deadline = time.monotonic() + HOLDER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise LabError(f"guest {hostname}: namespace holder exited: {error.strip()}")
        if _holding(process.pid, netns):
            return process.pid
        time.sleep(0.02)
    raise LabError(f"guest {hostname}: namespace holder did not start within {HOLDER_START_S:g}s")


def _overlay_mounts(layout: GuestLayout) -> list[str]:
    """Overlay the host directories a guest writes to with upper layers of its own.

    An overlay, not bind mounts of single files: the host replacing one of its files
    (apt renaming a new /etc/passwd into place) then cannot detach the guest's copy."""
    mounts = []
    for directory in OVERLAID_DIRS:
        if not Path("/", directory).is_dir():
            continue
        options = (
            f"lowerdir=/{directory},upperdir={layout.overlay_upper(directory)},workdir={layout.overlay_work(directory)}"
        )
        mounts.append(f"mount -t overlay beachhead-guest -o {shlex.quote(options)} /{directory}")
    return mounts


def _holding(pid: int, netns: str) -> bool:
    """Whether ``pid`` has become the holder: ``sleep`` under the marker name (so every
    mount is done), in the guest's network namespace and a mount namespace of its own.

    The marker alone is not enough: it is in the script, so on the command line of
    ``ip`` and ``unshare`` from the start, before they enter any namespace."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        net, mnt = _ns_id(f"/proc/{pid}/ns/net"), _ns_id(f"/proc/{pid}/ns/mnt")
        guest_net, host_mnt = _ns_id(str(NETNS_DIR / netns)), _ns_id("/proc/self/ns/mnt")
    except OSError:
        return False
    return argv0 == HOLDER_MARKER.encode() and net == guest_net and mnt != host_mnt


def _ns_id(path: str) -> tuple[int, int]:
    """Which namespace ``path`` (a /proc/PID/ns link or a bind mount of one) is."""
    info = os.stat(path)
    return info.st_dev, info.st_ino
