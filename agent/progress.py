"""The rich progress display for a terminal: one bar for the run, one line per target
while few enough run to fit the screen."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from beachhead.agent.results import StepResult, TargetResult
from beachhead.agent.targets import Target

MAX_TARGET_ROWS = 12


class RichProgress:
    """A :class:`beachhead.agent.engine.Progress` drawn with rich on stderr."""

    def __init__(self, total_targets: int, console: Console | None = None) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self.per_target = total_targets <= MAX_TARGET_ROWS
        self.overall = self.progress.add_task("targets", total=total_targets)
        self.rows: dict[str, TaskID] = {}
        self.ok = 0
        self.failed = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def target_started(self, target: Target, total_steps: int) -> None:
        """Add a row for the target when rows fit."""
        if self.per_target:
            self.rows[target.name] = self.progress.add_task(f"  {target.name}", total=total_steps)

    def step_started(self, target: Target, result: StepResult) -> None:
        """Show the step now running on the target."""
        row = self.rows.get(target.name)
        if row is not None:
            done = (result.number or 1) - 1
            self.progress.update(row, completed=done, description=f"  {target.name}: {result.description}")

    def step_finished(self, target: Target, result: StepResult) -> None:
        """Count the step as done on the target's row."""
        row = self.rows.get(target.name)
        if row is not None and result.number is not None:
            self.progress.update(row, completed=result.number)

    def target_finished(self, result: TargetResult) -> None:
        """Count the target and mark its row."""
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1
        row = self.rows.get(result.target)
        if row is not None:
            mark = "[green]ok[/]" if result.ok else f"[red]failed[/]: {result.error}"
            total = self.progress.tasks[row].total or 0
            self.progress.update(row, completed=total if result.ok else None, description=f"  {result.target}: {mark}")
            self.progress.stop_task(row)
        failed = f", [red]{self.failed} failed[/]" if self.failed else ""
        self.progress.update(self.overall, advance=1, description=f"targets ({self.ok} ok{failed})")
        if self.ok + self.failed == self.progress.tasks[self.overall].total:
            self.progress.stop_task(self.overall)
