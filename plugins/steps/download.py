"""The ``download`` step: copy a guest file to a local path.

``- download: {src: /var/log/app.log, dest: "logs/{target}.log", timeout: 60}``; a
relative ``dest`` is relative to the plan, ``{target}`` is the target's name (required
when the plan runs on several targets). Missing local directories are created
(``make_dirs``), a local file it replaces is saved to the run's backups, and the copy is
journaled as ``get_file`` and verified against the guest's sha256.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from beachhead.agent.channel import Capability
from beachhead.agent.context import StepContext
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import PlanReader, for_target
from beachhead.agent.stepkinds import CheckContext, StepKind
from beachhead.agent.targets import Target
from beachhead.plugins.steps.file_ops import GET_FILE, MAKE_DIRS


@dataclass(frozen=True)
class DownloadStep:
    """Copy guest file ``src`` to local ``dest``."""

    src: str
    dest: str
    timeout: float | None = None
    kind: ClassVar[str] = "download"

    def describe(self) -> str:
        """Human description of the step."""
        return f"download {self.src} -> {self.dest}"

    def local_path(self, target_name: str) -> Path:
        """The local destination for one target."""
        return Path(for_target(self.dest, target_name)).expanduser()


class Download(StepKind):
    """The ``download`` step kind."""

    name = "download"
    capability = Capability.GET_FILE
    operations = (MAKE_DIRS, GET_FILE)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> DownloadStep:
        """``{src, dest, timeout?}``."""
        body = reader.fields(body, where, parent, {"src", "dest"}, {"timeout"})
        dest = reader.string(body, "dest", where)
        if not Path(dest).is_absolute() and not dest.startswith("~"):
            dest = str(reader.base / dest)
        timeout = reader.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return DownloadStep(src=reader.string(body, "src", where), dest=dest, timeout=timeout)

    def check(self, step: DownloadStep, target: Target, context: CheckContext) -> str | None:
        """With several targets, every download needs its own local file."""
        if len(context.targets) > 1 and "{target}" not in step.dest:
            return "with several targets every download would write the same file; put {target} in dest"
        return None

    async def execute(self, step: DownloadStep, ctx: StepContext) -> None:
        """Download over the selected channel (retried on a lost connection)."""
        await ctx.over_channel(Capability.GET_FILE, lambda session: _download(session, step, ctx), idempotent=True)


async def _download(session: Any, step: DownloadStep, ctx: StepContext) -> None:
    local = step.local_path(ctx.target.name)
    missing = [parent for parent in reversed(local.parents) if not parent.exists()]
    if missing:
        seq = ctx.reserve()
        with ctx.journaled(seq, "make_dirs", channel=session.channel, path=str(local.parent), where="local") as after:
            for directory in missing:
                directory.mkdir(exist_ok=True)
            after["created"] = [str(directory) for directory in missing]
    seq = ctx.reserve()
    replaces: dict[str, Any] = {"exists": local.exists()}
    if local.is_file():
        await asyncio.to_thread(shutil.copy2, local, ctx.run_dir.backup_path(seq))
        replaces.update(backup=f"backups/{seq}")
    with ctx.journaled(
        seq, "get_file", channel=session.channel, path=str(local), src=step.src, where="local", replaces=replaces
    ) as after:
        saved = await session.get_file(step.src, local)
        after.update(size=saved.size, sha256=saved.sha256)


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``download`` step kind."""
    register(Download())
