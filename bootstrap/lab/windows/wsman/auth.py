"""Who a request comes from: NTLM (per connection, with WinRM message encryption over
http and ``tls-server-end-point`` channel binding over https), Basic (https only) and
client certificates mapped to a guest login (https only).

The users file (``USER:PASSWORD`` lines) is read again at every authentication, so a
password changed in the guest takes effect at the next login, as on Windows.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import spnego
import spnego.channel_bindings
import spnego.exceptions
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
CERT_AUTH = "http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/mutual"
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
_LENGTH = re.compile(rb"Length=(\d+)")


class AuthError(Exception):
    """Authentication failed: answer 401."""


def read_users(path: Path) -> dict[str, tuple[str, str]]:
    """``{lower-case name: (name, password)}`` from a ``USER:PASSWORD`` file."""
    users: dict[str, tuple[str, str]] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            name, sep, password = line.partition(":")
            if sep and name.strip():
                users[name.strip().lower()] = (name.strip(), password)
    return users


def bare_user(principal: str) -> str:
    """``user`` from ``DOMAIN\\user``, ``.\\user`` or ``user@domain``."""
    return principal.rsplit("\\", 1)[-1].split("@", 1)[0]


def check_password(users_file: Path, username: str, password: str) -> str:
    """The login name ``username`` maps to when ``password`` is its password."""
    entry = read_users(users_file).get(bare_user(username).lower())
    if entry is None or not hmac.compare_digest(entry[1].encode(), password.encode()):
        raise AuthError("bad user name or password")
    return entry[0]


def channel_bindings(cert_der: bytes) -> spnego.channel_bindings.GssChannelBindings:
    """``tls-server-end-point`` bindings for a server certificate (RFC 5929 4.1: the
    certificate's signature hash, SHA-256 in place of MD5 and SHA-1)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return spnego.channel_bindings.GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


class NtlmStore:
    """The acceptor's credential file (``NTLM_USER_FILE``), rewritten from the users file
    before every authentication; private to this process (0600 in a 0700 directory)."""

    def __init__(self, users_file: Path) -> None:
        self.users_file = users_file
        self._dir = tempfile.TemporaryDirectory(prefix="bh-wsman-")
        self.path = Path(self._dir.name) / "ntlm-users"
        os.environ["NTLM_USER_FILE"] = str(self.path)
        self.refresh()

    def refresh(self) -> None:
        """Copy the users file into the acceptor's format (no domain, or ``.``)."""
        lines = []
        for name, password in read_users(self.users_file).values():
            lines += [f":{name}:{password}", f".:{name}:{password}"]
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")

    def close(self) -> None:
        """Remove the credential file (and the variable naming it, when it is ours)."""
        if os.environ.get("NTLM_USER_FILE") == str(self.path):
            del os.environ["NTLM_USER_FILE"]
        self._dir.cleanup()


class NtlmConnection:
    """The NTLM acceptor of one TCP connection."""

    def __init__(self, store: NtlmStore, bindings: spnego.channel_bindings.GssChannelBindings | None) -> None:
        self.store = store
        self.bindings = bindings
        self.context: spnego.ContextProxy | None = None
        self.user: str | None = None

    def step(self, token: bytes) -> bytes | None:
        """Feed a client token; the answer token (None when none is due). Sets
        :attr:`user` when the handshake completes; raises :class:`AuthError`."""
        if self.context is None or self.context.complete:
            self.context = spnego.server(protocol="ntlm", channel_bindings=self.bindings)
            self.user = None
        self.store.refresh()
        try:
            answer = self.context.step(token)
        except (spnego.exceptions.SpnegoError, ValueError, struct.error) as exc:
            self.context = None
            raise AuthError(f"NTLM refused: {type(exc).__name__}") from exc
        if self.context.complete:
            principal = self.context.client_principal or ""
            entry = read_users(self.store.users_file).get(bare_user(principal).lower())
            if entry is None:
                self.context = None
                raise AuthError("no such user")
            self.user = entry[0]
        return answer

    @property
    def authenticated(self) -> bool:
        """Whether a handshake on this connection completed."""
        return self.user is not None and self.context is not None and self.context.complete

    def unwrap(self, body: bytes) -> bytes:
        """The SOAP text of an encrypted multipart body."""
        assert self.context is not None
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        message = b""
        for index in range(0, len(parts) - 1, 2):
            length = _LENGTH.search(parts[index])
            payload = parts[index + 1]
            if payload.endswith(BOUNDARY + b"--\r\n"):
                payload = payload[: -len(BOUNDARY + b"--\r\n")]
            payload = payload.split(b"application/octet-stream\r\n", 1)[-1]
            if length is None or len(payload) < 4:
                raise AuthError("malformed encrypted message")
            size = struct.unpack("<I", payload[:4])[0]
            try:
                plain = self.context.unwrap_winrm(payload[4 : 4 + size], payload[4 + size :])
            except spnego.exceptions.SpnegoError as exc:
                raise AuthError("message signature does not verify") from exc
            if len(plain) != int(length.group(1)):
                raise AuthError("encrypted length does not match")
            message += plain
        return message

    def wrap(self, message: bytes) -> bytes:
        """``message`` as an encrypted multipart body."""
        assert self.context is not None
        wrapped = self.context.wrap_winrm(message)
        return (
            BOUNDARY + b"\r\n"
            b"\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(message)).encode() + b"\r\n"
            + BOUNDARY + b"\r\n"
            b"\tContent-Type: application/octet-stream\r\n"
            + struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
            + BOUNDARY + b"--\r\n"
        )  # fmt: skip


def decode_token(value: str) -> bytes:
    """The bytes of a base64 ``Authorization`` token."""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AuthError("token is not base64") from exc


def basic_credentials(value: str) -> tuple[str, str]:
    """User name and password of a Basic ``Authorization`` value."""
    user, sep, password = decode_token(value).decode("utf-8", "replace").partition(":")
    if not sep:
        raise AuthError("malformed Basic credentials")
    return user, password


@dataclass(frozen=True)
class CertMapping:
    """One ``winrm/config/service/certmapping`` entry."""

    issuer: str  # SHA-1 thumbprint of the issuing CA, upper-case hex
    subject: str  # a UPN, or ``*``
    user: str


def read_cert_map(path: Path | None) -> list[CertMapping]:
    """The entries of a cert-map file (``ISSUER_THUMBPRINT SUBJECT USER`` lines)."""
    if path is None:
        return []
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            fields = line.split()
            if len(fields) == 3 and not fields[0].startswith("#"):
                entries.append(CertMapping(fields[0].upper().replace(":", ""), fields[1], fields[2]))
    return entries


def upns(cert: x509.Certificate) -> list[str]:
    """The UPNs in a certificate's subjectAltName otherName (1.3.6.1.4.1.311.20.2.3)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = []
    for other in names.get_values_for_type(x509.OtherName):
        if other.type_id == UPN_OID:
            found.append(_der_utf8(other.value))
    return found


def _der_utf8(value: bytes) -> str:
    """The text of a DER UTF8String (tag 12), as an otherName UPN holds it."""
    if len(value) < 2 or value[0] != 0x0C:
        return ""
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(value[2 : 2 + count], "big"), 2 + count
    return value[offset : offset + length].decode("utf-8", "replace")


def issuer_thumbprints(cert: x509.Certificate, trusted: list[x509.Certificate]) -> list[str]:
    """SHA-1 thumbprints of the trusted CAs that directly issued ``cert``."""
    found = []
    for ca in trusted:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        found.append(hashlib.sha1(ca.public_bytes(serialization.Encoding.DER)).hexdigest().upper())  # noqa: S324 - a thumbprint
    return found


def map_certificate(cert_der: bytes, trusted: list[x509.Certificate], cert_map: Path | None, users_file: Path) -> str:
    """The guest login a verified client certificate maps to, or :class:`AuthError`."""
    cert = x509.load_der_x509_certificate(cert_der)
    issuers = issuer_thumbprints(cert, trusted)
    names = {name.lower() for name in upns(cert)}
    users = read_users(users_file)
    for entry in read_cert_map(cert_map):
        if entry.issuer in issuers and (entry.subject == "*" or entry.subject.lower() in names):
            user = users.get(bare_user(entry.user).lower())
            if user is not None:
                return user[0]
    raise AuthError("no certificate mapping matches")
