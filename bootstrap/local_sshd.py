"""A real OpenSSH sshd on loopback with accounts of its own, for the demo and the tests.

Run as root, sshd starts in a private mount namespace where ``/etc/passwd``,
``/etc/shadow``, ``/etc/group`` and ``/etc/sudoers`` are replaced by generated copies
holding a password-protected, sudo-capable account: password authentication and
``sudo`` with a password work for real, and the host's accounts are never touched.
Both logins get fresh home directories, so the guest's shells never source the host
root's start-up files and the guest's ``~`` is not the host's.
Run as another user, sshd serves only that user, by key.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
START_TIMEOUT_S = 15.0
SUDO_USER = "bhuser"
SUDO_UID = 2917


@dataclass(frozen=True)
class SshAccount:
    """A login on the local sshd: its key, and its password when it has one."""

    name: str
    key_file: Path
    password: str | None = None


def ensure_privsep_dir() -> None:
    """Create sshd's privilege-separation directory, /run/sshd, which Debian's ssh
    service makes at boot and so is missing on a machine where that service never ran."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def keygen(path: Path, comment: str) -> str:
    """Generate an unencrypted ed25519 key pair at ``path`` (0600) and ``path.pub``, as
    ``ssh-keygen`` writes them, in this process (the lab makes one per guest, hundreds
    for a fleet); return the public key line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(private)
    line = f"{public.decode()} {comment}"
    Path(f"{path}.pub").write_text(line + "\n")
    return line


def _with_home(passwd: str, user: str, home: Path) -> str:
    """``passwd`` with ``user``'s home directory replaced."""
    lines = []
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == user:
            fields[5] = str(home)
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


def password_hash(password: str) -> str:
    """A SHA-512 crypt hash of ``password``, as /etc/shadow holds it."""
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def sudoers(login: str) -> str:
    """A sudoers file in which root needs no password and ``login`` may run anything
    with its own password."""
    rules = "root ALL=(ALL:ALL) NOPASSWD: ALL\n" + (f"{login} ALL=(ALL:ALL) ALL\n" if login != "root" else "")
    return "Defaults !lecture\nDefaults env_reset\n" + rules


class LocalSshd:
    """Starts and stops one sshd on ``host`` (loopback) with generated keys and accounts."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or _free_port(host)
        self.isolated = os.geteuid() == 0
        self.known_hosts = workdir / "known_hosts"
        self.accounts: dict[str, SshAccount] = {}
        self._process: subprocess.Popen[bytes] | None = None
        # What sshd reads as the logging-in user (authorized keys, the sudo account's
        # home) must be reachable from /; test temp dirs often are not.
        self.public = Path(tempfile.mkdtemp(prefix="beachhead-sshd-"))
        self.public.chmod(0o755)
        self._log = workdir / "sshd.log"

    # -- set-up ---------------------------------------------------------------------
    def _prepare(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub, mode in (("keys", 0o700), ("etc", 0o755)):
            (self.workdir / sub).mkdir(exist_ok=True)
            (self.workdir / sub).chmod(mode)
        (self.public / "authorized_keys").mkdir(exist_ok=True)
        host_key = self.workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            keygen(host_key, "beachhead-local-sshd")
        host_pub = Path(f"{host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")

        login = "root" if self.isolated else getpass.getuser()
        names = [login, SUDO_USER] if self.isolated else [login]
        for name in names:
            key = self.workdir / "keys" / name
            if not key.exists():
                keygen(key, f"{name}@beachhead-local-sshd")
            authorized = self.public / "authorized_keys" / name
            authorized.write_text(Path(f"{key}.pub").read_text())
            authorized.chmod(0o644)
            password = secrets.token_urlsafe(18) if name == SUDO_USER else None
            self.accounts[name] = SshAccount(name, key, password)
        if self.isolated:
            self._write_accounts()

        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}:{self.port}",
                    f"HostKey {host_key}",
                    "PidFile none",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    f"AuthorizedKeysFile {self.public}/authorized_keys/%u",
                    "Subsystem sftp internal-sftp",
                    # Fan-out runs open many connections at once; sshd's default of 10
                    # unauthenticated connections would drop most of them.
                    "MaxStartups 1000",
                    "MaxSessions 100",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return config

    def _write_accounts(self) -> None:
        """Generated account files the namespace mounts over the host's."""
        etc = self.workdir / "etc"
        account = self.accounts[SUDO_USER]
        assert account.password is not None
        homes = {name: self._make_home(name, uid) for name, uid in (("root", 0), (SUDO_USER, SUDO_UID))}
        passwd = _with_home(Path("/etc/passwd").read_text(), "root", homes["root"])
        group = Path("/etc/group").read_text()
        shadow = Path("/etc/shadow").read_text() if Path("/etc/shadow").exists() else ""
        (etc / "passwd").write_text(passwd + f"{SUDO_USER}:x:{SUDO_UID}:{SUDO_UID}::{homes[SUDO_USER]}:/bin/sh\n")
        (etc / "group").write_text(group + f"{SUDO_USER}:x:{SUDO_UID}:\n")
        shadow_file = etc / "shadow"
        shadow_file.write_text(shadow + f"{SUDO_USER}:{password_hash(account.password)}:19000:0:99999:7:::\n")
        shadow_file.chmod(0o640)
        sudoers_file = etc / "sudoers"
        sudoers_file.write_text(sudoers(SUDO_USER))
        sudoers_file.chmod(0o440)

    def _make_home(self, name: str, uid: int) -> Path:
        """A fresh, empty home: logins here never run the host's shell start-up files,
        whose side effects (version-manager hooks and the like) are not the guest's."""
        home = self.public / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        os.chown(home, uid, uid)
        return home

    def _command(self, config: Path) -> list[str]:
        sshd = [SSHD, "-D", "-e", "-f", str(config)]
        if not self.isolated:
            return sshd
        ensure_privsep_dir()
        etc = self.workdir / "etc"
        mounts = [f"mount --bind {etc / name} /etc/{name}" for name in ("passwd", "group", "shadow")]
        if Path("/etc/sudoers").exists():
            mounts.append(f"mount --bind {etc / 'sudoers'} /etc/sudoers")
        script = " && ".join([*mounts, 'exec "$@"'])
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sshd", *sshd]

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> LocalSshd:
        """Start sshd and return once it accepts connections (bounded wait)."""
        config = self._prepare()
        log = self._log.open("ab")
        self._process = subprocess.Popen(
            self._command(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._process.returncode}: {self.log_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.host}:{self.port} within {START_TIMEOUT_S}s")

    def stop(self) -> None:
        """Stop sshd and every session it started, and remove its public files."""
        if self._process is None:
            shutil.rmtree(self.public, ignore_errors=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, 15)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, 9)
            self._process.wait(timeout=5)
        self._process = None
        shutil.rmtree(self.public, ignore_errors=True)

    def log_text(self) -> str:
        """What sshd logged so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def __enter__(self) -> LocalSshd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- targets ------------------------------------------------------------------------
    @property
    def login(self) -> SshAccount:
        """The key-authenticated account (root when isolated, else the current user)."""
        return next(iter(self.accounts.values()))

    @property
    def sudo_account(self) -> SshAccount | None:
        """The password-protected account that may sudo with its password (root only)."""
        return self.accounts.get(SUDO_USER)

    def uri(
        self, account: SshAccount | None = None, *, password_env: str | None = None, name: str | None = None
    ) -> str:
        """A target URI for this sshd: key auth, or password auth when ``password_env``
        names the variable holding the account's password."""
        account = account or self.login
        query = [f"known_hosts={self.known_hosts}"]
        if password_env:
            query.append(f"password_env={password_env}")
        else:
            query.append(f"key={account.key_file}")
        if name:
            query.append(f"name={name}")
        return f"ssh://{account.name}@{self.host}:{self.port}?" + "&".join(query)
