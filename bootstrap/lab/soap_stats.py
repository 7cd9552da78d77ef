"""The lab vCenter's own count of the SOAP requests it served (``GET /lab/stats``,
kept by the launcher), read by tests and benchmarks that measure what a workflow
costs the vCenter."""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any

from beachhead.bootstrap.lab.system import LabError


def soap_calls(lab: dict[str, Any]) -> dict[str, int]:
    """The SOAP requests served so far, by method, for the lab described by ``lab``
    (what ``lab up`` wrote: its ``vcenter`` section names the stats URL and CA)."""
    url, ca_file = lab["vcenter"]["stats_url"], lab["vcenter"]["ca_file"]
    if not url.startswith(("https://", "http://")):
        raise LabError(f"the lab's stats URL is not HTTP: {url}")
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(url, context=context, timeout=30) as response:  # noqa: S310 - scheme checked
        stats = json.loads(response.read())
    by_method = {str(method): int(count) for method, count in stats["by_method"].items()}
    if stats["soap_requests"] != sum(by_method.values()):
        raise LabError(f"{url}: {stats['soap_requests']} requests counted, {sum(by_method.values())} by method")
    return by_method


def calls_since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The calls counted between two readings of :func:`soap_calls`, by method."""
    return {method: count - before.get(method, 0) for method, count in after.items() if count != before.get(method, 0)}
