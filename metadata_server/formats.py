"""An instance's data in the shapes guests ask for: NoCloud files, the EC2 metadata
tree, OpenStack's JSON documents."""

from __future__ import annotations

import json
from typing import Any

import yaml

from beachhead.metadata_server.records import Instance

# The dated EC2 API versions cloud-init and other clients probe, besides "latest".
EC2_VERSIONS = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2012-01-12",
    "2016-09-02",
    "2018-09-24",
    "2021-03-23",
)
OPENSTACK_VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2017-02-22", "2018-08-27")
# The password API came with 2013-04-04 (cloudbase-init posts to that version).
OPENSTACK_PASSWORD_VERSIONS = ("latest", *(v for v in OPENSTACK_VERSIONS if v >= "2013-04-04"))
Tree = dict[str, "Tree | str"]


def nocloud_meta_data(instance: Instance) -> bytes:
    """NoCloud ``meta-data``: the published meta-data with ``instance-id`` and
    ``local-hostname`` set from the record."""
    meta = {**instance.meta_data, "instance-id": instance.instance_id, "local-hostname": instance.hostname}
    return yaml.safe_dump(meta, default_flow_style=False, sort_keys=True).encode()


def ec2_tree(instance: Instance) -> Tree:
    """The ``meta-data/`` tree: directories are mappings, leaves strings."""
    tree: Tree = {
        "instance-id": instance.instance_id,
        "hostname": instance.hostname,
        "local-hostname": instance.hostname,
    }
    if instance.ip:
        tree["local-ipv4"] = instance.ip
    if instance.mac:
        tree["mac"] = instance.mac
        interface: Tree = {"mac": instance.mac, "device-number": "0"}
        if instance.ip:
            interface["local-ipv4s"] = instance.ip
        tree["network"] = {"interfaces": {"macs": {instance.mac: interface}}}
    keys = instance.public_keys
    if keys:
        tree["public-keys"] = {f"{index}=key{index}": {"openssh-key": key} for index, key in enumerate(keys)}
    return tree


def ec2_lookup(tree: Tree, path: str) -> Tree | str | None:
    """The node at ``path`` (``a/b/c``; ``public-keys/0`` names ``0=key0``)."""
    node: Tree | str = tree
    for part in [p for p in path.split("/") if p]:
        if not isinstance(node, dict):
            return None
        if part in node:
            node = node[part]
            continue
        aliases = [key for key in node if key.split("=", 1)[0] == part and "=" in key]
        if not aliases:
            return None
        node = node[aliases[0]]
    return node


def ec2_listing(node: Tree, path: str) -> str:
    """A directory listing as EC2 gives it: one entry per line, directories with a
    trailing slash, except at the top of ``public-keys/`` where entries are ``N=name``."""
    top_of_keys = path.strip("/").endswith("public-keys")
    lines = [name if (top_of_keys or not isinstance(child, dict)) else f"{name}/" for name, child in node.items()]
    return "\n".join(lines)


def openstack_meta_data(instance: Instance) -> bytes:
    """``meta_data.json`` as cloudbase-init and cloud-init read it."""
    keys = instance.public_keys
    document: dict[str, Any] = {
        "uuid": instance.instance_id,
        "name": instance.hostname,
        "hostname": instance.hostname,
        "launch_index": 0,
        "availability_zone": "nova",
        "public_keys": {f"key{index}": key for index, key in enumerate(keys)},
        "meta": {k: str(v) for k, v in instance.meta_data.items() if isinstance(v, str | int | float | bool)},
    }
    entries = [{"name": f"key{i}", "type": "ssh", "data": key} for i, key in enumerate(keys)]
    # WinRM client certificates, as nova serves x509 keypairs (cloudbase-init's
    # ConfigWinRMCertificateAuthPlugin maps each to the admin user).
    entries += [{"name": f"cert{i}", "type": "x509", "data": cert} for i, cert in enumerate(instance.client_certs)]
    if entries:
        document["keys"] = entries
    return json.dumps(document, indent=2).encode()


def openstack_network_data(instance: Instance) -> bytes:
    """``network_data.json``: the published network config when it is in that format
    (JSON with ``links``), else the guest's one link (its MAC) configured by DHCP."""
    if instance.network_config:
        try:
            parsed = json.loads(instance.network_config)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and "links" in parsed:
            return json.dumps(parsed).encode()
    links, networks = [], []
    if instance.mac:
        links.append({"id": "eth0", "type": "phy", "ethernet_mac_address": instance.mac, "mtu": 1500})
        networks.append({"id": "network0", "link": "eth0", "type": "ipv4_dhcp", "network_id": "lab"})
    return json.dumps({"links": links, "networks": networks, "services": []}).encode()
