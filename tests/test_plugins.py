"""Channel plugins: third-party channels register through the same entry-point group as
the built-in ones; selection prefers, pins and falls back as declared."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from beachhead import run_plan
from beachhead.agent.engine import RunSettings
from beachhead.agent.registry import ChannelRegistry, plugin_manager
from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import write_plan

PLUGIN = '''
"""A third-party channel that declares itself preferred but never connects."""
from beachhead.agent.channel import ChannelInfo, Direction, Medium, Prerequisite
from beachhead.agent.errors import ChannelUnavailable
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import Capability
from beachhead.agent.targets import OsFamily

INFO = ChannelInfo(
    name="carrier-pigeon",
    summary="test channel",
    direction=Direction.PUSH,
    medium=Medium.GUEST_NETWORK,
    os_families=frozenset({OsFamily.LINUX}),
    prerequisites=(Prerequisite.GUEST_NETWORK,),
    capabilities=frozenset({Capability.RUN}),
    preference=500,
    target_schemes=frozenset({"ssh"}),
)

@hookimpl
def beachhead_channels():
    return [INFO]

@hookimpl
def beachhead_unmet_prerequisites(channel, target):
    return [] if channel == INFO.name else None

async def _fail(target):
    raise ChannelUnavailable(INFO.name, target.name, "the pigeon got lost")

@hookimpl
def beachhead_connect(channel, target, connect_timeout):
    return _fail(target) if channel == INFO.name else None
'''


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[ChannelRegistry]:
    """Install a distribution with a ``beachhead.channels`` entry point on sys.path."""
    site = tmp_path / "site"
    (site / "pigeon_channel-1.0.dist-info").mkdir(parents=True)
    (site / "pigeon_channel.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "pigeon_channel-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pigeon-channel\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[beachhead.channels]\npigeon = pigeon_channel\n")
    sys.path.insert(0, str(site))
    try:
        yield ChannelRegistry(plugin_manager())
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("pigeon_channel", None)


def test_third_party_channel_registers_like_builtin(third_party: ChannelRegistry) -> None:
    assert {"ssh", "carrier-pigeon"} <= set(third_party.channels)
    assert [info.name for info in third_party.ordered()][:2] == ["carrier-pigeon", "ssh"]
    names = {name for name, _ in third_party.manager.list_name_plugin()}
    assert {"ssh", "pigeon"} <= names  # both came through the entry-point group


async def test_fallback_to_next_channel_is_logged(
    third_party: ChannelRegistry, sshd: LocalSshd, guest_dir: Path, tmp_path: Path, runs_dir: Path
) -> None:
    plan = write_plan(
        tmp_path, f"name: p\nsteps:\n  - run: echo via ssh\n  - upload: {{src: plan.yaml, dest: {guest_dir}/x}}\n"
    )
    with structlog.testing.capture_logs() as logs:
        report = await run_plan(
            plan, [sshd.uri()], registry=third_party, runs_dir=runs_dir, settings=RunSettings(retries=0)
        )
    result = report.results[0]
    assert result.ok, result.error
    assert result.steps[0].channel == "ssh" and result.steps[0].stdout == "via ssh\n"
    fallbacks = [e for e in logs if e["event"] == "channel.fallback"]
    assert len(fallbacks) == 1  # tried once per target, then remembered
    assert fallbacks[0]["channel"] == "carrier-pigeon" and "pigeon got lost" in fallbacks[0]["reason"]


async def test_pinned_channel_is_the_only_one_tried(
    third_party: ChannelRegistry, sshd: LocalSshd, tmp_path: Path, runs_dir: Path
) -> None:
    only_pigeon = write_plan(tmp_path, "name: p\nchannels: [carrier-pigeon]\nsteps: [{run: 'true'}]\n")
    report = await run_plan(
        only_pigeon, [sshd.uri()], registry=third_party, runs_dir=runs_dir, settings=RunSettings(retries=0)
    )
    assert not report.ok and "pigeon got lost" in (report.results[0].error or "")
    only_ssh = write_plan(tmp_path, "name: p\nchannels: [ssh]\nsteps: [{run: 'true'}]\n", "ssh.yaml")
    with structlog.testing.capture_logs() as logs:
        report = await run_plan(only_ssh, [sshd.uri()], registry=third_party, runs_dir=runs_dir)
    assert report.ok and not [e for e in logs if e["event"] == "channel.fallback"]


def test_duplicate_channel_names_are_refused(third_party: ChannelRegistry) -> None:
    from beachhead.agent.registry import PluginError

    manager = plugin_manager()
    import pigeon_channel  # type: ignore[import-not-found]

    class Twin:
        beachhead_channels = staticmethod(pigeon_channel.beachhead_channels)

    manager.register(Twin(), name="twin")
    with pytest.raises(PluginError, match="carrier-pigeon"):
        ChannelRegistry(manager)
