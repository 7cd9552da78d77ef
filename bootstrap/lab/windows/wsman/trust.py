"""The guest's trusted root certificates, which client certificates are checked against.

On Windows a certificate imported into the machine's Root store (as cloudbase-init's
``ConfigWinRMCertificateAuthPlugin`` does at first boot, after the WinRM service is
already listening) is trusted from the next TLS handshake on. The endpoint does the
same: its ``--client-ca`` files are read again whenever one changes, at the start of
every handshake, and certificates new in them are added to the listener's TLS context.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("beachhead.wsman")


def read_certificates(pem: Path) -> list[x509.Certificate]:
    """The certificates in a PEM file; an empty file holds none. Raises ``OSError`` or
    ``ValueError`` for a file that cannot be read or parsed."""
    data = pem.read_bytes()
    if not data.strip():
        return []
    return x509.load_pem_x509_certificates(data)


class TrustedRoots:
    """The root certificates in a set of PEM files, re-read when a file changes.

    Certificates only ever join the TLS context (OpenSSL cannot take one out of a
    store): one removed from its file is still accepted by the handshake until the
    endpoint restarts, but :meth:`certificates` no longer lists it, so no certificate
    mapping can match a certificate it issued."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._seen: dict[Path, tuple[int, int]] = {}
        self._by_file: dict[Path, list[x509.Certificate]] = {}
        self._loaded: set[bytes] = set()  # DER of what the TLS contexts were given
        self._contexts: list[ssl.SSLContext] = []
        self.refresh()

    def certificates(self) -> list[x509.Certificate]:
        """Every trusted root now, after reading changed files."""
        self.refresh()
        return [cert for certs in self._by_file.values() for cert in certs]

    def refresh(self) -> None:
        """Read the files that changed since the last read; give new certificates to
        the TLS contexts. A file that cannot be read or parsed keeps its last contents."""
        changed = False
        for path in self.files:
            try:
                stat = path.stat()
            except OSError as exc:
                log.warning("trusted roots %s: %s", path, exc)
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path) == signature:
                continue
            try:
                self._by_file[path] = read_certificates(path)
            except (OSError, ValueError) as exc:
                log.warning("trusted roots %s: %s", path, exc)
                continue
            self._seen[path] = signature
            changed = True
        if not changed:  # the common case, at every handshake: nothing to read or add
            return
        for cert in (cert for certs in self._by_file.values() for cert in certs):
            der = cert.public_bytes(serialization.Encoding.DER)
            if der in self._loaded:
                continue
            self._loaded.add(der)
            for context in self._contexts:
                context.load_verify_locations(cadata=der)
            log.info("trusting root %s", cert.subject.rfc4514_string())

    def install(self, context: ssl.SSLContext) -> None:
        """Have ``context`` ask for an optional client certificate checked against these
        roots, read again at the start of every handshake."""
        self._contexts.append(context)
        for der in self._loaded:
            context.load_verify_locations(cadata=der)
        context.verify_mode = ssl.CERT_OPTIONAL
        # OpenSSL calls the server-name callback for every ClientHello, with or
        # without SNI (clients connecting by IP address send none), before it asks for
        # the client's certificate: the moment to take in newly imported roots.
        context.sni_callback = self._on_client_hello

    def _on_client_hello(self, _connection: object, _server_name: str | None, _context: ssl.SSLContext) -> None:
        try:
            self.refresh()
        except Exception:  # a handshake must not fail over the trust files
            log.exception("trusted roots: refresh failed")
