"""The HTTP side of the endpoint: listeners, authentication, message encryption.

One aiohttp application serves ``POST /wsman`` on every listener. NTLM is
connection-based, as on Windows: one acceptor context per TCP connection, and requests
after a completed handshake on that connection need no ``Authorization`` header.
"""

from __future__ import annotations

import base64
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from multidict import CIMultiDict

from beachhead.bootstrap.lab.windows.wsman import auth, envelope
from beachhead.bootstrap.lab.windows.wsman.service import Caller, Service
from beachhead.bootstrap.lab.windows.wsman.trust import TrustedRoots

log = logging.getLogger("beachhead.wsman")

SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
SERVER_HEADER = "Microsoft-HTTPAPI/2.0"


@dataclass
class Security:
    """What the listeners accept: the users file, Basic, certificates and their map."""

    users_file: Path
    allow_basic: bool = False
    cert_map: Path | None = None
    roots: TrustedRoots | None = None  # what client certificates may chain to
    bindings_der: bytes | None = None  # the https server certificate, for channel binding


def server_ssl_context(cert: Path, key: Path, roots: TrustedRoots | None) -> ssl.SSLContext:
    """TLS for the https listener; asks for a client certificate (optional) when there
    are roots to verify one against."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if roots is not None:
        roots.install(context)
    return context


def first_certificate_der(pem: Path) -> bytes:
    """The DER bytes of the first certificate in a PEM file."""
    return x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(serialization.Encoding.DER)


class Endpoint:
    """The request handler: authenticates, decrypts, hands the envelope to the service."""

    def __init__(self, service: Service, security: Security, max_envelope_kb: int) -> None:
        self.service = service
        self.security = security
        self.max_envelope = max_envelope_kb * 1024
        self.store = auth.NtlmStore(security.users_file)
        self._connections: dict[int, tuple[Any, auth.NtlmConnection]] = {}

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=max(self.max_envelope * 4, 4 * 1024 * 1024))
        app.router.add_post("/wsman", self.handle)
        app.router.add_post("/wsman/", self.handle)
        return app

    def close(self) -> None:
        """Forget every connection and remove the acceptor's credential file."""
        self._connections.clear()
        self.store.close()

    def _connection(self, request: web.Request) -> auth.NtlmConnection:
        transport = request.transport
        for key, (known, _) in list(self._connections.items()):
            if known.is_closing():
                del self._connections[key]
        entry = self._connections.get(id(transport))
        if entry is None or entry[0] is not transport:
            https = request.url.scheme == "https"
            bindings = (
                auth.channel_bindings(self.security.bindings_der) if https and self.security.bindings_der else None
            )
            entry = (transport, auth.NtlmConnection(self.store, bindings))
            self._connections[id(transport)] = entry
        return entry[1]

    def _challenge(self, https: bool, token: tuple[str, bytes] | None = None) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict({"Server": SERVER_HEADER})
        if token is not None:
            headers.add("WWW-Authenticate", f"{token[0]} {base64.b64encode(token[1]).decode()}")
        else:
            headers.add("WWW-Authenticate", "Negotiate")
            if https and self.security.allow_basic:
                headers.add("WWW-Authenticate", 'Basic realm="WSMAN"')
        return web.Response(status=401, headers=headers)

    def _authenticate(self, request: web.Request, conn: auth.NtlmConnection) -> str | web.Response:
        """The guest login of the request, or the 401 answer."""
        https = request.url.scheme == "https"
        header = request.headers.get("Authorization", "").strip()
        scheme, _, value = header.partition(" ")
        try:
            if scheme.lower() in ("negotiate", "ntlm") and value:
                answer = conn.step(auth.decode_token(value))
                if not conn.authenticated:
                    return self._challenge(https, (scheme, answer or b""))
                assert conn.user is not None
                return conn.user
            if scheme.lower() == "basic":
                if not (https and self.security.allow_basic):
                    return self._challenge(https)
                user, password = auth.basic_credentials(value)
                return auth.check_password(self.security.users_file, user, password)
            if header == auth.CERT_AUTH:
                ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
                der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                if not (https and der):
                    return self._challenge(https)
                roots = self.security.roots.certificates() if self.security.roots else []
                return auth.map_certificate(der, roots, self.security.cert_map, self.security.users_file)
        except auth.AuthError as exc:
            log.info("authentication refused from %s: %s", request.remote, exc)
            return self._challenge(https)
        if not header and conn.authenticated:
            assert conn.user is not None
            return conn.user
        return self._challenge(https)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one POST."""
        conn = self._connection(request)
        https = request.url.scheme == "https"
        user = self._authenticate(request, conn)
        if isinstance(user, web.StreamResponse):
            return user
        body = await request.read()
        encrypted = request.content_type == "multipart/encrypted"
        if encrypted:
            if not conn.authenticated:
                return self._challenge(https)
            try:
                body = conn.unwrap(body)
            except auth.AuthError as exc:
                log.info("message from %s refused: %s", request.remote, exc)
                return self._challenge(https)
        elif body and not https:
            # AllowUnencrypted=false: plain SOAP over http is refused.
            return self._challenge(https)
        if not body:
            return web.Response(status=200, headers={"Server": SERVER_HEADER})
        if len(body) > self.max_envelope:
            return web.Response(status=413, headers={"Server": SERVER_HEADER})
        try:
            parsed = envelope.parse(body)
        except envelope.EnvelopeError as exc:
            log.info("bad envelope from %s: %s", request.remote, exc)
            return web.Response(status=400, headers={"Server": SERVER_HEADER})
        caller = Caller(
            user=user, client_ip=request.remote or "", listener_url=f"{request.url.scheme}://{request.host}/wsman"
        )
        log.info("%s %s %s", user, parsed.action.rsplit("/", 1)[-1], parsed.selectors.get("ShellId", ""))
        status, answer = await self.service.handle(parsed, caller)
        headers = {"Server": SERVER_HEADER}
        if encrypted:
            headers["Content-Type"] = auth.ENCRYPTED_CONTENT_TYPE
            return web.Response(status=status, body=conn.wrap(answer), headers=headers)
        headers["Content-Type"] = SOAP_CONTENT_TYPE
        return web.Response(status=status, body=answer, headers=headers)
