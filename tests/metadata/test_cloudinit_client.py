"""Debian's real cloud-init crawls the server with its own readers (EC2, NoCloud,
OpenStack) and gets exactly its instance's data."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

from tests.metadata.conftest import MetadataServer, cloudinit

USER_DATA = "#cloud-config\nruncmd:\n  - echo from-beachhead\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeachheadTestKeyOnlyForTests lab"


def _publish_own_and_other(server: MetadataServer, tmp_path: Path) -> None:
    meta = tmp_path / "meta.yaml"
    meta.write_text(f"public-keys:\n  - {KEY}\nregion: lab\n")
    vendor = tmp_path / "vendor"
    vendor.write_text("#cloud-config\npackages: [htop]\n")
    server.publish(
        "i-cloudinit",
        "--ip",
        "127.0.0.1",
        "--mac",
        "00:50:56:aa:bb:01",
        "--hostname",
        "web-01",
        "--meta-data",
        str(meta),
        "--vendor-data",
        str(vendor),
        user_data=USER_DATA,
    )
    server.publish("i-other", "--ip", "127.0.0.2", user_data="#cloud-config\n# not yours\n")


def _decoded(value: object) -> str:
    assert isinstance(value, dict) and "base64" in value, value
    return base64.b64decode(value["base64"]).decode()


def test_ec2_reader_gets_its_own_metadata_tree_and_user_data(server: MetadataServer, tmp_path: Path) -> None:
    _publish_own_and_other(server, tmp_path)
    got = cloudinit("ec2", server.url)
    meta = got["meta_data"]
    assert meta["instance-id"] == "i-cloudinit" and got["dated_instance_id"] == "i-cloudinit"
    assert (meta["local-hostname"], meta["hostname"], meta["local-ipv4"]) == ("web-01", "web-01", "127.0.0.1")
    assert meta["mac"] == "00:50:56:aa:bb:01"
    assert meta["public-keys"] == {"key0": KEY}
    assert meta["network"]["interfaces"]["macs"]["00:50:56:aa:bb:01"]["local-ipv4s"] == "127.0.0.1"
    assert _decoded(got["user_data"]) == USER_DATA
    assert "not yours" not in json.dumps(got)


def test_nocloud_seed_reader_gets_meta_user_and_vendor_data(server: MetadataServer, tmp_path: Path) -> None:
    _publish_own_and_other(server, tmp_path)
    got = cloudinit("nocloud", server.url + "/")
    assert got["meta_data"]["instance-id"] == "i-cloudinit"
    assert got["meta_data"]["local-hostname"] == "web-01"
    assert got["meta_data"]["region"] == "lab"
    assert _decoded(got["user_data"]) == USER_DATA
    assert "packages: [htop]" in _decoded(got["vendor_data"])


def test_openstack_reader_gets_meta_data_json_and_user_data(server: MetadataServer, tmp_path: Path) -> None:
    _publish_own_and_other(server, tmp_path)
    got = cloudinit("openstack", server.url)
    meta = got["meta_data"]
    assert (meta["uuid"], meta["hostname"]) == ("i-cloudinit", "web-01")
    assert meta["public_keys"] == {"key0": KEY}
    assert _decoded(got["user_data"]) == USER_DATA
    assert got["network_data"]["links"][0]["ethernet_mac_address"] == "00:50:56:aa:bb:01"


def test_ec2_reader_with_an_imdsv2_token_on_a_server_that_requires_one(start_server: object, tmp_path: Path) -> None:
    server = start_server("--require-token")  # type: ignore[operator]
    _publish_own_and_other(server, tmp_path)
    request = urllib.request.Request(
        server.url + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = response.read().decode()
    got = cloudinit("ec2", server.url, token)
    assert got["meta_data"]["instance-id"] == "i-cloudinit"
    assert _decoded(got["user_data"]) == USER_DATA
