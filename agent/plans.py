"""Plans: what to do on each guest, read from YAML (or built in Python) and validated whole.

A malformed plan is rejected before anything runs, with the file, the step (number and
key) and the field named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from beachhead.agent.errors import InputError
from beachhead.agent.targets import OsFamily
from beachhead.agent.yamlio import LineDict, SourceInt, at_line, load_yaml


class Capability(StrEnum):
    """What a channel can do; steps ask for one of these."""

    RUN = "run"
    PUT_FILE = "put_file"
    GET_FILE = "get_file"
    TYPE_KEYS = "type_keys"
    PUBLISH_USERDATA = "publish_userdata"


SHELLS = ("sh", "bash", "powershell", "cmd")


@dataclass(frozen=True)
class RunSpec:
    """A command or script to run, before rendering for the guest's OS family."""

    command: str | None = None
    script: Path | None = None
    shell: str | None = None
    become: bool = False
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """Short human description: the command's first line or the script's name."""
        if self.script is not None:
            return f"script {self.script.name}"
        first = (self.command or "").strip().splitlines()[0] if self.command else ""
        return first if len(first) <= 60 else first[:57] + "..."


@dataclass(frozen=True)
class PortOpen:
    """Wait until a TCP port on the target's address accepts connections."""

    port: int
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return f"port {self.port} open"


class VmState(StrEnum):
    """States of a vSphere VM a plan can wait for; vCenter's event stream reports them."""

    POWERED_ON = "powered_on"
    TOOLS_RUNNING = "tools_running"
    GUESTOPS_READY = "guestops_ready"
    IP_ASSIGNED = "ip_assigned"


@dataclass(frozen=True)
class VmCondition:
    """Wait until the target's VM is in ``state`` (vsphere:// targets)."""

    state: VmState
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return self.state.value.replace("_", " ").replace("guestops", "guest operations")


class GuestReport(StrEnum):
    """What a guest reports to the metadata server, which a plan can wait for."""

    USERDATA_FETCHED = "userdata_fetched"
    PHONED_HOME = "phoned_home"


@dataclass(frozen=True)
class ReportCondition:
    """Wait until the target's guest has fetched its user-data from, or phoned home
    to, the metadata server (``--metadata-server``)."""

    report: GuestReport
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return "user-data fetched" if self.report is GuestReport.USERDATA_FETCHED else "phoned home"


WaitCondition = PortOpen | VmCondition | ReportCondition
NAMED_CONDITIONS: dict[str, VmState | GuestReport] = {
    **{state.value: state for state in VmState},
    **{report.value: report for report in GuestReport},
}
CONDITION_NAMES = ("port", *NAMED_CONDITIONS)


def for_target(path: str, target_name: str) -> str:
    """``path`` with ``{target}`` replaced by the target's name (slashes made safe)."""
    return path.replace("{target}", target_name.replace("/", "_"))


@dataclass(frozen=True)
class UploadStep:
    """Copy a local file (relative to the plan's folder) to the guest; ``{target}`` in
    ``dest`` is the target's name."""

    src: Path
    dest: str
    mode: int | None = None
    timeout: float | None = None
    kind = "upload"
    capability = Capability.PUT_FILE

    def describe(self) -> str:
        """Human description of the step."""
        return f"upload {self.src.name} -> {self.dest}"

    def remote_path(self, target_name: str) -> str:
        """The guest destination for one target."""
        return for_target(self.dest, target_name)


@dataclass(frozen=True)
class DownloadStep:
    """Copy a guest file to a local path; ``{target}`` in ``dest`` is the target's name."""

    src: str
    dest: str
    timeout: float | None = None
    kind = "download"
    capability = Capability.GET_FILE

    def describe(self) -> str:
        """Human description of the step."""
        return f"download {self.src} -> {self.dest}"

    def local_path(self, target_name: str) -> Path:
        """The local destination for one target."""
        return Path(for_target(self.dest, target_name)).expanduser()


@dataclass(frozen=True)
class RunStep:
    """Run a command or script in the guest."""

    spec: RunSpec
    kind = "run"
    capability = Capability.RUN

    @property
    def timeout(self) -> float | None:
        """The step's own timeout, if it set one."""
        return self.spec.timeout

    def describe(self) -> str:
        """Human description of the step."""
        return f"run {self.spec.describe()}"


@dataclass(frozen=True)
class WaitStep:
    """Wait for a condition before going on."""

    condition: WaitCondition
    kind = "wait"
    capability = None

    @property
    def timeout(self) -> float | None:
        """The condition's own timeout, if it set one."""
        return self.condition.timeout

    def describe(self) -> str:
        """Human description of the step."""
        return f"wait for {self.condition.describe()}"


@dataclass(frozen=True)
class ExtraConfigStep:
    """Set keys of the VM's extraConfig (``guestinfo.*`` and the like); None removes a
    key. vsphere:// targets only."""

    values: Mapping[str, str | None]
    kind = "extra_config"
    capability = None
    timeout = None

    def describe(self) -> str:
        """Human description of the step (keys only: values may be secrets)."""
        return f"extra_config {', '.join(self.values)}"


@dataclass(frozen=True)
class PowerStep:
    """Power the VM on or off. vsphere:// targets only."""

    on: bool
    kind = "power"
    capability = None
    timeout = None

    def describe(self) -> str:
        """Human description of the step."""
        return f"power {'on' if self.on else 'off'}"


class Via(StrEnum):
    """Where a ``userdata`` step publishes."""

    METADATA = "metadata"  # the metadata server (--metadata-server)
    GUESTINFO = "guestinfo"  # the VM's guestinfo extraConfig, for cloud-init's VMware datasource


@dataclass(frozen=True)
class UserDataStep:
    """Publish cloud-init data for the target's guest to pull at boot."""

    user_data: Path
    via: Via = Via.METADATA
    meta_data: Path | None = None
    vendor_data: Path | None = None
    network_config: Path | None = None
    instance_id: str | None = None
    kind = "userdata"
    capability = None
    timeout = None

    def describe(self) -> str:
        """Human description of the step."""
        return f"userdata {self.user_data.name} via {self.via}"


Step = UploadStep | DownloadStep | RunStep | WaitStep | ExtraConfigStep | PowerStep | UserDataStep
VM_STEPS = (ExtraConfigStep, PowerStep)
STEP_KINDS = ("upload", "download", "run", "wait", "extra_config", "power", "userdata")
EXTRA_CONFIG_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
POWER_STATES = {"on": True, "off": False, True: True, False: False}  # YAML 1.1 reads a bare on/off as a bool


@dataclass(frozen=True)
class Plan:
    """A named list of steps, with the OS it is for and the channels it may use."""

    name: str
    steps: tuple[Step, ...]
    os: OsFamily | None = None
    channels: tuple[str, ...] = ()
    wait: tuple[WaitCondition, ...] = ()
    timeout: float | None = None
    source: Path | None = None

    @property
    def needs_per_target_downloads(self) -> bool:
        """True when some download writes to one fixed local path for every target."""
        return any(isinstance(s, DownloadStep) and "{target}" not in s.dest for s in self.steps)


class _PlanReader:
    """Turns the parsed YAML of one plan file into a :class:`Plan`, or an InputError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def error(self, where: str | None, reason: str, mapping: Any = None, key: str | None = None) -> InputError:
        if where is not None and mapping is not None:
            where = at_line(where, mapping, key)
        return InputError(self.path, where, reason)

    def read(self, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise self.error(None, "a plan must be a mapping with name and steps")
        allowed = {"name", "os", "channels", "wait", "steps", "timeout"}
        for key in data:
            if key not in allowed:
                raise self.error(key, f"unknown field (allowed: {', '.join(sorted(allowed))})", data, key)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.error("name", "missing or not a string", data, "name")
        os_family = None
        if data.get("os") is not None:
            try:
                os_family = OsFamily(data["os"])
            except ValueError:
                raise self.error("os", f"unknown OS family {data['os']!r} (linux or windows)", data, "os") from None
        channels = data.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise self.error("channels", "must be a list of channel names", data, "channels")
        wait = data.get("wait") or []
        if not isinstance(wait, list):
            raise self.error("wait", "must be a list of conditions", data, "wait")
        conditions = tuple(self.condition(item, f"wait[{i}]") for i, item in enumerate(wait, 1))
        timeout = self.seconds(data.get("timeout"), "timeout", data, "timeout")
        steps_data = data.get("steps")
        if not isinstance(steps_data, list) or not steps_data:
            raise self.error("steps", "missing or empty: a plan needs at least one step", data, "steps")
        steps = tuple(self.step(item, number) for number, item in enumerate(steps_data, 1))
        return Plan(
            name=name,
            steps=steps,
            os=os_family,
            channels=tuple(channels),
            wait=conditions,
            timeout=timeout,
            source=self.path,
        )

    def step(self, item: Any, number: int) -> Step:
        if not isinstance(item, dict) or len(item) != 1:
            keys = f" (keys: {', '.join(item)})" if isinstance(item, dict) else ""
            raise self.error(
                f"step {number}",
                f"must be a mapping with exactly one of {', '.join(STEP_KINDS)}{keys}",
                item,
            )
        kind, body = next(iter(item.items()))
        where = f"step {number} ({kind})"
        if kind == "upload":
            return self.upload(body, where, item)
        if kind == "download":
            return self.download(body, where, item)
        if kind == "run":
            return RunStep(self.run(body, where, item))
        if kind == "wait":
            return WaitStep(self.condition(body, where))
        if kind == "extra_config":
            return self.extra_config(body, where, item)
        if kind == "userdata":
            return self.userdata(body, where, item)
        if kind == "power":
            if isinstance(body, str | bool) and body in POWER_STATES:
                return PowerStep(POWER_STATES[body])
            raise self.error(where, f"must be on or off, got {body!r}", item, kind)
        raise self.error(f"step {number}", f"unknown step {kind!r} (known: {', '.join(STEP_KINDS)})", item, kind)

    def fields(self, body: Any, where: str, parent: Any, required: set[str], optional: set[str]) -> LineDict:
        if not isinstance(body, dict):
            raise self.error(where, f"must be a mapping with {', '.join(sorted(required))}", parent)
        for key in body:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                raise self.error(f"{where}.{key}", f"unknown field (allowed: {allowed})", body, key)
        for key in sorted(required):
            if key not in body:
                raise self.error(f"{where}.{key}", "missing", body)
        return body  # type: ignore[return-value]

    def string(self, body: Mapping[str, Any], key: str, where: str) -> str:
        value = body[key]
        if not isinstance(value, str) or not value:
            raise self.error(f"{where}.{key}", "must be a non-empty string", body, key)
        if "\x00" in value:
            raise self.error(f"{where}.{key}", "contains a NUL byte", body, key)
        return value

    def seconds(self, value: Any, where: str, mapping: Any, key: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(where, f"must be a positive number of seconds, got {value!r}", mapping, key)
        return float(value)

    def upload(self, body: Any, where: str, parent: Any) -> UploadStep:
        body = self.fields(body, where, parent, {"src", "dest"}, {"mode", "timeout"})
        src = self.base / self.string(body, "src", where)
        if not src.is_file():
            raise self.error(f"{where}.src", f"file not found: {src}", body, "src")
        mode = self.mode(body.get("mode"), f"{where}.mode", body)
        timeout = self.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return UploadStep(src=src.resolve(), dest=self.string(body, "dest", where), mode=mode, timeout=timeout)

    def mode(self, value: Any, where: str, body: Any) -> int | None:
        if value is None:
            return None
        text = value.text if isinstance(value, SourceInt) else str(value) if isinstance(value, str) else None
        if text is None:
            raise self.error(where, f"must be an octal mode such as 0644, got {value!r}", body, "mode")
        digits = text[2:] if text.lower().startswith("0o") else text
        if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o7777:
            raise self.error(where, f"must be an octal mode such as 0644, got {text!r}", body, "mode")
        return int(digits, 8)

    def download(self, body: Any, where: str, parent: Any) -> DownloadStep:
        body = self.fields(body, where, parent, {"src", "dest"}, {"timeout"})
        dest = self.string(body, "dest", where)
        if not Path(dest).is_absolute() and not dest.startswith("~"):
            dest = str(self.base / dest)
        timeout = self.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return DownloadStep(src=self.string(body, "src", where), dest=dest, timeout=timeout)

    def run(self, body: Any, where: str, parent: Any) -> RunSpec:
        if isinstance(body, str):
            if not body.strip():
                raise self.error(where, "empty command", parent)
            return RunSpec(command=body)
        body = self.fields(body, where, parent, set(), {"command", "script", "shell", "become", "timeout", "env"})
        if ("command" in body) == ("script" in body):
            raise self.error(where, "give exactly one of command or script", body)
        command = self.string(body, "command", where) if "command" in body else None
        script = None
        if "script" in body:
            script = self.base / self.string(body, "script", where)
            if not script.is_file():
                raise self.error(f"{where}.script", f"file not found: {script}", body, "script")
            script = script.resolve()
        shell = body.get("shell")
        if shell is not None and shell not in SHELLS:
            raise self.error(f"{where}.shell", f"unknown shell {shell!r} (known: {', '.join(SHELLS)})", body, "shell")
        become = body.get("become", False)
        if not isinstance(become, bool):
            raise self.error(f"{where}.become", "must be true or false", body, "become")
        env = body.get("env") or {}
        if not isinstance(env, dict):
            raise self.error(f"{where}.env", "must be a mapping of names to values", body, "env")
        for key, value in env.items():
            if not key.isidentifier() or not isinstance(value, str | int | float) or isinstance(value, bool):
                raise self.error(f"{where}.env.{key}", "names must be identifiers and values strings", env, key)
        timeout = self.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return RunSpec(
            command=command,
            script=script,
            shell=shell,
            become=become,
            timeout=timeout,
            env={key: str(value) for key, value in env.items()},
        )

    def extra_config(self, body: Any, where: str, parent: Any) -> ExtraConfigStep:
        if not isinstance(body, dict) or not body:
            raise self.error(where, "must be a mapping of extraConfig keys to values (null removes a key)", parent)
        values: dict[str, str | None] = {}
        for key, value in body.items():
            if not isinstance(key, str) or not EXTRA_CONFIG_KEY.match(key):
                raise self.error(f"{where}.{key}", "not an extraConfig key (letters, digits, . _ : -)", body, key)
            if value is not None and not isinstance(value, str):
                raise self.error(f"{where}.{key}", f"must be a string (quote it) or null, got {value!r}", body, key)
            if value is not None and "\x00" in value:
                raise self.error(f"{where}.{key}", "contains a NUL byte", body, key)
            values[key] = value or None
        return ExtraConfigStep(values)

    def userdata(self, body: Any, where: str, parent: Any) -> UserDataStep:
        body = self.fields(
            body, where, parent, {"user_data"}, {"meta_data", "vendor_data", "network_config", "via", "instance_id"}
        )
        files: dict[str, Path | None] = {}
        for key in ("user_data", "meta_data", "vendor_data", "network_config"):
            if key in body:
                path = self.base / self.string(body, key, where)
                if not path.is_file():
                    raise self.error(f"{where}.{key}", f"file not found: {path}", body, key)
                files[key] = path.resolve()
        via = body.get("via", "metadata")
        if via not in Via.__members__.values():
            raise self.error(f"{where}.via", f"must be metadata or guestinfo, got {via!r}", body, "via")
        instance_id = self.string(body, "instance_id", where) if "instance_id" in body else None
        user_data = files.pop("user_data")
        assert user_data is not None
        return UserDataStep(user_data=user_data, via=Via(via), instance_id=instance_id, **files)

    def condition(self, body: Any, where: str) -> WaitCondition:
        if isinstance(body, str) and body in NAMED_CONDITIONS:
            return _named_condition(body, None)
        if not isinstance(body, dict):
            raise self.error(where, "must be a condition such as {port: 22, timeout: 60} or tools_running")
        states = [key for key in body if key in NAMED_CONDITIONS]
        if states and len(body) == 1:
            options = body[states[0]]
            if options is None:
                return _named_condition(states[0], None)
            if not isinstance(options, dict):
                raise self.error(f"{where}.{states[0]}", "must be empty or a mapping such as {timeout: 300}", body)
            options = self.fields(options, f"{where}.{states[0]}", body, set(), {"timeout"})
            timeout = self.seconds(options.get("timeout"), f"{where}.{states[0]}.timeout", options, "timeout")
            return _named_condition(states[0], timeout)
        if "port" not in body:
            known = ", ".join(CONDITION_NAMES)
            raise self.error(where, f"unknown condition (known: {known}) in {', '.join(body) or 'empty mapping'}", body)
        body = self.fields(body, where, None, {"port"}, {"timeout"})
        port = body["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise self.error(f"{where}.port", f"must be a TCP port number, got {port!r}", body, "port")
        timeout = self.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return PortOpen(port=int(port), timeout=timeout)


def _named_condition(name: str, timeout: float | None) -> VmCondition | ReportCondition:
    named = NAMED_CONDITIONS[name]
    return VmCondition(named, timeout) if isinstance(named, VmState) else ReportCondition(named, timeout)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; raises :class:`InputError` naming what is wrong."""
    path = Path(path)
    return _PlanReader(path).read(load_yaml(path))
