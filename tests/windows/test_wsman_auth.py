"""The endpoint's NTLM acceptor with pyspnego's own initiator: channel binding decides,
and the users file is read again at every authentication."""

from __future__ import annotations

from pathlib import Path

import pytest
import spnego
import spnego.channel_bindings

from beachhead.bootstrap.lab.certs import ensure_certificates, issue_certificate
from beachhead.bootstrap.lab.windows.wsman import auth
from beachhead.bootstrap.lab.windows.wsman.server import first_certificate_der


def _handshake(
    store: auth.NtlmStore,
    password: str,
    client_bindings: spnego.channel_bindings.GssChannelBindings | None,
    server_bindings: spnego.channel_bindings.GssChannelBindings | None,
) -> auth.NtlmConnection:
    client = spnego.client("Administrator", password, protocol="ntlm", channel_bindings=client_bindings)
    conn = auth.NtlmConnection(store, server_bindings)
    token = client.step()
    while not conn.authenticated:
        assert token is not None
        answer = conn.step(token)
        if answer is not None:
            token = client.step(answer)
    return conn


def test_channel_binding_must_name_the_servers_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    served = first_certificate_der(ensure_certificates(pki, "127.0.0.1").cert_file)
    other = first_certificate_der(issue_certificate(pki, "other", "other server", hosts=("127.0.0.2",))[0])
    users = tmp_path / "users"
    users.write_text("Administrator:Right-Pw-1\n")
    store = auth.NtlmStore(users)
    try:
        conn = _handshake(store, "Right-Pw-1", auth.channel_bindings(served), auth.channel_bindings(served))
        assert conn.user == "Administrator"
        with pytest.raises(auth.AuthError):
            _handshake(store, "Right-Pw-1", auth.channel_bindings(other), auth.channel_bindings(served))
        users.write_text("Administrator:Changed-Pw-2\n")  # a password changed in the guest
        with pytest.raises(auth.AuthError):
            _handshake(store, "Right-Pw-1", None, None)
        assert _handshake(store, "Changed-Pw-2", None, None).user == "Administrator"
    finally:
        store.close()
