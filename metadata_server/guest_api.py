"""What guests request: NoCloud-net at the root, the EC2 metadata service (IMDS v1 and
v2) under ``/latest`` and the dated versions, OpenStack under ``/openstack`` (with the
password a guest posts, as cloudbase-init does), and cloud-init's phone home. Every
answer is the requesting instance's own data; a guest the server does not recognise
gets 404.
"""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from beachhead.metadata_server import formats
from beachhead.metadata_server.access_log import recognised
from beachhead.metadata_server.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from beachhead.metadata_server.events import StatusEvents
from beachhead.metadata_server.identify import FORWARDED_FOR, Identifier, Requester
from beachhead.metadata_server.limits import BODY_TIMEOUT_S, read_body
from beachhead.metadata_server.records import Instance, PostedPassword, Status
from beachhead.metadata_server.store import Store
from beachhead.metadata_server.tokens import TOKEN_HEADER, TTL_HEADER, TokenIssuer

log = structlog.get_logger("beachhead.metadata")
GUEST_BODY_LIMIT = 64 * 1024
PHONE_HOME_FIELDS = 32
# nova keeps a posted password in four 255-character chunks: at most 1,020 bytes (a
# 4096-bit key's ciphertext, base64, is 684).
MAX_PASSWORD_BYTES = 4 * 255
TEXT = "text/plain"


class GuestApi:
    """The guest-facing handlers and what they share."""

    def __init__(
        self,
        store: Store,
        identifier: Identifier,
        tokens: TokenIssuer,
        events: StatusEvents,
        *,
        require_token: bool = False,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.identifier = identifier
        self.tokens = tokens
        self.events = events
        self.require_token = require_token
        self.body_timeout_s = body_timeout_s

    def routes(self) -> list[web.AbstractRouteDef]:
        """The guest routes."""
        return [
            web.get("/", self.root),
            web.get("/meta-data", self.nocloud_meta_data),
            web.get("/user-data", self.nocloud_user_data),
            web.get("/vendor-data", self.nocloud_vendor_data),
            web.get("/network-config", self.nocloud_network_config),
            web.put("/latest/api/token", self.ec2_token),
            web.get("/openstack", self.openstack_versions),
            web.get("/openstack/", self.openstack_versions),
            web.get("/openstack/{version}/meta_data.json", self.openstack_meta_data),
            web.get("/openstack/{version}/user_data", self.openstack_user_data),
            web.get("/openstack/{version}/vendor_data.json", self.openstack_vendor_data),
            web.get("/openstack/{version}/network_data.json", self.openstack_network_data),
            web.get("/openstack/{version}/password", self.openstack_password),
            web.post("/openstack/{version}/password", self.openstack_post_password),
            web.post("/phone-home", self.phone_home),
            web.post("/phone-home/{instance_id}", self.phone_home),
            web.get("/{version}", self.ec2_version),
            web.get("/{version}/", self.ec2_version),
            web.get("/{version}/user-data", self.ec2_user_data),
            web.get("/{version}/meta-data", self.ec2_meta_data),
            web.get("/{version}/meta-data/{path:.*}", self.ec2_meta_data),
        ]

    # -- who is asking ----------------------------------------------------------------
    def _requester(self, request: web.Request) -> Requester:
        return self.identifier.requester(request.remote or "", request.headers.get(FORWARDED_FOR))

    async def _instance(self, request: web.Request) -> Instance:
        requester = self._requester(request)
        instance = await self.identifier.instance(requester)
        recognised(request, requester.address, instance.instance_id if instance else None)
        if instance is None:
            log.info("metadata.unknown_guest", address=requester.address, path=request.path)
            raise NotFound("instance", f"no instance is published for {requester.address}")
        return instance

    async def _fetched(self, instance: Instance) -> None:
        """Record the first fetch of this publication's user-data (later ones change
        nothing, so serving them writes nothing)."""
        if instance.status.fetched_at is not None:
            return
        log.info("metadata.user_data_fetched", instance=instance.instance_id, ip=instance.ip)
        await self.store.set_status(instance.instance_id, replace(instance.status, fetched_at=time.time()))
        await self.events.changed()

    async def _user_data(self, instance: Instance, name: str) -> web.Response:
        """The user-data, recorded as fetched; 404 when none was published (EC2 and
        OpenStack answer so)."""
        if not instance.user_data:
            raise NotFound(name, "none published")
        await self._fetched(instance)
        return web.Response(body=instance.user_data, content_type="application/octet-stream")

    # -- NoCloud ----------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        """The EC2 version list (``/``), as EC2's service gives it."""
        return web.Response(text="\n".join((*formats.EC2_VERSIONS, "latest")), content_type=TEXT)

    async def nocloud_meta_data(self, request: web.Request) -> web.Response:
        """NoCloud ``meta-data``."""
        instance = await self._instance(request)
        return web.Response(body=formats.nocloud_meta_data(instance), content_type=TEXT)

    async def nocloud_user_data(self, request: web.Request) -> web.Response:
        """NoCloud ``user-data`` (empty when none was published)."""
        instance = await self._instance(request)
        await self._fetched(instance)
        return web.Response(body=instance.user_data, content_type="application/octet-stream")

    async def nocloud_vendor_data(self, request: web.Request) -> web.Response:
        """NoCloud ``vendor-data`` (404 when none)."""
        instance = await self._instance(request)
        if instance.vendor_data is None:
            raise NotFound("vendor-data", "none published")
        return web.Response(body=instance.vendor_data, content_type="application/octet-stream")

    async def nocloud_network_config(self, request: web.Request) -> web.Response:
        """NoCloud ``network-config`` (404 when none)."""
        instance = await self._instance(request)
        if instance.network_config is None:
            raise NotFound("network-config", "none published")
        return web.Response(body=instance.network_config, content_type=TEXT)

    # -- EC2 --------------------------------------------------------------------------
    async def ec2_token(self, request: web.Request) -> web.Response:
        """``PUT /latest/api/token``: an IMDSv2 session token for the asking address.
        As on EC2, a request that went through a proxy gets none."""
        requester = self._requester(request)
        if FORWARDED_FOR in request.headers:
            raise Forbidden(FORWARDED_FOR, "token requests through a proxy are refused")
        ttl = self.tokens.ttl_from(request.headers.get(TTL_HEADER))
        await self._instance(request)
        token = self.tokens.issue(requester.address, ttl)
        return web.Response(text=token, content_type=TEXT, headers={TTL_HEADER: str(ttl)})

    def _check_token(self, request: web.Request) -> None:
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            if self.require_token:
                raise Unauthorized(TOKEN_HEADER, "this server requires IMDSv2 session tokens")
            return
        self.tokens.remaining(token, self._requester(request).address)

    async def _ec2_instance(self, request: web.Request) -> Instance:
        """The requester's instance on an EC2 path: a known API version, the session
        token checked (when given, or required)."""
        if request.match_info["version"] not in ("latest", *formats.EC2_VERSIONS):
            raise NotFound("version", "unknown API version")
        self._check_token(request)
        return await self._instance(request)

    async def ec2_version(self, request: web.Request) -> web.Response:
        """``/VERSION/``: what a version offers."""
        await self._ec2_instance(request)
        return web.Response(text="meta-data/\nuser-data", content_type=TEXT)

    async def ec2_user_data(self, request: web.Request) -> web.Response:
        """``/VERSION/user-data`` (404 when none was published, as on EC2)."""
        return await self._user_data(await self._ec2_instance(request), "user-data")

    async def ec2_meta_data(self, request: web.Request) -> web.Response:
        """``/VERSION/meta-data/PATH``: a listing for a directory, the value for a leaf."""
        instance = await self._ec2_instance(request)
        path = request.match_info.get("path", "")
        node = formats.ec2_lookup(formats.ec2_tree(instance), path)
        if node is None:
            raise NotFound("meta-data", "no such item")
        if isinstance(node, dict):
            return web.Response(text=formats.ec2_listing(node, path), content_type=TEXT)
        return web.Response(text=node, content_type=TEXT)

    # -- OpenStack --------------------------------------------------------------------
    async def _openstack_instance(self, request: web.Request) -> Instance:
        """The requester's instance on an OpenStack path of a known version."""
        if request.match_info["version"] not in ("latest", *formats.OPENSTACK_VERSIONS):
            raise NotFound("version", "unknown OpenStack metadata version")
        return await self._instance(request)

    async def openstack_versions(self, request: web.Request) -> web.Response:
        """``/openstack/``: the versions offered."""
        return web.Response(text="\n".join((*formats.OPENSTACK_VERSIONS, "latest")), content_type=TEXT)

    async def openstack_meta_data(self, request: web.Request) -> web.Response:
        """``meta_data.json``."""
        instance = await self._openstack_instance(request)
        return web.Response(body=formats.openstack_meta_data(instance), content_type="application/json")

    async def openstack_user_data(self, request: web.Request) -> web.Response:
        """``user_data`` (404 when none, as OpenStack does)."""
        return await self._user_data(await self._openstack_instance(request), "user_data")

    async def openstack_vendor_data(self, request: web.Request) -> web.Response:
        """``vendor_data.json``: always an empty document (vendor-data is NoCloud's)."""
        await self._openstack_instance(request)
        return web.json_response({})

    async def openstack_network_data(self, request: web.Request) -> web.Response:
        """``network_data.json``."""
        instance = await self._openstack_instance(request)
        return web.Response(body=formats.openstack_network_data(instance), content_type="application/json")

    def _password_version(self, request: web.Request) -> None:
        """404 for a version older than the password API (as nova answers)."""
        if request.match_info["version"] not in formats.OPENSTACK_PASSWORD_VERSIONS:
            raise NotFound("version", "no password API in this OpenStack metadata version")

    async def openstack_password(self, request: web.Request) -> web.Response:
        """``GET password``: what this guest posted (base64 ciphertext), empty when
        nothing was, as nova answers (cloudbase-init's ``is_password_set`` reads it)."""
        instance = await self._openstack_instance(request)
        self._password_version(request)
        posted = instance.password.encrypted if instance.password else ""
        return web.Response(text=posted, content_type=TEXT)

    async def openstack_post_password(self, request: web.Request) -> web.Response:
        """``POST password``: the guest's administrator password, encrypted to its first
        public key, kept once. As nova: 409 when one is already kept, 400 when longer
        than ``MAX_PASSWORD_BYTES``. Never logged."""
        instance = await self._openstack_instance(request)
        self._password_version(request)
        if instance.password is not None:
            raise Conflict("password", "already posted")
        body = await read_body(request, GUEST_BODY_LIMIT, self.body_timeout_s)
        if len(body) > MAX_PASSWORD_BYTES:
            raise BadRequest("password", f"longer than {MAX_PASSWORD_BYTES} bytes")
        try:
            text = body.decode("ascii").strip()
        except UnicodeDecodeError:
            raise BadRequest("password", "not ASCII text (base64 of the ciphertext)") from None
        if not text:
            raise BadRequest("password", "empty")
        await self.store.set_password(instance.instance_id, PostedPassword(text, time.time()))
        await self.events.changed()
        log.info("metadata.password_posted", instance=instance.instance_id, ip=instance.ip, bytes=len(body))
        return web.Response(text="", content_type=TEXT)

    # -- status -----------------------------------------------------------------------
    async def phone_home(self, request: web.Request) -> web.Response:
        """cloud-init's phone_home POST (form fields): the guest reports done."""
        instance = await self._instance(request)
        claimed = request.match_info.get("instance_id")
        if claimed is not None and claimed != instance.instance_id:
            raise NotFound("instance", "not this guest's instance")
        body = await read_body(request, GUEST_BODY_LIMIT, self.body_timeout_s)
        fields = form_fields(body)
        status = Status(instance.status.fetched_at, time.time(), fields)
        await self.store.set_status(instance.instance_id, status)
        await self.events.changed()
        log.info("metadata.phoned_home", instance=instance.instance_id, ip=instance.ip)
        return web.Response(text="ok\n", content_type=TEXT)


def form_fields(body: bytes) -> dict[str, str]:
    """A phone-home body's form fields (at most 32; keys cut at 64 characters, values
    at 4096; pairs holding NUL dropped); 400 when it is not UTF-8 form data."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=PHONE_HOME_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "not form data") from None
    return {key[:64]: value[:4096] for key, value in pairs if "\x00" not in key + value}
