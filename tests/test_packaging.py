"""The wheel installs one top-level package, ``beachhead``, with the repository's
folders as its subpackages, the data files the lab and demo read, and every built-in
plugin registered through the ``beachhead.plugins`` entry points."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_one_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    [wheel] = tmp_path.glob("beachhead-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(info).decode())
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"beachhead"}
    for expected in (
        "beachhead/__init__.py",
        "beachhead/agent/engine.py",
        "beachhead/plugins/steps/run.py",
        "beachhead/metadata_server/app.py",
        "beachhead/bootstrap/demo/plan.yaml",
        "beachhead/bootstrap/lab/launcher/main.go",
        "beachhead/bootstrap/linux/phone-home.yaml",
    ):
        assert expected in names
    assert not [name for name in names if name.startswith(("beachhead/tests/", "beachhead/benchmarks/"))]
    assert entry_points["console_scripts"]["beachhead"] == "beachhead.agent.cli:main"
    plugins = dict(entry_points["beachhead.plugins"])
    assert {"ssh", "guestops", "pull", "run", "upload", "download", "wait", "extra_config", "power"} <= set(plugins)
    assert all(target.startswith("beachhead.") for target in plugins.values())
