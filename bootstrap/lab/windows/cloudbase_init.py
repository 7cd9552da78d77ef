"""The lab's cloudbase-init stand-in: what cloudbase-init does at a Windows guest's boot
that the lab can do on Linux, with cloudbase-init's own configuration loader and
metadata client.

    python cloudbase_init.py [--config-file cloudbase-init.conf] [--metadata-url URL]
        --cert-map FILE [--user USER] --record DIR [--root-store FILE] [--wait SECONDS]

Run with the Python of ``.venv-cloudbase-init`` (bootstrap/install.sh makes it). It reads
``--config-file`` with cloudbase-init's oslo.config options, as the service does at
boot (the lab gives it Beachhead's ``bootstrap/windows/cloudbase-init.conf``); its
``[openstack] metadata_base_url`` and ``[DEFAULT] username`` are used unless
``--metadata-url`` or ``--user`` is given. It loads cloudbase-init's OpenStack
``HttpService`` at that URL (retrying, within ``--wait`` seconds, while the service
cannot be loaded), records what the service's readers return in ``DIR/metadata.json``,
and does what ``ConfigWinRMCertificateAuthPlugin`` does with the instance's x509 client
certificates: imports each into the machine's Root store (``--root-store``, a PEM file,
when given; a certificate already there is not added twice) and maps it to USER in the
WinRM endpoint's cert-map (``ISSUER_SHA1_THUMBPRINT SUBJECT USER`` lines; the plugin
maps the imported certificate's own thumbprint and the UPN of its subjectAltName,
skipping a certificate without one). It imports nothing of Beachhead and knows nothing
of its plans.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
LOG = logging.getLogger("cloudbase-init")


HTTP_SERVICE = "cloudbaseinit.metadata.services.httpservice.HttpService"


def load_conf(config_file: Path | None) -> Any:
    """cloudbase-init's options, read from ``config_file`` as the service reads its own."""
    conf = importlib.import_module("cloudbaseinit.conf").CONF
    conf([] if config_file is None else ["--config-file", str(config_file)], project="cloudbase-init")
    if HTTP_SERVICE not in conf.metadata_services:
        raise SystemExit(f"{config_file}: metadata_services has no {HTTP_SERVICE}, the only service emulated here")
    return conf


def load_service(conf: Any, url: str | None, wait: float) -> Any:
    """cloudbase-init's ``HttpService`` at ``url`` (else the configured one), loaded
    (retrying within ``wait`` s)."""
    if url is not None:
        conf.set_override("metadata_base_url", url, group="openstack")
    url = conf.openstack.metadata_base_url
    conf.set_override("add_metadata_private_ip_route", False, group="openstack")
    conf.set_override("retry_count", 0)
    service = importlib.import_module("cloudbaseinit.metadata.services.httpservice").HttpService()
    deadline = time.monotonic() + wait
    while True:
        try:
            if service.load():
                return service
            reason = "the service did not load"
        except Exception as exc:  # any failure to reach the service is retried
            reason = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise SystemExit(f"metadata service at {url} not reachable within {wait:g}s: {reason}")
        LOG.info("metadata service not reachable yet (%s); retrying", reason)
        time.sleep(2)


def read_metadata(service: Any) -> dict[str, Any]:
    """What cloudbase-init's plugins read from the service."""
    base = importlib.import_module("cloudbaseinit.metadata.services.base")
    try:
        user_data = service.get_decoded_user_data()
    except base.NotExistingMetadataException:
        user_data = None
    return {
        "instance_id": service.get_instance_id(),
        "host_name": service.get_host_name(),
        "public_keys": sorted(service.get_public_keys() or []),
        "user_data": None if user_data is None else base64.b64encode(user_data).decode(),
        "client_auth_certs": list(service.get_client_auth_certs() or []),
    }


def upn(cert: x509.Certificate) -> str | None:
    """The UPN of a certificate's subjectAltName otherName, if any."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for other in names.get_values_for_type(x509.OtherName):
        value = other.value
        if other.type_id == UPN_OID and len(value) >= 2 and value[0] == 0x0C and value[1] < 0x80:
            return value[2 : 2 + value[1]].decode("utf-8", "replace")
    return None


def import_root(root_store: Path, cert: x509.Certificate) -> None:
    """Add ``cert`` to the Root store file unless it is there already."""
    held = root_store.read_bytes() if root_store.exists() else b""
    stored = x509.load_pem_x509_certificates(held) if held.strip() else []
    if cert not in stored:
        with root_store.open("a", encoding="ascii") as store:
            store.write(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))


def map_certificates(certs: list[str], cert_map: Path, user: str, root_store: Path | None) -> list[str]:
    """Import and map each certificate as the plugin does; the cert-map lines written."""
    existing = cert_map.read_text(encoding="utf-8").splitlines() if cert_map.exists() else []
    written = []
    for text in certs:
        cert = x509.load_pem_x509_certificate(text.encode("ascii"))
        der = cert.public_bytes(serialization.Encoding.DER)
        thumbprint = hashlib.sha1(der).hexdigest().upper()  # noqa: S324 - a thumbprint
        if root_store is not None:
            import_root(root_store, cert)
        name = upn(cert)
        if name is None:
            LOG.error("certificate %s has no UPN subjectAltName: not mapped", thumbprint)
            continue
        existing = [line for line in existing if line.split()[:2] != [thumbprint, name]]
        line = f"{thumbprint} {name} {user}"
        existing.append(line)
        written.append(line)
        LOG.info("mapped certificate %s (UPN %s) to %s", thumbprint, name, user)
    temporary = cert_map.with_name(cert_map.name + ".new")
    temporary.write_text("".join(f"{line}\n" for line in existing), encoding="utf-8")
    os.replace(temporary, cert_map)
    return written


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config-file", type=Path, help="cloudbase-init.conf (oslo.config)")
    parser.add_argument("--metadata-url", help="default: the configuration's [openstack] metadata_base_url")
    parser.add_argument("--cert-map", type=Path, required=True)
    parser.add_argument("--user", help="default: the configuration's username")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--root-store", type=Path)
    parser.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    conf = load_conf(args.config_file)
    got = read_metadata(load_service(conf, args.metadata_url, args.wait))
    user = args.user or conf.username
    got["cert_mappings"] = map_certificates(got["client_auth_certs"], args.cert_map, user, args.root_store)
    args.record.mkdir(parents=True, exist_ok=True)
    (args.record / "metadata.json").write_text(json.dumps(got, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
