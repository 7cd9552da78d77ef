"""pywinrm, unchanged, against the lab's WinRM endpoint on loopback: every listener and
authentication, stdin, the operation-timeout retry, signals, limits and faults."""

from __future__ import annotations

import base64
import os
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests
import winrm
import xmltodict
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol

from beachhead.bootstrap.lab.certs import thumbprint
from tests.metadata.cloudbase_init import client_certificate
from tests.windows.conftest import WsmanEndpoint, start_wsman

CFG = "{http://schemas.microsoft.com/wbem/wsman/1/config}"


def http_protocol(endpoint: WsmanEndpoint, **options: object) -> Protocol:
    return Protocol(endpoint.http_url, transport="ntlm", username=endpoint.user, password=endpoint.password, **options)


def https_protocol(endpoint: WsmanEndpoint, transport: str, **options: object) -> Protocol:
    if transport == "certificate":
        credentials: dict[str, object] = {
            "cert_pem": str(endpoint.client_cert),
            "cert_key_pem": str(endpoint.client_key),
        }
    else:
        credentials = {"username": endpoint.user, "password": endpoint.password}
    return Protocol(
        endpoint.https_url,
        transport=transport,
        server_cert_validation="validate",
        ca_trust_path=str(endpoint.ca_file),
        **credentials,
        **options,
    )


def run(protocol: Protocol, command: str, args: tuple[str, ...] = ()) -> tuple[bytes, bytes, int]:
    shell = protocol.open_shell()
    try:
        command_id = protocol.run_command(shell, command, args)
        result = protocol.get_command_output(shell, command_id)
        protocol.cleanup_command(shell, command_id)
        return result
    finally:
        protocol.close_shell(shell)


def test_session_run_cmd_over_http_ntlm_with_encryption(wsman_endpoint: WsmanEndpoint) -> None:
    session = winrm.Session(
        wsman_endpoint.http_url, auth=(wsman_endpoint.user, wsman_endpoint.password), transport="ntlm"
    )
    result = session.run_cmd("echo", ["hello", "world"])
    assert (result.status_code, result.std_out, result.std_err) == (0, b"hello world\r\n", b"")
    assert session.protocol.transport.encryption is not None  # pywinrm sealed every message

    written = session.run_cmd(r"echo written over winrm> C:\Windows\Temp\out.txt")
    assert written.status_code == 0
    assert (wsman_endpoint.root / "C" / "Windows" / "Temp" / "out.txt").read_bytes() == b"written over winrm\r\n"


def test_missing_program_answers_as_cmd_does(wsman_endpoint: WsmanEndpoint) -> None:
    stdout, stderr, code = run(http_protocol(wsman_endpoint), "nosuchprogram")
    assert code == 9009
    assert stdout == b""
    assert b"'nosuchprogram' is not recognized" in stderr


def test_missing_program_without_cmd_shell_is_a_fault(wsman_endpoint: WsmanEndpoint) -> None:
    protocol = http_protocol(wsman_endpoint)
    shell = protocol.open_shell()
    try:
        with pytest.raises(WSManFaultError) as fault:
            protocol.run_command(shell, "nosuchprogram.exe", skip_cmd_shell=True)
        assert fault.value.wsman_fault_code == 2
        found = protocol.run_command(shell, "hostname.exe", skip_cmd_shell=True)
        stdout, _, code = protocol.get_command_output(shell, found)
        assert code == 0 and stdout.strip()
    finally:
        protocol.close_shell(shell)


def test_wrong_password_is_rejected(wsman_endpoint: WsmanEndpoint) -> None:
    for url, transport in (
        (wsman_endpoint.http_url, "ntlm"),
        (wsman_endpoint.https_url, "ntlm"),
        (wsman_endpoint.https_url, "basic"),
    ):
        session = winrm.Session(
            url,
            auth=(wsman_endpoint.user, "not-the-password"),
            transport=transport,
            ca_trust_path=str(wsman_endpoint.ca_file),
        )
        with pytest.raises(InvalidCredentialsError):
            session.run_cmd("echo", ["x"])


def test_unencrypted_http_is_refused(wsman_endpoint: WsmanEndpoint) -> None:
    """AllowUnencrypted=false: NTLM without message encryption and Basic over http."""
    plain = http_protocol(wsman_endpoint, message_encryption="never")
    with pytest.raises(InvalidCredentialsError):
        plain.open_shell()
    basic = Protocol(
        wsman_endpoint.http_url, transport="basic", username=wsman_endpoint.user, password=wsman_endpoint.password
    )
    with pytest.raises(InvalidCredentialsError):
        basic.open_shell()


@pytest.mark.parametrize("transport", ["ntlm", "basic", "certificate"])
def test_https_transports(wsman_endpoint: WsmanEndpoint, transport: str) -> None:
    stdout, stderr, code = run(https_protocol(wsman_endpoint, transport), "whoami")
    assert code == 0, stderr
    assert stdout.strip().lower().endswith(wsman_endpoint.user.lower().encode())


def test_certificate_without_mapping_is_rejected(wsman_endpoint: WsmanEndpoint) -> None:
    wsman_endpoint.cert_map.write_text("")  # read again at the next request
    with pytest.raises(InvalidCredentialsError):
        run(https_protocol(wsman_endpoint, "certificate"), "whoami")


def test_a_root_imported_while_serving_is_trusted_from_the_next_handshake(tmp_path: Path) -> None:
    # What cloudbase-init does at first boot: import a self-signed client certificate
    # into the Root store and map it, while WinRM already listens.
    store = tmp_path / "root-store.pem"
    store.write_text("")
    with start_wsman(tmp_path / "endpoint", "--client-ca", str(store)) as endpoint:
        cert, key = tmp_path / "self-signed.pem", tmp_path / "self-signed-key.pem"
        cert.write_text(client_certificate(endpoint.client_upn, key_file=key))
        endpoint.cert_map.write_text(f"{thumbprint(cert)} {endpoint.client_upn} {endpoint.user}\n")

        def protocol() -> Protocol:
            return Protocol(
                endpoint.https_url, transport="certificate", cert_pem=str(cert), cert_key_pem=str(key),
                server_cert_validation="validate", ca_trust_path=str(endpoint.ca_file),
            )  # fmt: skip

        # An unknown CA fails the handshake (under TLS 1.3 after the client has sent its
        # request: it sees the connection closed).
        with pytest.raises(requests.exceptions.ConnectionError):
            run(protocol(), "whoami")
        store.write_text(cert.read_text())
        stdout, stderr, code = run(protocol(), "whoami")
        assert code == 0, stderr
        assert stdout.strip().lower().endswith(endpoint.user.lower().encode())
        store.write_text("")  # taken out of the store: no mapping matches it any more
        with pytest.raises(InvalidCredentialsError):
            run(protocol(), "whoami")


def test_stdin_environment_and_working_directory(wsman_endpoint: WsmanEndpoint) -> None:
    protocol = http_protocol(wsman_endpoint)
    shell = protocol.open_shell(env_vars={"GREETING": "bonjour"}, working_directory=r"C:\Windows\Temp")
    try:
        command = protocol.run_command(shell, "findstr", ["b"])
        protocol.send_command_input(shell, command, b"apple\r\nbanana\r\n")
        protocol.send_command_input(shell, command, b"cherry\r\nblueberry\r\n", end=True)
        stdout, _, code = protocol.get_command_output(shell, command)
        assert (stdout, code) == (b"banana\r\nblueberry\r\n", 0)
        protocol.cleanup_command(shell, command)

        command = protocol.run_command(shell, "echo %GREETING%& cd")
        stdout, _, code = protocol.get_command_output(shell, command)
        assert (stdout, code) == (b"bonjour\r\nC:\\Windows\\Temp\r\n", 0)
        protocol.cleanup_command(shell, command)
    finally:
        protocol.close_shell(shell)


def test_operation_timeout_is_reissued_until_the_command_ends(wsman_endpoint: WsmanEndpoint) -> None:
    protocol = http_protocol(wsman_endpoint, operation_timeout_sec=1, read_timeout_sec=5)
    shell = protocol.open_shell()
    try:
        command = protocol.run_command(shell, "timeout", ["/t", "3", "/nobreak"])
        timeouts, done, code = 0, False, -1
        deadline = time.monotonic() + 30
        while not done and time.monotonic() < deadline:
            try:
                _, _, code, done = protocol.get_command_output_raw(shell, command)
            except WinRMOperationTimeoutError:
                timeouts += 1
        assert done and code == 0
        assert timeouts >= 1  # a Receive outlasted OperationTimeout: the TimedOut fault

        again = protocol.run_command(shell, "timeout", ["/t", "2", "/nobreak"])
        stdout, _, code = protocol.get_command_output(shell, again)  # pywinrm retries by itself
        assert code == 0 and b"Waiting for 2 seconds" in stdout
    finally:
        protocol.close_shell(shell)


def _processes_under(root: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline and b"windows.run" in cmdline:
            found.append(int(entry.name))
    return found


def test_signal_terminate_ends_the_command_tree(wsman_endpoint: WsmanEndpoint) -> None:
    protocol = http_protocol(wsman_endpoint, operation_timeout_sec=2, read_timeout_sec=6)
    shell = protocol.open_shell()
    try:
        command = protocol.run_command(shell, "timeout", ["/t", "60"])
        deadline = time.monotonic() + 20
        while not _processes_under(wsman_endpoint.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_under(wsman_endpoint.root), "the command's runner never started"
        protocol.cleanup_command(shell, command)  # Signal terminate
        while _processes_under(wsman_endpoint.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_under(wsman_endpoint.root) == []
        with pytest.raises(WSManFaultError) as fault:
            protocol.get_command_output_raw(shell, command)
        assert fault.value.wsman_fault_code == 2150858843  # the command is gone
    finally:
        protocol.close_shell(shell)


def test_unknown_shell_is_an_invalid_selectors_fault(wsman_endpoint: WsmanEndpoint) -> None:
    protocol = http_protocol(wsman_endpoint)
    with pytest.raises(WSManFaultError) as fault:
        protocol.run_command(str(uuid.uuid4()).upper(), "echo")
    assert fault.value.wsman_fault_code == 2150858843
    assert fault.value.fault_subcode == "w:InvalidSelectors"


def test_shell_quota_per_user(tmp_path: Path) -> None:
    with start_wsman(tmp_path, "--max-shells-per-user", "2") as endpoint:
        protocol = http_protocol(endpoint)
        shells = [protocol.open_shell(), protocol.open_shell()]
        with pytest.raises(WSManFaultError) as fault:
            protocol.open_shell()
        assert fault.value.wsman_fault_code == 2150859174
        assert "maximum number of 2 concurrent shells" in fault.value.reason
        protocol.close_shell(shells.pop(), close_session=False)
        shells.append(protocol.open_shell())  # a closed shell frees its place
        for shell in shells:
            protocol.close_shell(shell, close_session=False)


def test_envelope_over_max_envelope_size_gets_413(tmp_path: Path) -> None:
    with start_wsman(tmp_path, "--max-envelope-kb", "16") as endpoint:
        protocol = http_protocol(endpoint)
        shell = protocol.open_shell()
        try:
            command = protocol.run_command(shell, "findstr", ["x"])
            protocol.send_command_input(shell, command, b"x" * 8000)  # fits
            with pytest.raises(WinRMTransportError) as error:
                protocol.send_command_input(shell, command, b"x" * 20000, end=True)
            assert error.value.code == 413
        finally:
            protocol.close_shell(shell)


def test_config_read_reports_the_limits(tmp_path: Path) -> None:
    with start_wsman(tmp_path, "--max-envelope-kb", "150", "--max-shells-per-user", "7") as endpoint:
        protocol = http_protocol(endpoint)
        request = {
            "env:Envelope": protocol.build_wsman_header(
                action="http://schemas.xmlsoap.org/ws/2004/09/transfer/Get",
                resource_uri="http://schemas.microsoft.com/wbem/wsman/1/config",
            )
        }
        request["env:Envelope"]["env:Body"] = {}
        config = ET.fromstring(protocol.send_message(xmltodict.unparse(request))).find(f".//{CFG}Config")
        assert config is not None
        assert config.findtext(f"{CFG}MaxEnvelopeSizekb") == "150"
        assert config.findtext(f"{CFG}MaxTimeoutms") == "60000"
        assert config.findtext(f"{CFG}Winrs/{CFG}MaxShellsPerUser") == "7"
        assert config.findtext(f"{CFG}Service/{CFG}MaxConcurrentOperationsPerUser") == "1500"
        assert config.findtext(f"{CFG}Service/{CFG}AllowUnencrypted") == "false"


def test_large_output_spans_several_receives(wsman_endpoint: WsmanEndpoint) -> None:
    big = wsman_endpoint.root / "C" / "Windows" / "Temp" / "big.txt"
    payload = base64.b64encode(bytes(range(256)) * 1200)  # ~400 KB: more than one envelope
    big.write_bytes(payload)
    stdout, _, code = run(http_protocol(wsman_endpoint), r"type C:\Windows\Temp\big.txt")
    assert (code, stdout) == (0, payload)


def test_command_line_over_cmd_limit_is_refused_by_cmd(wsman_endpoint: WsmanEndpoint) -> None:
    session = winrm.Session(
        wsman_endpoint.http_url, auth=(wsman_endpoint.user, wsman_endpoint.password), transport="ntlm"
    )
    fits = session.run_cmd("echo", ["x" * 8000])
    assert (fits.status_code, fits.std_out) == (0, b"x" * 8000 + b"\r\n")
    too_long = session.run_cmd("echo", ["x" * 8200])
    assert (too_long.status_code, too_long.std_out, too_long.std_err) == (1, b"", b"The command line is too long.\r\n")


def test_operations_quota_counts_commands_until_the_shell_closes(tmp_path: Path) -> None:
    with start_wsman(tmp_path, "--max-concurrent-operations-per-user", "2") as endpoint:
        protocol = http_protocol(endpoint)
        shell = protocol.open_shell()
        for _ in range(2):
            command = protocol.run_command(shell, "echo", ["x"])
            assert protocol.get_command_output(shell, command)[2] == 0
            protocol.cleanup_command(shell, command)
        with pytest.raises(WSManFaultError) as fault:
            protocol.run_command(shell, "echo", ["x"])
        assert "maximum number of 2 concurrent operations" in fault.value.reason
        protocol.close_shell(shell, close_session=False)
        assert run(protocol, "echo", ("again",))[0] == b"again\r\n"  # a new shell starts afresh


def test_unauthenticated_request_gets_the_windows_challenge(wsman_endpoint: WsmanEndpoint) -> None:
    plain = requests.post(wsman_endpoint.http_url, data=b"", timeout=10)
    assert plain.status_code == 401
    assert plain.headers["WWW-Authenticate"] == "Negotiate"
    assert plain.headers["Server"] == "Microsoft-HTTPAPI/2.0"
    tls = requests.post(wsman_endpoint.https_url, data=b"", timeout=10, verify=str(wsman_endpoint.ca_file))
    assert tls.status_code == 401
    assert tls.headers["WWW-Authenticate"] == 'Negotiate, Basic realm="WSMAN"'  # requests joins the two headers


def test_sigterm_ends_running_commands(tmp_path: Path) -> None:
    with start_wsman(tmp_path) as endpoint:
        protocol = http_protocol(endpoint)
        shell = protocol.open_shell()
        protocol.run_command(shell, "timeout", ["/t", "60"])
        deadline = time.monotonic() + 20
        while not _processes_under(endpoint.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_under(endpoint.root), "the command's runner never started"
        os.kill(endpoint.pid, signal.SIGTERM)
        while _processes_under(endpoint.root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_under(endpoint.root) == []
