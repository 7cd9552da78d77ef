"""The Windows bootstrap payload (bootstrap/windows/) and every PowerShell script the
product emits: each parses with tree-sitter-powershell without an error; the
cloudbase-init files load in cloudbase-init's own config loader with the options
Beachhead means; the autounattend fragment is what Windows setup reads.

Which PowerShell is checked (see ``beachhead.bootstrap.windows``): every ``.ps1`` under
bootstrap/; every module-level string constant named ``..._PS1`` in the installed
``beachhead`` package; every ``powershell.exe ... -EncodedCommand B64`` in such
constants, decoded; and what ``agent.render`` makes of a PowerShell ``run`` step.
tree-sitter-powershell 0.26 has two known false positives (windows-facts.md): a
script-level ``[CmdletBinding()]`` before ``param(...)``, and a ``switch`` on one line
without separators; write scripts without them.
"""

from __future__ import annotations

import base64
import importlib
import pkgutil
import re
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

import beachhead
from beachhead.agent.render import RunSpec, render
from beachhead.agent.targets import OsFamily
from beachhead.bootstrap import windows
from tests.metadata.cloudbase_init import cloudbase_init

REPO = Path(__file__).resolve().parents[1]
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
# The base64 after -EncodedCommand (prose that merely mentions the option has none).
ENCODED = re.compile(r"-EncodedCommand\s+([A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])", re.IGNORECASE)
UNATTEND = "urn:schemas-microsoft-com:unattend"
WCM = "http://schemas.microsoft.com/WMIConfig/2002/State"
SCANNED_PACKAGES = ("agent", "plugins", "bootstrap", "metadata_server")


def powershell_errors(source: str) -> list[str]:
    """Where the PowerShell in ``source`` does not parse: ``LINE:COLUMN: what``."""
    tree = PARSER.parse(source.encode("utf-8"))
    found: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_missing:
            found.append(f"{node.start_point.row + 1}:{node.start_point.column + 1}: missing {node.type!r}")
        elif node.is_error:
            text = source.encode()[node.start_byte : node.end_byte][:40].decode(errors="replace")
            found.append(f"{node.start_point.row + 1}:{node.start_point.column + 1}: cannot parse {text!r}")
        stack.extend(node.children)
    if tree.root_node.has_error and not found:
        found.append("the parse has an error")
    return sorted(found)


def scripts_in_module(module: types.ModuleType) -> dict[str, str]:
    """The PowerShell a module holds: ``*_PS1`` constants and decoded ``-EncodedCommand``s."""
    found: dict[str, str] = {}
    for name, value in vars(module).items():
        if not isinstance(value, str) or name.startswith("__"):  # docstrings are prose
            continue
        where = f"{module.__name__}.{name}"
        if name.endswith("_PS1"):
            found[where] = value
        for index, encoded in enumerate(ENCODED.findall(value)):
            found[f"{where} (-EncodedCommand {index})"] = base64.b64decode(encoded).decode("utf-16-le")
    return found


def product_scripts() -> dict[str, str]:
    """Every PowerShell script the product emits, by where it comes from."""
    found = {str(path.relative_to(REPO)): path.read_text() for path in sorted((REPO / "bootstrap").rglob("*.ps1"))}
    for package in SCANNED_PACKAGES:
        root = importlib.import_module(f"beachhead.{package}")
        modules = [root]
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
            modules.append(importlib.import_module(info.name))
        for module in modules:
            found.update(scripts_in_module(module))
    request = render(
        RunSpec(command="Get-ChildItem C:\\ | Select-Object -First 3", env={"A": "it's"}), OsFamily.WINDOWS
    )
    for index, encoded in enumerate(ENCODED.findall(request.command)):
        found[f"agent.render run step (-EncodedCommand {index})"] = base64.b64decode(encoded).decode("utf-16-le")
    return found


SCRIPTS = product_scripts()


def test_the_payload_and_the_rendered_scripts_are_found() -> None:
    assert "bootstrap/windows/enable-winrm-https.ps1" in SCRIPTS
    assert "agent.render run step (-EncodedCommand 0)" in SCRIPTS
    assert beachhead.__name__ == "beachhead"


@pytest.mark.parametrize("where", sorted(SCRIPTS))
def test_every_powershell_script_the_product_emits_parses(where: str) -> None:
    assert powershell_errors(SCRIPTS[where]) == [], where


def test_a_broken_script_is_reported_with_its_place() -> None:
    broken = "function Set-Thing {\n    if ($x) {\n        'a'\n    \n}\n"
    errors = powershell_errors(broken)
    assert errors and all(re.match(r"\d+:\d+: (missing|cannot parse)", error) for error in errors), errors
    assert powershell_errors("Write-Output 'fine'\n") == []


def test_marked_constants_and_encoded_commands_are_discovered() -> None:
    module = types.ModuleType("beachhead.example")
    module.BROKEN_PS1 = "if ($a) { 'b'\n"  # type: ignore[attr-defined]
    inner = base64.b64encode("Get-Item (\n".encode("utf-16-le")).decode()
    module.COMMAND = f"cmd.exe /c powershell.exe -NoProfile -EncodedCommand {inner}"  # type: ignore[attr-defined]
    module.OTHER = "not a script"  # type: ignore[attr-defined]
    found = scripts_in_module(module)
    assert set(found) == {"beachhead.example.BROKEN_PS1", "beachhead.example.COMMAND (-EncodedCommand 0)"}
    assert all(powershell_errors(text) for text in found.values())


def test_the_winrm_script_is_cloudbase_init_user_data_and_takes_no_secret_on_its_command_line() -> None:
    text = windows.ENABLE_WINRM_HTTPS.read_text()
    assert text.startswith("#ps1_sysnative\n")  # cloudbase-init's marker for a 64-bit PowerShell script
    for needed in (
        "New-Item -Path WSMan:\\localhost\\Listener -Transport HTTPS",
        "New-Item -Path WSMan:\\localhost\\ClientCertificate",
        "-URI * -Issuer $issuer",
        "WSMan:\\localhost\\Service\\AllowUnencrypted -Value $false",
        "WSMan:\\localhost\\Service\\Auth\\Basic -Value ([bool] $EnableBasic)",
        "WSMan:\\localhost\\Service\\Auth\\Certificate -Value $true",
        "New-NetFirewallRule",
    ):
        assert needed in text, needed
    params = re.search(r"param\((.*?)\n    \)", text, re.DOTALL)
    assert params is not None and "Password " not in params.group(1) and "Password=" not in params.group(1)


def _conf(path: Path) -> dict[str, object]:
    got = cloudbase_init("config", str(path))
    assert got["unknown"] == [], f"{path.name}: options cloudbase-init does not know"
    assert got["missing"] == [], f"{path.name}: classes cloudbase-init does not have"
    options: dict[str, object] = got["options"]
    return options


def test_cloudbase_init_conf_loads_with_the_options_beachhead_needs() -> None:
    options = _conf(windows.CLOUDBASE_INIT_CONF)
    assert options["metadata_services"] == ["cloudbaseinit.metadata.services.httpservice.HttpService"]
    assert options["openstack"]["metadata_base_url"] == "http://169.254.169.254/"  # type: ignore[index]
    plugins = [name.rsplit(".", 1)[1] for name in options["plugins"]]  # type: ignore[attr-defined]
    for plugin in ("SetHostNamePlugin", "SetUserPasswordPlugin", "ConfigWinRMListenerPlugin", "UserDataPlugin"):
        assert plugin in plugins, plugin
    # The certificate mapping uses the password the password plugin set: it must come after it.
    assert plugins.index("SetUserPasswordPlugin") < plugins.index("ConfigWinRMCertificateAuthPlugin")
    assert plugins.index("CreateUserPlugin") < plugins.index("SetUserPasswordPlugin")
    assert options["winrm_configure_https_listener"] is True
    assert options["winrm_configure_http_listener"] is False
    assert options["winrm_enable_basic_auth"] is False
    assert options["inject_user_password"] is False and options["username"] == "Administrator"


def test_cloudbase_init_unattend_conf_loads_and_does_only_the_specialize_part() -> None:
    options = _conf(windows.CLOUDBASE_INIT_UNATTEND_CONF)
    assert options["metadata_services"] == ["cloudbaseinit.metadata.services.httpservice.HttpService"]
    assert options["openstack"]["metadata_base_url"] == "http://169.254.169.254/"  # type: ignore[index]
    assert [name.rsplit(".", 1)[1] for name in options["plugins"]] == ["MTUPlugin", "SetHostNamePlugin"]  # type: ignore[attr-defined]
    assert options["allow_reboot"] is False


def test_the_config_check_reports_unknown_options_and_classes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text(
        "[DEFAULT]\nplugins=cloudbaseinit.plugins.common.sethostname.SetHostNamePlugn\nwinrm_basic=false\n"
        "[openstack]\nmetadata_url=http://x.invalid/\n"
    )
    got = cloudbase_init("config", str(bad))
    assert got["unknown"] == ["DEFAULT.winrm_basic", "openstack.metadata_url"]
    assert got["missing"] == ["cloudbaseinit.plugins.common.sethostname.SetHostNamePlugn"]


def test_the_autounattend_fragment_has_what_windows_setup_reads() -> None:
    root = ET.parse(windows.AUTOUNATTEND_FIRSTLOGON).getroot()
    assert root.tag == f"{{{UNATTEND}}}unattend"
    (settings,) = root.findall(f"{{{UNATTEND}}}settings")
    assert settings.get("pass") == "oobeSystem"
    (component,) = settings.findall(f"{{{UNATTEND}}}component")
    assert component.attrib == {
        "name": "Microsoft-Windows-Shell-Setup",
        "processorArchitecture": "amd64",
        "publicKeyToken": "31bf3856ad364e35",
        "language": "neutral",
        "versionScope": "nonSxS",
    }
    commands = component.findall(f"{{{UNATTEND}}}FirstLogonCommands/{{{UNATTEND}}}SynchronousCommand")
    assert [command.findtext(f"{{{UNATTEND}}}Order") for command in commands] == ["1", "2"]
    for command in commands:
        assert command.get(f"{{{WCM}}}action") == "add"
        line = command.findtext(f"{{{UNATTEND}}}CommandLine") or ""
        assert 0 < len(line) <= 1024  # Windows' limit for a CommandLine
        assert command.findtext(f"{{{UNATTEND}}}RequiresUserInput") == "false"
    first = commands[0].findtext(f"{{{UNATTEND}}}CommandLine") or ""
    assert "-File C:\\Windows\\Setup\\Scripts\\enable-winrm-https.ps1" in first
    # Every parameter the command line passes is one the script declares.
    declared = set(re.findall(r"\$(\w+)", windows.ENABLE_WINRM_HTTPS.read_text().split("$ErrorActionPreference")[0]))
    passed = set(re.findall(r" -(\w+) ", first.split("enable-winrm-https.ps1", 1)[1] + " "))
    assert passed and passed <= declared, passed - declared
