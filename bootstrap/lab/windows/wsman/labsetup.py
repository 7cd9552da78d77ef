"""The files the lab gives a Windows guest's WinRM endpoint, in the guest's tools
directory (``guests/<vm>.tools/wsman/``) and the lab's ``pki/``.

* ``users`` (0600): the guest login and its password, ``USER:PASSWORD``;
* ``certmap``: client-certificate mappings, empty at first (a line
  ``ISSUER_SHA1_THUMBPRINT SUBJECT USER`` maps certificates issued by that CA whose
  UPN is SUBJECT, or any with ``*``, to USER, as ``winrm create
  winrm/config/service/certmapping`` does on Windows);
* ``root-store.pem``: the machine's Root store beyond the lab CA, empty at first
  (certificates imported into it are trusted by the endpoint from the next handshake);
* ``pki/<vm>.pem`` / ``pki/<vm>-key.pem``: the https listener's certificate from the
  lab CA (IP SAN the guest address, DNS SAN its name).
"""

from __future__ import annotations

from pathlib import Path

from beachhead.bootstrap.lab.certs import issue_certificate

HTTP_PORT = 5985
HTTPS_PORT = 5986


def prepare(tools_dir: Path, pki: Path, name: str, ip: str, user: str, password: str) -> dict[str, str]:
    """Write the endpoint's files; the paths and addresses the launcher starts it with."""
    directory = tools_dir / "wsman"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    users = directory / "users"
    users.touch(mode=0o600)
    users.chmod(0o600)
    users.write_text(f"{user}:{password}\n", encoding="utf-8")
    cert_map = directory / "certmap"
    if not cert_map.exists():
        cert_map.write_text("", encoding="utf-8")
    root_store = directory / "root-store.pem"
    if not root_store.exists():
        root_store.write_text("", encoding="ascii")
    cert, key = issue_certificate(pki, name, f"{name} WinRM", hosts=(ip, name))
    return {
        "users": str(users),
        "cert_map": str(cert_map),
        "cert": str(cert),
        "key": str(key),
        "ca": str(pki / "ca.pem"),
        "root_store": str(root_store),
        "log": str(directory / "wsman.log"),
        "http": f"{ip}:{HTTP_PORT}",
        "https": f"{ip}:{HTTPS_PORT}",
    }
