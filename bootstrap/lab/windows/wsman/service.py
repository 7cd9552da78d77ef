"""The WS-Management operations the endpoint answers, as Windows answers them.

Resource ``…/windows/shell/cmd``: Create, Command, Send, Receive, Signal, Delete;
resource ``…/wsman/1/config``: Get (the configuration ``winrm get winrm/config`` shows).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from beachhead.bootstrap.lab.windows.wsman import faults, winrs
from beachhead.bootstrap.lab.windows.wsman.envelope import (
    CONFIG_URI,
    PREFIXES,
    RSP,
    SHELL_CMD,
    EnvelopeError,
    Node,
    Request,
    build,
    node,
    parse_duration,
)

TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
COMMAND_STATE = SHELL + "CommandState/"
DEFAULT_MAX_ENVELOPE = 153600  # what a client may receive when it names no MaxEnvelopeSize
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Limits:
    """The service's configuration (``winrm/config``) that the endpoint enforces."""

    max_envelope_kb: int = 500
    max_timeout_ms: int = 60000
    max_shells_per_user: int = 30
    max_concurrent_operations_per_user: int = 1500
    allow_basic: bool = False
    allow_certificate: bool = False


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the guest login it maps to, the client's address, and the
    listener's own URL (for ``a:Address`` in ResourceCreated)."""

    user: str
    client_ip: str
    listener_url: str


class Service:
    """Dispatches parsed requests to the shell host and writes the answers."""

    def __init__(self, host: winrs.ShellHost, limits: Limits) -> None:
        self.host = host
        self.limits = limits
        self.operations: Counter[str] = Counter()

    async def handle(self, request: Request, caller: Caller) -> tuple[int, bytes]:
        """The HTTP status and envelope answering ``request``."""
        key = caller.user.lower()
        if self.operations[key] >= self.limits.max_concurrent_operations_per_user:
            return 500, faults.operations_quota(self.limits.max_concurrent_operations_per_user).envelope(
                request.message_id, self.host.computer_name
            )
        self.operations[key] += 1
        try:
            return 200, await self._dispatch(request, caller)
        except faults.WSManFault as fault:
            return 500, fault.envelope(request.message_id, self.machine(caller))
        finally:
            self.operations[key] -= 1

    def machine(self, caller: Caller) -> str:
        """What a fault's ``Machine`` attribute names: the address the client used."""
        host = caller.listener_url.split("://", 1)[-1].rsplit(":", 1)[0]
        return host.strip("[]") or self.host.computer_name

    async def _dispatch(self, request: Request, caller: Caller) -> bytes:
        action = request.action
        if request.resource_uri.rstrip("/").lower() == CONFIG_URI.lower():
            if action == TRANSFER + "Get":
                return self._config(request)
            raise faults.action_not_supported(action)
        if request.resource_uri.lower() != SHELL_CMD.lower():
            raise faults.unknown_resource(request.resource_uri)
        if action == TRANSFER + "Create":
            return self._create(request, caller)
        shell = self.host.shell(request.selectors.get("ShellId"), caller.user)
        if action == SHELL + "Command":
            return await self._command(request, shell)
        if action == SHELL + "Send":
            return await self._send(request, shell)
        if action == SHELL + "Receive":
            return await self._receive(request, shell)
        if action == SHELL + "Signal":
            return await self._signal(request, shell)
        if action == TRANSFER + "Delete":
            await self.host.delete(shell)
            return build(TRANSFER + "DeleteResponse", request.message_id, [], ("w", "p"))
        raise faults.action_not_supported(action)

    def _create(self, request: Request, caller: Caller) -> bytes:
        body = request.body.find("rsp:Shell", PREFIXES)
        if body is None:
            raise faults.invalid_parameter()
        env = {
            var.get("Name", ""): var.text or ""
            for var in body.iterfind("rsp:Environment/rsp:Variable", PREFIXES)
            if var.get("Name")
        }
        cwd = (body.findtext("rsp:WorkingDirectory", "", PREFIXES) or "").strip() or None
        inputs = (body.findtext("rsp:InputStreams", "", PREFIXES) or "").split()
        outputs = (body.findtext("rsp:OutputStreams", "", PREFIXES) or "").split()
        shell = self.host.create(caller.user, caller.client_ip, cwd, env, inputs, outputs)
        idle = (body.findtext("rsp:IdleTimeOut", "", PREFIXES) or "").strip()
        if idle:
            try:
                shell.idle_timeout = f"PT{parse_duration(idle):.3f}S"  # Windows writes PT60.000S for PT60S
            except EnvelopeError as exc:
                raise faults.invalid_parameter() from exc
        created = node(
            "x:ResourceCreated",
            None,
            node("a:Address", caller.listener_url),
            node(
                "a:ReferenceParameters",
                None,
                node("w:ResourceURI", SHELL_CMD),
                node("w:SelectorSet", None, node("w:Selector", shell.id, Name="ShellId")),
            ),
        )
        echoed: list[Node] = []  # what the client set, given back as Windows does
        if env:
            variables = [node("rsp:Variable", value, Name=name) for name, value in env.items()]
            echoed.append(node("rsp:Environment", None, *variables))
        if cwd:
            echoed.append(node("rsp:WorkingDirectory", cwd))
        described = node(
            "rsp:Shell",
            None,
            node("rsp:ShellId", shell.id),
            node("rsp:ResourceUri", SHELL_CMD),
            node("rsp:Owner", shell.owner),
            node("rsp:ClientIP", shell.client_ip),
            *echoed,
            node("rsp:IdleTimeOut", shell.idle_timeout),
            node("rsp:InputStreams", " ".join(shell.input_streams)),
            node("rsp:OutputStreams", " ".join(shell.output_streams)),
            node("rsp:ShellRunTime", "P0DT0H0M0S"),
            node("rsp:ShellInactivity", "P0DT0H0M0S"),
            xmlns_rsp=RSP,
        )
        return build(TRANSFER + "CreateResponse", request.message_id, [created, described])

    async def _command(self, request: Request, shell: winrs.Shell) -> bytes:
        line = request.body.find("rsp:CommandLine", PREFIXES)
        command = (line.findtext("rsp:Command", "", PREFIXES) if line is not None else "") or ""
        if line is None or not command.strip():
            raise faults.invalid_parameter()
        arguments = [arg.text or "" for arg in line.iterfind("rsp:Arguments", PREFIXES)]
        skip = request.options.get("WINRS_SKIP_CMD_SHELL", "FALSE").upper() == "TRUE"
        started = await self.host.start(shell, winrs.build_command_line(command, arguments, skip), skip)
        answer = node("rsp:CommandResponse", None, node("rsp:CommandId", started.id))
        return build(SHELL + "CommandResponse", request.message_id, [answer])

    async def _send(self, request: Request, shell: winrs.Shell) -> bytes:
        send = request.body.find("rsp:Send", PREFIXES)
        if send is None:
            raise faults.invalid_parameter()
        for stream in send.iterfind("rsp:Stream", PREFIXES):
            if stream.get("Name", "stdin") not in shell.input_streams:
                raise faults.invalid_parameter()
            command = self.host.command(shell, stream.get("CommandId"))
            await command.send(winrs.decode(stream.text), stream.get("End", "false").lower() == "true")
        return build(SHELL + "SendResponse", request.message_id, [node("rsp:SendResponse")])

    async def _receive(self, request: Request, shell: winrs.Shell) -> bytes:
        desired = request.body.find("rsp:Receive/rsp:DesiredStream", PREFIXES)
        if desired is None or not desired.get("CommandId"):
            raise faults.invalid_parameter()  # a Receive for the shell itself: not for cmd shells
        command = self.host.command(shell, desired.get("CommandId"))
        timeout = min(request.operation_timeout_s or DEFAULT_TIMEOUT_S, self.limits.max_timeout_ms / 1000)
        budget = min(request.max_envelope_size or DEFAULT_MAX_ENVELOPE, self.limits.max_envelope_kb * 1024)
        streams = [name for name in (desired.text or "").split() if name in command.streams] or command.streams
        chunks, finished = await command.receive(timeout, budget, streams)
        answer = node("rsp:ReceiveResponse")
        for chunk in chunks:
            answer.add(node("rsp:Stream", winrs.encode(chunk.data), Name=chunk.stream, CommandId=command.id))
        if finished:
            for name in streams:
                answer.add(node("rsp:Stream", "", Name=name, CommandId=command.id, End="true"))
            state = node("rsp:CommandState", None, CommandId=command.id, State=COMMAND_STATE + "Done")
            state.add(node("rsp:ExitCode", str(command.exit_code)))
        else:
            state = node("rsp:CommandState", "", CommandId=command.id, State=COMMAND_STATE + "Running")
        answer.add(state)
        return build(SHELL + "ReceiveResponse", request.message_id, [answer], ("w", "rsp", "p"))

    async def _signal(self, request: Request, shell: winrs.Shell) -> bytes:
        sent = request.body.find("rsp:Signal", PREFIXES)
        if sent is None:
            raise faults.invalid_parameter()
        command = self.host.command(shell, sent.get("CommandId"))
        code = (sent.findtext("rsp:Code", "", PREFIXES) or "").strip()
        if not code.endswith(("/signal/terminate", "/signal/ctrl_c", "/signal/ctrl_break")):
            raise faults.invalid_parameter()
        await self.host.signal(shell, command, code)
        return build(SHELL + "SignalResponse", request.message_id, [node("rsp:SignalResponse")])

    def _config(self, request: Request) -> bytes:
        lim = self.limits

        def flag(value: bool) -> str:
            return "true" if value else "false"

        def leaves(*pairs: tuple[str, str]) -> list[Node]:
            return [node(f"cfg:{name}", value) for name, value in pairs]

        client = node(
            "cfg:Client",
            None,
            *leaves(("NetworkDelayms", "5000"), ("URLPrefix", "wsman"), ("AllowUnencrypted", "false")),
            node(
                "cfg:Auth",
                None,
                *leaves(
                    ("Basic", "true"),
                    ("Digest", "true"),
                    ("Kerberos", "true"),
                    ("Negotiate", "true"),
                    ("Certificate", "true"),
                    ("CredSSP", "false"),
                ),
            ),
            node("cfg:DefaultPorts", None, *leaves(("HTTP", "5985"), ("HTTPS", "5986"))),
            node("cfg:TrustedHosts", ""),
        )
        service = node(
            "cfg:Service",
            None,
            *leaves(
                ("RootSDDL", "O:NSG:BAD:P(A;;GA;;;BA)(A;;GR;;;IU)S:P(AU;FA;GA;;;WD)(AU;SA;GXGW;;;WD)"),
                ("MaxConcurrentOperations", "4294967295"),
                ("MaxConcurrentOperationsPerUser", str(lim.max_concurrent_operations_per_user)),
                ("EnumerationTimeoutms", "240000"),
                ("MaxConnections", "300"),
                ("MaxPacketRetrievalTimeSeconds", "120"),
                ("AllowUnencrypted", "false"),
            ),
            node(
                "cfg:Auth",
                None,
                *leaves(
                    ("Basic", flag(lim.allow_basic)),
                    ("Kerberos", "false"),
                    ("Negotiate", "true"),
                    ("Certificate", flag(lim.allow_certificate)),
                    ("CredSSP", "false"),
                    ("CbtHardeningLevel", "Relaxed"),
                ),
            ),
            node("cfg:DefaultPorts", None, *leaves(("HTTP", "5985"), ("HTTPS", "5986"))),
            *leaves(
                ("IPv4Filter", "*"),
                ("IPv6Filter", "*"),
                ("EnableCompatibilityHttpListener", "false"),
                ("EnableCompatibilityHttpsListener", "false"),
                ("CertificateThumbprint", ""),
                ("AllowRemoteAccess", "true"),
            ),
        )
        shells = node(
            "cfg:Winrs",
            None,
            *leaves(
                ("AllowRemoteShellAccess", "true"),
                ("IdleTimeout", "7200000"),
                ("MaxConcurrentUsers", "2147483647"),
                ("MaxShellRunTime", "2147483647"),
                ("MaxProcessesPerShell", "2147483647"),
                ("MaxMemoryPerShellMB", "2147483647"),
                ("MaxShellsPerUser", str(lim.max_shells_per_user)),
            ),
        )
        config = node(
            "cfg:Config",
            None,
            *leaves(
                ("MaxEnvelopeSizekb", str(lim.max_envelope_kb)),
                ("MaxTimeoutms", str(lim.max_timeout_ms)),
                ("MaxBatchItems", "32000"),
                ("MaxProviderRequests", "4294967295"),
            ),
            client,
            service,
            shells,
            xmlns_cfg=CONFIG_URI,
        )
        return build(TRANSFER + "GetResponse", request.message_id, [config], ("x", "w", "p"))

    async def close(self) -> None:
        """End every command (at shutdown)."""
        await self.host.close()


async def wait_closed(service: Service) -> None:
    """Close ``service`` within a bounded time."""
    await asyncio.wait_for(service.close(), 30)
