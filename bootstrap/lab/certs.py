"""The lab's certificate authority and the vCenter's server certificate.

Clients verify the lab's vCenter against ``ca.pem`` instead of turning checks off.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

VALIDITY = datetime.timedelta(days=825)
UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")  # Microsoft's user principal name otherName
CA_KEY = "ca-key.pem"  # kept (0600) so that guests' certificates can be issued later


@dataclass(frozen=True)
class ServerCertificate:
    """Paths of the CA certificate and of the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Beachhead lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def ensure_certificates(directory: Path, host: str) -> ServerCertificate:
    """Create a CA and a server certificate for ``host`` (an IP address, plus the name
    ``localhost``) in ``directory``, unless they exist and still cover ``host``."""
    paths = ServerCertificate(directory / "ca.pem", directory / "vcenter.pem", directory / "vcenter-key.pem")
    files = (paths.ca_file, paths.cert_file, paths.key_file, directory / CA_KEY)
    if all(p.exists() for p in files) and _covers(paths.cert_file, host):
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Beachhead lab CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("Beachhead lab vCenter"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / CA_KEY, ca_key)
    paths.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.key_file, server_key)
    return paths


def _covers(cert_file: Path, host: str) -> bool:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)


def issue_certificate(
    directory: Path,
    stem: str,
    common_name: str,
    *,
    hosts: tuple[str, ...] = (),
    upn: str | None = None,
) -> tuple[Path, Path]:
    """Issue a certificate from the CA in ``directory`` (made by
    :func:`ensure_certificates`) as ``STEM.pem`` and ``STEM-key.pem``: a server
    certificate for ``hosts`` (IP addresses or DNS names), or, with ``upn``, a client
    certificate carrying that user principal name in its subjectAltName (otherName
    1.3.6.1.4.1.311.20.2.3), as Windows maps client certificates to users."""
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if upn is not None:
        encoded = upn.encode("utf-8")
        names.append(x509.OtherName(UPN, bytes([0x0C, len(encoded)]) + encoded))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if upn is not None else ExtendedKeyUsageOID.SERVER_AUTH
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.unlink(missing_ok=True)
    _write_key(key_file, key)
    return cert_file, key_file


def thumbprint(cert_file: Path) -> str:
    """The SHA-1 thumbprint (upper-case hex) of the first certificate in a PEM file, as
    Windows names certificates."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - a name, not a security check
