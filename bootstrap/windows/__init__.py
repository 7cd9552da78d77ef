"""Windows bootstrap payload: ``enable-winrm-https.ps1``, cloudbase-init's configuration
(``cloudbase-init.conf``, ``cloudbase-init-unattend.conf``) pointing it at Beachhead's
metadata server, and an ``autounattend.xml`` fragment for images without cloudbase-init.

PowerShell the product renders in Python is checked by the tests as these files are:
name a module-level constant holding a PowerShell script ``..._PS1``, and a constant
holding a ``powershell.exe ... -EncodedCommand`` line is decoded and checked too.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
ENABLE_WINRM_HTTPS = HERE / "enable-winrm-https.ps1"
CLOUDBASE_INIT_CONF = HERE / "cloudbase-init.conf"
CLOUDBASE_INIT_UNATTEND_CONF = HERE / "cloudbase-init-unattend.conf"
AUTOUNATTEND_FIRSTLOGON = HERE / "autounattend-firstlogon.xml"
