"""Result records of a run: one per target, one per step; what ``--json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from beachhead.agent.secrets import REDACTOR

if TYPE_CHECKING:
    from beachhead.agent.output import OutputSink, StreamCapture

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass
class StepResult:
    """How one step went on one target."""

    number: int | None
    kind: str
    description: str
    status: str = SKIPPED
    channel: str | None = None
    exit_code: int | None = None
    stdout: str = ""  # head and tail only (see beachhead.agent.output.KEPT_BYTES)
    stderr: str = ""
    # What the command wrote in all, whether stdout/stderr leave some of it out, and the
    # run directory's file that holds all of it (None when the stream was empty).
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_file: str | None = None
    stderr_file: str | None = None
    duration_s: float = 0.0
    error: str | None = None
    # Every channel considered for the step, in order: {channel, result, reason}, result
    # being used, unmet (a prerequisite does not hold), failed (could not connect) or
    # skipped (could not connect shortly before).
    channels_tried: list[dict[str, str]] = field(default_factory=list)
    # Set when the step succeeded in an earlier attempt of a resumed run (not run again).
    done_in_attempt: int | None = None
    # Why a skipped step did not apply to this target (its ``os:`` is another family);
    # None for a step not reached because an earlier one failed.
    skip_reason: str | None = None

    def take_output(self, output: OutputSink) -> None:
        """Fill stdout and stderr (text, sizes, truncation, files) from a command's sink."""
        self.stdout, self.stdout_bytes, self.stdout_truncated, self.stdout_file = _stream(output.stdout)
        self.stderr, self.stderr_bytes, self.stderr_truncated, self.stderr_file = _stream(output.stderr)

    def to_json(self) -> dict[str, Any]:
        """The step as it appears in ``--json`` output."""
        return {
            "number": self.number,
            "kind": self.kind,
            "description": self.description,
            "status": self.status,
            "channel": self.channel,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "stdout_file": self.stdout_file,
            "stderr_file": self.stderr_file,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "channels_tried": self.channels_tried,
            "done_in_attempt": self.done_in_attempt,
            "skip_reason": self.skip_reason,
        }


def _stream(capture: StreamCapture) -> tuple[str, int, bool, str | None]:
    file = capture.file
    return capture.text(), capture.total, capture.truncated, str(file) if file is not None else None


@dataclass
class TargetResult:
    """How a plan went on one target."""

    target: str
    uri: str
    run_id: str
    status: str = FAILED
    channel: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    attempt: int = 1  # which attempt of the run (beachhead run --resume) this result is from

    @property
    def ok(self) -> bool:
        """True when every step succeeded."""
        return self.status == OK

    @property
    def failed_step(self) -> StepResult | None:
        """The step that failed, if one did."""
        return next((step for step in self.steps if step.status == FAILED), None)

    def to_json(self) -> dict[str, Any]:
        """One line of ``beachhead run --json``, with every known secret masked (a command
        may print a password it was given)."""
        record = {
            "target": self.target,
            "status": self.status,
            "channel": self.channel,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "steps": [step.to_json() for step in self.steps],
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
        }
        redacted: dict[str, Any] = REDACTOR.redact(record)
        return redacted
