"""Command line of the WinRM endpoint.

    python -m beachhead.bootstrap.lab.windows.wsman --root ROOT --users FILE
        [--http HOST:PORT]... [--https HOST:PORT]... [--cert PEM --key PEM]
        [--client-ca PEM]... [--cert-map FILE] [--allow-basic]
        [--max-envelope-kb 500] [--max-shells-per-user 30]
        [--max-concurrent-operations-per-user 1500] [--record DIR] [--log FILE]

Prints one JSON line when every listener is up,
``{"ready": true, "http": ["HOST:PORT", ...], "https": [...]}``, and serves until
SIGTERM or SIGINT, then ends every command it started. Bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from beachhead.bootstrap.lab.windows.wsman import winrs
from beachhead.bootstrap.lab.windows.wsman.server import Endpoint, Security, first_certificate_der, server_ssl_context
from beachhead.bootstrap.lab.windows.wsman.service import Limits, Service
from beachhead.bootstrap.lab.windows.wsman.trust import TrustedRoots, read_certificates

PROG = "python -m beachhead.bootstrap.lab.windows.wsman"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description="The lab Windows guest's WS-Management / WinRS endpoint.")
    p.add_argument("--root", type=Path, required=True, help="the guest's root on the host (drive C is ROOT/C)")
    p.add_argument("--users", type=Path, required=True, help="USER:PASSWORD lines, read at every authentication")
    p.add_argument("--http", type=_address, action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--https", type=_address, action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--cert", type=Path, help="the https server certificate (PEM)")
    p.add_argument("--key", type=Path, help="its private key (PEM)")
    p.add_argument(
        "--client-ca", type=Path, action="append", default=[], metavar="PEM",
        help="CA certificates client certificates may chain to (the guest's trusted roots); read again when changed",
    )  # fmt: skip
    p.add_argument("--cert-map", type=Path, help="ISSUER_SHA1_THUMBPRINT SUBJECT USER lines, read per request")
    p.add_argument("--allow-basic", action="store_true", help="accept Basic authentication (https only)")
    p.add_argument("--max-envelope-kb", type=_positive, default=500)
    p.add_argument("--max-shells-per-user", type=_positive, default=30)
    p.add_argument("--max-concurrent-operations-per-user", type=_positive, default=1500)
    p.add_argument("--record", type=Path, help="passed on to the program runner")
    p.add_argument("--log", type=Path, help="log file (default: stderr)")
    return p


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.http and not args.https:
        p.error("no listener: give --http or --https")
    if args.https and not (args.cert and args.key):
        p.error("--https needs --cert and --key")
    if not args.root.is_dir():
        p.error(f"--root {args.root}: not a directory")
    if not args.users.is_file():
        p.error(f"--users {args.users}: no such file")
    for name in ("cert", "key"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            p.error(f"--{name} {path}: no such file")
    for ca in args.client_ca:
        try:
            read_certificates(ca)
        except (OSError, ValueError) as exc:
            p.error(f"--client-ca {ca}: {exc}")


async def serve(args: argparse.Namespace) -> None:
    """Start the listeners, print the ready line, serve until a stop signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="bh-wsman-status-") as status_dir:
        runner = winrs.Runner(root=args.root.absolute(), record=args.record, status_dir=Path(status_dir))
        host = winrs.ShellHost(
            runner, args.max_shells_per_user, socket.gethostname().upper(), args.max_concurrent_operations_per_user
        )
        limits = Limits(
            max_envelope_kb=args.max_envelope_kb,
            max_shells_per_user=args.max_shells_per_user,
            max_concurrent_operations_per_user=args.max_concurrent_operations_per_user,
            allow_basic=args.allow_basic,
            allow_certificate=bool(args.client_ca),
        )
        service = Service(host, limits)
        roots = TrustedRoots(args.client_ca) if args.client_ca else None
        security = Security(
            users_file=args.users,
            allow_basic=args.allow_basic,
            cert_map=args.cert_map,
            roots=roots,
            bindings_der=first_certificate_der(args.cert) if args.cert else None,
        )
        endpoint = Endpoint(service, security, args.max_envelope_kb)
        app_runner = web.AppRunner(endpoint.app(), access_log=None, handle_signals=False, shutdown_timeout=5)
        await app_runner.setup()
        ready: dict[str, object] = {"ready": True, "http": [], "https": []}
        try:
            tls = server_ssl_context(args.cert, args.key, roots) if args.https else None
            for kind, addresses in (("http", args.http), ("https", args.https)):
                for address, port in addresses:
                    site = web.TCPSite(app_runner, address, port, ssl_context=tls if kind == "https" else None)
                    await site.start()
                    server = site._server
                    sockets = getattr(server, "sockets", None) or []
                    bound = sockets[0].getsockname()[:2] if sockets else (address, port)
                    listed = ready[kind]
                    assert isinstance(listed, list)
                    listed.append(f"{bound[0]}:{bound[1]}")
            print(json.dumps(ready), flush=True)
            await stop.wait()
        finally:
            await service.close()
            await app_runner.cleanup()
            endpoint.close()


def main(argv: list[str] | None = None) -> int:
    """The entry point; exit status 2 for bad arguments."""
    p = parser()
    args = p.parse_args(argv)
    _check(p, args)
    handler: logging.Handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger("beachhead").addHandler(handler)
    logging.getLogger("beachhead").setLevel(logging.INFO)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
