"""The `userdata` plan step publishes to the metadata server, journaled and undoable;
`userdata_fetched` and `phoned_home` waits resolve when the real cloud-init client
fetches and the guest phones home."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import BEACHHEAD, beachhead, held_connection, write_plan
from tests.metadata.conftest import MetadataServer, cloudinit

PLAN = """
name: pull
steps:
  - userdata: {user_data: user-data.yaml, meta_data: meta.yaml, instance_id: i-plan}
  - wait: {userdata_fetched: {timeout: 30}}
  - wait: {phoned_home: {timeout: 30}}
"""
TARGET = "ssh://root@127.0.0.1:1?name=guest-1"  # never connected: no step needs a channel


def _files(tmp_path: Path, marker: str = "one") -> None:
    (tmp_path / "user-data.yaml").write_text(f"#cloud-config\n# {marker}\n")
    (tmp_path / "meta.yaml").write_text("role: web\n")


def _run(server: MetadataServer, plan: Path, runs_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BEACHHEAD),
            "run",
            str(plan),
            "--target",
            TARGET,
            "--json",
            "--metadata-server",
            server.url,
            "--metadata-token-file",
            str(server.token_file),
            "--runs-dir",
            str(runs_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_published(server: MetadataServer, instance: str) -> None:
    deadline = time.monotonic() + 30
    request = urllib.request.Request(
        f"{server.url}/admin/instances/{instance}", headers={"Authorization": f"Bearer {server.token}"}
    )
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{instance} was not published within 30s")


def test_publish_then_wait_for_the_fetch_and_the_phone_home(
    server: MetadataServer, tmp_path: Path, runs_dir: Path
) -> None:
    _files(tmp_path)
    run = _run(server, write_plan(tmp_path, PLAN), runs_dir)
    try:
        _wait_published(server, "i-plan")
        # Each wait step is one long-poll the run holds open on the server.
        fetch_wait = held_connection(run, server.port, what="the run should wait for the guest to fetch")
        got = cloudinit("nocloud", server.url + "/")  # the guest at 127.0.0.1 boots
        assert got["meta_data"]["instance-id"] == "i-plan" and got["meta_data"]["role"] == "web"
        held_connection(run, server.port, exclude=fetch_wait, what="the run should wait for the phone home")
        form = urllib.parse.urlencode({"instance_id": "i-plan", "hostname": "i-plan"}).encode()
        with urllib.request.urlopen(server.url + "/phone-home/i-plan", data=form, timeout=10) as response:
            assert response.status == 200
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, stderr[-3000:]
    result = json.loads(stdout)
    assert [step["status"] for step in result["steps"]] == ["ok", "ok", "ok"]
    records = [json.loads(line) for line in (runs_dir / result["run_id"] / "journal.jsonl").read_text().splitlines()]
    intent = next(r for r in records if r.get("op") == "publish_userdata")
    assert (intent["instance_id"], intent["ip"], intent["replaces"]) == ("i-plan", "127.0.0.1", {"exists": False})
    assert "# one" not in json.dumps(records)

    undo = beachhead("undo", result["run_id"], "--runs-dir", str(runs_dir))
    assert undo.returncode == 0, undo.stdout + undo.stderr
    listed = beachhead("metadata", "list", "--server", server.url, "--token-file", str(server.token_file))
    assert listed.stdout.strip() == ""


def test_undo_puts_back_what_the_run_replaced(server: MetadataServer, tmp_path: Path, runs_dir: Path) -> None:
    server.publish("i-plan", "--ip", "127.0.0.1", user_data="#cloud-config\n# before\n")
    _files(tmp_path, "after")
    plan = write_plan(tmp_path, "name: p\nsteps:\n  - userdata: {user_data: user-data.yaml, instance_id: i-plan}\n")
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
    assert done.returncode == 0, done.stderr
    with urllib.request.urlopen(server.url + "/user-data", timeout=10) as response:
        assert response.read() == b"#cloud-config\n# after\n"
    run_id = json.loads(done.stdout)["run_id"]
    assert (runs_dir / run_id / "backups").stat().st_mode & 0o077 == 0
    undo = beachhead("undo", run_id, "--runs-dir", str(runs_dir))
    assert undo.returncode == 0 and "republished" in undo.stdout + undo.stderr, undo.stdout + undo.stderr
    with urllib.request.urlopen(server.url + "/user-data", timeout=10) as response:
        assert response.read() == b"#cloud-config\n# before\n"


def test_pull_steps_need_the_metadata_server(tmp_path: Path, runs_dir: Path) -> None:
    _files(tmp_path)
    done = beachhead("run", str(write_plan(tmp_path, PLAN)), "--target", TARGET, "--runs-dir", str(runs_dir))
    assert done.returncode == 2
    assert "step 1 (userdata): needs the metadata server" in done.stderr
    guestinfo = write_plan(tmp_path, "name: g\nsteps:\n  - userdata: {user_data: user-data.yaml, via: guestinfo}\n")
    done = beachhead("run", str(guestinfo), "--target", TARGET, "--runs-dir", str(runs_dir))
    assert done.returncode == 2 and "acts on a vSphere VM" in done.stderr
