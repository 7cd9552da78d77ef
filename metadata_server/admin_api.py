"""``/admin/``: publish, update, list and revoke instances, and wait for what their
guests do. Every request carries ``Authorization: Bearer TOKEN``, compared in constant
time with the server's admin token.

``PUT /admin/instances/ID`` takes JSON: ``ip``, ``mac``, ``hostname`` and the data as
base64 (``user_data``, ``meta_data``, ``vendor_data``, ``network_config``), so any bytes
(gzip'd user-data included) travel unchanged, and ``client_certs``, a list of PEM X.509
certificates (text) served as ``x509`` keys for WinRM client-certificate auth.
Publishing again replaces the record and clears its status: the new data has not been
fetched yet. The password a guest posted is kept until ``DELETE .../password``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from typing import Any

import structlog
from aiohttp import web

from beachhead.metadata_server.errors import BadRequest, NotFound, Unauthorized
from beachhead.metadata_server.events import GuestEvent, StatusEvents
from beachhead.metadata_server.limits import BODY_TIMEOUT_S, read_body
from beachhead.metadata_server.records import (
    Instance,
    check_client_certs,
    check_hostname,
    check_instance_id,
    check_ip,
    check_mac,
    check_network_config,
    parse_meta_data,
)
from beachhead.metadata_server.store import Store

log = structlog.get_logger("beachhead.metadata")
ADMIN_BODY_LIMIT = 8 * 1024 * 1024
DATA_FIELDS = ("user_data", "meta_data", "vendor_data", "network_config")
MAX_WAIT_S = 300.0


class AdminApi:
    """The admin handlers."""

    def __init__(
        self, store: Store, events: StatusEvents, token: bytes, *, body_timeout_s: float = BODY_TIMEOUT_S
    ) -> None:
        self.store = store
        self.events = events
        self._token = token
        self.body_timeout_s = body_timeout_s

    def routes(self) -> list[web.AbstractRouteDef]:
        """The admin routes."""
        return [
            web.get("/admin/instances", self.list_instances),
            web.put("/admin/instances/{instance_id}", self.publish),
            web.get("/admin/instances/{instance_id}", self.show),
            web.delete("/admin/instances/{instance_id}", self.revoke),
            web.get("/admin/instances/{instance_id}/wait", self.wait),
            web.get("/admin/instances/{instance_id}/data", self.data),
            web.get("/admin/instances/{instance_id}/password", self.password),
            web.delete("/admin/instances/{instance_id}/password", self.clear_password),
        ]

    def authorize(self, request: web.Request) -> None:
        """401 unless the request carries the admin token."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Header values may carry undecodable bytes (as surrogates): compare them as sent.
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self._token):
            raise Unauthorized("Authorization", "a valid admin bearer token is required")

    async def _existing(self, request: web.Request) -> Instance:
        instance_id = check_instance_id(request.match_info["instance_id"])
        instance = self.store.get(instance_id)
        if instance is None and await self.store.look_up_id(instance_id):
            instance = self.store.get(instance_id)  # published through another server just now
        if instance is None:
            raise NotFound("instance", f"no instance {instance_id}")
        return instance

    async def list_instances(self, request: web.Request) -> web.Response:
        """Every instance, without its data."""
        self.authorize(request)
        return web.json_response({"instances": [instance.summary() for instance in self.store.all()]})

    async def show(self, request: web.Request) -> web.Response:
        """One instance, without its data."""
        self.authorize(request)
        return web.json_response((await self._existing(request)).summary())

    async def data(self, request: web.Request) -> web.Response:
        """One instance as published: the ``PUT`` body's fields (data as base64), so a
        client can keep what it is about to replace and put it back."""
        self.authorize(request)
        instance = await self._existing(request)
        document: dict[str, Any] = {"ip": instance.ip, "mac": instance.mac, "hostname": instance.hostname}
        document["user_data"] = base64.b64encode(instance.user_data).decode()
        if instance.meta_data:
            document["meta_data"] = base64.b64encode(json.dumps(instance.meta_data).encode()).decode()
        for name, value in (("vendor_data", instance.vendor_data), ("network_config", instance.network_config)):
            if value is not None:
                document[name] = base64.b64encode(value).decode()
        if instance.client_certs:
            document["client_certs"] = list(instance.client_certs)
        return web.json_response(document)

    async def password(self, request: web.Request) -> web.Response:
        """The password the guest posted, as posted (base64 of the ciphertext):
        ``{"instance_id", "password", "posted_at"}``, both null when none was posted."""
        self.authorize(request)
        instance = await self._existing(request)
        posted = instance.password
        return web.json_response(
            {
                "instance_id": instance.instance_id,
                "password": posted.encrypted if posted else None,
                "posted_at": posted.posted_at if posted else None,
            }
        )

    async def clear_password(self, request: web.Request) -> web.Response:
        """Forget the posted password (as ``nova clear-password``): the guest may post
        again. 204, or 404 for an unknown instance."""
        self.authorize(request)
        instance = await self._existing(request)
        await self.store.clear_password(instance.instance_id)
        log.info("metadata.password_cleared", instance=instance.instance_id)
        return web.Response(status=204)

    async def publish(self, request: web.Request) -> web.Response:
        """Create or replace an instance: 201 when created, 200 when replaced."""
        self.authorize(request)
        instance_id = check_instance_id(request.match_info["instance_id"])
        body = await read_body(request, ADMIN_BODY_LIMIT, self.body_timeout_s)
        instance = instance_from_body(instance_id, body, self.store.get(instance_id), time.time())
        created = await self.store.put(instance)
        await self.events.changed()
        log.info("metadata.published", instance=instance_id, ip=instance.ip, mac=instance.mac, created=created)
        stored = self.store.get(instance_id) or instance
        return web.json_response(stored.summary(), status=201 if created else 200)

    async def revoke(self, request: web.Request) -> web.Response:
        """Remove an instance: its guest is no longer served. 204, or 404."""
        self.authorize(request)
        instance = await self._existing(request)
        await self.store.delete(instance.instance_id)
        await self.events.changed()
        log.info("metadata.revoked", instance=instance.instance_id)
        return web.Response(status=204)

    async def wait(self, request: web.Request) -> web.Response:
        """Long-poll: ``?event=fetched|phoned_home|password_posted&timeout=S``. Answers when the event
        has happened (at once if it already had) with ``{"event", "happened", "at"}``,
        or after the timeout with ``happened: false``."""
        self.authorize(request)
        instance = await self._existing(request)
        try:
            event = GuestEvent(request.query.get("event", ""))
        except ValueError:
            raise BadRequest("event", f"must be one of {', '.join(GuestEvent)}") from None
        timeout = wait_timeout(request.query.get("timeout", "60"))
        at = await self.events.wait(lambda: self.store.get(instance.instance_id), event, timeout)
        return web.json_response({"event": str(event), "happened": at is not None, "at": at})


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a request body; 400 for anything else (not UTF-8, not JSON,
    nested too deeply for the parser, not an object)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "not JSON") from None
    except RecursionError:
        raise BadRequest("body", "nested too deeply") from None
    if not isinstance(document, dict):
        raise BadRequest("body", "must be a JSON object")
    return document


def instance_from_body(instance_id: str, body: bytes, previous: Instance | None, now: float) -> Instance:
    """The instance a ``PUT /admin/instances/ID`` body describes, every field checked
    (400 naming the first bad one); ``previous`` is the record it replaces."""
    document = parse_json_object(body)
    unknown = set(document) - {"ip", "mac", "hostname", "client_certs", *DATA_FIELDS}
    if unknown:
        raise BadRequest(sorted(unknown)[0][:64], "unknown field")
    data = {name: _decoded(document, name) for name in DATA_FIELDS}
    if data["user_data"] is None:
        raise BadRequest("user_data", "missing")
    ip, mac = check_ip(document.get("ip")), check_mac(document.get("mac"))
    if ip is None and mac is None:
        raise BadRequest("ip", "give ip or mac: the server recognises guests by them")
    return Instance(
        instance_id=instance_id,
        ip=ip,
        mac=mac,
        hostname=check_hostname(document.get("hostname"), instance_id),
        user_data=data["user_data"],
        meta_data=parse_meta_data(data["meta_data"]),
        vendor_data=data["vendor_data"],
        network_config=check_network_config(data["network_config"]),
        client_certs=check_client_certs(document.get("client_certs")),
        created=previous.created if previous else now,
        updated=now,
    )


def _decoded(document: dict[str, Any], name: str) -> bytes | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(name, "must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(name, "not valid base64") from None


def wait_timeout(text: str) -> float:
    """A long-poll's ``timeout`` query: seconds from 0 to ``MAX_WAIT_S``, in ASCII."""
    try:
        value = float(text)
    except ValueError:
        raise BadRequest("timeout", "must be a number of seconds") from None
    if not text.isascii() or not 0 <= value <= MAX_WAIT_S:
        raise BadRequest("timeout", f"must be between 0 and {MAX_WAIT_S:g} seconds")
    return value
