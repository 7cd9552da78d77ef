"""cloudbase-init's own metadata-service classes (PyPI cloudbase-init, in its own
virtualenv) crawl the real server: instance id, host name, keys, user-data, WinRM
client certificates, and the administrator password they post, which
``beachhead metadata password`` then decrypts."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import beachhead
from tests.metadata.cloudbase_init import client_certificate, cloudbase_init, rsa_key_pair
from tests.metadata.conftest import MetadataServer

PS1 = "#ps1_sysnative\nWrite-Output 'from beachhead'\n"
PASSWORD = "Qx7!lab-Only-Password-42"


def _publish(server: MetadataServer, tmp_path: Path, user_data: str = PS1) -> tuple[str, Path, str]:
    """Publish a Windows instance (an ssh-rsa key, a client certificate) and another
    instance beside it; the key, the private key's path and the certificate."""
    public, private = rsa_key_pair(tmp_path)
    cert = client_certificate()
    meta = tmp_path / "meta.yaml"
    meta.write_text(json.dumps({"public-keys": [public], "admin_username": "Administrator"}))
    cert_file = tmp_path / "client.pem"
    cert_file.write_text(cert)
    server.publish(
        "win-01",
        "--ip",
        "127.0.0.1",
        "--hostname",
        "win-01",
        "--meta-data",
        str(meta),
        "--client-cert",
        str(cert_file),
        user_data=user_data,
    )
    server.publish("i-other", "--ip", "127.0.0.2", user_data="#ps1_sysnative\n# not yours\n")
    return public, private, cert


def _password(server: MetadataServer, key: Path, instance: str = "win-01") -> object:
    return beachhead(
        "metadata",
        "password",
        "--server",
        server.url,
        "--token-file",
        str(server.token_file),
        "--instance",
        instance,
        "--key",
        str(key),
    )


def test_httpservice_reads_its_instance_keys_user_data_and_client_certs(server: MetadataServer, tmp_path: Path) -> None:
    public, _, cert = _publish(server, tmp_path)
    got = cloudbase_init("crawl", "--service", "openstack", "--url", server.url + "/")
    assert got["service"] == "HttpService" and got["loaded"] is True
    assert (got["instance_id"], got["host_name"]) == ("win-01", "win-01")
    assert got["public_keys"] == [public]
    assert base64.b64decode(got["user_data"]).decode() == PS1
    assert got["client_auth_certs"] == [cert.strip()]
    assert got["can_post_password"] is True
    assert "not yours" not in json.dumps(got)


def test_cloud_config_user_data_reaches_cloudbase_init_unchanged(server: MetadataServer, tmp_path: Path) -> None:
    cloud_config = "#cloud-config\nset_hostname: win-01\nwrite_files:\n  - path: C:\\beachhead.txt\n"
    _publish(server, tmp_path, user_data=cloud_config)
    got = cloudbase_init("crawl", "--service", "openstack", "--url", server.url + "/")
    assert base64.b64decode(got["user_data"]).decode() == cloud_config


def test_ec2service_reads_its_instance_keys_and_user_data(server: MetadataServer, tmp_path: Path) -> None:
    public, _, _ = _publish(server, tmp_path)
    got = cloudbase_init("crawl", "--service", "ec2", "--url", server.url + "/")
    assert got["service"] == "EC2Service" and got["loaded"] is True
    assert (got["instance_id"], got["host_name"]) == ("win-01", "win-01")
    assert got["public_keys"] == [public]
    assert base64.b64decode(got["user_data"]).decode() == PS1


def test_password_posted_as_cloudbase_init_does_is_kept_once_and_decrypted(
    server: MetadataServer, tmp_path: Path
) -> None:
    _, private, _ = _publish(server, tmp_path)
    not_yet = _password(server, private)
    assert not_yet.returncode == 1 and "no password yet" in not_yet.stderr  # type: ignore[attr-defined]

    got = cloudbase_init(
        "crawl",
        "--service",
        "openstack",
        "--url",
        server.url + "/",
        "--post-password",
        "--post-again",
        stdin=PASSWORD + "\n",
    )
    assert got["password_set_before"] is False
    assert got["posted"] is True and got["password_set_after"] is True
    assert got["second_post"]["status"] == 409  # write-once, as nova answers

    done = _password(server, private)
    assert done.returncode == 0, done.stderr  # type: ignore[attr-defined]
    assert done.stdout == PASSWORD + "\n"  # type: ignore[attr-defined]
    assert PASSWORD not in server.log.read_text()
    assert server.log_lines("metadata.password_posted")[0]["instance"] == "win-01"

    # The plugin on a later boot sees the password set and posts nothing.
    again = cloudbase_init(
        "crawl", "--service", "openstack", "--url", server.url + "/", "--post-password", stdin=PASSWORD + "\n"
    )
    assert again["password_set_before"] is True and again["posted"] is True


def test_password_survives_republish_and_restart_until_cleared(
    start_server: Callable[..., MetadataServer], tmp_path: Path
) -> None:
    server = start_server()
    _, private, _ = _publish(server, tmp_path)
    cloudbase_init(
        "crawl", "--service", "openstack", "--url", server.url + "/", "--post-password", stdin=PASSWORD + "\n"
    )
    (tmp_path / "again").mkdir()
    _publish(server, tmp_path / "again")  # republished (new keys): the posted password is kept
    server.stop()
    server = start_server(directory=server.directory, port=server.port)
    summary = json.loads(
        urllib.request.urlopen(
            urllib.request.Request(
                server.url + "/admin/instances/win-01", headers={"Authorization": f"Bearer {server.token}"}
            ),
            timeout=10,
        ).read()
    )
    assert summary["password_posted_at"] is not None and summary["client_certs"] == 1
    clear = urllib.request.Request(
        server.url + "/admin/instances/win-01/password",
        method="DELETE",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert urllib.request.urlopen(clear, timeout=10).status == 204
    assert _password(server, private).returncode == 1  # type: ignore[attr-defined]


def _post(server: MetadataServer, path: str, body: bytes) -> int:
    request = urllib.request.Request(server.url + path, data=body, method="POST")
    try:
        return int(urllib.request.urlopen(request, timeout=10).status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_guest_password_posts_refused_as_nova_refuses_them(server: MetadataServer, tmp_path: Path) -> None:
    _publish(server, tmp_path)
    assert _post(server, "/openstack/2012-08-10/password", b"abc") == 404  # before the password API
    assert _post(server, "/openstack/latest/password", b"A" * 1021) == 400  # past nova's 1,020 bytes
    assert _post(server, "/openstack/latest/password", b"\xff\xfe") == 400
    assert _post(server, "/openstack/latest/password", b"") == 400
    assert _post(server, "/openstack/2013-04-04/password", b"QUJD") == 200
    assert _post(server, "/openstack/latest/password", b"QUJD") == 409


def test_password_cli_bad_input_exits_2_naming_the_file(server: MetadataServer, tmp_path: Path) -> None:
    _publish(server, tmp_path)
    cloudbase_init(
        "crawl", "--service", "openstack", "--url", server.url + "/", "--post-password", stdin=PASSWORD + "\n"
    )
    _, other_private = rsa_key_pair(tmp_path, "other")
    wrong = _password(server, other_private)
    assert wrong.returncode == 2 and str(other_private) in wrong.stderr  # type: ignore[attr-defined]
    assert "not the private half of any of the instance's ssh-rsa public keys" in wrong.stderr  # type: ignore[attr-defined]
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    done = _password(server, not_a_key)
    assert done.returncode == 2 and f"{not_a_key}: --key: not a PEM or OpenSSH private key" in done.stderr  # type: ignore[attr-defined]
    missing = _password(server, tmp_path / "missing.pem")
    assert missing.returncode == 2 and "missing.pem" in missing.stderr  # type: ignore[attr-defined]


def test_client_certs_are_checked_when_published(server: MetadataServer, tmp_path: Path) -> None:
    def put(certs: object) -> tuple[int, dict[str, str]]:
        body = json.dumps({"ip": "127.0.0.9", "user_data": "", "client_certs": certs}).encode()
        request = urllib.request.Request(
            server.url + "/admin/instances/w",
            data=body,
            method="PUT",
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    cert = client_certificate()
    assert put([cert])[0] == 201
    assert put("not a list") == (400, {"error": "must be a list of PEM certificates", "field": "client_certs"})
    assert put([cert, "junk"])[1]["field"] == "client_certs[1]"
    broken = cert.replace(cert.splitlines()[3], "A" * 64)
    assert put([broken])[1] == {"error": "not a PEM X.509 certificate", "field": "client_certs[0]"}
    assert put([cert + cert])[1]["field"] == "client_certs[0]"  # one certificate per entry
    assert put([cert + "x" * 20000])[1]["error"].startswith("longer than")
    assert put([cert] * 9)[1]["error"] == "at most 8 certificates"
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\xff")
    done = beachhead(
        "metadata", "publish", "--server", server.url, "--token-file", str(server.token_file), "--instance", "w",
        "--ip", "127.0.0.9", "--user-data", str(not_pem), "--client-cert", str(not_pem),
    )  # fmt: skip
    assert done.returncode == 2 and f"{not_pem}: --client-cert: not PEM text" in done.stderr
