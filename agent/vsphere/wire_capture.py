"""Capture of pyvmomi's SOAP traffic for the wire log: the hooks on a pyvmomi
``SoapStubAdapter`` and on ``pyVim.connect`` that hand every exchange to a
:class:`~beachhead.agent.vsphere.wirelog.WireLog`.

- :func:`instrument_stub` hooks a pyvmomi ``SoapStubAdapter`` (``si._stub``): every
  request it sends and every response (faults included) it reads is recorded.
- :func:`connect_logged` (or the :func:`recording_connects` block around any
  ``SmartConnect``/``SmartStubAdapter`` call) instruments the stub from its creation, so
  the version probe, ``RetrieveServiceContent`` and ``Login`` of the connect are recorded too.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPSConnection
from typing import TYPE_CHECKING, Any

import pyVim.connect as pyvim_connect
from pyVim.connect import SmartConnect
from pyVmomi import vmodl

if TYPE_CHECKING:
    from beachhead.agent.vsphere.wirelog import WireLog


# -- pyvmomi -----------------------------------------------------------------------------------
_EXCHANGE = threading.local()


@dataclass
class _Exchange:
    hook: _StubHook
    operation: str | None
    path: str = ""
    request: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


def _current(hook: _StubHook) -> _Exchange | None:
    exchange: _Exchange | None = getattr(_EXCHANGE, "current", None)
    return exchange if exchange is not None and exchange.hook is hook else None


class _TeeResponse:
    """An ``http.client.HTTPResponse`` whose body bytes are also kept for the log."""

    def __init__(self, response: Any, exchange: _Exchange) -> None:
        self._response = response
        self._exchange = exchange

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def read(self, amt: int | None = None) -> bytes:
        data: bytes = self._response.read() if amt is None else self._response.read(amt)
        self._exchange.chunks.append(data)
        return data

    def read1(self, n: int = -1) -> bytes:
        data: bytes = self._response.read1(n)
        self._exchange.chunks.append(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._response.readinto(buffer)
        self._exchange.chunks.append(bytes(memoryview(buffer)[:n]))
        return n

    def readline(self, limit: int = -1) -> bytes:
        data: bytes = self._response.readline(limit)
        self._exchange.chunks.append(data)
        return data


class _RecordingConnection:
    """A pooled ``HTTP(S)Connection`` of the stub, seen by the exchange in progress."""

    def __init__(self, connection: Any, hook: _StubHook) -> None:
        self.__dict__["_connection"] = connection
        self.__dict__["_hook"] = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        exchange = _current(self._hook)
        if exchange is not None:
            exchange.path = url
            if isinstance(body, str):
                exchange.request = body.encode()
            elif isinstance(body, bytes | bytearray | memoryview):
                exchange.request = bytes(body)
            elif body is not None:  # a stream: not ours to read
                exchange.request = f"<{type(body).__name__} body, not recorded>".encode()
            with contextlib.suppress(Exception):
                exchange.headers = {str(k): str(v) for k, v in dict(headers or {}).items()}
        if headers is None:
            return self._connection.request(method, url, body, **kwargs)
        return self._connection.request(method, url, body, headers, **kwargs)

    def getresponse(self) -> Any:
        response = self._connection.getresponse()
        exchange = _current(self._hook)
        if exchange is None:
            return response
        exchange.status = response.status
        exchange.response_headers = list(response.getheaders())
        return _TeeResponse(response, exchange)


class _StubHook:
    """What :func:`instrument_stub` installs on one ``SoapStubAdapter``."""

    def __init__(self, stub: Any, wire_log: WireLog) -> None:
        self.stub = stub
        self.wire_log = wire_log
        self._invoke_method = stub.InvokeMethod  # the bound originals
        self._get_connection = stub.GetConnection
        self.replaced = {name: stub.__dict__.get(name) for name in ("InvokeMethod", "GetConnection")}
        scheme = getattr(stub, "scheme", None)
        if isinstance(scheme, type) and scheme.__name__ == "_UnixSocketConnection":
            self.base = f"http+unix://{stub.host}"
        elif isinstance(scheme, type) and not issubclass(scheme, HTTPSConnection):
            self.base = f"http://{stub.host}"
        else:
            self.base = f"https://{stub.host}"

    def invoke_method(self, mo: Any, info: Any, args: Any, *more: Any, **options: Any) -> Any:
        """``SoapStubAdapter.InvokeMethod`` (``outerStub`` passed through), recorded."""
        exchange = _Exchange(self, getattr(info, "wsdlName", None))
        previous = getattr(_EXCHANGE, "current", None)
        _EXCHANGE.current = exchange
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return self._invoke_method(mo, info, args, *more, **options)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _EXCHANGE.current = previous
            self.wire_log.guarded(self._record, exchange, time.perf_counter() - start, error)

    def get_connection(self) -> Any:
        """``SoapStubAdapter.GetConnection``, its connection observed."""
        connection = self._get_connection()
        if isinstance(connection, _RecordingConnection):
            return connection
        return _RecordingConnection(connection, self)

    def _record(self, exchange: _Exchange, duration_s: float, error: BaseException | None) -> None:
        encoding = next((v for k, v in exchange.response_headers if k.lower() == "content-encoding"), "")
        fault = message = None
        if isinstance(error, vmodl.MethodFault):
            fault = str(getattr(error, "_wsdlName", type(error).__name__))
        elif error is not None:
            message = f"{type(error).__name__}: {error}"
        self.wire_log.soap(
            url=self.base + (exchange.path or getattr(self.stub, "path", "")),
            request=exchange.request,
            response=_decode_body(b"".join(exchange.chunks), encoding),
            status=exchange.status,
            duration_s=duration_s,
            headers=exchange.headers,
            response_headers=exchange.response_headers,
            method=exchange.operation,
            fault=fault,
            error=message,
        )


def _decode_body(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    attempts = {"gzip": (16 + zlib.MAX_WBITS,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}.get(encoding, ())
    for wbits in attempts:
        with contextlib.suppress(zlib.error):
            decompressor = zlib.decompressobj(wbits)
            return decompressor.decompress(data) + decompressor.flush()
    return f"<{len(data)} bytes, content-encoding {encoding!r} not decoded>".encode()


def instrument_stub(stub: Any, wire_log: WireLog) -> None:
    """Make every SOAP exchange through pyvmomi's SoapStubAdapter ``stub`` (``si._stub``;
    a ``SessionOrientedStub``'s inner stub is found) land in ``wire_log``.

    The stub's ``InvokeMethod`` and ``GetConnection`` are wrapped on the instance: the
    connections it hands out are observed while they send and read, so the log holds the
    exact bytes of the request and of the response (gzip undone), faults included;
    errors, pooling and locking are pyvmomi's own. Instrumenting again switches the log."""
    stub = getattr(stub, "soapStub", stub)
    hook = stub.__dict__.get("_beachhead_wire_hook")
    if isinstance(hook, _StubHook):
        hook.wire_log = wire_log
        return
    hook = _StubHook(stub, wire_log)
    stub.InvokeMethod = hook.invoke_method
    stub.GetConnection = hook.get_connection
    stub._beachhead_wire_hook = hook


def uninstrument_stub(stub: Any) -> None:
    """Stop recording ``stub``'s exchanges (pooled connections stay, unobserved)."""
    stub = getattr(stub, "soapStub", stub)
    hook = stub.__dict__.pop("_beachhead_wire_hook", None)
    if isinstance(hook, _StubHook):
        for name, previous in hook.replaced.items():
            if previous is None:
                delattr(stub, name)
            else:
                setattr(stub, name, previous)


# -- connecting with the log on ------------------------------------------------------------
class _ProbeConnection:
    """The version probe ``SmartConnect`` sends before the stub exists (``GET
    /sdk/vimServiceVersions.xml``), recorded as a transfer when it is closed."""

    def __init__(self, connection: Any, base: str, wire_log: WireLog) -> None:
        self._connection = connection
        self._base = base
        self._wire_log = wire_log
        self._start = time.perf_counter()
        self._method = "GET"
        self._path = ""
        self._status: int | None = None
        self._received = 0
        self._done = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        self._start, self._method, self._path = time.perf_counter(), method, url
        try:
            return self._connection.request(method, url, body, headers or {}, **kwargs)
        except BaseException as exc:
            self._finish(exc)
            raise

    def getresponse(self) -> Any:
        try:
            response = self._connection.getresponse()
        except BaseException as exc:
            self._finish(exc)
            raise
        self._status = response.status
        return _CountingResponse(response, self)

    def count(self, n: int) -> None:
        self._received += n

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        self._wire_log.guarded(
            lambda: self._wire_log.transfer(
                method=self._method,
                url=self._base + self._path,
                status=self._status,
                size=self._received,
                duration_s=time.perf_counter() - self._start,
                error=None if error is None else f"{type(error).__name__}: {error}",
            )
        )


class _CountingResponse:
    def __init__(self, response: Any, probe: _ProbeConnection) -> None:
        self._response = response
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def read(self, amt: int | None = None) -> bytes:
        data: bytes = self._response.read() if amt is None else self._response.read(amt)
        self._probe.count(len(data))
        return data


class _ConnectPatch:
    """While any thread is inside :func:`recording_connects`, ``pyVim.connect`` builds its
    stubs and probe connections through these factories; they hook only those made by a
    thread that asked for it, every other thread gets exactly what it would have."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._originals: dict[str, Any] = {}
        self._local = threading.local()

    @property
    def wire_log(self) -> WireLog | None:
        """The wire log of this thread's :func:`recording_connects` block, if any."""
        wire_log: WireLog | None = getattr(self._local, "wire_log", None)
        return wire_log

    @wire_log.setter
    def wire_log(self, wire_log: WireLog | None) -> None:
        self._local.wire_log = wire_log

    def stub(self, *args: Any, **kwargs: Any) -> Any:
        """``SoapStubAdapter(...)``, instrumented for a recording thread."""
        stub = self._originals["SoapStubAdapter"](*args, **kwargs)
        if (wire_log := self.wire_log) is not None:
            instrument_stub(stub, wire_log)
        return stub

    def https(self, host: str, port: int | None = None, **kwargs: Any) -> Any:
        """``HTTPSConnection(...)``, recorded for a recording thread."""
        return self._probe("https", "HTTPSConnection", host, port, kwargs)

    def http(self, host: str, port: int | None = None, **kwargs: Any) -> Any:
        """``HTTPConnection(...)``, recorded for a recording thread."""
        return self._probe("http", "HTTPConnection", host, port, kwargs)

    def _probe(self, scheme: str, name: str, host: str, port: int | None, kwargs: dict[str, Any]) -> Any:
        connection = self._originals[name](host, port=port, **kwargs)
        if (wire_log := self.wire_log) is None:
            return connection
        netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return _ProbeConnection(connection, f"{scheme}://{netloc}{'' if port is None else f':{port}'}", wire_log)

    def enter(self) -> None:
        """Install the factories (the first user does)."""
        with self._lock:
            if self._users == 0:
                factories = {"SoapStubAdapter": self.stub, "HTTPSConnection": self.https, "HTTPConnection": self.http}
                for name, factory in factories.items():
                    self._originals[name] = getattr(pyvim_connect, name)
                    setattr(pyvim_connect, name, factory)
            self._users += 1

    def leave(self) -> None:
        """Put pyVim.connect's own back (the last user does)."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for name, original in self._originals.items():
                    setattr(pyvim_connect, name, original)
                self._originals.clear()


_CONNECT_PATCH = _ConnectPatch()


@contextlib.contextmanager
def recording_connects(wire_log: WireLog) -> Iterator[None]:
    """Within the block, the stubs ``pyVim.connect`` creates in this thread
    (``SmartConnect``, ``Connect``, ``SmartStubAdapter``) are instrumented from their
    creation, and the version probe is recorded as a transfer."""
    _CONNECT_PATCH.enter()
    previous, _CONNECT_PATCH.wire_log = _CONNECT_PATCH.wire_log, wire_log
    try:
        yield
    finally:
        _CONNECT_PATCH.wire_log = previous
        _CONNECT_PATCH.leave()


def connect_logged(wire_log: WireLog, **smartconnect_kwargs: Any) -> Any:
    """``pyVim.connect.SmartConnect(**smartconnect_kwargs)`` with every exchange recorded,
    its own login included; returns the service instance."""
    with recording_connects(wire_log):
        return SmartConnect(**smartconnect_kwargs)
