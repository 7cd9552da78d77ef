"""Plugins: a third party's channel and step kind, from a distribution installed apart
from Beachhead, register through the same entry points as the built-ins; selection
prefers, pins and falls back with reasons; undo reverts the new step kind's writes."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from beachhead import run_plan
from beachhead.agent.registry import PluginError, Plugins, plugin_manager
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import OsFamily
from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import beachhead, write_plan

PLUGIN = '''
"""A third-party plugin: a preferred channel that never connects, and a `stamp` step
kind that writes a file through whichever channel can put files, and undoes it."""
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from beachhead.agent.channel import Capability, ChannelInfo, Direction, Medium, Prerequisite
from beachhead.agent.errors import ChannelUnavailable
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.stepkinds import Operation, StepKind
from beachhead.agent.targets import OsFamily

INFO = ChannelInfo(
    name="carrier-pigeon",
    summary="test channel",
    direction=Direction.PUSH,
    medium=Medium.GUEST_NETWORK,
    prerequisites=(Prerequisite.GUEST_NETWORK,),
    capabilities=frozenset({Capability.RUN}),
    preference={OsFamily.LINUX: 500},
    target_schemes=frozenset({"ssh"}),
)


class Pigeon:
    info = INFO

    def unmet(self, target):
        return []

    async def connect(self, target):
        raise ChannelUnavailable(INFO.name, target.target.name, "the pigeon got lost")


@dataclass(frozen=True)
class StampStep:
    path: str
    text: str
    timeout: ClassVar[None] = None
    kind: ClassVar[str] = "stamp"

    def describe(self):
        return f"stamp {self.path}"


async def remove_stamp(entry, undo):
    session = await undo.session(entry.intent)
    await session.remove(entry.intent["path"])
    return f"removed stamp {entry.intent['path']}"


STAMP = Operation("stamp", describe=lambda entry: f"stamp {entry.intent['path']}", revert=remove_stamp)


class Stamp(StepKind):
    name = "stamp"
    capability = Capability.PUT_FILE
    operations = (STAMP,)

    def parse(self, body, reader, where, parent):
        body = reader.fields(body, where, parent, {"path", "text"}, set())
        return StampStep(reader.string(body, "path", where), reader.string(body, "text", where))

    async def execute(self, step, ctx):
        session = await ctx.session(Capability.PUT_FILE)
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / "stamp"
            local.write_text(step.text)
            seq = ctx.reserve()
            with ctx.journaled(seq, "stamp", channel=session.channel, path=step.path) as after:
                after["sha256"] = (await session.put_file(local, step.path, 0o644)).sha256


@hookimpl
def beachhead_register_channels(register):
    register(Pigeon())


@hookimpl
def beachhead_register_steps(register):
    register(Stamp())
'''


@pytest.fixture
def pigeon_site(tmp_path: Path) -> Iterator[Path]:
    """A distribution installed in its own site directory (module, dist-info with an
    entry point in the ``beachhead.plugins`` group), on sys.path while the test runs."""
    site = tmp_path / "site"
    info = site / "pigeon_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "pigeon_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pigeon-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[beachhead.plugins]\npigeon = pigeon_plugin\n")
    sys.path.insert(0, str(site))
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("pigeon_plugin", None)


@pytest.fixture
def third_party(pigeon_site: Path) -> Plugins:
    """The plugins as a process that has the distribution installed loads them."""
    return Plugins(plugin_manager())


def test_third_party_plugin_registers_like_builtin(third_party: Plugins) -> None:
    assert {"ssh", "guestops", "pull", "carrier-pigeon"} <= set(third_party.channels)
    assert {"run", "upload", "wait", "stamp"} <= set(third_party.steps)
    assert third_party.operations["stamp"].undoable
    assert [channel.info.name for channel in third_party.ordered(OsFamily.LINUX)][:2] == ["carrier-pigeon", "ssh"]
    names = {name for name, _ in third_party.manager.list_name_plugin()}
    assert {"ssh", "run", "pigeon"} <= names  # all came through the entry-point group


async def test_fallback_is_recorded_with_its_reason(
    third_party: Plugins, sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    plan = write_plan(
        tmp_path,
        f"name: p\nsteps:\n  - run: echo via ssh\n  - upload: {{src: plan.yaml, dest: {guest_dir}/x}}\n"
        "  - run: echo again\n",
    )
    with structlog.testing.capture_logs() as logs:
        report = await run_plan(
            plan, [sshd.uri()], plugins=third_party, runs_dir=runs_dir, settings=RunSettings(retries=0)
        )
    result = report.results[0]
    assert result.ok, result.error
    run, upload, again = result.steps
    assert run.channel == "ssh" and run.stdout == "via ssh\n"
    assert run.channels_tried == [
        {"channel": "carrier-pigeon", "result": "failed", "reason": "the pigeon got lost"},
        {"channel": "ssh", "result": "used"},
    ]
    assert upload.channels_tried == [{"channel": "ssh", "result": "used"}]  # the pigeon cannot put files
    # A failure that cost nothing is probed again by the next step that could use it.
    assert [tried["channel"] for tried in again.channels_tried] == ["carrier-pigeon", "ssh"]
    fallbacks = [e for e in logs if e["event"] == "channel.fallback"]
    assert [e["step"] for e in fallbacks] == [1, 3]
    assert fallbacks[0]["channel"] == "ssh" and "pigeon got lost" in fallbacks[0]["passed_over"][0]["reason"]
    assert [e["step"] for e in logs if e["event"] == "channel.selected"] == [2]


async def test_pinned_channel_is_the_only_one_tried(
    third_party: Plugins, sshd: LocalSshd, tmp_path: Path, runs_dir: Path
) -> None:
    only_pigeon = write_plan(tmp_path, "name: p\nchannels: [carrier-pigeon]\nsteps: [{run: 'true'}]\n")
    report = await run_plan(
        only_pigeon, [sshd.uri()], plugins=third_party, runs_dir=runs_dir, settings=RunSettings(retries=0)
    )
    assert not report.ok and "pigeon got lost" in (report.results[0].error or "")
    only_ssh = write_plan(tmp_path, "name: p\nchannels: [ssh]\nsteps: [{run: 'true'}]\n", "ssh.yaml")
    with structlog.testing.capture_logs() as logs:
        report = await run_plan(only_ssh, [sshd.uri()], plugins=third_party, runs_dir=runs_dir)
    assert report.ok and not [e for e in logs if e["event"] == "channel.fallback"]
    assert report.results[0].steps[0].channels_tried == [{"channel": "ssh", "result": "used"}]


def test_names_registered_twice_are_refused(pigeon_site: Path) -> None:
    import pigeon_plugin  # type: ignore[import-not-found]

    class TwinChannel:
        beachhead_register_channels = staticmethod(pigeon_plugin.beachhead_register_channels)

    class TwinStep:
        beachhead_register_steps = staticmethod(pigeon_plugin.beachhead_register_steps)

    for twin, name in ((TwinChannel(), "carrier-pigeon"), (TwinStep(), "stamp")):
        manager = plugin_manager()
        manager.register(twin, name="twin")
        with pytest.raises(PluginError, match=name):
            Plugins(manager)


def test_cli_runs_and_undoes_a_third_party_step(
    pigeon_site: Path, sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    stamp = guest_dir / "stamped.txt"
    plan = write_plan(tmp_path, f"name: stamps\nsteps:\n  - stamp: {{path: {stamp}, text: hello}}\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(pigeon_site), os.environ.get("PYTHONPATH")]))}
    ran = beachhead("run", str(plan), "--target", sshd.uri(), "--json", "--retries", "0", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["steps"][0]["channel"] == "ssh" and stamp.read_text() == "hello"
    journal = beachhead("journal", result["run_id"], env={**env, "COLUMNS": "400"})
    assert f"stamp {stamp}" in journal.stdout  # described by the step kind's own operation
    undone = beachhead("undo", result["run_id"], "--json", env=env)
    assert undone.returncode == 0, undone.stderr
    assert json.loads(undone.stdout)["undone"] == [f"#1 {result['target']}: stamp {stamp}: removed stamp {stamp}"]
    assert not stamp.exists()
    # Without the plugin installed, the plan is bad input and undo says what it lacks.
    refused = beachhead("run", str(plan), "--target", sshd.uri())
    assert refused.returncode == 2 and "unknown step 'stamp'" in refused.stderr
