"""The `userdata` step's `client_certs`: PEM certificates published with the user-data,
which cloudbase-init's real HttpService reads as the instance's client-auth certs; undo
revokes them with the instance; bad files exit 2 naming the field."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.conftest import beachhead, write_plan
from tests.metadata.cloudbase_init import client_certificate, cloudbase_init
from tests.metadata.conftest import MetadataServer

PS1 = "#ps1_sysnative\nWrite-Output hello\n"
TARGET = "ssh://root@127.0.0.1:1?name=win-01"  # never connected: no step needs a channel
PLAN = "name: p\nsteps:\n  - userdata: {user_data: user-data.ps1, instance_id: win-01, client_certs: [admin.pem]}\n"


def _run(server: MetadataServer, plan: Path, runs_dir: Path) -> tuple[int, str, str]:
    done = beachhead(
        "run",
        str(plan),
        "--target",
        TARGET,
        "--json",
        "--runs-dir",
        str(runs_dir),
        env=server.client_env,
    )
    return done.returncode, done.stdout, done.stderr


def test_client_certs_reach_cloudbase_init_and_undo_revokes_them(
    server: MetadataServer, tmp_path: Path, runs_dir: Path
) -> None:
    cert = client_certificate()
    (tmp_path / "user-data.ps1").write_text(PS1)
    (tmp_path / "admin.pem").write_text(cert)
    code, stdout, stderr = _run(server, write_plan(tmp_path, PLAN), runs_dir)
    assert code == 0, stderr[-3000:]
    got = cloudbase_init("crawl", "--service", "openstack", "--url", server.url + "/")
    assert got["instance_id"] == "win-01"
    assert got["client_auth_certs"] == [cert.strip()]
    assert base64.b64decode(got["user_data"]).decode() == PS1
    run_id = json.loads(stdout)["run_id"]
    records = [json.loads(line) for line in (runs_dir / run_id / "journal.jsonl").read_text().splitlines()]
    assert next(r for r in records if r.get("op") == "publish_userdata")["client_certs"] == 1

    undo = beachhead("undo", run_id, "--runs-dir", str(runs_dir))
    assert undo.returncode == 0, undo.stdout + undo.stderr
    listed = beachhead("metadata", "list", "--server", server.url, "--token-file", str(server.token_file))
    assert listed.stdout.strip() == ""


def test_bad_client_certs_exit_2_naming_the_field(server: MetadataServer, tmp_path: Path, runs_dir: Path) -> None:
    (tmp_path / "user-data.ps1").write_text(PS1)
    (tmp_path / "admin.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = {
        PLAN: "step 1 (userdata).client_certs[0] (line 3): ",
        PLAN.replace("[admin.pem]", "[missing.pem]"): "file not found",
        PLAN.replace("[admin.pem]", "[]"): "must be a non-empty list",
        PLAN.replace("client_certs", "via: guestinfo, client_certs").replace("[admin.pem]", "[user-data.ps1]"): (
            "must hold exactly one PEM X.509 certificate"
        ),
    }
    for plan, reason in cases.items():
        code, _, stderr = _run(server, write_plan(tmp_path, plan), runs_dir)
        assert code == 2 and reason in stderr, (plan, stderr[-2000:])
    (tmp_path / "admin.pem").write_text(client_certificate())
    guestinfo = PLAN.replace("client_certs", "via: guestinfo, client_certs")
    code, _, stderr = _run(server, write_plan(tmp_path, guestinfo), runs_dir)
    assert code == 2 and "client_certs" in stderr and "only with via: metadata" in stderr, stderr[-2000:]
    listed = beachhead("metadata", "list", "--server", server.url, "--token-file", str(server.token_file))
    assert listed.stdout.strip() == ""
