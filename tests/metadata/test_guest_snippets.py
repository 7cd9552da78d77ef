"""bootstrap/linux/'s snippets are what cloud-init accepts: its schema validates the
cloud-config files and its NoCloud datasource reads the seed from the kernel command
line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.metadata.conftest import SYSTEM_PYTHON

SNIPPETS = Path(__file__).resolve().parents[2] / "bootstrap" / "linux"


def _schema(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    text = path.read_text()
    config.write_text(text if text.startswith("#cloud-config") else "#cloud-config\n" + text)
    return subprocess.run(
        ["/usr/bin/cloud-init", "schema", "--config-file", str(config)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["phone-home.yaml", "99-beachhead-nocloud.cfg", "99-beachhead-ec2.cfg"])
def test_cloud_config_snippets_pass_cloud_inits_schema(name: str, tmp_path: Path) -> None:
    checked = _schema(SNIPPETS / name, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_does_fail_on_a_bad_snippet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nphone_home:\n  url: 42\n  tries: many\n")
    assert _schema(bad, tmp_path).returncode != 0


def test_kernel_command_line_seed_is_read_by_nocloud() -> None:
    cmdline = (SNIPPETS / "kernel-cmdline.txt").read_text().strip()
    program = (
        "import sys\n"
        "from cloudinit.sources.DataSourceNoCloud import parse_cmdline_data\n"
        "fill = {}\n"
        "assert parse_cmdline_data('ds=nocloud', fill, sys.argv[1])\n"
        "print(fill['seedfrom'])\n"
    )
    done = subprocess.run([SYSTEM_PYTHON, "-c", program, cmdline], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://10.213.0.1:80/"
