"""Running cloudbase-init's own classes (in ``.venv-cloudbase-init``, made by
bootstrap/install.sh) through ``cloudbase_init_driver.py``, and the key material a
Windows flow needs: an ``ssh-rsa`` key pair and a WinRM client certificate."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
CLOUDBASE_PYTHON = REPO / ".venv-cloudbase-init" / "bin" / "python"
DRIVER = Path(__file__).with_name("cloudbase_init_driver.py")
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")  # the SAN cloudbase-init maps to a user


def cloudbase_init(*args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run the driver with cloudbase-init's Python; the JSON it prints."""
    assert CLOUDBASE_PYTHON.exists(), f"{CLOUDBASE_PYTHON} is missing: run bootstrap/install.sh"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "*", "no_proxy": "*"}
    done = subprocess.run(
        [str(CLOUDBASE_PYTHON), str(DRIVER), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def rsa_key_pair(directory: Path, name: str = "admin") -> tuple[str, Path]:
    """A new RSA key: its ``ssh-rsa`` public line and the path of its private key (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / f"{name}.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {name}@beachhead", private


def client_certificate(upn: str = "administrator@win-01", key_file: Path | None = None) -> str:
    """A self-signed client-authentication certificate with a UPN subject alternative
    name, as WinRM certificate mapping (and cloudbase-init's plugin) requires; PEM. Its
    private key is written to ``key_file`` (PEM, 0600) when given."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_file is not None:
        key_file.touch(mode=0o600)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, upn.split("@")[0])])
    now = datetime.datetime.now(datetime.UTC)
    upn_der = b"\x0c" + bytes([len(upn)]) + upn.encode()  # a DER UTF8String
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.OtherName(UPN_OID, upn_der)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()
