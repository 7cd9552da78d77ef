"""The ``winrm`` channel against the lab's WS-Management/WinRS endpoint, started as a real
process on loopback (http with NTLM message encryption, https with NTLM, Basic and
client certificates), driving the Windows stand-in's programs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from beachhead.agent.channel import CommandRequest, ShellScript
from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.errors import ChannelUnavailable, InputError
from beachhead.agent.output import OutputSink
from beachhead.agent.plans import Plan
from beachhead.agent.registry import default_plugins
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import parse_target
from beachhead.agent.windows_scripts import POWERSHELL_BOOTSTRAP
from beachhead.bootstrap.lab import certs
from beachhead.plugins import winrm_protocol
from beachhead.plugins.winrm_session import ClixmlDecoder, WinrmSession, open_session
from tests.conftest import beachhead, processes_mentioning, wait_until, write_plan

USER, PASSWORD, PASSWORD_ENV = "Administrator", "Winrm-Lab-Pw1", "BEACHHEAD_TEST_WINRM_PW"
UPN = "administrator@beachhead.lab"
READY_S = 30


@dataclass
class Endpoint:
    """A running endpoint: its ports, guest root, record directory and certificates."""

    root: Path
    record: Path
    http: int
    https: int
    certs: certs.ServerCertificate
    client: tuple[Path, Path]

    @property
    def home(self) -> Path:
        """The login's profile folder on the host (C:\\Users\\Administrator)."""
        return self.root / "C" / "Users" / USER

    def uri(self, transport: str = "ntlm", **params: str) -> str:
        """A winrm:// target URI for this endpoint."""
        https = params.get("scheme") == "https" or transport != "ntlm"
        port = self.https if https else self.http
        query = {"transport": transport, **params}
        if transport == "certificate":
            query.update(
                cert_pem=str(self.client[0]), cert_key_pem=str(self.client[1]), ca_file=str(self.certs.ca_file)
            )
        else:
            query.setdefault("password_env", PASSWORD_ENV)
        if https:
            query.setdefault("scheme", "https")
            if "insecure" not in query:
                query.setdefault("ca_file", str(self.certs.ca_file))
        return f"winrm://{USER}@127.0.0.1:{port}?" + "&".join(f"{k}={v}" for k, v in query.items())


def _start(directory: Path, max_envelope_kb: int) -> Iterator[Endpoint]:
    root, record = directory / "guest", directory / "record"
    for sub in (f"C/Users/{USER}", "C/Windows/Temp"):
        (root / sub).mkdir(parents=True)
    users = directory / "users"
    users.write_text(f"{USER}:{PASSWORD}\n")
    tls = certs.ensure_certificates(directory / "pki", "127.0.0.1")
    client = certs.issue_certificate(directory / "pki", "client", USER, upn=UPN)
    cert_map = directory / "cert-map"
    cert_map.write_text(f"{certs.thumbprint(tls.ca_file)} {UPN} {USER}\n")
    command = [
        sys.executable, "-m", "beachhead.bootstrap.lab.windows.wsman", "--root", str(root), "--users", str(users),
        "--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--cert", str(tls.cert_file), "--key", str(tls.key_file),
        "--client-ca", str(tls.ca_file), "--cert-map", str(cert_map), "--allow-basic",
        "--max-envelope-kb", str(max_envelope_kb), "--record", str(record), "--log", str(directory / "endpoint.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"the endpoint exited: {(directory / 'endpoint.log').read_text(errors='replace')}"
        ready = json.loads(line)

        def port(listener: str) -> int:
            return int(listener.rpartition(":")[2])

        yield Endpoint(root, record, port(ready["http"][0]), port(ready["https"][0]), tls, client)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One endpoint for the module (500 KB envelopes, as current Windows)."""
    yield from _start(tmp_path_factory.mktemp("wsman"), 500)


@pytest.fixture(scope="module")
def small_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """An endpoint taking 16 KB envelopes, so transfers need many chunks."""
    yield from _start(tmp_path_factory.mktemp("wsman-small"), 16)


@pytest.fixture(autouse=True)
def winrm_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The login's password, where targets name it."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


@dataclass
class Opened:
    """A session and what it logs."""

    session: WinrmSession
    wire_log: Path

    def wire(self) -> list[dict[str, object]]:
        """The wire log's records."""
        return [json.loads(line) for line in self.wire_log.read_text().splitlines()]


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[object]:
    """``await connect(uri)``: an open session, its wire log in ``tmp_path``; closed after."""
    contexts: list[tuple[RunContext, WinrmSession]] = []

    async def opened(uri: str) -> Opened:
        wire_log = tmp_path / f"wire-{len(contexts)}.jsonl"
        run = RunContext(default_plugins(), RunSettings(connect_timeout=10, wire_log=wire_log))
        session = await open_session(TargetContext(run, Plan("p", ()), parse_target(uri)))
        contexts.append((run, session))
        return Opened(session, wire_log)

    yield opened
    for run, session in contexts:
        await session.close()
        await run.close()


def _cmd(text: str, env: dict[str, str] | None = None, *, script: bool = False) -> CommandRequest:
    return CommandRequest(text, "test", script=ShellScript("cmd", text, is_script=script, env=env or {}))


@pytest.mark.parametrize(
    ("transport", "params"),
    [
        ("ntlm", {}),  # http, message encryption
        ("ntlm", {"scheme": "https"}),  # channel binding, ca_file
        ("basic", {}),
        ("certificate", {}),
        ("basic", {"insecure": "1"}),
    ],
    ids=["http-ntlm", "https-ntlm", "https-basic", "https-certificate", "https-basic-insecure"],
)
async def test_run_keeps_status_and_streams_apart(
    endpoint: Endpoint, connect: object, transport: str, params: dict[str, str]
) -> None:
    opened = await connect(endpoint.uri(transport, **params))  # type: ignore[operator]
    outcome = await opened.session.run(_cmd("echo to-out & echo to-err 1>&2 & exit 3"))
    assert (outcome.exit_status, outcome.stdout.strip(), outcome.stderr.strip()) == (3, "to-out", "to-err")
    assert (await opened.session.run(_cmd("whoami"))).stdout.strip().endswith(USER.lower())
    records = opened.wire()
    assert any(r["method"] == "Get" and "MaxEnvelopeSizekb" in str(r["response"]) for r in records)
    assert PASSWORD not in opened.wire_log.read_text()


async def test_shell_is_reused(endpoint: Endpoint, connect: object) -> None:
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    for _ in range(3):
        assert (await opened.session.run(_cmd("echo x"))).ok
    creates = [r for r in opened.wire() if "transfer/Create" in str(r["request"])]
    assert len(creates) == 1


async def test_untrusted_certificate_is_refused(endpoint: Endpoint, connect: object, tmp_path: Path) -> None:
    other = certs.ensure_certificates(tmp_path / "other-ca", "127.0.0.1")
    uri = endpoint.uri("basic", ca_file=str(other.ca_file))
    with pytest.raises(ChannelUnavailable) as caught:
        await connect(uri)  # type: ignore[operator]
    assert "TLS" in caught.value.reason and not caught.value.retryable


async def test_wrong_password_fails_clearly_once(
    endpoint: Endpoint, connect: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    with pytest.raises(ChannelUnavailable) as caught:
        await connect(endpoint.uri())  # type: ignore[operator]
    assert "refused the user name or password of Administrator" in caught.value.reason
    assert not caught.value.retryable
    records = [json.loads(line) for line in (tmp_path / "wire-0.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == [401]  # one attempt, not retried


async def test_long_command_outlives_the_operation_timeout(
    endpoint: Endpoint, connect: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(winrm_protocol, "OPERATION_TIMEOUT_S", 1)
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    outcome = await opened.session.run(_cmd("timeout /t 3 /nobreak >nul & echo finished"))
    assert (outcome.exit_status, outcome.stdout.strip()) == (0, "finished")
    timeouts = [r for r in opened.wire() if r.get("fault") == str(winrm_protocol.TIMED_OUT)]
    assert timeouts, "the endpoint never answered a Receive with the operation timeout"


async def test_step_timeout_ends_the_command(endpoint: Endpoint, connect: object) -> None:
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(opened.session.run(_cmd("timeout /t 47 /nobreak")), 2)
    wait_until(lambda: not processes_mentioning("timeout /t 47"), 15, "the guest command ended")
    assert any("signal/terminate" in str(r["request"]) for r in opened.wire())
    assert (await opened.session.run(_cmd("echo still here"))).stdout.strip() == "still here"


async def test_env_values_reach_the_guest_and_nothing_else(endpoint: Endpoint, connect: object) -> None:
    value = "env-value-7f3a9c"
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    outcome = await opened.session.run(_cmd("echo %APP_TOKEN%", {"APP_TOKEN": value}))
    assert outcome.stdout.strip() == value
    script = await opened.session.run(_cmd("@echo %APP_TOKEN%\r\n@exit /b 4", {"APP_TOKEN": value}, script=True))
    assert (script.exit_status, script.stdout.strip()) == (4, value)
    assert value not in opened.wire_log.read_text()
    for path in endpoint.record.rglob("*"):
        if path.is_file():
            assert value not in path.read_text(errors="replace"), path
    commands = [m for r in opened.wire() for m in re.findall(r"<rsp:(?:Command|Arguments)>[^<]*", str(r["request"]))]
    assert commands and not any(value in c for c in commands)
    # a command with env gets a shell of its own, deleted after it
    assert not list((endpoint.root / "C" / "Windows" / "Temp").glob("beachhead-*.cmd"))


async def test_cmd_script_travels_through_a_temporary_file(endpoint: Endpoint, connect: object) -> None:
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    body = "echo first\r\necho second\r\n"
    outcome = await opened.session.run(_cmd(body, script=True))
    sent = b"".join(
        base64.b64decode(stream)
        for r in opened.wire()
        if r["method"] == "Send"
        for stream in re.findall(r">([A-Za-z0-9+/=]+)</rsp:Stream>", str(r["request"]))
    )
    assert sent == body.encode()  # over stdin, never on a command line
    assert not any(
        "echo first" in c for r in opened.wire() for c in re.findall(r"<rsp:Arguments>[^<]*", str(r["request"]))
    )
    # Run as a batch file: echo is on, so each command is shown at the prompt first.
    assert outcome.exit_status == 0, outcome.stderr
    assert [line for line in outcome.stdout.splitlines() if line and ">" not in line] == ["first", "second"]
    assert [line.partition(">")[2] for line in outcome.stdout.splitlines() if ">" in line] == [
        "echo first",
        "echo second",
    ]
    assert not list((endpoint.root / "C" / "Windows" / "Temp").glob("beachhead-*.cmd"))


async def test_powershell_fails_truthfully_and_carries_the_script(endpoint: Endpoint, connect: object) -> None:
    opened = await connect(endpoint.uri())  # type: ignore[operator]
    script = "$name = 'wörld'\nWrite-Output \"hello $name\"\n" + "# padding\n" * 150
    outcome = await opened.session.run(CommandRequest("x", "ps", script=ShellScript("powershell", script)))
    assert outcome.exit_status == 9009 and "powershell.exe" in outcome.stderr
    entries = [json.loads(line) for line in (endpoint.record / "powershell.jsonl").read_text().splitlines()]
    assert entries[-1]["script"] == POWERSHELL_BOOTSTRAP
    assert entries[-1]["parameters"]["noprofile"] is True
    sent = b"".join(
        base64.b64decode(stream)
        for r in opened.wire()
        if r["method"] == "Send"
        for stream in re.findall(r">([A-Za-z0-9+/=]+)</rsp:Stream>", str(r["request"]))
    )
    assert base64.b64decode(sent).decode("utf-8") == script


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
async def test_upload_and_download_in_many_chunks(
    small_endpoint: Endpoint, connect: object, tmp_path: Path, size: int
) -> None:
    data = os.urandom(size)
    local = tmp_path / "payload.bin"
    local.write_bytes(data)
    opened = await connect(small_endpoint.uri())  # type: ignore[operator]
    session = opened.session
    assert session.max_envelope == 16 * 1024
    info = await session.put_file(local, rf"C:\Users\{USER}\payload.bin", None, rf"C:\Users\{USER}\.payload.part")
    assert (info.size, info.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert (small_endpoint.home / "payload.bin").read_bytes() == data
    assert not list(small_endpoint.home.glob(".payload.part*"))
    back = await session.get_file(rf"C:\Users\{USER}\payload.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data and back.sha256 == info.sha256
    if size > 1:
        sends = [r for r in opened.wire() if r["method"] == "Send"]
        receives = [r for r in opened.wire() if r["method"] == "Receive"]
        assert len(sends) > 100 and len(receives) > 100  # chunked to the 16 KB envelope
        assert not list((small_endpoint.root / "C" / "Windows" / "Temp").glob("beachhead-*"))


async def test_file_operations(endpoint: Endpoint, connect: object) -> None:
    session = (await connect(endpoint.uri())).session  # type: ignore[operator]
    base = rf"C:\Users\{USER}\ops"
    assert not (await session.stat(base)).exists
    assert await session.make_dirs(rf"{base}\a\b") == [base, rf"{base}\a", rf"{base}\a\b"]
    assert (await session.stat(rf"{base}\a")).is_file is False
    (endpoint.home / "ops" / "a" / "f.txt").write_text("x")
    assert (await session.stat(rf"{base}\a\f.txt")).is_file
    assert await session.remove_dir(rf"{base}\a") is False  # not empty
    await session.remove(rf"{base}\a\f.txt")
    await session.remove(rf"{base}\a\f.txt")  # already gone: fine
    assert not (endpoint.home / "ops" / "a" / "f.txt").exists()
    assert await session.remove_dir(rf"{base}\a\b") and await session.remove_dir(rf"{base}\a")
    with pytest.raises(Exception, match="cannot find"):
        await session.get_file(rf"{base}\missing.txt", endpoint.root.parent / "never")


def test_clixml_error_stream_becomes_text() -> None:
    sink = OutputSink()
    decoder = ClixmlDecoder(sink.stderr)
    stream = (
        b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T></TN></Obj>'
        b'<S S="Error">Cannot find path &apos;C:\\x&apos;_x000D__x000A_</S>'
        b'<S S="Error">at line 1_x000D__x000A_</S></Objs>'
    )
    for index in range(0, len(stream), 7):  # as it arrives, in pieces
        decoder.write(stream[index : index + 7])
    decoder.finish()
    sink.finish()
    assert sink.stderr.text() == "Cannot find path 'C:\\x'\r\nat line 1\r\n"
    plain = OutputSink()
    other = ClixmlDecoder(plain.stderr)
    other.write(b"plain error\r\n")
    other.finish()
    plain.finish()
    assert plain.stderr.text() == "plain error\r\n"


def test_the_powershell_bootstrap_parses() -> None:
    tree_sitter = pytest.importorskip("tree_sitter")
    grammar = pytest.importorskip("tree_sitter_powershell")
    parser = tree_sitter.Parser(tree_sitter.Language(grammar.language()))
    tree = parser.parse(POWERSHELL_BOOTSTRAP.encode())
    assert not tree.root_node.has_error


def test_plan_end_to_end(endpoint: Endpoint, tmp_path: Path, runs_dir: Path) -> None:
    (tmp_path / "app.conf").write_bytes(b"new\r\n")
    (endpoint.home / "app.conf").write_bytes(b"original\r\n")
    target = endpoint.uri()
    plan = write_plan(
        tmp_path,
        rf"""
        name: windows
        os: windows
        steps:
          - upload: {{src: app.conf, dest: 'C:\Users\{USER}\app.conf'}}
          - run: {{command: "type C:\\Users\\{USER}\\app.conf", shell: cmd}}
          - download: {{src: 'C:\Users\{USER}\app.conf', dest: "{tmp_path}/back.conf"}}
        """,
    )
    done = beachhead("run", str(plan), "--target", target, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (endpoint.home / "app.conf").read_bytes() == (tmp_path / "back.conf").read_bytes() == b"new\r\n"
    assert "winrm" in done.stdout and PASSWORD not in done.stdout + done.stderr
    run_id = json.loads(done.stdout)["run_id"] if done.stdout.strip().startswith("{") else None
    runs = sorted(p for p in runs_dir.iterdir() if p.is_dir())
    journal = "\n".join(p.read_text() for p in runs[-1].rglob("journal*") if p.is_file())
    assert ".app.conf.beachhead-" in journal and '"backup"' in journal
    undo = beachhead("undo", run_id or runs[-1].name)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert (endpoint.home / "app.conf").read_bytes() == b"original\r\n"

    failing = write_plan(
        tmp_path, "name: fails\nos: windows\nsteps: [{run: {command: exit 5, shell: cmd}}]\n", "f.yaml"
    )
    failed = beachhead("run", str(failing), "--target", target)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "exit status 5" in failed.stdout + failed.stderr

    bad = beachhead("run", str(failing), "--target", endpoint.uri().replace("transport=ntlm", "transport=basic"))
    assert bad.returncode == 2 and "basic" in bad.stderr


@pytest.mark.parametrize(
    ("uri", "field", "reason"),
    [
        ("winrm://h?password_env=P", "user", "no user"),
        ("winrm://a@h?transport=basic&password_env=P", "transport", "in clear"),
        ("winrm://a@h", "password_env", "needs a password"),
        ("winrm://a@h?transport=certificate", "cert_pem", "client certificate"),
        ("winrm://a@h?password_env=P&insecure=1", "insecure", "over http"),
        ("winrm://a@h?password_env=P&key=x", "key", "unknown parameter"),
    ],
)
def test_winrm_target_errors(uri: str, field: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P", "pw")
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == field and reason in caught.value.reason


def test_winrm_target_defaults(endpoint: Endpoint) -> None:
    plain = parse_target(f"winrm://{USER}@win-host.invalid?password_env={PASSWORD_ENV}")
    assert plain.winrm is not None and (plain.port, plain.winrm.port, plain.os) == (5985, 5985, "windows")
    assert plain.winrm.transport == "ntlm" and plain.winrm.scheme == "http" and plain.ssh is None
    client = parse_target(endpoint.uri("certificate"))
    assert client.winrm is not None and client.winrm.scheme == "https" and client.winrm.cert_pem == endpoint.client[0]
