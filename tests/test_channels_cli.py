"""`beachhead channels`: the taxonomy the installed plugins declare, and with --target
which channel each capability would use on one guest now, and why the others would not."""

from __future__ import annotations

import json

import pytest

from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead


def test_taxonomy_lists_every_builtin_channel_with_its_preferences() -> None:
    done = beachhead("channels", "--json")
    assert done.returncode == 0, done.stderr
    declared = {entry["name"]: entry for entry in json.loads(done.stdout)}
    assert {"ssh", "guestops", "pull"} <= set(declared)
    assert declared["ssh"]["preference"] == {"linux": 100, "windows": 80}
    assert declared["ssh"]["target_schemes"] == ["ssh", "vsphere"]


def test_an_ssh_host_is_reached_over_ssh(sshd: LocalSshd) -> None:
    done = beachhead("channels", "--target", sshd.uri(), "--json")
    assert done.returncode == 0, done.stderr
    explained = json.loads(done.stdout)
    assert explained["os"] == "linux" and explained["vm_state"] is None
    assert explained["capabilities"]["run"] == [{"channel": "ssh", "usable": "yes", "verdict": "would be used"}]
    assert explained["capabilities"]["publish_userdata"][0]["channel"] == "pull"
    assert explained["capabilities"]["type_keys"][0]["verdict"] == "no installed channel has this capability here"


def test_a_vm_whose_vcenter_cannot_be_reached_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPLAIN_PASSWORD", "not-sent-anywhere")
    target = (
        "vsphere://admin@vcenter.invalid/web-01?password_env=EXPLAIN_PASSWORD&guest_user=root"
        "&guest_password_env=EXPLAIN_PASSWORD&insecure=1"
    )
    done = beachhead("channels", "--target", target, "--connect-timeout", "3")
    assert done.returncode == 1  # no channel can run commands there now
    words = " ".join(done.stdout.split())
    assert "vcenter.invalid" in words and "passed over" in words
    table = beachhead("channels", "--target", target, "--json", "--connect-timeout", "3")
    ssh, guestops = json.loads(table.stdout)["capabilities"]["run"]
    assert ssh["channel"] == "ssh" and ssh["verdict"].startswith("passed over: no guest address")
    assert guestops["channel"] == "guestops" and "cannot connect" in guestops["verdict"]
    assert "not-sent-anywhere" not in done.stdout + done.stderr + table.stdout + table.stderr


def test_a_bad_target_is_bad_input() -> None:
    done = beachhead("channels", "--target", "ssh://root@host.invalid?port_typo=1")
    assert done.returncode == 2 and "port_typo" in done.stderr
