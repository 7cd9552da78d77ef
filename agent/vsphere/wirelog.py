"""The wire log: every SOAP exchange and HTTP transfer of a run with vCenter, one JSON
object a line, secrets redacted (by :mod:`beachhead.agent.vsphere.wire_redaction`)
before anything reaches the file.

Records arrive through :meth:`WireLog.soap` and :meth:`WireLog.transfer`: from the pyvmomi
hooks of :mod:`beachhead.agent.vsphere.wire_capture` (``connect_logged``,
``instrument_stub``), and from :meth:`WireLog.trace_config`, which records every request
of an ``aiohttp.ClientSession`` (guest file transfers, datastore downloads).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

import aiohttp
import structlog

from beachhead.agent.vsphere.wire_redaction import WireRedactor

log = structlog.get_logger("beachhead.wirelog")


# -- the log -----------------------------------------------------------------------------------
class WireLog:
    """Append-only JSON-lines record of a run's traffic to vCenter, secrets redacted.

    Writes are thread-safe (pyvmomi calls come from worker threads) and never raise into
    the call being recorded; records that arrive after :meth:`close` are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)
        self._file: TextIO | None = os.fdopen(fd, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self._redactor = WireRedactor()
        self._pending: dict[int, tuple[dict[str, Any], Callable[[], int | None]]] = {}

    def __enter__(self) -> WireLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- records --
    def soap(
        self,
        *,
        url: str,
        request: bytes,
        response: bytes,
        status: int | None,
        duration_s: float,
        headers: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        method: str | None = None,
        fault: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record one SOAP exchange. ``method`` is the operation's name, read from the
        request body when it names one; ``fault`` the fault type of a 500 response;
        ``error`` what went wrong when the exchange did not complete."""
        redacted_headers = self.redact_headers(headers or {})
        redacted_response_headers = self.redact_headers(response_headers or {})
        request_xml, operation = self._redactor.redact_xml(request, method)
        response_xml, _ = self._redactor.redact_xml(response, operation or method)
        record: dict[str, Any] = {
            "time": _started(duration_s),
            "kind": "soap",
            "url": self.redact_url(url),
            "method": operation or method,
            "status": status,
            "duration_s": round(duration_s, 6),
            "headers": redacted_headers,
            "response_headers": redacted_response_headers,
            "request": request_xml,
            "response": response_xml,
        }
        if fault is not None:
            record["fault"] = fault
        if error is not None:
            record["error"] = self.redact_text(error)
        self._write(record)

    def transfer(
        self,
        *,
        method: str,
        url: str,
        status: int | None,
        size: int | None,
        duration_s: float,
        error: str | None = None,
        sent: int | None = None,
        received: int | None = None,
    ) -> None:
        """Record one HTTP transfer (``size``: the body's bytes; ``sent``/``received``
        when both directions were counted)."""
        record: dict[str, Any] = {
            "time": _started(duration_s),
            "kind": "transfer",
            "method": method,
            "url": self.redact_url(url),
            "status": status,
            "size": size,
            "duration_s": round(duration_s, 6),
        }
        if sent is not None:
            record["sent"] = sent
        if received is not None:
            record["received"] = received
        if error is not None:
            record["error"] = self.redact_text(error)
        self._write(record)

    def close(self) -> None:
        """Write the transfers whose response bodies were never read to the end, then
        close the file (idempotent)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for record, received in pending:
            with contextlib.suppress(Exception):
                self._finish_transfer(record, received(), "response body not read to the end")
        with self._lock:
            file, self._file = self._file, None
        if file is not None:
            file.close()

    # -- redaction (public so that callers with their own records can use it) --
    def redact_text(self, text: str, *, known_values: bool = True) -> str:
        """Mask ticket-like URL parameters, vSphere session cookies and (unless
        ``known_values`` is false) everything this log has masked so far: see
        :meth:`~beachhead.agent.vsphere.wire_redaction.WireRedactor.redact_text`."""
        return self._redactor.redact_text(text, known_values=known_values)

    def redact_url(self, url: str) -> str:
        """``url`` with its password and ticket-like query parameters masked: see
        :meth:`~beachhead.agent.vsphere.wire_redaction.WireRedactor.redact_url`."""
        return self._redactor.redact_url(url)

    def redact_headers(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers with cookie values, credentials and session or token headers masked: see
        :meth:`~beachhead.agent.vsphere.wire_redaction.WireRedactor.redact_headers`."""
        return self._redactor.redact_headers(headers)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(self._redactor.final_pass(record), ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    # -- aiohttp ----------------------------------------------------------------------------
    def trace_config(self) -> aiohttp.TraceConfig:
        """An aiohttp TraceConfig recording every request of a ClientSession created with
        it: method, redacted URL, status, bytes and duration. A record is written when
        the response body has arrived in full (or when the request failed); responses
        released before their end are written by :meth:`close`."""
        config: aiohttp.TraceConfig = aiohttp.TraceConfig()
        config.on_request_start.append(self._on_request_start)
        config.on_request_chunk_sent.append(self._on_request_chunk_sent)
        config.on_request_redirect.append(self._on_request_redirect)
        config.on_request_end.append(self._on_request_end)
        config.on_request_exception.append(self._on_request_exception)
        return config

    async def _on_request_start(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        context.wire_start = time.perf_counter()
        context.wire_sent = 0

    async def _on_request_chunk_sent(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        context.wire_sent = getattr(context, "wire_sent", 0) + len(params.chunk)

    async def _on_request_redirect(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        self.guarded(self._record_response, context, params.method, str(params.url), params.response, False)
        context.wire_start = time.perf_counter()
        context.wire_sent = 0

    async def _on_request_end(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self.guarded(self._record_response, context, params.method, str(params.url), params.response, True)

    async def _on_request_exception(
        self, _: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        def record() -> None:
            sent = int(getattr(context, "wire_sent", 0))
            self.transfer(
                method=params.method,
                url=str(params.url),
                status=None,
                size=sent or None,
                duration_s=time.perf_counter() - getattr(context, "wire_start", time.perf_counter()),
                error=f"{type(params.exception).__name__}: {params.exception}",
                sent=sent,
            )

        self.guarded(record)

    def _record_response(
        self, context: SimpleNamespace, method: str, url: str, response: aiohttp.ClientResponse, wait: bool
    ) -> None:
        record: dict[str, Any] = {
            "method": method,
            "url": url,
            "status": response.status,
            "start": getattr(context, "wire_start", time.perf_counter()),
            "sent": int(getattr(context, "wire_sent", 0)),
        }
        # Held weakly: a response released before its end must not stay in memory until close.
        held = weakref.ref(response)

        def received() -> int | None:
            alive = held()
            return None if alive is None else int(getattr(alive.content, "total_bytes", 0))

        if not wait:
            self._finish_transfer(record, received())
            return
        key = id(record)
        with self._lock:
            self._pending[key] = (record, received)

        def at_eof() -> None:
            with self._lock:
                mine = self._pending.pop(key, None) is not None
            if mine:
                self.guarded(self._finish_transfer, record, received())

        response.content.on_eof(at_eof)

    def _finish_transfer(self, record: dict[str, Any], received: int | None, error: str | None = None) -> None:
        sent = int(record["sent"])
        self.transfer(
            method=str(record["method"]),
            url=str(record["url"]),
            status=record["status"],
            size=sent or received,
            duration_s=time.perf_counter() - float(record["start"]),
            error=error,
            sent=sent,
            received=received,
        )

    def guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)``; an exception it raises is logged and dropped: the wire log never
        breaks the traffic it records."""
        try:
            fn(*args)
        except Exception as exc:  # the wire log never breaks the traffic it records
            log.warning("wirelog.record_failed", error=type(exc).__name__)


def _started(duration_s: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=max(duration_s, 0.0))
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
