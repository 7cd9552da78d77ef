"""Drives cloudbase-init's own classes (PyPI ``cloudbase-init``, run by the Python of
``.venv-cloudbase-init``) and prints what they got as JSON, for the tests to assert on.

    crawl --service openstack|ec2 --url URL [--post-password] [--post-again]
        Load the metadata service as cloudbase-init's InitManager does and read what its
        plugins read: instance id, host name, public keys, user-data and (OpenStack) the
        WinRM client certificates. With --post-password, read a password from stdin and
        post it as SetUserPasswordPlugin does (encrypted to the first public key with
        CryptManager); --post-again then posts once more, as a second boot would.
    config FILE
        Load FILE with cloudbase-init's config loader (oslo.config, as its service does)
        and print its options, any key of FILE that cloudbase-init does not know, and
        any configured plugin or metadata service class it does not have.

Runs only in that virtualenv: it imports nothing of Beachhead.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from cloudbaseinit import conf as cloudbaseinit_conf
from oslo_config import cfg

CONF = cloudbaseinit_conf.CONF
GROUPS = ("openstack", "ec2")


def _service(kind: str, url: str) -> Any:
    """The metadata service class cloudbase-init would load, pointed at ``url``."""
    group = "openstack" if kind == "openstack" else "ec2"
    CONF.set_override("metadata_base_url", url, group=group)
    CONF.set_override("add_metadata_private_ip_route", False, group=group)
    CONF.set_override("retry_count", 0)  # a refusal is an answer here, not a transient error
    if kind == "openstack":
        from cloudbaseinit.metadata.services.httpservice import HttpService

        return HttpService()
    from cloudbaseinit.metadata.services.ec2service import EC2Service

    return EC2Service()


def _http_error(exc: Exception) -> dict[str, Any]:
    response = getattr(exc, "response", None)
    return {"error": type(exc).__name__, "status": getattr(response, "status_code", None)}


def crawl(kind: str, url: str, post_password: bool, post_again: bool) -> dict[str, Any]:
    """What the service's readers return (and what posting a password did)."""
    from cloudbaseinit.metadata.services import base

    service = _service(kind, url)
    got: dict[str, Any] = {"service": service.get_name(), "loaded": service.load()}
    got["instance_id"] = service.get_instance_id()
    got["host_name"] = service.get_host_name()
    got["public_keys"] = sorted(service.get_public_keys())
    try:
        user_data = service.get_decoded_user_data()
    except base.NotExistingMetadataException:
        user_data = None
    got["user_data"] = None if user_data is None else base64.b64encode(user_data).decode()
    got["client_auth_certs"] = sorted(service.get_client_auth_certs() or [])
    got["can_post_password"] = service.can_post_password
    if post_password:
        password = sys.stdin.readline().rstrip("\n")
        got["password_set_before"] = service.is_password_set
        got["posted"] = _post(service, password)
        got["password_set_after"] = service.is_password_set
        if post_again:
            try:
                got["second_post"] = {"result": _post_directly(service, password)}
            except Exception as exc:
                got["second_post"] = _http_error(exc)
    return got


def _post(service: Any, password: str) -> Any:
    """Post as SetUserPasswordPlugin does (its own method, which skips posting when the
    service says a password is set)."""
    from cloudbaseinit.plugins.common.setuserpassword import SetUserPasswordPlugin

    return SetUserPasswordPlugin()._set_metadata_password(password, service)


def _post_directly(service: Any, password: str) -> Any:
    """Post without asking first, as a client that does not check would."""
    from cloudbaseinit.utils.crypt import CryptManager

    encrypted = CryptManager().public_encrypt(service.get_user_pwd_encryption_key(), password)
    return service.post_password(encrypted)


def config(path: str) -> dict[str, Any]:
    """The options cloudbase-init's loader reads from ``path``, and unknown keys."""
    CONF(args=["--config-file", path], project="cloudbase-init")
    options: dict[str, Any] = {}
    for name in CONF:
        value = CONF[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            options[name] = {key: value[key] for key in value}
        else:
            options[name] = value
    sections: dict[str, dict[str, list[str]]] = {}
    cfg.ConfigParser(path, sections).parse()
    unknown = []
    for section, keys in sections.items():
        known = CONF if section == "DEFAULT" else CONF.get(section)
        unknown += [f"{section}.{key}" for key in keys if known is None or key not in known]
    classes = [*CONF.metadata_services, *CONF.plugins]
    return {"options": options, "unknown": unknown, "sections": sorted(sections), "missing": _missing(classes)}


def _missing(dotted: list[str]) -> list[str]:
    """The class paths that name no class in cloudbase-init's sources (read, not
    imported: Windows-only plugins import Windows modules)."""
    missing = []
    for path in dotted:
        module, _, name = path.rpartition(".")
        spec = importlib.util.find_spec(module) if module.startswith("cloudbaseinit.") else None
        origin = Path(spec.origin) if spec and spec.origin else None
        if origin is None or not re.search(rf"^class {re.escape(name)}\b", origin.read_text(), re.MULTILINE):
            missing.append(path)
    return missing


def main() -> None:
    """Parse the command line, run, print JSON."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    crawl_parser = commands.add_parser("crawl")
    crawl_parser.add_argument("--service", choices=("openstack", "ec2"), required=True)
    crawl_parser.add_argument("--url", required=True)
    crawl_parser.add_argument("--post-password", action="store_true")
    crawl_parser.add_argument("--post-again", action="store_true")
    config_parser = commands.add_parser("config")
    config_parser.add_argument("file")
    args = parser.parse_args()
    if args.command == "crawl":
        result = crawl(args.service, args.url, args.post_password, args.post_again)
    else:
        result = config(args.file)
    json.dump(result, sys.stdout, default=str)


if __name__ == "__main__":
    main()
