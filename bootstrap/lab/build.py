"""Builds the lab's vCenter launcher with Debian's Go and govmomi, offline.

GOPATH mode (``GO111MODULE=off``) against ``/usr/share/gocode``. The simulator package
gets one extra file at build time through ``go build -overlay`` (see
``launcher/overlay/``). The binary is cached under a hash of every input, so a change
to the launcher's source, Go or govmomi rebuilds it and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from beachhead.bootstrap.lab.system import LabError

LAUNCHER_SOURCE = Path(__file__).with_name("launcher")
GOCODE = Path("/usr/share/gocode")
SIMULATOR = GOCODE / "src/github.com/vmware/govmomi/simulator"
GOVMOMI_PACKAGE = "golang-github-vmware-govmomi-dev"


def cache_dir() -> Path:
    """Where built launchers live: ``$BEACHHEAD_CACHE_DIR`` or ``~/.cache/beachhead``."""
    base = os.environ.get("BEACHHEAD_CACHE_DIR") or Path.home() / ".cache" / "beachhead"
    return Path(base) / "lab"


def _sources() -> list[Path]:
    return sorted(LAUNCHER_SOURCE.rglob("*.go"))


def _fingerprint(go: str) -> str:
    digest = hashlib.sha256()
    for source in _sources():
        digest.update(str(source.relative_to(LAUNCHER_SOURCE)).encode() + b"\0" + source.read_bytes())
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=False).stdout
    govmomi = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", GOVMOMI_PACKAGE], capture_output=True, text=True, check=False
    ).stdout
    digest.update(f"{version}\0{govmomi}".encode())
    return digest.hexdigest()[:16]


def launcher_binary() -> Path:
    """The launcher for the current sources, built first if the cache lacks it."""
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists() or not SIMULATOR.is_dir():
        raise LabError(f"Go and govmomi are missing: install golang-go and {GOVMOMI_PACKAGE} (bootstrap/install.sh)")
    cache = cache_dir()
    binary = cache / f"launcher-{_fingerprint(go)}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    overlay = cache / "overlay.json"
    overlay.write_text(
        json.dumps(
            {
                "Replace": {
                    str(SIMULATOR / f"zz_beachhead_{source.name}"): str(source)
                    for source in sorted((LAUNCHER_SOURCE / "overlay").glob("*.go"))
                }
            }
        )
    )
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOCODE),
        "GOCACHE": str(cache / "go-build"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    partial = binary.with_suffix(".part")
    result = subprocess.run(
        [go, "build", "-overlay", str(overlay), "-o", str(partial), "."],
        cwd=LAUNCHER_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"building the lab's vCenter launcher failed:\n{result.stderr.strip()}")
    partial.replace(binary)
    for old in cache.glob("launcher-*"):
        if old != binary:
            old.unlink(missing_ok=True)
    return binary
