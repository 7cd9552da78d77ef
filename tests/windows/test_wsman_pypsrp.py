"""pypsrp's WinRS client (``Client.execute_cmd``, ``WinRS``/``Process``), a second
client written independently of pywinrm, against the endpoint: http NTLM with message
encryption, https with NTLM, Basic and a client certificate, stdin and the
operation-timeout retry. (Its PSRP half needs a PowerShell host: not here.)"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from pypsrp.client import Client
from pypsrp.shell import Process, SignalCode, WinRS
from pypsrp.wsman import WSMan

from tests.windows.conftest import WsmanEndpoint


def _wsman(endpoint: WsmanEndpoint, url: str, auth: str, **options: object) -> WSMan:
    parts = urlsplit(url)
    credentials: dict[str, object] = {"username": endpoint.user, "password": endpoint.password}
    if auth == "certificate":
        credentials = {"certificate_pem": str(endpoint.client_cert), "certificate_key_pem": str(endpoint.client_key)}
    return WSMan(
        parts.hostname or "",
        port=parts.port,
        ssl=parts.scheme == "https",
        auth=auth,
        cert_validation=str(endpoint.ca_file),
        **credentials,
        **options,
    )


def test_execute_cmd_over_http_ntlm(wsman_endpoint: WsmanEndpoint) -> None:
    parts = urlsplit(wsman_endpoint.http_url)
    client = Client(
        parts.hostname or "",
        port=parts.port,
        ssl=False,
        auth="ntlm",
        username=wsman_endpoint.user,
        password=wsman_endpoint.password,
    )
    stdout, stderr, rc = client.execute_cmd("echo %GREETING% from pypsrp", environment={"GREETING": "hello"})
    assert (stdout, stderr, rc) == ("hello from pypsrp\r\n", "", 0)
    stdout, stderr, rc = client.execute_cmd("dir C:\\nowhere")
    assert rc == 1 and stdout == "" and stderr


@pytest.mark.parametrize("auth", ["ntlm", "basic", "certificate"])
def test_winrs_process_over_https(wsman_endpoint: WsmanEndpoint, auth: str) -> None:
    with _wsman(wsman_endpoint, wsman_endpoint.https_url, auth) as wsman, WinRS(wsman) as shell:
        process = Process(shell, "whoami")
        process.invoke()
        process.signal(SignalCode.CTRL_C)
    assert process.rc == 0
    assert process.stdout.strip().lower().endswith(wsman_endpoint.user.lower().encode())


def test_stdin_and_operation_timeout(wsman_endpoint: WsmanEndpoint) -> None:
    with (
        _wsman(wsman_endpoint, wsman_endpoint.http_url, "ntlm", operation_timeout=1, read_timeout=5) as wsman,
        WinRS(wsman) as shell,
    ):
        process = Process(shell, "findstr", ["out"], no_shell=True)
        process.begin_invoke()
        process.send(b"output 1\r\nnothing\r\n", end=False)
        process.send(b"output 2\r\n", end=True)
        process.end_invoke()
        process.signal(SignalCode.CTRL_C)
        assert (process.stdout, process.rc) == (b"output 1\r\noutput 2\r\n", 0)

        waiting = Process(shell, "timeout", ["/t", "3", "/nobreak"])
        waiting.invoke()  # outlasts OperationTimeout: pypsrp re-issues the Receive
        waiting.signal(SignalCode.CTRL_C)
        assert waiting.rc == 0 and b"Waiting for 3 seconds" in waiting.stdout
