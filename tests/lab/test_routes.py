"""One VM, every route: a vsphere:// target with a guest-operations login reaches the
same lab guest over SSH (at the address VMware Tools reports, its host key pinned from
the guest through guest operations) and over guest operations, chosen per step against
live state, through `beachhead run` and `beachhead channels --target` as a user runs them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import beachhead, write_plan
from tests.lab.conftest import Vc, wait_for

STOP_SSHD = "kill $(ss -Hltnp 'sport = :22' | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)"
START_SSHD = "/usr/sbin/sshd -f /etc/ssh/sshd_config"
PORT_22_CLOSED = "! ss -Hltn 'sport = :22' | grep -q ."


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(line)
    return result


def _run(plan: Path, uri: str, *options: str) -> dict[str, Any]:
    done = beachhead("run", str(plan), "--target", uri, "--json", "--retries", "0", *options, timeout=180)
    assert done.returncode in (0, 1), done.stderr
    return _result(done)


def _guestops(tmp_path: Path, uri: str, command: str) -> None:
    """Run ``command`` in the guest through guest operations only."""
    plan = write_plan(
        tmp_path, f"name: admin\nchannels: [guestops]\nsteps:\n  - run: {json.dumps(command)}\n", "g.yaml"
    )
    result = _run(plan, uri)
    assert result["status"] == "ok", result


@pytest.fixture
def lin01(vsphere_uri: Callable[..., str], vc: Vc, tmp_path: Path) -> Iterator[str]:
    """lin-01 as one vsphere:// target with its guest login (and so its ssh route),
    booted (tools running, address reported: a session's first test may start within
    the boot delay); its sshd is running again after the test, whatever the test did."""
    wait_for(lambda: vc.vm("lin-01").guest.ipAddress, timeout=60, what="lin-01 reports its address")
    uri = vsphere_uri("lin-01")
    yield uri
    _guestops(tmp_path, uri, f"{PORT_22_CLOSED} && {START_SSHD}; true")


PLAN = """
name: every-route
wait: [{ip_assigned: {timeout: 60}}]
steps:
  - run: "echo on-$(hostname)"
  - upload: {src: app.conf, dest: /root/routes/app.conf}
"""


def test_a_vm_with_both_logins_runs_over_ssh(tmp_path: Path, runs_dir: Path, lin01: str, lab: dict[str, Any]) -> None:
    (tmp_path / "app.conf").write_text("routes\n")
    result = _run(write_plan(tmp_path, PLAN), lin01)
    assert result["status"] == "ok", result
    _, run, upload = result["steps"]
    assert run["channel"] == "ssh" and run["stdout"] == "on-lin-01\n"
    assert run["channels_tried"] == [{"channel": "ssh", "result": "used"}]
    assert upload["channel"] == "ssh"
    records = [json.loads(line) for line in (runs_dir / result["run_id"] / "journal.jsonl").read_text().splitlines()]
    assert {r["channel"] for r in records if r["phase"] == "intent"} == {"ssh"}


def test_sshd_stopped_the_same_plan_runs_over_guest_operations(tmp_path: Path, lin01: str) -> None:
    (tmp_path / "app.conf").write_text("routes\n")
    _guestops(tmp_path, lin01, STOP_SSHD)
    result = _run(write_plan(tmp_path, PLAN), lin01)
    assert result["status"] == "ok", result
    _, run, upload = result["steps"]
    assert run["channel"] == "guestops" and run["stdout"] == "on-lin-01\n"
    refused, used = run["channels_tried"]
    assert (refused["channel"], refused["result"]) == ("ssh", "failed") and "refused" in refused["reason"]
    assert used == {"channel": "guestops", "result": "used"}
    assert upload["channel"] == "guestops"


def test_a_step_that_starts_sshd_moves_the_next_steps_to_ssh(tmp_path: Path, lin01: str) -> None:
    _guestops(tmp_path, lin01, STOP_SSHD)
    plan = write_plan(
        tmp_path,
        f"""
        name: enable-ssh
        steps:
          - run: {json.dumps(START_SSHD)}
          - run: echo after
          - run: echo still
        """,
    )
    result = _run(plan, lin01)
    assert result["status"] == "ok", result
    start, after, still = result["steps"]
    assert start["channel"] == "guestops" and start["channels_tried"][0]["result"] == "failed"
    assert after["channel"] == "ssh" and after["stdout"] == "after\n", json.dumps([start, after])
    assert after["channels_tried"] == [{"channel": "ssh", "result": "used"}]
    assert still["channel"] == "ssh"


def test_a_guest_whose_host_key_was_swapped_is_refused(tmp_path: Path, runs_dir: Path, lin01: str) -> None:
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    swap = write_plan(
        tmp_path,
        """
        name: swap-key
        channels: [guestops]
        steps:
          - upload: {src: impostor.pub, dest: /etc/ssh/ssh_host_ed25519_key.pub}
        """,
        "swap.yaml",
    )
    swapped = _run(swap, lin01)
    assert swapped["status"] == "ok", swapped
    try:
        over_ssh = write_plan(tmp_path, "name: p\nchannels: [ssh]\nsteps:\n  - run: echo reached\n", "ssh.yaml")
        refused = _run(over_ssh, lin01)
        assert refused["status"] == "failed"
        [tried] = refused["steps"][0]["channels_tried"]
        assert tried["result"] == "failed" and "not verifiable (pinned from the guest" in tried["reason"]
    finally:
        undone = beachhead("undo", swapped["run_id"])
        assert undone.returncode == 0, undone.stdout + undone.stderr
    reached = _run(over_ssh, lin01)
    assert reached["status"] == "ok" and reached["steps"][0]["stdout"] == "reached\n"

    # Only the Ed25519 key is pinned: an RSA key file beside it (here a stranger's) is not read.
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "rsa")], check=True)
    extra = write_plan(
        tmp_path,
        "name: extra-key\nchannels: [guestops]\nsteps:\n"
        "  - upload: {src: rsa.pub, dest: /etc/ssh/ssh_host_rsa_key.pub}\n",
        "extra.yaml",
    )
    added = _run(extra, lin01)
    assert added["status"] == "ok", added
    try:
        still = _run(over_ssh, lin01)
        assert still["status"] == "ok" and still["steps"][0]["stdout"] == "reached\n", still
    finally:
        undone = beachhead("undo", added["run_id"])
        assert undone.returncode == 0, undone.stdout + undone.stderr


def test_without_an_ed25519_key_the_guests_other_host_key_is_pinned(tmp_path: Path, lin01: str) -> None:
    # The Ed25519 key is asked for first; missing, the directory is listed and the
    # ECDSA key is pinned: one made here, which sshd (restarted with it) must prove.
    _guestops(
        tmp_path,
        lin01,
        "set -e; ssh-keygen -q -t ecdsa -N '' -f /root/alt_ecdsa_key"
        "; cp -p /etc/ssh/ssh_host_ecdsa_key.pub /root/ecdsa.pub.orig 2>/dev/null || true"
        "; cp /root/alt_ecdsa_key.pub /etc/ssh/ssh_host_ecdsa_key.pub"
        "; mv /etc/ssh/ssh_host_ed25519_key.pub /root/ed25519.pub.aside"
        f"; {STOP_SSHD}; {START_SSHD} -h /root/alt_ecdsa_key",
    )
    try:
        over_ssh = write_plan(tmp_path, "name: p\nchannels: [ssh]\nsteps:\n  - run: echo reached\n", "ssh.yaml")
        reached = _run(over_ssh, lin01)
        assert reached["status"] == "ok" and reached["steps"][0]["stdout"] == "reached\n", reached
    finally:
        _guestops(
            tmp_path,
            lin01,
            "mv /root/ed25519.pub.aside /etc/ssh/ssh_host_ed25519_key.pub"
            "; if [ -f /root/ecdsa.pub.orig ]; then mv /root/ecdsa.pub.orig /etc/ssh/ssh_host_ecdsa_key.pub;"
            " else rm -f /etc/ssh/ssh_host_ecdsa_key.pub; fi"
            f"; rm -f /root/alt_ecdsa_key /root/alt_ecdsa_key.pub; {STOP_SSHD}; {START_SSHD}",
        )


def test_known_hosts_from_vsphere_is_the_default_only_with_a_guest_login(
    tmp_path: Path, lab: dict[str, Any], vsphere_uri: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = next(vm for vm in lab["vms"] if vm["name"] == "lin-02")
    monkeypatch.setenv("LIN02_SSH_PASSWORD", guest["guest_password"])
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts: the file policy refuses
    uri = vsphere_uri("lin-02")
    without_login = uri.split("&guest_user=")[0] + f"&ca_file={lab['vcenter']['ca_file']}"
    without_login += "&ssh_user=root&ssh_password_env=LIN02_SSH_PASSWORD"
    plan = write_plan(tmp_path, "name: p\nsteps:\n  - run: echo hi\n")
    refused = _run(plan, without_login)
    assert refused["status"] == "failed" and "not verifiable" in refused["error"]
    pinned = _run(plan, uri)
    assert pinned["status"] == "ok" and pinned["steps"][0]["channel"] == "ssh"


def test_channels_explains_the_choice_per_capability(lin01: str) -> None:
    done = beachhead("channels", "--target", lin01, "--json")
    assert done.returncode == 0, done.stderr
    explained = json.loads(done.stdout)
    assert explained["os"] == "linux" and "poweredOn" in explained["vm_state"]
    run = explained["capabilities"]["run"]
    assert [(row["channel"], row["verdict"]) for row in run] == [
        ("ssh", "would be used"),
        ("guestops", "fallback after ssh"),
    ]
    assert explained["capabilities"]["publish_userdata"][0]["channel"] == "pull"
    as_windows = json.loads(beachhead("channels", "--target", lin01, "--os", "windows", "--json").stdout)
    verdicts = {row["channel"]: row["verdict"] for row in as_windows["capabilities"]["run"]}
    assert list(verdicts) == ["winrm", "ssh", "guestops"], verdicts
    # The guest login chains into a WinRM route; channels connects to nothing, so winrm
    # (first for Windows) would be tried, guest operations after it.
    assert verdicts["winrm"] == "would be used", verdicts
    assert verdicts["ssh"].startswith("passed over: on Windows only with declared ssh credentials")
    assert verdicts["guestops"] == "fallback after winrm", verdicts
