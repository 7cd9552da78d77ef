"""WS-Management faults with the codes, subcodes and messages Windows answers with.

Every fault goes out as HTTP 500 with the ``…/wsman/fault`` action, a SOAP 1.2
``s:Code``/``s:Subcode``, ``s:Reason`` and a ``f:WSManFault`` detail naming the Windows
error code and the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from beachhead.bootstrap.lab.windows.wsman.envelope import F, Node, build, node

FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
FAULT_DETAIL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/"
# Windows declares these on every fault envelope, whichever it uses.
FAULT_NAMESPACES = ("x", "e", "n", "w", "p")

TIMED_OUT = 2150858793
INVALID_SELECTORS = 2150858843
ENCODING_LIMIT = 2150858817
ACCESS_DENIED = 5
FILE_NOT_FOUND = 2
INVALID_PARAMETER = 87
SHELL_QUOTA = 2150859174
OPERATIONS_QUOTA = 2150859173
ACTION_NOT_SUPPORTED = 2150858771
DESTINATION_UNREACHABLE = 2150858770


@dataclass
class WSManFault(Exception):
    """A fault to answer with: SOAP code and subcode, reason, Windows code, message."""

    code: str  # s:Sender or s:Receiver
    subcode: str  # w:TimedOut, w:InvalidSelectors, ...
    reason: str
    wsman_code: int
    message: str | None = None  # the f:Message text, when it differs from the reason
    detail: str | None = None  # the w:FaultDetail suffix, such as "InvalidValue"
    provider: bool = False  # the message comes from the cmd shell plugin (f:ProviderFault)

    def envelope(self, relates_to: str, machine: str) -> bytes:
        """The fault envelope answering the request ``relates_to``."""
        message = self.message if self.message is not None else self.reason
        text: Node = node("f:Message", None if self.provider else message)
        if self.provider:
            text.add(
                node(
                    "f:ProviderFault", message, provider="Shell cmd plugin", path=r"%systemroot%\system32\winrscmd.dll"
                )
            )
        detail = node("s:Detail")
        if self.detail:
            detail.add(node("w:FaultDetail", FAULT_DETAIL + self.detail))
        detail.add(node("f:WSManFault", None, text, xmlns_f=F, Code=str(self.wsman_code), Machine=machine))
        fault = node(
            "s:Fault",
            None,
            node("s:Code", None, node("s:Value", self.code), node("s:Subcode", None, node("s:Value", self.subcode))),
            node("s:Reason", None, Node("s:Text", {"xml:lang": "en-US"}, self.reason)),
            detail,
        )
        return build(FAULT_ACTION, relates_to, [fault], FAULT_NAMESPACES)


def timed_out() -> WSManFault:
    """A Receive that saw no output within the request's OperationTimeout."""
    reason = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "
    return WSManFault("s:Receiver", "w:TimedOut", reason, TIMED_OUT)


def invalid_selectors(message: str, detail: str = "UnexpectedSelectors") -> WSManFault:
    """An unknown ShellId or CommandId."""
    reason = (
        "The WS-Management service cannot process the request because the request contained invalid selectors "
        "for the resource. "
    )
    return WSManFault("s:Sender", "w:InvalidSelectors", reason, INVALID_SELECTORS, message, detail)


def unknown_shell(shell_id: str) -> WSManFault:
    """A ShellId that names no shell of this user."""
    return invalid_selectors(
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found "
        "on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists "
        "on the server. Provide the correct ShellId or create a new shell and retry the operation. "
    )


def unknown_command() -> WSManFault:
    """A CommandId that names no command of the shell."""
    return invalid_selectors(
        "The Windows Remote Shell received a request to perform an operation on a command identifier that does not "
        "exist. Either the command has completed execution or the client specified an invalid command identifier. "
    )


def invalid_parameter() -> WSManFault:
    """A request the cmd shell plugin refuses as malformed."""
    return WSManFault(
        "s:Sender",
        "w:InvalidParameter",
        "The parameter is incorrect. ",
        INVALID_PARAMETER,
        detail="InvalidValue",
        provider=True,
    )


def access_denied() -> WSManFault:
    """The user may not use the resource."""
    return WSManFault("s:Sender", "w:AccessDenied", "Access is denied. ", ACCESS_DENIED)


def file_not_found() -> WSManFault:
    """CreateProcess found no such program (a command run without cmd.exe)."""
    return WSManFault(
        "s:Receiver", "w:InternalError", "The system cannot find the file specified. ", FILE_NOT_FOUND, provider=True
    )


def shell_quota(limit: int) -> WSManFault:
    """The user already holds MaxShellsPerUser shells."""
    reason = (
        "The WS-Management service cannot process the request. This user is allowed a maximum number of "
        f"{limit} concurrent shells, which has been exceeded. Close existing shells or raise the quota for this user. "
    )
    return WSManFault("s:Receiver", "w:InternalError", reason, SHELL_QUOTA)


def operations_quota(limit: int) -> WSManFault:
    """The user already has MaxConcurrentOperationsPerUser operations outstanding."""
    reason = (
        "The WS-Management service cannot process the request. This user is allowed a maximum number of "
        f"{limit} concurrent operations, which has been exceeded. Close existing operations for this user, or raise "
        "the quota for this user. "
    )
    return WSManFault("s:Receiver", "w:InternalError", reason, OPERATIONS_QUOTA)


def action_not_supported(action: str) -> WSManFault:
    """An action this endpoint does not implement for the resource."""
    reason = "The action is not supported by the service. "
    return WSManFault("s:Sender", "a:ActionNotSupported", reason, ACTION_NOT_SUPPORTED, detail="ActionMismatch")


def unknown_resource(uri: str) -> WSManFault:
    """A resource URI no plugin answers."""
    reason = (
        "The WS-Management service cannot process the request. The resource URI "
        f"({uri}) was not found in the WS-Management catalog. "
    )
    return WSManFault(
        "s:Sender", "w:DestinationUnreachable", reason, DESTINATION_UNREACHABLE, detail="InvalidResourceURI"
    )
