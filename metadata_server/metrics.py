"""The metadata server's Prometheus metrics, through ``prometheus_client``: requests by
route family and status, guests not recognised, store latency, long-poll waiters and
published instances. Each application has its own registry (no process-wide state).

Labels are bounded: a route family is one of :data:`FAMILIES`, whatever path a client
makes up, and a status is an HTTP status code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from beachhead.metadata_server import formats
from beachhead.metadata_server.errors import RequestRefused
from beachhead.metadata_server.records import Instance, PostedPassword, Status
from beachhead.metadata_server.store import Changed, Store

FAMILIES = ("nocloud", "ec2", "openstack", "admin", "phone_home", "healthz", "metrics", "other")
NOCLOUD_PATHS = frozenset({"/meta-data", "/user-data", "/vendor-data", "/network-config"})
EC2_FIRST = frozenset({"latest", *formats.EC2_VERSIONS})
# Store writes take a commit (SQLite: an fsync; PostgreSQL: a round trip).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def route_family(path: str) -> str:
    """Which of :data:`FAMILIES` a request path belongs to."""
    if path in NOCLOUD_PATHS:
        return "nocloud"
    first = path.split("/", 2)[1] if path.startswith("/") else ""
    if path == "/" or first in EC2_FIRST:
        return "ec2"
    return {
        "openstack": "openstack",
        "admin": "admin",
        "phone-home": "phone_home",
        "healthz": "healthz",
        "metrics": "metrics",
    }.get(first, "other")


class Metrics:
    """The server's metrics and the registry they are exposed from."""

    def __init__(self, instances: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "beachhead_metadata_requests",
            "HTTP requests answered, by route family and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "beachhead_metadata_request_duration_seconds",
            "Time from a request's head to its answer, by route family (long-polls included).",
            ["route"],
            registry=self.registry,
        )
        self.unrecognised = Counter(
            "beachhead_metadata_unrecognised_guests",
            "Guest requests from an address no published instance matches (answered 404).",
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "beachhead_metadata_store_duration_seconds",
            "Store operations (writes, database look-ups after an index miss and health probes), by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "beachhead_metadata_store_errors",
            "Store operations that failed, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.waiters = Gauge(
            "beachhead_metadata_waiters",
            "Admin long-polls (GET /admin/instances/ID/wait) waiting now.",
            registry=self.registry,
        )
        self.instances = Gauge(
            "beachhead_metadata_instances", "Instances published in the store.", registry=self.registry
        )
        self.instances.set_function(lambda: float(instances()))

    def observe(self, family: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(family, str(status)).inc()
        self.request_seconds.labels(family).observe(seconds)

    @asynccontextmanager
    async def timed(self, operation: str) -> AsyncIterator[None]:
        """Time a store operation (and count it when it raises)."""
        start = time.perf_counter()
        try:
            yield
        except RequestRefused:  # a refusal (an address taken, a password kept) is an answer
            raise
        except Exception:
            self.store_errors.labels(operation).inc()
            raise
        finally:
            self.store_seconds.labels(operation).observe(time.perf_counter() - start)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class TimedStore:
    """A :class:`Store` whose writes are timed into :class:`Metrics`; reads (from the
    in-memory index) pass straight through."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.inner = store
        self._metrics = metrics

    async def open(self) -> None:
        """Open the store."""
        await self.inner.open()

    async def close(self) -> None:
        """Close the store."""
        await self.inner.close()

    @property
    def token_key(self) -> bytes | None:
        """The store's shared IMDSv2 signing key."""
        return self.inner.token_key

    def subscribe(self, changed: Changed) -> None:
        """Passed to the store."""
        self.inner.subscribe(changed)

    def get(self, instance_id: str) -> Instance | None:
        """The instance with this id."""
        return self.inner.get(instance_id)

    def by_ip(self, ip: str) -> Instance | None:
        """The instance published for this address."""
        return self.inner.by_ip(ip)

    def by_mac(self, mac: str) -> Instance | None:
        """The instance published for this MAC address."""
        return self.inner.by_mac(mac)

    def all(self) -> list[Instance]:
        """Every instance, by id."""
        return self.inner.all()

    async def look_up(self, ip: str, macs: Sequence[str] = ()) -> bool:
        """Look for an instance the index misses in the database (timed)."""
        async with self._metrics.timed("look_up"):
            return await self.inner.look_up(ip, macs)

    async def look_up_id(self, instance_id: str) -> bool:
        """Look for an instance id the index misses in the database (timed)."""
        async with self._metrics.timed("look_up"):
            return await self.inner.look_up_id(instance_id)

    async def put(self, instance: Instance) -> bool:
        """Create or replace (timed)."""
        async with self._metrics.timed("put"):
            return await self.inner.put(instance)

    async def delete(self, instance_id: str) -> bool:
        """Remove (timed)."""
        async with self._metrics.timed("delete"):
            return await self.inner.delete(instance_id)

    async def set_status(self, instance_id: str, status: Status) -> Instance | None:
        """Record what the guest did (timed)."""
        async with self._metrics.timed("set_status"):
            return await self.inner.set_status(instance_id, status)

    async def set_password(self, instance_id: str, password: PostedPassword) -> Instance | None:
        """Keep the posted password (timed)."""
        async with self._metrics.timed("set_password"):
            return await self.inner.set_password(instance_id, password)

    async def clear_password(self, instance_id: str) -> Instance | None:
        """Forget the posted password (timed)."""
        async with self._metrics.timed("clear_password"):
            return await self.inner.clear_password(instance_id)

    async def ping(self) -> None:
        """The store's health probe (timed)."""
        async with self._metrics.timed("ping"):
            await self.inner.ping()
