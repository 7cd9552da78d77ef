"""Errors the metadata server answers with a 4xx status, and the store's outage it
answers with a 503; nothing else reaches a client."""

from __future__ import annotations

from beachhead.agent.errors import BeachheadError


class ServerError(BeachheadError):
    """The metadata server (or its store) could not start or do its job."""


class StoreUnavailable(ServerError):
    """The store's database cannot be reached now: requests that need it get 503 with
    ``Retry-After``, ``/healthz`` says so, and a later request may succeed."""

    retry_after_s = 5


class RequestRefused(Exception):
    """A request answered with ``status`` and a short reason, nothing more."""

    status = 400
    close = False  # whether the connection is closed after the answer

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class BadRequest(RequestRefused):
    """Malformed input: 400."""


class Unauthorized(RequestRefused):
    """Missing, wrong, forged or expired credentials: 401."""

    status = 401


class Forbidden(RequestRefused):
    """Refused on principle: 403."""

    status = 403


class NotFound(RequestRefused):
    """No such path, or nothing for this guest: 404."""

    status = 404


class RequestTimeout(RequestRefused):
    """The request's body did not arrive in time: 408, and the connection is closed."""

    status = 408
    close = True


class Conflict(RequestRefused):
    """The record clashes with another instance's address: 409."""

    status = 409
