"""The pull channel through the lab: guests that got their addresses by DHCP reach the
metadata server at the gateway and at 169.254.169.254 with no address configured, real
cloud-init in each guest's network namespace gets its own instance's data, recognised
through the DHCP lease file or through vCenter; a `userdata` step on a vsphere://
target publishes by the VM's MAC and waits for the guest to fetch."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pyVmomi import vim

from tests.conftest import BEACHHEAD, beachhead, held_connection, wait_until, write_plan
from tests.lab.conftest import Vc
from tests.metadata.conftest import SYSTEM_PYTHON, MetadataServer, cloudinit, free_port

FETCH = (
    "import sys, urllib.request, urllib.error\n"
    "try:\n"
    "    with urllib.request.urlopen(sys.argv[1], timeout=10) as r: print(r.status); print(r.read().decode())\n"
    "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())\n"
)


def guest_get(vm: str, url: str) -> tuple[int, str]:
    """GET ``url`` from inside lab guest ``vm``'s network namespace."""
    done = subprocess.run(
        ["ip", "netns", "exec", f"bhlab-{vm}", SYSTEM_PYTHON, "-c", FETCH, url],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "NO_PROXY": "*", "no_proxy": "*"},
    )
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition("\n")
    return int(status), body.removesuffix("\n")


def mac_of(vc: Vc, name: str) -> str:
    """The lab VM's NIC MAC, read from vCenter."""
    return next(
        str(d.macAddress)
        for d in vc.vm(name).config.hardware.device
        if isinstance(d, vim.vm.device.VirtualEthernetCard)
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., MetadataServer]]:
    """Starts metadata servers on lab addresses; stops them after the test."""
    started: list[MetadataServer] = []

    def start(host: str, *options: str) -> MetadataServer:
        directory = tmp_path / f"server-{len(started)}"
        directory.mkdir()
        server = MetadataServer(directory, free_port(host), options, host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        assert server.internal_errors() == []


def test_dhcp_guests_find_the_server_and_get_their_own_data(
    lab: dict[str, Any], vc: Vc, servers: Callable[..., MetadataServer]
) -> None:
    network = lab["network"]
    leases = ("--leases", network["dhcp_leases"])
    imds = servers(network["metadata_address"], *leases)
    nocloud = servers(network["gateway"], *leases)
    for server in (imds, nocloud):
        for name in ("lin-01", "lin-02"):
            server.publish(f"i-{name}", "--mac", mac_of(vc, name), user_data=f"#cloud-config\n# for {name}\n")
    for name in ("lin-01", "lin-02"):
        netns = f"bhlab-{name}"
        ec2 = cloudinit("ec2", imds.url, netns=netns)
        assert ec2["meta_data"]["instance-id"] == f"i-{name}"
        assert ec2["meta_data"]["mac"] == mac_of(vc, name)
        seeded = cloudinit("nocloud", nocloud.url + "/", netns=netns)
        assert seeded["meta_data"]["instance-id"] == f"i-{name}"
        other = "lin-02" if name == "lin-01" else "lin-01"
        assert f"for {other}" not in json.dumps([ec2, seeded])
    # A guest with a lease but nothing published gets nothing.
    assert guest_get("lin-03", imds.url + "/latest/meta-data/instance-id")[0] == 404
    assert guest_get("win-01", nocloud.url + "/meta-data")[0] == 404


def test_guests_are_recognised_through_vcenter(
    lab: dict[str, Any], vc: Vc, servers: Callable[..., MetadataServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    vcenter = lab["vcenter"]
    monkeypatch.setenv("LAB_VCENTER_PASSWORD", vcenter["password"])
    uri = (
        f"vsphere://{quote(vcenter['username'], safe='')}@127.0.0.1/"
        f"?password_env=LAB_VCENTER_PASSWORD&ca_file={vcenter['ca_file']}"
    )
    server = servers(lab["network"]["gateway"], "--vcenter", uri)
    server.publish("i-by-vcenter", "--mac", mac_of(vc, "lin-02"))
    assert guest_get("lin-02", server.url + "/latest/meta-data/instance-id") == (200, "i-by-vcenter")
    assert guest_get("lin-01", server.url + "/latest/meta-data/instance-id")[0] == 404


def test_userdata_step_on_a_vm_publishes_by_mac_and_waits_for_the_fetch(
    lab: dict[str, Any],
    vc: Vc,
    servers: Callable[..., MetadataServer],
    tmp_path: Path,
    runs_dir: Path,
    vsphere_uri: Callable[..., str],
) -> None:
    server = servers(lab["network"]["gateway"], "--leases", lab["network"]["dhcp_leases"])
    (tmp_path / "user-data.yaml").write_text("#cloud-config\n# lin-03 first boot\n")
    plan = write_plan(
        tmp_path,
        """
        name: first-boot
        steps:
          - userdata: {user_data: user-data.yaml}
          - wait: {userdata_fetched: {timeout: 60}}
        """,
    )
    run = subprocess.Popen(
        [
            str(BEACHHEAD),
            "run",
            str(plan),
            "--target",
            vsphere_uri("lin-03"),
            "--json",
            "--metadata-server",
            server.url,
            "--metadata-token-file",
            str(server.token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def published() -> bool:
            assert run.poll() is None, "the run ended without publishing"
            return guest_get("lin-03", server.url + "/meta-data")[0] == 200

        wait_until(published, timeout=60, what="published", interval=0.2)
        held_connection(run, server.port, what="the run should wait for the guest's fetch")  # its long-poll
        seeded = cloudinit("nocloud", server.url + "/", netns="bhlab-lin-03")
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, stderr[-3000:]
    assert seeded["meta_data"]["instance-id"] == "lin-03"
    result = json.loads(stdout)
    records = [json.loads(line) for line in (runs_dir / result["run_id"] / "journal.jsonl").read_text().splitlines()]
    intent = next(r for r in records if r.get("op") == "publish_userdata")
    assert intent["mac"] == mac_of(vc, "lin-03") and intent["ip"] == vc.guest("lin-03")["ip"]
    undo = beachhead("undo", result["run_id"])
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert guest_get("lin-03", server.url + "/meta-data")[0] == 404
