"""``beachhead metadata-server`` (run the server) and ``beachhead metadata`` (publish,
list, show and revoke instances through its admin API)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import click

from beachhead.agent.errors import InputError
from beachhead.agent.exits import errors_exit, run_async
from beachhead.agent.journal import state_dir
from beachhead.agent.targets import Target, parse_target
from beachhead.metadata_server.client import MetadataClient, read_optional, read_token_file
from beachhead.metadata_server.limits import Limits

DEFAULT_DB = state_dir() / "metadata.sqlite"


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) as host and port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise InputError(option, None, f"must be ADDR:PORT with an IP address, got {text!r}") from None
    if not sep or not 0 < number < 65536:
        raise InputError(option, None, f"port must be 1-65535, got {text!r}")
    return host, number


def parse_proxies(values: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``--trusted-proxy`` CIDRs."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise InputError("--trusted-proxy", None, f"not a network: {value!r}") from None
    return networks


def parse_db(text: str) -> Path | str:
    """``--db``: a ``postgresql://`` URL (checked, refused when it holds a password:
    command lines are visible to every user) or a SQLite file."""
    from beachhead.metadata_server.store import is_database_url

    if not is_database_url(text):
        return Path(text)
    from psycopg.conninfo import conninfo_to_dict

    try:
        parameters = conninfo_to_dict(text)
    except Exception:  # psycopg.ProgrammingError; the text may hold a secret: not repeated
        raise InputError("--db", None, "not a valid postgresql:// URL") from None
    if parameters.get("password"):
        raise InputError("--db", None, "holds a password: put it in PGPASSWORD or ~/.pgpass instead")
    return text


def _seconds(context: click.Context, parameter: click.Parameter, value: float) -> float:
    """A time limit: a finite number of seconds above 0."""
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise click.BadParameter(f"must be a number of seconds above 0 (at most 86400), got {value:g}")
    return value


def ensure_admin_token(path: Path) -> bool:
    """Create a random admin token file (0600) when there is none; True when created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
        stream.write(secrets.token_urlsafe(32) + "\n")
    return True


@click.command("metadata-server")
@click.option("--listen", required=True, metavar="ADDR:PORT", help="Address and port to serve on (e.g. 10.0.0.1:80).")
@click.option(
    "--db",
    default=str(DEFAULT_DB),
    show_default=True,
    metavar="FILE|URL",
    help="SQLite file holding the published instances (created when missing), or postgresql://USER@HOST/DB "
    "for a database several servers share (password in PGPASSWORD or ~/.pgpass, never in the URL).",
)
@click.option(
    "--admin-token-file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File with the admin API's bearer token; a random one is written there (0600) when it does not exist.",
)
@click.option("--require-token", is_flag=True, help="Refuse IMDSv1: EC2 paths need an IMDSv2 session token.")
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="CIDR",
    help="Honour X-Forwarded-For from this network (repeatable); from anywhere else it is ignored.",
)
@click.option(
    "--leases",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="dnsmasq lease file: recognise guests by the MAC that holds their address.",
)
@click.option(
    "--vcenter",
    "vcenter_uri",
    default=None,
    metavar="URI",
    help="vsphere://USER@VCENTER/?password_env=VAR[&ca_file=PATH]: recognise guests by the VM vCenter "
    "reports at their address (its NICs' MACs).",
)
@click.option(
    "--header-timeout",
    "header_timeout_s",
    type=float,
    default=Limits.header_timeout_s,
    show_default=True,
    callback=_seconds,
    metavar="SECONDS",
    help="Close a connection whose request head has not fully arrived this long after it opened "
    "(or after the previous answer on it: idle keep-alive connections too).",
)
@click.option(
    "--body-timeout",
    "body_timeout_s",
    type=float,
    default=Limits.body_timeout_s,
    show_default=True,
    callback=_seconds,
    metavar="SECONDS",
    help="Answer 408 and close when a request body (a publish, a phone home) has not fully arrived "
    "this long after its head.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=Limits.max_connections,
    show_default=True,
    metavar="N",
    help="Connections held at once; past it a new one is answered 503 and closed without being read. "
    "Lowered to fit the file-descriptor limit (raised to its hard limit as needed).",
)
@click.option(
    "--max-connections-per-source",
    type=click.IntRange(min=1),
    default=Limits.max_connections_per_source,
    show_default=True,
    metavar="N",
    help="Connections held at once from one source address (--trusted-proxy networks excepted); "
    "past it, as past --max-connections.",
)
@click.option(
    "--error-log-interval",
    "log_interval_s",
    type=float,
    default=Limits.log_interval_s,
    show_default=True,
    callback=_seconds,
    metavar="SECONDS",
    help="Log a repeated error (a refused connection, a malformed request, accept() failing) once per "
    "interval, with the count of the ones held back.",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Log one metadata.request line per request: method, path (no query string), status, duration, "
    "the guest's address and instance when recognised; never headers, tokens or bodies.",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="ADDR:PORT",
    help="Also serve /metrics (Prometheus) and /healthz here, without the admin token (a management "
    "network). On --listen, /metrics needs the admin token and /healthz needs none.",
)
def metadata_server(
    listen: str,
    db: str,
    admin_token_file: Path,
    require_token: bool,
    trusted_proxies: tuple[str, ...],
    leases: Path | None,
    vcenter_uri: str | None,
    header_timeout_s: float,
    body_timeout_s: float,
    max_connections: int,
    max_connections_per_source: int,
    log_interval_s: float,
    access_log: bool,
    metrics_listen: str | None,
) -> None:
    """Serve cloud-init / cloudbase-init data per instance: NoCloud-net at the root
    (seedfrom=http://ADDR:PORT/), the EC2 metadata service (IMDS v1 and v2) under
    /latest and dated versions, OpenStack under /openstack, phone home at /phone-home.
    Each guest is recognised by its address (published, or through --leases) and gets
    only its own instance's data. Admin API under /admin/ (beachhead metadata ...)."""
    from beachhead.metadata_server.app import ServerConfig, read_admin_token, serve

    with errors_exit():
        host, port = parse_listen(listen)
        if ensure_admin_token(admin_token_file):
            click.echo(f"beachhead: wrote a new admin token to {admin_token_file}", err=True)
        config = ServerConfig(
            host=host,
            port=port,
            db=parse_db(db),
            admin_token=read_admin_token(admin_token_file),
            require_token=require_token,
            trusted_proxies=parse_proxies(trusted_proxies),
            leases=leases,
            vcenter=_vcenter(vcenter_uri),
            limits=Limits(
                header_timeout_s, body_timeout_s, max_connections, max_connections_per_source, log_interval_s
            ),
            access_log=access_log,
            metrics_listen=parse_listen(metrics_listen, "--metrics-listen") if metrics_listen else None,
        )
        asyncio.run(serve(config))  # a server: it handles its own signals


def _vcenter(uri: str | None) -> Target | None:
    if uri is None:
        return None
    target = parse_target(uri, source="--vcenter", require_vm=False)
    if target.scheme != "vsphere":
        raise InputError("--vcenter", None, f"must be a vsphere:// URI, got {target.scheme}://")
    return target


def _client(server: str, token_file: Path) -> MetadataClient:
    if not server.startswith(("http://", "https://")):
        raise InputError("--server", None, f"must be an http:// or https:// URL, got {server!r}")
    return MetadataClient(server, read_token_file(token_file))


server_option = click.option(
    "--server", required=True, metavar="URL", help="The metadata server, e.g. http://10.0.0.1/"
)
token_option = click.option(
    "--token-file", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File with the admin token."
)
instance_option = click.option("--instance", "instance_id", required=True, metavar="ID", help="The instance id.")


@click.group()
def metadata() -> None:
    """Publish, list and revoke instances on a metadata server (its admin API)."""


@metadata.command("publish")
@server_option
@token_option
@instance_option
@click.option("--ip", default=None, help="The guest's address.")
@click.option(
    "--mac", default=None, help="The guest's MAC address (with --leases on the server: before it has an address)."
)
@click.option("--hostname", default=None, help="local-hostname [default: from the instance id].")
@click.option("--user-data", "user_data", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--meta-data",
    "meta_data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML mapping merged into meta-data.",
)
@click.option("--vendor-data", "vendor_data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--network-config", "network_config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--client-cert",
    "client_certs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate served as an x509 key in meta_data.json, for WinRM client-certificate auth "
    "(cloudbase-init maps it to the admin user; repeatable).",
)
def publish(
    server: str,
    token_file: Path,
    instance_id: str,
    ip: str | None,
    mac: str | None,
    hostname: str | None,
    user_data: Path,
    meta_data: Path | None,
    vendor_data: Path | None,
    network_config: Path | None,
    client_certs: tuple[Path, ...],
) -> None:
    """Create or replace an instance; prints its summary as JSON."""
    with errors_exit():
        client = _client(server, token_file)
        if ip is None and mac is None:
            raise InputError("--ip", None, "give --ip or --mac: the server recognises guests by them")
        summary = run_async(
            client.publish(
                instance_id,
                ip=ip,
                mac=mac,
                hostname=hostname,
                user_data=read_optional(user_data, "--user-data") or b"",
                meta_data=read_optional(meta_data, "--meta-data"),
                vendor_data=read_optional(vendor_data, "--vendor-data"),
                network_config=read_optional(network_config, "--network-config"),
                client_certs=[_pem_text(path) for path in client_certs],
            )
        )
    click.echo(json.dumps(summary))


async def _posted_password(client: MetadataClient, instance_id: str) -> tuple[str | None, list[str]]:
    """The instance's posted password (None: none yet) and its public keys."""
    from beachhead.metadata_server.records import Instance

    encrypted = await client.password(instance_id)
    document = await client.data(instance_id) or {}
    meta = json.loads(base64.b64decode(document.get("meta_data") or "") or b"{}")
    keys = Instance(instance_id, None, None, "", b"", meta_data=meta).public_keys
    return encrypted, keys


def _pem_text(path: Path) -> str:
    """A ``--client-cert`` file as text (the server checks that it is one certificate)."""
    data = read_optional(path, "--client-cert") or b""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(path, "--client-cert", "not PEM text (a DER file? convert it with openssl x509)") from None


@metadata.command("password")
@server_option
@token_option
@instance_option
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The private key of the instance's first public key (ssh-rsa), PEM or OpenSSH format, unencrypted.",
)
def password(server: str, token_file: Path, instance_id: str, key_path: Path) -> None:
    """Print the administrator password the instance's guest posted (cloudbase-init's
    SetUserPasswordPlugin), decrypted with KEY. Exits 1 when none was posted yet."""
    from beachhead.metadata_server.client import MetadataServerError
    from beachhead.metadata_server.password import check_key_matches, decrypt_password, load_private_key

    with errors_exit():
        key = load_private_key(key_path)
        client = _client(server, token_file)
        encrypted, public_keys = run_async(_posted_password(client, instance_id))
        if encrypted is None:
            raise MetadataServerError(f"{server}: instance {instance_id} has posted no password yet")
        check_key_matches(key, public_keys, key_path)
        plain = decrypt_password(key, encrypted, key_path)
    click.echo(plain)


@metadata.command("revoke")
@server_option
@token_option
@instance_option
def revoke(server: str, token_file: Path, instance_id: str) -> None:
    """Remove an instance: its guest is served nothing more."""
    with errors_exit():
        run_async(_client(server, token_file).revoke(instance_id))
    click.echo(f"revoked {instance_id}")


@metadata.command("list")
@server_option
@token_option
def list_instances(server: str, token_file: Path) -> None:
    """Every published instance (JSON lines), with when its guest fetched and phoned home."""
    with errors_exit():
        instances: list[dict[str, Any]] = run_async(_client(server, token_file).instances())
    for summary in instances:
        click.echo(json.dumps(summary))
