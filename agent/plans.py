"""Plans: what to do on each guest, read from YAML (or built in Python) and validated whole.

A plan's steps are parsed by the step kinds the plugins registered (see
:mod:`beachhead.agent.stepkinds`); this module reads the plan around them and gives the
kinds one :class:`PlanReader` with the field checks they share. A malformed plan is
rejected before anything runs, with the file, the step (number and key) and the field
named.

A step may carry ``os: linux|windows`` beside its kind (``- run: uname -a`` with
``os: linux``): it then runs only on targets of that OS family and is reported as
skipped, with the reason, on the others (see :mod:`beachhead.agent.engine`). Steps keep
their numbers in the file either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beachhead.agent.errors import InputError, brief, brief_names
from beachhead.agent.stepkinds import Step
from beachhead.agent.targets import OsFamily
from beachhead.agent.yamlio import LineDict, SourceInt, at_line, load_yaml

if TYPE_CHECKING:
    from beachhead.agent.registry import Plugins

PLAN_FIELDS = frozenset({"name", "os", "channels", "wait", "steps", "timeout"})
#: What a step may carry beside its kind.
STEP_FIELDS = frozenset({"os"})


def for_target(path: str, target_name: str) -> str:
    """``path`` with ``{target}`` replaced by the target's name (slashes made safe)."""
    return path.replace("{target}", target_name.replace("/", "_"))


@dataclass(frozen=True)
class Plan:
    """A named list of steps, with the OS it is for and the channels it may use.
    ``wait`` holds the plan's ``wait:`` conditions as ``wait`` steps. ``step_os`` maps a
    step's number (1-based) to the one OS family it is for (its ``os:``); the other
    steps run on every target."""

    name: str
    steps: tuple[Step, ...]
    os: OsFamily | None = None
    channels: tuple[str, ...] = ()
    wait: tuple[Step, ...] = ()
    timeout: float | None = None
    source: Path | None = None
    step_os: Mapping[int, OsFamily] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for number, family in self.step_os.items():
            if not isinstance(number, int) or not 1 <= number <= len(self.steps):
                raise InputError(self.source, "step_os", f"no step {brief(number)} (steps: 1 to {len(self.steps)})")
            if not isinstance(family, OsFamily):
                raise InputError(self.source, f"step {number}.os", f"must be an OsFamily, got {brief(family)}")
            if self.os is not None and family != self.os:
                raise InputError(
                    self.source, f"step {number}.os", f"the plan is for {self.os} (os: {self.os}): it would never run"
                )

    def os_of(self, number: int) -> OsFamily | None:
        """The OS family step ``number`` is for, or None when it runs on every target."""
        return self.step_os.get(number)


class PlanReader:
    """Reads one plan file's YAML into a :class:`Plan`, asking the registered step kinds
    to parse their steps; its helpers check the fields those kinds share."""

    def __init__(self, path: Path, plugins: Plugins, *, base: Path | None = None, from_file: bool = True) -> None:
        self.path = path  # what errors name: the plan file, or a label for a plan built in Python
        self.base = base if base is not None else path.parent
        self.plugins = plugins
        self.from_file = from_file

    # -- errors and shared field checks -------------------------------------------------
    def error(self, where: str | None, reason: str, mapping: Any = None, key: str | None = None) -> InputError:
        """Bad input at ``where`` (with the line of ``key`` in ``mapping`` when known)."""
        if where is not None and mapping is not None:
            where = at_line(where, mapping, key)
        return InputError(self.path, where, reason)

    def fields(self, body: Any, where: str, parent: Any, required: set[str], optional: set[str]) -> LineDict:
        """``body`` as a mapping with every ``required`` key and no unknown one."""
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
        """A non-empty string field without NUL bytes."""
        value = body[key]
        if not isinstance(value, str) or not value:
            raise self.error(f"{where}.{key}", "must be a non-empty string", body, key)
        if "\x00" in value:
            raise self.error(f"{where}.{key}", "contains a NUL byte", body, key)
        return value

    def local_file(self, body: Mapping[str, Any], key: str, where: str) -> Path:
        """A field naming a file relative to the plan's folder, which must exist."""
        path = self.base / self.string(body, key, where)
        if not path.is_file():
            raise self.error(f"{where}.{key}", f"file not found: {path}", body, key)
        return path.resolve()

    def seconds(self, value: Any, where: str, mapping: Any, key: str) -> float | None:
        """An optional positive, finite number of seconds (not ``.nan`` nor ``.inf``)."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise self.error(where, f"must be a positive number of seconds, got {brief(value)}", mapping, key)
        try:
            return float(value)
        except OverflowError:
            raise self.error(where, f"too large a number of seconds: {brief(value)}", mapping, key) from None

    def mode(self, value: Any, where: str, body: Any) -> int | None:
        """An optional octal file mode (``0644`` or ``"0644"``)."""
        if value is None:
            return None
        text = value.text if isinstance(value, SourceInt) else str(value) if isinstance(value, str) else None
        if text is None:
            raise self.error(where, f"must be an octal mode such as 0644, got {brief(value)}", body, "mode")
        digits = text[2:] if text.lower().startswith("0o") else text
        if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o7777:
            raise self.error(where, f"must be an octal mode such as 0644, got {brief(text)}", body, "mode")
        return int(digits, 8)

    # -- the plan -------------------------------------------------------------------------
    def read(self, data: Any) -> Plan:
        """The plan ``data`` (parsed YAML) describes."""
        if not isinstance(data, dict):
            raise self.error(None, "a plan must be a mapping with name and steps")
        for key in data:
            if key not in PLAN_FIELDS:
                raise self.error(key, f"unknown field (allowed: {', '.join(sorted(PLAN_FIELDS))})", data, key)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.error("name", "missing or not a string", data, "name")
        os_family = None
        if data.get("os") is not None:
            try:
                os_family = OsFamily(data["os"])
            except ValueError:
                raise self.error(
                    "os", f"unknown OS family {brief(data['os'])} (linux or windows)", data, "os"
                ) from None
        channels = data.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise self.error("channels", "must be a list of channel names", data, "channels")
        for channel in channels:
            if channel not in self.plugins.channels:
                known = ", ".join(sorted(self.plugins.channels))
                raise self.error("channels", f"unknown channel {brief(channel)} (known: {known})", data, "channels")
        wait = data.get("wait") or []
        if not isinstance(wait, list):
            raise self.error("wait", "must be a list of conditions", data, "wait")
        waits = tuple(self.parse_step("wait", item, f"wait[{i}]", data) for i, item in enumerate(wait, 1))
        timeout = self.seconds(data.get("timeout"), "timeout", data, "timeout")
        steps_data = data.get("steps")
        if not isinstance(steps_data, list) or not steps_data:
            raise self.error("steps", "missing or empty: a plan needs at least one step", data, "steps")
        steps = tuple(self.step(item, number) for number, item in enumerate(steps_data, 1))
        step_os = {}
        for number, item in enumerate(steps_data, 1):
            family = self.step_os(item, number, os_family)
            if family is not None:
                step_os[number] = family
        return Plan(
            name=name,
            steps=steps,
            os=os_family,
            channels=tuple(channels),
            wait=waits,
            timeout=timeout,
            source=self.path if self.from_file else None,
            step_os=step_os,
        )

    def step(self, item: Any, number: int) -> Step:
        """Step ``number``: a mapping of one registered kind to its body, and optionally
        the fields a step may carry beside its kind (:data:`STEP_FIELDS`)."""
        known = ", ".join(sorted(self.plugins.steps))
        kinds = [key for key in item if key not in STEP_FIELDS] if isinstance(item, dict) else []
        if len(kinds) > 1 and sum(key in self.plugins.steps for key in kinds) == 1:
            kind = next(key for key in kinds if key in self.plugins.steps)
            extra = next(key for key in kinds if key != kind)
            allowed = ", ".join(sorted(STEP_FIELDS))
            raise self.error(
                f"step {number} ({kind}).{extra}", f"unknown field beside {kind} (allowed: {allowed})", item, extra
            )
        if len(kinds) != 1:
            keys = f" (keys: {brief_names(item)})" if isinstance(item, dict) else ""
            raise self.error(f"step {number}", f"must be a mapping with exactly one of {known}{keys}", item)
        kind = kinds[0]
        if kind not in self.plugins.steps:
            raise self.error(f"step {number}", f"unknown step {brief(kind)} (known: {known})", item, kind)
        return self.parse_step(kind, item[kind], f"step {number} ({kind})", item)

    def step_os(self, item: dict[str, Any], number: int, plan_os: OsFamily | None) -> OsFamily | None:
        """The OS family step ``number`` (already parsed) is for: its ``os:``, or None."""
        if item.get("os") is None:
            return None
        kind = next(key for key in item if key not in STEP_FIELDS)
        where = f"step {number} ({kind}).os"
        try:
            family = OsFamily(item["os"])
        except ValueError:
            raise self.error(where, f"unknown OS family {brief(item['os'])} (linux or windows)", item, "os") from None
        if plan_os is not None and family != plan_os:
            raise self.error(where, f"the plan is for {plan_os} (os: {plan_os}): this step would never run", item, "os")
        return family

    def parse_step(self, kind: str, body: Any, where: str, parent: Any) -> Step:
        """Let the step kind ``kind`` parse ``body``."""
        return self.plugins.steps[kind].parse(body, self, where, parent)


def load_plan(path: str | Path, plugins: Plugins | None = None) -> Plan:
    """Read and validate a plan file; raises :class:`InputError` naming what is wrong."""
    from beachhead.agent.registry import default_plugins

    path = Path(path)
    return PlanReader(path, plugins or default_plugins()).read(load_yaml(path))


PYTHON_PLAN = "<plan built in Python>"


def build_plan(data: Mapping[str, Any], *, base_dir: str | Path | None = None, plugins: Plugins | None = None) -> Plan:
    """A plan from Python data shaped as a plan file is (``{"name": ..., "steps": [{"run":
    "hostname"}, ...]}``), checked exactly as a file would be; bad data raises
    :class:`InputError` naming ``<plan built in Python>`` and the field. Local files
    (``upload: {src: ...}``) are relative to ``base_dir``, by default the current
    directory."""
    from beachhead.agent.registry import default_plugins

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return PlanReader(Path(PYTHON_PLAN), plugins or default_plugins(), base=base, from_file=False).read(dict(data))
