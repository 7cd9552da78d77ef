"""IMDSv2 session tokens: issued by ``PUT /latest/api/token`` for a lifetime of 1 to
21600 seconds, bound to the address that asked, checked on every request that carries
one. Tokens are signed (HMAC-SHA256), not stored: a forged, altered,
expired or borrowed token fails the check. One server makes its key at start, so a
restart retires them all, as a reboot does on EC2; servers sharing a PostgreSQL store
share the key kept there (``Store.token_key``), so each accepts the others' tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time

from beachhead.metadata_server.errors import BadRequest, Unauthorized

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TTL_S = 21600
MAX_TOKEN_LENGTH = 512
# ASCII digits only: str.isdigit() also takes superscripts (which int() refuses) and full-width digits.
TTL = re.compile(r"[ \t]*0*([0-9]{1,5})[ \t]*")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and checks IMDSv2 tokens."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    @staticmethod
    def ttl_from(header: str | None) -> int:
        """The requested lifetime, in ASCII digits; 400 when missing or outside 1..21600."""
        if header is None:
            raise BadRequest(TTL_HEADER, "missing")
        match = TTL.fullmatch(header)
        if match is None or not 1 <= int(match[1]) <= MAX_TTL_S:
            raise BadRequest(TTL_HEADER, f"must be a whole number of seconds from 1 to {MAX_TTL_S}")
        return int(match[1])

    def _signature(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, address: str, ttl_s: int) -> str:
        """A token for ``address``, valid ``ttl_s`` seconds."""
        payload = f"{int(time.time()) + ttl_s}|{address}|{secrets.token_hex(8)}".encode()
        return f"{_b64(payload)}.{_b64(self._signature(payload))}"

    def remaining(self, token: str, address: str) -> int:
        """Seconds the token has left; :class:`Unauthorized` unless it is this server's,
        intact, unexpired and issued to ``address``."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise Unauthorized(TOKEN_HEADER, "malformed token")
        encoded, signature = token.split(".")
        try:
            payload, given = _unb64(encoded), _unb64(signature)
        except (ValueError, TypeError):
            raise Unauthorized(TOKEN_HEADER, "malformed token") from None
        if _b64(payload) != encoded or _b64(given) != signature:  # base64 has other spellings of the same bytes
            raise Unauthorized(TOKEN_HEADER, "malformed token")
        if not hmac.compare_digest(given, self._signature(payload)):
            raise Unauthorized(TOKEN_HEADER, "invalid token")
        expiry_text, bound, _ = payload.decode().split("|", 2)
        if bound != address:
            raise Unauthorized(TOKEN_HEADER, "token issued to another address")
        left = int(expiry_text) - int(time.time())
        if left <= 0:
            raise Unauthorized(TOKEN_HEADER, "token expired")
        return left
