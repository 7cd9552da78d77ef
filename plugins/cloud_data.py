"""Publishing cloud-init data for a guest to pull: to the metadata server, or into the
VM's guestinfo extraConfig for cloud-init's VMware datasource (``guestinfo.metadata``,
``guestinfo.userdata``, ``guestinfo.vendordata``, each gzip+base64 with its
``.encoding`` key)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from beachhead.agent.errors import InputError

GUESTINFO_ENCODING = "gzip+base64"
INVALID_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._:-]+")


@dataclass(frozen=True)
class CloudData:
    """The files of a ``userdata`` step, read."""

    user_data: bytes
    meta_data: dict[str, Any]
    vendor_data: bytes | None
    network_config: bytes | None

    @property
    def user_data_sha256(self) -> str:
        """sha256 of the user-data, for the journal and verification."""
        return hashlib.sha256(self.user_data).hexdigest()

    def meta_data_yaml(self) -> bytes | None:
        """The extra meta-data as YAML, or None."""
        return yaml.safe_dump(self.meta_data).encode() if self.meta_data else None


def read_cloud_data(
    user_data: Path,
    meta_data: Path | None,
    vendor_data: Path | None,
    network_config: Path | None,
    *,
    source: str,
    where: str,
) -> CloudData:
    """Read a ``userdata`` step's files; a meta-data file must hold a YAML mapping."""
    meta: dict[str, Any] = {}
    if meta_data is not None:
        parsed = yaml.safe_load(meta_data.read_bytes() or b"{}")
        if not isinstance(parsed, dict):
            raise InputError(source, f"{where}: meta_data", f"{meta_data} must hold a YAML mapping")
        meta = parsed
    return CloudData(
        user_data=user_data.read_bytes(),
        meta_data=meta,
        vendor_data=vendor_data.read_bytes() if vendor_data else None,
        network_config=network_config.read_bytes() if network_config else None,
    )


def default_instance_id(target_name: str) -> str:
    """A target's instance id when its plan names none: its name, made into one."""
    return INVALID_ID_CHARACTERS.sub("-", target_name).strip("-.:")[:128] or "instance"


def _packed(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data, mtime=0)).decode()


def guestinfo_values(data: CloudData, instance_id: str, hostname: str) -> dict[str, str | None]:
    """The guestinfo keys cloud-init's VMware datasource reads; keys for data the step
    does not give are removed, so nothing of an earlier publication is left behind."""
    meta: dict[str, Any] = {**data.meta_data, "instance-id": instance_id, "local-hostname": hostname}
    if data.network_config is not None:
        meta["network"] = _packed(data.network_config)
        meta["network.encoding"] = GUESTINFO_ENCODING
    values: dict[str, str | None] = {
        "guestinfo.metadata": _packed(yaml.safe_dump(meta).encode()),
        "guestinfo.metadata.encoding": GUESTINFO_ENCODING,
        "guestinfo.userdata": _packed(data.user_data),
        "guestinfo.userdata.encoding": GUESTINFO_ENCODING,
        "guestinfo.vendordata": None,
        "guestinfo.vendordata.encoding": None,
    }
    if data.vendor_data is not None:
        values["guestinfo.vendordata"] = _packed(data.vendor_data)
        values["guestinfo.vendordata.encoding"] = GUESTINFO_ENCODING
    return values
