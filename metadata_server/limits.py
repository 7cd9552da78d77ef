"""What keeps the metadata server answering its guests under abuse: caps on the
connections it holds (overall and per source address), time limits on a request's head
and body, a file-descriptor budget, and errors logged at a bounded rate.

The header timeout is aiohttp's keep-alive timeout: aiohttp arms it when a connection
opens and again after each response, and closes the connection when it fires while no
complete request head has arrived, however slowly bytes trickle in. The rest is here:
an accept loop that counts connections and refuses one past a cap before reading a
byte of it, a body read bounded in size and time, and a throttle for log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from beachhead.metadata_server.errors import BadRequest, RequestTimeout

log = structlog.get_logger("beachhead.metadata")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_SOURCE = 64
LOG_INTERVAL_S = 10.0
BACKLOG = 1024  # the kernel's queue of connections not yet accepted
ACCEPT_BATCH = 128  # connections accepted in one go
ACCEPT_RETRY_S = 1.0  # after accept() failed for lack of resources
# Descriptors besides connections: the store, the log, the listening socket, vCenter.
FD_RESERVE = 64
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n"
)
# Loggers of the libraries under the server whose records go through the throttle.
LIBRARY_LOGGERS = ("aiohttp.server", "aiohttp.web", "asyncio")


@dataclass(frozen=True)
class Limits:
    """The server's limits (each option of ``beachhead metadata-server`` has its default here)."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE
    log_interval_s: float = LOG_INTERVAL_S


class ThrottledLog:
    """At most one log line per kind of event per interval. Lines held back in an
    interval are counted and reported at its end in one line (``suppressed=N``, with
    the fields of the last one). Safe to call from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._loop = loop
        self._lock = threading.Lock()
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, tuple[int, int, str, dict[str, Any]]] = {}

    def __call__(self, level: int, event: str, *, kind: str | None = None, **fields: Any) -> None:
        """Log ``event`` unless a line of this ``kind`` (default: the event) went out
        less than an interval ago."""
        key = kind or event
        now = self._loop.time()
        with self._lock:
            quiet_until = self._quiet_until.get(key, 0.0)
            if now < quiet_until:
                count = self._held[key][0] + 1 if key in self._held else 1
                self._held[key] = (count, level, event, fields)
                if count == 1 and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(self._loop.call_at, quiet_until, self._report, key)
                return
            self._quiet_until[key] = now + self.interval_s
        log.log(level, event, **fields)

    def flush(self) -> None:
        """Report every count still held back (at shutdown)."""
        for key in list(self._held):
            self._report(key)

    def _report(self, key: str) -> None:
        with self._lock:
            held = self._held.pop(key, None)
            if held is not None:
                self._quiet_until[key] = self._loop.time() + self.interval_s
        if held is not None:
            count, level, event, fields = held
            log.log(level, event, **fields, suppressed=count, interval_s=self.interval_s)


class LibraryLogHandler(logging.Handler):
    """Sends what aiohttp and asyncio log (a malformed request, an error in the event
    loop) through a :class:`ThrottledLog` as one line each, without a traceback: a
    client repeating a bad request cannot flood the log."""

    def __init__(self, throttle: ThrottledLog) -> None:
        super().__init__(logging.WARNING)
        self._throttle = throttle

    def emit(self, record: logging.LogRecord) -> None:
        """One throttled line per logger and message template."""
        fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()[:200]}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = repr(record.exc_info[1])[:200]
        self._throttle(record.levelno, "metadata.library_error", kind=f"{record.name}:{record.msg}", **fields)

    def install(self) -> Callable[[], None]:
        """Route the library loggers here (not to the root logger); returns the undo."""
        previous = []
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            previous.append((logger, logger.propagate))
            logger.addHandler(self)
            logger.propagate = False

        def uninstall() -> None:
            for logger, propagate in previous:
                logger.removeHandler(self)
                logger.propagate = propagate

        return uninstall


class ConnectionLimiter:
    """Counts open connections, overall and per source address: one past either cap is
    refused. Addresses for which ``exempt`` is true (trusted proxies) count only
    towards the overall cap."""

    def __init__(
        self,
        max_total: int,
        max_per_source: int,
        throttle: ThrottledLog,
        exempt: Callable[[str], bool] = lambda source: False,
    ) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.total = 0
        self._per_source: dict[str, int] = {}
        self._throttle = throttle
        self._exempt = exempt

    def admit(self, source: str) -> bool:
        """Count a new connection from ``source``; False (and logged, throttled) past a cap."""
        count = self._per_source.get(source, 0)
        if self.total >= self.max_total:
            reason = f"{self.max_total} connections open (--max-connections)"
        elif count >= self.max_per_source and not self._exempt(source):
            reason = f"{count} connections open from this source (--max-connections-per-source)"
        else:
            self.total += 1
            self._per_source[source] = count + 1
            return True
        self._throttle(logging.WARNING, "metadata.connection_refused", source=source, reason=reason)
        return False

    def release(self, source: str) -> None:
        """A connection from ``source`` closed."""
        self.total -= 1
        left = self._per_source.pop(source) - 1
        if left:
            self._per_source[source] = left


class Listener:
    """Accepts connections for ``factory``'s protocols (aiohttp's), each admitted by a
    :class:`ConnectionLimiter` first: one past a cap is answered 503 and closed at
    once, unread, without a transport being made for it.

    asyncio's own accept loop is not used: in Python 3.11, when ``accept()`` fails
    for lack of file descriptors (EMFILE), it goes on trying for the rest of its batch
    and schedules a retry for each failure, which multiply into a busy loop and a log
    line each. Here a failure pauses accepting for a second, once, and is logged at
    the throttle's rate."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        limiter: ConnectionLimiter,
        throttle: ThrottledLog,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = factory
        self._limiter = limiter
        self._throttle = throttle
        self._retry: asyncio.TimerHandle | None = None
        self._starting: set[asyncio.Task[None]] = set()
        sock.setblocking(False)

    def start(self) -> None:
        """Accept connections as they come."""
        self._retry = None
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket (open connections stay)."""
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait for some to be released
                self._throttle(logging.ERROR, "metadata.accept_failed", error=str(exc), retry_s=ACCEPT_RETRY_S)
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(ACCEPT_RETRY_S, self.start)
                return
            source = str(peer[0]) if isinstance(peer, tuple) else ""
            if not self._limiter.admit(source):
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(BUSY)
                conn.close()
                continue
            task = self._loop.create_task(self._connect(conn, source))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _connect(self, conn: socket.socket, source: str) -> None:
        counted = _Counted(self._limiter, source, self._factory)
        try:
            await self._loop.connect_accepted_socket(lambda: counted, conn)
        except Exception:  # the connection went before it could be set up
            conn.close()
            counted.connection_lost(None)


class _Counted(asyncio.Protocol):
    """One admitted connection: everything passed to the HTTP protocol, and the
    limiter told when it closes."""

    def __init__(self, limiter: ConnectionLimiter, source: str, factory: Callable[[], asyncio.Protocol]) -> None:
        self._limiter: ConnectionLimiter | None = limiter
        self._source = source
        self._factory = factory
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.release(self._source)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def fit_fd_limit(max_connections: int) -> int:
    """Raise the soft limit on open files to what ``max_connections`` needs (and a
    reserve), up to the hard limit. Where the hard limit is lower, returns the smaller
    cap that fits, so that connections cannot exhaust the process's file descriptors."""
    import resource  # Unix only: imported here, where the server runs

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    return max(1, soft - FD_RESERVE)


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A TCP socket listening on ``host`` (IPv4 or IPv6, v6 only) and ``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The request's whole body: 413 past ``limit`` bytes, 400 when malformed, 408 (and
    the connection closed) when it has not all arrived within ``timeout_s``."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while len(body) <= limit and (chunk := await request.content.read(limit + 1 - len(body))):
                body += chunk
    except TimeoutError:
        raise RequestTimeout("body", f"not received within {timeout_s:g} s") from None
    except (web.RequestPayloadError, HttpProcessingError):
        raise BadRequest("body", "malformed (its length or encoding)") from None
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)
