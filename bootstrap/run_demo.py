"""The demo: one bootstrap run of ``bootstrap/demo/plan.yaml`` over the local vSphere
lab's mixed fleet (which the demo starts, and stops again if it started it): its Linux
guests over SSH and ``win-01`` over WinRM (https, checked against the lab CA), each
step's channel in the run's steps table; then the run's journal, then ``beachhead
undo``. Without root, or with ``--local-sshd``, the guest is a local sshd on 127.0.0.1
instead, where the plan's Windows steps are skipped. Run it with ``bash bootstrap/demo.sh``."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from beachhead.bootstrap.local_sshd import LocalSshd

PLAN = Path(__file__).parent / "demo" / "plan.yaml"
BEACHHEAD = Path(sys.executable).with_name("beachhead")
REPORTS = Path("~/beachhead-demo-reports").expanduser()


def _show_and_run(arguments: list[str], env: dict[str, str]) -> int:
    print(f"\n$ beachhead {shlex.join(arguments)}", flush=True)
    return subprocess.run([str(BEACHHEAD), *arguments], env=env, check=False).returncode


def _beachhead_json(*arguments: str) -> tuple[int, dict[str, Any] | None]:
    done = subprocess.run([str(BEACHHEAD), *arguments], capture_output=True, text=True, check=False)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        sys.stderr.write(done.stderr)
        return done.returncode, None


@contextmanager
def _lab_guests(env: dict[str, str], keep: bool) -> Iterator[list[str]]:
    """vsphere:// targets for the lab's guests: one target per VM, carrying the vCenter
    login and the guest login. A Linux guest's OS family comes from the VM (VMware
    Tools); each of its steps goes over SSH to the address VMware Tools reports, the
    guest's host key pinned from the guest through vSphere (no known_hosts file), or
    through guest operations when SSH cannot serve. A Windows guest is declared
    ``os=windows`` and reached over WinRM on https at its reported address, the
    listener's certificate checked against the lab CA. Passwords go into ``env``.
    Starts the lab when it is down; stops it afterwards then, unless ``keep``."""
    status, _ = _beachhead_json("lab", "status", "--json")
    started = status != 0
    print("\n$ beachhead lab up --json", flush=True)
    status, lab = _beachhead_json("lab", "up", "--json")
    if status != 0 or lab is None:
        raise SystemExit(f"demo: the lab did not start (exit {status})")
    vcenter = lab["vcenter"]
    env["BEACHHEAD_DEMO_VCENTER_PASSWORD"] = vcenter["password"]
    uris = []
    for vm in lab["vms"]:
        if vm.get("console") == "qemu":
            continue  # a console VM has no network, tools or login until a recipe is typed at it
        variable = "BEACHHEAD_DEMO_PASSWORD_" + re.sub(r"\W", "_", vm["name"]).upper()
        env[variable] = vm["guest_password"]
        uri = (
            f"vsphere://{quote(vcenter['username'], safe='')}@127.0.0.1/{vm['name']}"
            f"?password_env=BEACHHEAD_DEMO_VCENTER_PASSWORD&ca_file={vcenter['ca_file']}"
            f"&guest_user={vm['guest_username']}&guest_password_env={variable}"
        )
        route = "SSH"
        if vm["os"] == "windows":
            uri += f"&os=windows&winrm_scheme=https&winrm_ca_file={vcenter['ca_file']}"
            route = "WinRM over https"
        uris.append(uri)
        print(f"demo guest: lab VM {vm['name']} ({vm['guest_id']}), reported at {vm['ip']}, by {route}")
    try:
        yield uris
    finally:
        if started and not keep:
            _show_and_run(["lab", "down"], env)
        elif started:
            print("\nthe lab keeps running: `beachhead lab status`, `beachhead lab down`")


@contextmanager
def _local_sshd_guest(workdir: Path) -> Iterator[list[str]]:
    """The target URI of a local sshd on 127.0.0.1, started for the demo."""
    with LocalSshd(workdir / "sshd") as sshd:
        print(f"demo guest: OpenSSH sshd on {sshd.host}:{sshd.port} (keys in {workdir / 'sshd'})")
        yield [sshd.uri(name="demo-guest")]


def _one_per_family(uris: list[str]) -> list[str]:
    """The first Linux target and the first Windows target (``os=windows``) of ``uris``."""
    windows = [uri for uri in uris if "&os=windows" in uri]
    linux = [uri for uri in uris if uri not in windows]
    return linux[:1] + windows[:1]


def main() -> int:
    """Start the demo guests, run the plan on them, show the journal, undo; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="skip the final undo, and leave the lab running")
    parser.add_argument("--local-sshd", action="store_true", help="use a local sshd instead of the lab's guests")
    options = parser.parse_args()
    local = options.local_sshd or os.geteuid() != 0
    if local and not options.local_sshd:
        print("demo: not root, so no lab: the guest is a local sshd")
    with tempfile.TemporaryDirectory(prefix="beachhead-demo-") as scratch:
        workdir = Path(scratch)
        env = {**os.environ, "BEACHHEAD_RUNS_DIR": str(workdir / "runs")}
        if not sys.stdout.isatty():  # room for the steps table in a log (rich assumes 80)
            env.setdefault("COLUMNS", "160")
        guests = _local_sshd_guest(workdir) if local else _lab_guests(env, options.keep)
        with guests as uris:
            if not local:  # why the steps of a Linux and of a Windows guest go where they go
                for uri in _one_per_family(uris):
                    _show_and_run(["channels", "--target", uri], env)
            targets = [argument for uri in uris for argument in ("--target", uri)]
            status = _show_and_run(["--log-level", "warning", "run", str(PLAN), "--steps", *targets], env)
            runs = sorted((workdir / "runs").iterdir()) if (workdir / "runs").is_dir() else []
            if not runs:
                return status
            run_id = runs[-1].name
            _show_and_run(["journal", run_id], env)
            for report in sorted(REPORTS.glob("*.txt")) if REPORTS.is_dir() else []:
                print(f"\ndownloaded report {report}:\n{report.read_text()}")
            if not options.keep:
                undo_status = _show_and_run(["--log-level", "warning", "undo", run_id], env)
                status = status or undo_status
        return status


if __name__ == "__main__":
    sys.exit(main())
