"""The ``upload`` step: copy a local file (relative to the plan) into the guest.

``- upload: {src: files/app.conf, dest: /etc/app.conf, mode: "0644", timeout: 60}``;
``{target}`` in ``dest`` is the target's name. Missing parent directories are created
(journaled as ``make_dirs``); a file it replaces is saved to the run's backups first;
the write itself is journaled as ``put_file``, with the temporary file it goes through
(removed by the next attempt when a lost connection left it, and by undo), and
verified by the channel.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

from beachhead.agent.channel import Capability, partial_path
from beachhead.agent.checksums import file_sha256
from beachhead.agent.context import StepContext
from beachhead.agent.errors import BeachheadError, ChannelError, StepFailed
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import PlanReader, for_target
from beachhead.agent.stepkinds import StepKind
from beachhead.agent.targets import OsFamily
from beachhead.plugins.steps.file_ops import MAKE_DIRS, PUT_FILE

STALE_PARTIALS = "upload.stale_partials"  # temporary files a lost connection left behind


@dataclass(frozen=True)
class UploadStep:
    """Copy ``src`` to ``dest`` in the guest, with ``mode`` when given."""

    src: Path
    dest: str
    mode: int | None = None
    timeout: float | None = None
    kind: ClassVar[str] = "upload"

    def describe(self) -> str:
        """Human description of the step."""
        return f"upload {self.src.name} -> {self.dest}"

    def remote_path(self, target_name: str) -> str:
        """The guest destination for one target."""
        return for_target(self.dest, target_name)


class Upload(StepKind):
    """The ``upload`` step kind."""

    name = "upload"
    capability = Capability.PUT_FILE
    operations = (MAKE_DIRS, PUT_FILE)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> UploadStep:
        """``{src, dest, mode?, timeout?}``."""
        body = reader.fields(body, where, parent, {"src", "dest"}, {"mode", "timeout"})
        return UploadStep(
            src=reader.local_file(body, "src", where),
            dest=reader.string(body, "dest", where),
            mode=reader.mode(body.get("mode"), f"{where}.mode", body),
            timeout=reader.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout"),
        )

    async def execute(self, step: UploadStep, ctx: StepContext) -> None:
        """Upload over the selected channel (retried on a lost connection)."""
        await ctx.over_channel(Capability.PUT_FILE, lambda session: _upload(session, step, ctx), idempotent=True)


async def _upload(session: Any, step: UploadStep, ctx: StepContext) -> None:
    stale: list[str] = ctx.notes.setdefault(STALE_PARTIALS, [])
    while stale:  # what an attempt cut short by a lost connection left in the guest
        with contextlib.suppress(BeachheadError):
            await session.remove(stale.pop())
    dest = step.remote_path(ctx.target.name)
    pure = PurePosixPath(dest) if ctx.os is OsFamily.LINUX else PureWindowsPath(dest)
    parent = str(pure.parent)
    if parent not in (".", "/", "~") and not (await session.stat(parent)).exists:
        seq = ctx.reserve()
        with ctx.journaled(seq, "make_dirs", channel=session.channel, path=parent) as after:
            after["created"] = await session.make_dirs(parent)
    before = await session.stat(dest)
    if before.exists and not before.is_file:
        raise StepFailed(step.describe(), f"{dest} exists and is not a regular file")
    seq = ctx.reserve()
    replaces: dict[str, Any] = {"exists": before.exists}
    if before.exists:
        saved = await session.get_file(dest, ctx.run_dir.backup_path(seq))
        replaces.update(size=saved.size, mode=before.mode, sha256=saved.sha256, backup=f"backups/{seq}")
    intended, _ = await file_sha256(step.src)
    partial = partial_path(dest, f"{ctx.run_dir.run_id}-{seq}")
    with ctx.journaled(
        seq,
        "put_file",
        channel=session.channel,
        path=dest,
        partial=partial,
        src=str(step.src),
        intended_sha256=intended,
        replaces=replaces,
    ) as after:
        try:
            # The mode the replaced file had, when the step sets none: known from the stat
            # above, so the session need not ask the guest again.
            mode = step.mode if step.mode is not None or not before.exists else before.mode
            written = await session.put_file(step.src, dest, mode, partial)
        except ChannelError:
            stale.append(partial)
            raise
        after.update(size=written.size, sha256=written.sha256, mode=written.mode)


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``upload`` step kind."""
    register(Upload())
