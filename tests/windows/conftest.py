"""Fixtures for the Windows stand-in: the WinRM endpoint started by its CLI on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from beachhead.bootstrap.lab.certs import ensure_certificates, issue_certificate, thumbprint

WSMAN_MODULE = "beachhead.bootstrap.lab.windows.wsman"
READY_TIMEOUT_S = 30


@dataclass(frozen=True)
class WsmanEndpoint:
    """A running endpoint: its listener URLs, the guest login, and the files behind it.

    ``http_url`` / ``https_url`` end in ``/wsman``; ``ca_file`` is the CA that issued
    the server certificate (``server_cert``, SAN 127.0.0.1) and the client certificate
    (``client_cert`` / ``client_key``, UPN ``client_upn``, mapped to ``user`` in
    ``cert_map``). ``root`` is the guest root (drive C is ``root / "C"``), ``record``
    the runner's record directory, ``log`` the endpoint's log file.
    """

    http_url: str
    https_url: str
    user: str
    password: str
    users_file: Path
    root: Path
    record: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_upn: str
    cert_map: Path
    log: Path
    pid: int


@contextlib.contextmanager
def start_wsman(directory: Path, *extra: str, user: str = "Administrator") -> Iterator[WsmanEndpoint]:
    """Start the endpoint CLI on 127.0.0.1 (http and https, Basic allowed, certificate
    mapping set up) with state in ``directory``; stop it with SIGTERM at the end."""
    pki = directory / "pki"
    certs = ensure_certificates(pki, "127.0.0.1")
    client_upn = f"{user.lower()}@win-01.lab.invalid"
    client_cert, client_key = issue_certificate(pki, "client", f"{user} client", upn=client_upn)
    root = directory / "root"
    (root / "C" / "Users" / user).mkdir(parents=True, exist_ok=True)
    (root / "C" / "Windows" / "Temp").mkdir(parents=True, exist_ok=True)
    record = directory / "record"
    record.mkdir(exist_ok=True)
    password = "Pw-" + secrets.token_urlsafe(12)
    users = directory / "users"
    users.touch(mode=0o600)
    users.write_text(f"{user}:{password}\n")
    cert_map = directory / "certmap"
    cert_map.write_text(f"{thumbprint(certs.ca_file)} {client_upn} {user}\n")
    log = directory / "wsman.log"
    argv = [
        sys.executable, "-m", WSMAN_MODULE,
        "--root", str(root), "--users", str(users),
        "--http", "127.0.0.1:0", "--https", "127.0.0.1:0",
        "--cert", str(certs.cert_file), "--key", str(certs.key_file),
        "--client-ca", str(certs.ca_file), "--cert-map", str(cert_map), "--allow-basic",
        "--record", str(record), "--log", str(log), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = _ready_line(process)
        yield WsmanEndpoint(
            http_url=f"http://{ready['http'][0]}/wsman",
            https_url=f"https://{ready['https'][0]}/wsman",
            user=user,
            password=password,
            users_file=users,
            root=root,
            record=record,
            ca_file=certs.ca_file,
            server_cert=certs.cert_file,
            server_key=certs.key_file,
            client_cert=client_cert,
            client_key=client_key,
            client_upn=client_upn,
            cert_map=cert_map,
            log=log,
            pid=process.pid,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _ready_line(process: subprocess.Popen[str]) -> dict[str, list[str]]:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    deadline = time.monotonic() + READY_TIMEOUT_S
    buffered = ""
    while time.monotonic() < deadline:
        chunk = process.stdout.readline()
        buffered += chunk or ""
        if buffered.endswith("\n"):
            os.set_blocking(process.stdout.fileno(), True)
            ready: dict[str, list[str]] = json.loads(buffered)
            assert ready["ready"] is True
            return ready
        if process.poll() is not None:
            err = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"wsman endpoint exited with {process.returncode}: {err}")
        time.sleep(0.05)
    raise AssertionError("wsman endpoint did not print its ready line in time")


@pytest.fixture
def wsman_endpoint(tmp_path: Path) -> Iterator[WsmanEndpoint]:
    """A WinRM endpoint on 127.0.0.1 with one guest login (``Administrator``)."""
    with start_wsman(tmp_path) as endpoint:
        yield endpoint
