"""The secrets canary: one `beachhead run` that uses every kind of secret it can, over
ssh (password login, sudo with that password) and guest operations (the vCenter and
guest passwords), with environment values, an extraConfig value, user-data through
guestinfo and through the metadata server (with its admin token); then every artefact
(the `--json` output, the debug log, the wire log, every file in the run directory, the
server's log, undo's output) and the guest's process table, sampled while the
commands ran, are searched for each secret in clear, URL-encoded, base64 and
gzip+base64 form. None is found."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BEACHHEAD, beachhead, write_plan
from tests.lab.conftest import lab_metadata_server
from tests.lab.test_metadata_lab import guest_get
from tests.metadata.conftest import MetadataServer
from tests.secret_search import ProcessSampler, hits, search_files

RUN_TIMEOUT_S = 300
SCRIPT = """: canary-script
sleep 1
printf '%s|%s' "$(id -u)" "$CANARY_ENV" | sha256sum
"""


def _canary(kind: str) -> str:
    return f"canary-{kind}-{secrets.token_hex(10)}"


@pytest.fixture
def server(lab: dict[str, Any], tmp_path: Path) -> Iterator[MetadataServer]:
    """A metadata server on the lab's gateway, knowing the guests by their DHCP leases."""
    with lab_metadata_server(lab, tmp_path / "server") as started:
        yield started


def test_no_secret_reaches_an_artefact_or_a_command_line(
    lab: dict[str, Any], server: MetadataServer, tmp_path: Path, runs_dir: Path, vsphere_uri: Callable[..., str]
) -> None:
    env_value, env_newline = _canary("env"), _canary("env-nl") + "\n"
    extra_value = _canary("extra-config")
    guestinfo_secret, metadata_secret = _canary("userdata-guestinfo"), _canary("userdata-metadata")
    guestinfo_doc = f"#cloud-config\nchpasswd: {{list: 'root:{guestinfo_secret}'}}\n"
    metadata_doc = f"#cloud-config\nwrite_files: [{{path: /etc/token, content: {metadata_secret}}}]\n"
    (tmp_path / "ud-guestinfo.yaml").write_text(guestinfo_doc)
    (tmp_path / "ud-metadata.yaml").write_text(metadata_doc)
    (tmp_path / "canary.sh").write_text(SCRIPT)
    plan = write_plan(
        tmp_path,
        f"""
        name: canary
        steps:
          - power: on
          - wait: guestops_ready
          - wait: {{ip_assigned: {{timeout: 120}}}}
          - extra_config: {{guestinfo.canary.secret: {extra_value}}}
          - userdata: {{user_data: ud-guestinfo.yaml, via: guestinfo}}
          - userdata: {{user_data: ud-metadata.yaml, via: metadata}}
          - run:
              command: ': canary-command; sleep 1; printf "%s|%s|%s" "$(id -u)" "$CANARY_ENV" "$CANARY_NL" | sha256sum'
              become: true
              env: {{CANARY_ENV: {env_value}, CANARY_NL: {json.dumps(env_newline)}}}
          - run: {{script: canary.sh, become: true, env: {{CANARY_ENV: {env_value}}}}}
        """,
    )
    over_ssh = vsphere_uri("lin-03") + "&name=canary-ssh"  # admin: ssh password, sudo -S with it
    over_guestops = vsphere_uri("lin-02", ssh_port="1") + "&name=canary-guestops"  # ssh refused: guest operations
    wire = tmp_path / "wire.jsonl"
    command = [
        str(BEACHHEAD),
        "--log-level",
        "debug",
        "run",
        str(plan),
        "--target",
        over_ssh,
        "--target",
        over_guestops,
        "--json",
        "--retries",
        "0",
        "--wire-log",
        str(wire),
        "--metadata-server",
        server.url,
        "--metadata-token-file",
        str(server.token_file),
    ]
    with ProcessSampler(limit_s=RUN_TIMEOUT_S) as sampler:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["target"]: r for r in map(json.loads, done.stdout.splitlines())}
    expected = {
        "canary-ssh": ("ssh", hashlib.sha256(f"0|{env_value}|{env_newline}".encode()).hexdigest()),
        "canary-guestops": ("guestops", hashlib.sha256(f"0|{env_value}|{env_newline}".encode()).hexdigest()),
    }
    for name, (channel, digest) in expected.items():
        command_step, script_step = results[name]["steps"][-2:]
        assert (command_step["channel"], script_step["channel"]) == (channel, channel), results[name]
        assert command_step["stdout"].split()[0] == digest  # every value arrived, as root
        assert script_step["stdout"].split()[0] == hashlib.sha256(f"0|{env_value}".encode()).hexdigest()
    # The metadata server really holds the user-data: the guest gets it in full.
    assert guest_get("lin-03", server.url + "/user-data") == (200, metadata_doc)
    run_id = results["canary-ssh"]["run_id"]
    undo = beachhead("undo", run_id, timeout=RUN_TIMEOUT_S)
    assert undo.returncode == 0, undo.stdout + undo.stderr

    guests = {vm["name"]: vm for vm in lab["vms"]}
    delivered: dict[str, str | bytes] = {
        "env value": env_value,
        "env value with a newline": env_newline.rstrip("\n"),
        "sudo and ssh password (lin-03)": guests["lin-03"]["guest_password"],
        "extraConfig value": extra_value,
        "user-data secret (guestinfo)": guestinfo_secret,
        "user-data document (guestinfo)": guestinfo_doc,
        "user-data secret (metadata)": metadata_secret,
        "user-data document (metadata)": metadata_doc,
        "metadata admin token": server.token,
    }
    every: dict[str, str | bytes] = {
        **delivered,
        "vCenter password": lab["vcenter"]["password"],
        "guest password (lin-02)": guests["lin-02"]["guest_password"],
    }
    artefacts = {
        "--json output": done.stdout,
        "debug log": done.stderr,
        "undo output": undo.stdout + undo.stderr,
    }
    found = {name: where for name, text in artefacts.items() if (where := hits(text.encode(), every))}
    found.update(search_files([wire, runs_dir / run_id, server.log], every))
    assert found == {}
    assert '"event": "run.command"' in done.stderr and wire.stat().st_size > 0  # the search had something to search
    assert (runs_dir / run_id / "output" / "canary-guestops").is_dir()
    # The guest's process table: what Beachhead hands the guest appears on no command
    # line and in no SUDO_COMMAND (the lab's own processes may carry the lab's passwords).
    assert sampler.saw(": canary-command") and sampler.saw("sleep 1"), "the commands were never seen running"
    assert sampler.saw("SUDO_COMMAND="), "no sudo'd command was seen"
    assert sampler.hits(delivered) == []
