"""The one error hierarchy of Beachhead.

Every error the tool raises on purpose derives from :class:`BeachheadError`. The CLI maps
:class:`InputError` to exit status 2 (bad plan, target or configuration: nothing ran) and
every other :class:`BeachheadError` to exit status 1 (something ran and failed).
"""

from __future__ import annotations

from pathlib import Path


class BeachheadError(Exception):
    """Root of every error Beachhead raises deliberately."""

    exit_status = 1


class InputError(BeachheadError):
    """Bad input: a plan, target list or option is malformed. Nothing has run.

    ``source`` names the file (or ``--target`` for a command-line URI), ``where`` the
    field inside it (``step 3 (upload).src``), ``reason`` what is wrong with it.
    """

    exit_status = 2

    def __init__(self, source: str | Path | None, where: str | None, reason: str) -> None:
        self.source = str(source) if source is not None else None
        self.where = where
        self.reason = reason
        super().__init__(self._format())

    def _format(self) -> str:
        location = ": ".join(part for part in (self.source, self.where) if part)
        return f"{location}: {self.reason}" if location else self.reason


class ChannelError(BeachheadError):
    """A channel could not do its job: connection refused, authentication failed, lost link."""

    def __init__(self, channel: str, target: str, reason: str, *, retryable: bool = False) -> None:
        self.channel = channel
        self.target = target
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"{channel} to {target}: {reason}")


class ChannelUnavailable(ChannelError):
    """No connection could be made; another channel may still reach the guest."""


class StepFailed(BeachheadError):
    """A guest step ran and failed; carries what it printed so the user sees why."""

    def __init__(
        self,
        description: str,
        reason: str,
        *,
        exit_status: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.description = description
        self.reason = reason
        self.exit_status_of_command = exit_status
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{description}: {reason}")


class VerificationFailed(StepFailed):
    """A write happened but reading it back did not give what was written."""


class JournalError(BeachheadError):
    """A run directory or journal is missing, unreadable, unwritable or inconsistent."""


class RunBusy(BeachheadError):
    """Another process is working on the same run (an undo holds its lock)."""
