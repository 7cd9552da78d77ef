"""What a plan step kind and a wait condition are, for the plugins that provide them.

A step kind owns everything about its steps in one place: the schema (``parse``), the
checks that need the targets (``check``), how a step executes (``execute``), how it is
described (the step's ``describe()``), and the journal operations it writes with how
each is reverted (``operations``). The built-in kinds (``run``, ``upload``,
``download``, ``wait``, ``extra_config``, ``power``, ``userdata``) register through the
same hook as a third party's (``beachhead_register_steps``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from beachhead.agent.channel import Capability
from beachhead.agent.targets import OsFamily

if TYPE_CHECKING:
    from beachhead.agent.context import StepContext
    from beachhead.agent.journal import JournalEntry
    from beachhead.agent.plans import Plan, PlanReader
    from beachhead.agent.registry import Plugins
    from beachhead.agent.settings import RunSettings
    from beachhead.agent.targets import Target
    from beachhead.agent.undo import UndoContext


class Step(Protocol):
    """One parsed step of a plan (a frozen dataclass of its kind's module)."""

    kind: ClassVar[str]

    @property
    def timeout(self) -> float | None:
        """The step's own timeout, if it set one."""
        ...

    def describe(self) -> str:
        """A short human description (never a secret value)."""
        ...


class Condition(Protocol):
    """One parsed wait condition."""

    @property
    def timeout(self) -> float | None:
        """The condition's own timeout, if it set one."""
        ...

    def describe(self) -> str:
        """A short human description, such as ``port 22 open``."""
        ...


@dataclass(frozen=True)
class Operation:
    """A journal operation a step kind writes (``op`` in the journal), how the journal
    table describes an entry of it, how undo reverts one (``revert`` is None for what
    cannot be undone, such as a command; ``kept`` then says what stays), and how a
    resumed run tells whether an interrupted one happened (``recheck``)."""

    name: str
    describe: Callable[[JournalEntry], str]
    revert: Callable[[JournalEntry, UndoContext], Awaitable[str]] | None = None
    kept: Callable[[JournalEntry], str] | None = None
    #: For ``beachhead run --resume``: whether an entry recorded as intent only (the
    #: process died mid-write) is in place in the guest (True), is not (False), or
    #: cannot be told (None).
    recheck: Callable[[JournalEntry, UndoContext], Awaitable[bool | None]] | None = None

    @property
    def undoable(self) -> bool:
        """True when undo can revert entries of this operation."""
        return self.revert is not None


@dataclass(frozen=True)
class CheckContext:
    """What a ``check`` may look at before anything runs; ``step_os`` is the OS family
    the step being checked is for (its ``os:``), if it has one."""

    plan: Plan
    targets: Sequence[Target]
    settings: RunSettings
    plugins: Plugins
    step_os: OsFamily | None = None

    def os_of(self, target: Target) -> OsFamily:
        """The OS family the step will run under on ``target``, as far as it is known
        before anything runs: the target's, else the plan's, else the step's own
        ``os:`` (it runs only there), else Linux (a VM's report may still change it)."""
        return target.os or self.plan.os or self.step_os or OsFamily.LINUX


class StepKind(ABC):
    """A kind of plan step: ``name`` is its key in a plan (``- upload: {...}``)."""

    name: ClassVar[str]
    #: The channel capability its steps need (None: the step acts on the VM or the run).
    capability: ClassVar[Capability | None] = None
    #: Journal operations its steps write.
    operations: ClassVar[tuple[Operation, ...]] = ()

    @abstractmethod
    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> Step:
        """Turn the YAML ``body`` of a step into a step, or raise the
        :class:`beachhead.agent.errors.InputError` ``reader.error(...)`` makes."""

    def check(self, step: Any, target: Target, context: CheckContext) -> str | None:
        """Before anything runs: why ``step`` cannot run on ``target`` (it is bad
        input), or None."""
        return None

    @abstractmethod
    async def execute(self, step: Any, ctx: StepContext) -> None:
        """Run ``step`` on one target; raise :class:`beachhead.agent.errors.StepFailed`
        (or set ``ctx.result``'s status) when it fails."""


class ConditionKind(ABC):
    """A kind of wait condition, named in a plan's ``wait:`` list or a ``wait`` step:
    as a bare word (``tools_running``) or a mapping (``{port: 22, timeout: 60}``)."""

    #: The words (bare or as the mapping's key) this kind parses.
    names: ClassVar[tuple[str, ...]]

    @abstractmethod
    def parse(self, name: str, body: Any, reader: PlanReader, where: str) -> Condition:
        """Parse the condition ``name``; ``body`` is the whole mapping (or the bare word)."""

    def check(self, condition: Any, target: Target, context: CheckContext) -> str | None:
        """Why ``condition`` cannot be awaited on ``target`` (bad input), or None."""
        return None

    @abstractmethod
    async def wait(self, condition: Any, ctx: StepContext) -> None:
        """Return once the condition holds; the engine bounds the wait with the
        step's timeout."""
