"""Runs under Debian's /usr/bin/python3 with Debian's cloud-init package: crawls a
metadata server with cloud-init's own readers and prints what they got as JSON.

    python3 cloudinit_client.py ec2|nocloud|openstack URL [TOKEN]
"""

import base64
import json
import sys

from cloudinit import util
from cloudinit.sources.helpers import ec2, openstack


def _text(value):
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: _text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def main():
    kind, url = sys.argv[1], sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None
    headers_cb = (lambda _url: {"X-aws-ec2-metadata-token": token}) if token else None
    if kind == "ec2":
        meta = ec2.get_instance_metadata("latest", url, retries=0, headers_cb=headers_cb)
        dated = ec2.get_instance_metadata("2009-04-04", url, retries=0, headers_cb=headers_cb)
        user = ec2.get_instance_userdata("latest", url, retries=0, headers_cb=headers_cb)
        result = {"meta_data": dict(meta), "dated_instance_id": dated.get("instance-id"), "user_data": user}
    elif kind == "nocloud":
        meta, user, vendor = util.read_seeded(url, timeout=5, retries=0)
        result = {"meta_data": meta, "user_data": user, "vendor_data": vendor}
    elif kind == "openstack":
        found = openstack.MetadataReader(url, retries=0).read_v2()
        result = {
            "meta_data": found.get("metadata"),
            "user_data": found.get("userdata"),
            "network_data": found.get("networkdata"),
        }
    else:
        raise SystemExit(f"unknown kind {kind}")
    print(json.dumps(_text(result)))


main()
