"""A client of the admin API, for the CLI and for workflows that publish user-data and
wait for guests to fetch it or phone home."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import aiohttp

from beachhead.agent.errors import BeachheadError, InputError
from beachhead.metadata_server.admin_api import MAX_WAIT_S
from beachhead.metadata_server.events import GuestEvent

REQUEST_TIMEOUT_S = 60.0


class MetadataServerError(BeachheadError):
    """The metadata server refused a request (``status``) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def read_token_file(path: Path) -> str:
    """The admin token from its file; an unreadable or empty file is bad input."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InputError(path, "--token-file", exc.strerror or "cannot read") from None
    if not token:
        raise InputError(path, "--token-file", "empty")
    return token


class MetadataClient:
    """The admin API of one metadata server."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def _request(self, method: str, path: str, *, limit_s: float = REQUEST_TIMEOUT_S, **kwargs: Any) -> Any:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_s)) as http,
                http.request(method, self.url + path, headers=self._headers, **kwargs) as response,
            ):
                if response.status == 204:
                    return None
                text = await response.text()
                if response.status >= 400:
                    try:
                        reason = (await response.json())["error"]
                    except (ValueError, KeyError, aiohttp.ContentTypeError):
                        reason = text.strip()[:200]
                    raise MetadataServerError(
                        f"{self.url}: {method} {path}: HTTP {response.status}: {reason}", response.status
                    )
                return await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MetadataServerError(f"{self.url}: {method} {path}: {exc or type(exc).__name__}") from None

    async def publish(
        self,
        instance_id: str,
        *,
        user_data: bytes,
        ip: str | None = None,
        mac: str | None = None,
        hostname: str | None = None,
        meta_data: bytes | None = None,
        vendor_data: bytes | None = None,
        network_config: bytes | None = None,
        client_certs: list[str] | None = None,
    ) -> dict[str, Any]:
        """Create or replace an instance; its summary. ``client_certs`` are PEM
        certificates served as ``x509`` keys (WinRM client-certificate auth)."""
        document: dict[str, Any] = {"ip": ip, "mac": mac, "hostname": hostname}
        if client_certs:
            document["client_certs"] = list(client_certs)
        for name, data in (
            ("user_data", user_data),
            ("meta_data", meta_data),
            ("vendor_data", vendor_data),
            ("network_config", network_config),
        ):
            if data is not None:
                document[name] = base64.b64encode(data).decode()
        summary: dict[str, Any] = await self._request("PUT", f"/admin/instances/{instance_id}", json=document)
        return summary

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = await self._request("GET", path)
        except MetadataServerError as exc:
            if exc.status == 404:
                return None
            raise
        return document

    async def data(self, instance_id: str) -> dict[str, Any] | None:
        """An instance as published (the ``PUT`` body's fields), or None when there is none."""
        return await self._get_or_none(f"/admin/instances/{instance_id}/data")

    async def republish(self, instance_id: str, document: dict[str, Any]) -> dict[str, Any]:
        """Publish a document :meth:`data` returned, unchanged."""
        summary: dict[str, Any] = await self._request("PUT", f"/admin/instances/{instance_id}", json=document)
        return summary

    async def show(self, instance_id: str) -> dict[str, Any] | None:
        """An instance's summary, or None when there is none."""
        return await self._get_or_none(f"/admin/instances/{instance_id}")

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance's summary."""
        listing: dict[str, Any] = await self._request("GET", "/admin/instances")
        return list(listing["instances"])

    async def password(self, instance_id: str) -> str | None:
        """The encrypted password the instance's guest posted (base64 text, as posted),
        or None when it has posted none."""
        answer: dict[str, Any] = await self._request("GET", f"/admin/instances/{instance_id}/password")
        posted = answer.get("password")
        return posted if isinstance(posted, str) else None

    async def clear_password(self, instance_id: str) -> None:
        """Forget the posted password, so the guest may post again."""
        await self._request("DELETE", f"/admin/instances/{instance_id}/password")

    async def revoke(self, instance_id: str) -> None:
        """Remove an instance."""
        await self._request("DELETE", f"/admin/instances/{instance_id}")

    async def wait(self, instance_id: str, event: GuestEvent, timeout_s: float) -> float | None:
        """When the guest did ``event`` (at once if it already had), or None after
        ``timeout_s``. Long-polls in rounds of at most five minutes."""
        end = time.monotonic() + timeout_s
        while True:
            rounded = min(max(0.0, end - time.monotonic()), MAX_WAIT_S)
            answer = await self._request(
                "GET",
                f"/admin/instances/{instance_id}/wait",
                params={"event": str(event), "timeout": f"{rounded:.3f}"},
                limit_s=rounded + REQUEST_TIMEOUT_S,
            )
            if answer["happened"]:
                return float(answer["at"])
            if time.monotonic() >= end:
                return None


def read_optional(path: Path | None, option: str) -> bytes | None:
    """A file's bytes, or None when no file was given; an unreadable file is bad input."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(path, option, exc.strerror or "cannot read") from None
