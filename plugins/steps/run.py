"""The ``run`` step: a command or script in the guest, rendered for its OS family.

``- run: systemctl restart app`` or
``- run: {command|script: ..., shell: sh|bash|powershell|cmd, become: true, timeout: 300, env: {ROLE: web}}``.
Journaled as ``run`` (the command or script name, whether it became root, the names of
its environment variables, never their values; the exit status and guest pid); a
command cannot be undone, so undo lists it. A command is not retried when its
connection drops: it may already have run, and its exit status is unknown.

Environment values are secrets from the step on (for as long as the process runs):
masked (``***``) wherever they would be logged, recorded or printed. The output streams into the run directory
(``output/TARGET/STEP.stdout`` and ``.stderr``) while the step keeps their head and tail
(see :mod:`beachhead.agent.output`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from beachhead.agent.channel import LOST_WHILE_RUNNING, Capability
from beachhead.agent.context import StepContext
from beachhead.agent.errors import InputError, brief
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.journal import JournalEntry
from beachhead.agent.plans import PlanReader
from beachhead.agent.render import SHELLS, RunSpec, render
from beachhead.agent.results import FAILED
from beachhead.agent.secrets import REDACTOR
from beachhead.agent.stepkinds import CheckContext, Operation, StepKind
from beachhead.agent.targets import OsFamily, Target


@dataclass(frozen=True)
class RunStep:
    """Run a command or script in the guest."""

    spec: RunSpec
    kind: ClassVar[str] = "run"

    @property
    def timeout(self) -> float | None:
        """The step's own timeout, if it set one."""
        return self.spec.timeout

    def describe(self) -> str:
        """Human description of the step."""
        return f"run {self.spec.describe()}"


def _exit_status(entry: JournalEntry) -> str:
    if entry.outcome is None:
        return "exit status unknown (no outcome recorded)"
    if entry.outcome.get("exit_status") is not None:
        return f"exit status {entry.outcome['exit_status']}"
    if entry.outcome.get("signal"):
        return f"killed by signal {entry.outcome['signal']}"
    return str(entry.outcome.get("error") or "exit status unknown")  # e.g. the connection was lost


RUN = Operation(
    "run",
    describe=lambda entry: f"command {entry.intent.get('command') or entry.intent.get('script')!r}",
    kept=_exit_status,
)


class Run(StepKind):
    """The ``run`` step kind."""

    name = "run"
    capability = Capability.RUN
    operations = (RUN,)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> RunStep:
        """A command string, or a mapping with exactly one of command / script."""
        if isinstance(body, str):
            if not body.strip():
                raise reader.error(where, "empty command", parent)
            if "\x00" in body:
                raise reader.error(where, "the command contains a NUL byte", parent)
            return RunStep(RunSpec(command=body))
        body = reader.fields(body, where, parent, set(), {"command", "script", "shell", "become", "timeout", "env"})
        if ("command" in body) == ("script" in body):
            raise reader.error(where, "give exactly one of command or script", body)
        shell = body.get("shell")
        if shell is not None and shell not in SHELLS:
            raise reader.error(
                f"{where}.shell", f"unknown shell {brief(shell)} (known: {', '.join(SHELLS)})", body, "shell"
            )
        become = body.get("become", False)
        if not isinstance(become, bool):
            raise reader.error(f"{where}.become", "must be true or false", body, "become")
        env = body.get("env") or {}
        if not isinstance(env, dict):
            raise reader.error(f"{where}.env", "must be a mapping of names to values", body, "env")
        for key, value in env.items():
            if not key.isidentifier() or not isinstance(value, str | int | float) or isinstance(value, bool):
                raise reader.error(f"{where}.env.{key}", "names must be identifiers and values strings", env, key)
            if isinstance(value, str) and "\x00" in value:
                raise reader.error(f"{where}.env.{key}", "contains a NUL byte", env, key)
        return RunStep(
            RunSpec(
                command=reader.string(body, "command", where) if "command" in body else None,
                script=reader.local_file(body, "script", where) if "script" in body else None,
                shell=shell,
                become=become,
                timeout=reader.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout"),
                env={key: str(value) for key, value in env.items()},
            )
        )

    def check(self, step: RunStep, target: Target, context: CheckContext) -> str | None:
        """The shell must exist on the OS family the step will run under there (the
        target's or the plan's when declared, else the step's own ``os:``, else Linux)."""
        try:
            render(step.spec, context.os_of(target))
        except InputError as exc:
            return exc.reason
        return None

    async def execute(self, step: RunStep, ctx: StepContext) -> None:
        """Run the command once over the selected channel; a non-zero exit fails the step."""
        spec = step.spec
        for value in spec.env.values():
            REDACTOR.register(value)
        session = await ctx.session(Capability.RUN)
        request = render(spec, ctx.os)
        # Windows renderings still carry env values (PowerShell's encoded, past masking).
        shown = request.command if ctx.os is not OsFamily.WINDOWS or not spec.env else "(holds the env values)"
        ctx.log.debug("run.command", command=shown, stdin_bytes=len(request.stdin or b""))
        what = {"command": spec.command} if spec.command else {"script": str(spec.script)}
        result = ctx.result
        seq = ctx.reserve()
        with ctx.journaled(
            seq, "run", channel=session.channel, **what, become=spec.become, env_names=list(spec.env)
        ) as after:
            output = ctx.output()
            try:
                outcome = await session.run(request, output)
                if output.stdout.total == output.stderr.total == 0 and (outcome.stdout or outcome.stderr):
                    # A channel that returned its output instead of streaming it: bounded all the same.
                    output = ctx.output()
                    output.stdout.write(outcome.stdout.encode())
                    output.stderr.write(outcome.stderr.encode())
            finally:
                output.finish()
                result.take_output(output)  # what arrived, even when the command was cut short
            result.exit_code = outcome.exit_status
            after.update(exit_status=outcome.exit_status, signal=outcome.signal)
            if outcome.pid is not None:
                after["pid"] = outcome.pid
            if not outcome.ok:
                after["phase"] = "failed"
                result.status = FAILED
                if outcome.signal:
                    result.error = f"killed by signal {outcome.signal}"
                elif outcome.exit_status is None:
                    result.error = LOST_WHILE_RUNNING
                else:
                    result.error = f"exit status {outcome.exit_status}"


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``run`` step kind."""
    register(Run())
