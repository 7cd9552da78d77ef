"""What a lab Windows guest with ``cloudbase_init: true`` runs at each boot: the
cloudbase-init stand-in (``cloudbase_init.py`` beside this file) with cloudbase-init's own
Python and Beachhead's shipped ``bootstrap/windows/cloudbase-init.conf``, so the guest
fetches its instance's data from the metadata server at ``http://169.254.169.254/`` and
maps the WinRM client certificates it finds there, as a Windows image prepared with
that file does at first boot.

Its files live in the guest's tools directory (``guests/<vm>.tools/cloudbase-init/``):
``metadata.json`` (what the service read) and ``cloudbase-init.log``. The certificates
go into the WinRM endpoint's ``certmap`` and ``root-store.pem``, which the endpoint
reads again when they change.
"""

from __future__ import annotations

from pathlib import Path

from beachhead.bootstrap.lab.system import LabError

_REPOSITORY = Path(__file__).resolve().parents[3]
PYTHON = _REPOSITORY / ".venv-cloudbase-init" / "bin" / "python"  # made by bootstrap/install.sh
STANDIN = Path(__file__).resolve().with_name("cloudbase_init.py")
CONFIG_FILE = Path(__file__).resolve().parents[2] / "windows" / "cloudbase-init.conf"
WAIT_S = 180  # how long it tries to reach the metadata server after a boot, as retry_count does


def prepare(tools_dir: Path, wsman: dict[str, str], user: str) -> dict[str, str | int]:
    """Make the stand-in's directory; the command the launcher runs at power-on (as
    the fields of its ``cloudbase_init`` entry). ``wsman`` is the endpoint's entry, whose
    cert-map and root store the stand-in writes; ``user`` is the guest login that
    client certificates are mapped to (the image's ``username``)."""
    if not PYTHON.exists():
        raise LabError(f"cloudbase_init: true needs cloudbase-init's virtualenv ({PYTHON}): run bootstrap/install.sh")
    directory = tools_dir / "cloudbase-init"
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "python": str(PYTHON),
        "script": str(STANDIN),
        "config_file": str(CONFIG_FILE),
        "user": user,
        "cert_map": wsman["cert_map"],
        "root_store": wsman["root_store"],
        "record": str(directory),
        "log": str(directory / "cloudbase-init.log"),
        "wait_s": WAIT_S,
    }
