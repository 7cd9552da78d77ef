"""The lab's cloudbase-init stand-in (bootstrap/lab/windows/cloudbase_init.py), run with
cloudbase-init's Python against the real metadata server: records what HttpService read
and maps the instance's client certificates into a WinRM cert-map as
ConfigWinRMCertificateAuthPlugin does."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.metadata.cloudbase_init import CLOUDBASE_PYTHON, REPO, client_certificate
from tests.metadata.conftest import MetadataServer

STANDIN = REPO / "bootstrap" / "lab" / "windows" / "cloudbase_init.py"
PS1 = "#ps1_sysnative\nWrite-Output hello\n"


def _standin(url: str | None, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_PROXY": "*", "no_proxy": "*"}
    given = ["--metadata-url", url, "--user", "Administrator"] if url is not None else []
    return subprocess.run(
        [str(CLOUDBASE_PYTHON), str(STANDIN), *given, "--cert-map", str(tmp_path / "certmap"),
         "--record", str(tmp_path / "record"), "--root-store", str(tmp_path / "root.pem"), *extra],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def _without_upn() -> str:
    """A self-signed certificate without a subjectAltName."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-upn")])
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
    builder = builder.serial_number(x509.random_serial_number()).not_valid_before(now)
    cert = builder.not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _thumbprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der).hexdigest().upper()


def test_records_the_metadata_and_maps_the_client_certs(server: MetadataServer, tmp_path: Path) -> None:
    cert, bare = client_certificate("administrator@win-01"), _without_upn()
    (tmp_path / "a.pem").write_text(cert)
    (tmp_path / "b.pem").write_text(bare)
    server.publish(
        "win-01", "--ip", "127.0.0.1", "--client-cert", str(tmp_path / "a.pem"), "--client-cert",
        str(tmp_path / "b.pem"), user_data=PS1,
    )  # fmt: skip
    (tmp_path / "certmap").write_text("0123 someone@else Guest\n")
    done = _standin(server.url + "/", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "record" / "metadata.json").read_text())
    assert record["instance_id"] == "win-01"
    assert base64.b64decode(record["user_data"]).decode() == PS1
    assert len(record["client_auth_certs"]) == 2
    mapping = f"{_thumbprint(cert)} administrator@win-01 Administrator"
    assert record["cert_mappings"] == [mapping]
    assert (tmp_path / "certmap").read_text().splitlines() == ["0123 someone@else Guest", mapping]
    assert len(x509.load_pem_x509_certificates((tmp_path / "root.pem").read_bytes())) == 2
    assert "no UPN" in done.stderr
    again = _standin(server.url + "/", tmp_path)  # a second boot replaces, not duplicates
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "certmap").read_text().splitlines() == ["0123 someone@else Guest", mapping]


def test_gives_up_within_its_wait_when_no_server_answers(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens
    done = _standin(f"http://127.0.0.1:{port}/", tmp_path, "--wait", "3")
    assert done.returncode != 0 and "not reachable within 3s" in done.stderr, done.stderr[-3000:]
    assert "retrying" in done.stderr and not (tmp_path / "certmap").exists()


def test_reads_the_url_and_the_user_from_the_shipped_configuration(server: MetadataServer, tmp_path: Path) -> None:
    shipped = (REPO / "bootstrap" / "windows" / "cloudbase-init.conf").read_text()
    assert "metadata_base_url=http://169.254.169.254/\n" in shipped
    conf = tmp_path / "cloudbase-init.conf"  # the shipped file, pointed at this test's server
    conf.write_text(shipped.replace("http://169.254.169.254/", server.url + "/"))
    cert = client_certificate("administrator@win-01")
    (tmp_path / "a.pem").write_text(cert)
    server.publish("win-01", "--ip", "127.0.0.1", "--client-cert", str(tmp_path / "a.pem"))
    done = _standin(None, tmp_path, "--config-file", str(conf))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "record" / "metadata.json").read_text())
    assert record["instance_id"] == "win-01"
    assert record["cert_mappings"] == [f"{_thumbprint(cert)} administrator@win-01 Administrator"]  # username=
    again = _standin(None, tmp_path, "--config-file", str(conf))  # a second boot imports nothing twice
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(x509.load_pem_x509_certificates((tmp_path / "root.pem").read_bytes())) == 1


def test_refuses_a_configuration_without_the_http_service(tmp_path: Path) -> None:
    conf = tmp_path / "cloudbase-init.conf"
    conf.write_text("[DEFAULT]\nmetadata_services=cloudbaseinit.metadata.services.ec2service.EC2Service\n")
    done = _standin(None, tmp_path, "--config-file", str(conf), "--wait", "1")
    assert done.returncode != 0 and "HttpService" in done.stderr, done.stderr[-3000:]
