"""The ``pull`` channel, the ``userdata`` step and the guest-report wait conditions.

The pull channel publishes cloud-init data for the guest to fetch at boot: to the
metadata server (``--metadata-server``, recognised by the guest's address or MAC), or
into the VM's guestinfo extraConfig for cloud-init's VMware datasource. A ``userdata``
step always goes through it:

``- userdata: {user_data: FILE, meta_data: FILE, vendor_data: FILE, network_config: FILE,``
``via: metadata|guestinfo, instance_id: ID, client_certs: [FILE, ...]}``

``client_certs`` (``via: metadata`` only) are PEM X.509 certificates the server serves as
``x509`` keys, which cloudbase-init maps for WinRM client-certificate authentication.

Publishing to the server is journaled as ``publish_userdata`` (what it replaced is kept
in the run's backups) and read back by sha256; undo republishes what was there or
revokes the instance. ``guestinfo`` is journaled as ``extra_config``. The conditions
``userdata_fetched`` and ``phoned_home`` resolve from the server's long-poll.

The server's admin token and the gzip+base64 values written to guestinfo (which decode
to the user-data, and so to any password in it) are secrets of the run: masked
wherever they would be logged, the wire log included.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from beachhead.agent.channel import (
    Capability,
    ChannelInfo,
    Direction,
    Medium,
    Prerequisite,
    Unmet,
)
from beachhead.agent.checksums import value_digest_of_base64
from beachhead.agent.context import StepContext, TargetContext
from beachhead.agent.errors import StepFailed, brief
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.journal import JournalEntry
from beachhead.agent.plans import PlanReader
from beachhead.agent.secrets import REDACTOR
from beachhead.agent.settings import RunSettings
from beachhead.agent.stepkinds import CheckContext, ConditionKind, Operation, StepKind
from beachhead.agent.targets import OsFamily, Target
from beachhead.agent.undo import UndoContext
from beachhead.plugins.cloud_data import default_instance_id, guestinfo_values, read_cloud_data
from beachhead.plugins.steps.extra_config import apply_extra_config
from beachhead.plugins.steps.vm_states import needs_vm
from beachhead.plugins.steps.wait import named_timeout

if TYPE_CHECKING:
    from beachhead.metadata_server.client import MetadataClient

NAME = "pull"
INSTANCE_NOTE = "pull.instance_id"  # the instance id a userdata step published, for later waits
NEEDS_SERVER = (
    "needs the metadata server: give --metadata-server URL and --metadata-token-file FILE "
    "(or BEACHHEAD_METADATA_SERVER and BEACHHEAD_METADATA_TOKEN_FILE)"
)

INFO = ChannelInfo(
    name=NAME,
    summary="cloud-init / cloudbase-init data the guest fetches at boot: metadata server or guestinfo",
    direction=Direction.PULL,
    medium=Medium.GUEST_NETWORK,
    prerequisites=(Prerequisite.GUEST_NETWORK,),
    capabilities=frozenset({Capability.PUBLISH_USERDATA}),
    preference={OsFamily.LINUX: 5, OsFamily.WINDOWS: 5},
    target_schemes=frozenset({"ssh", "vsphere"}),
)


class Via(StrEnum):
    """Where a ``userdata`` step publishes."""

    METADATA = "metadata"  # the metadata server (--metadata-server)
    GUESTINFO = "guestinfo"  # the VM's guestinfo extraConfig, for cloud-init's VMware datasource


@dataclass(frozen=True)
class UserDataStep:
    """Publish cloud-init data for the target's guest to pull at boot."""

    user_data: Path
    via: Via = Via.METADATA
    meta_data: Path | None = None
    vendor_data: Path | None = None
    network_config: Path | None = None
    instance_id: str | None = None
    client_certs: tuple[Path, ...] = ()
    timeout: ClassVar[None] = None
    kind: ClassVar[str] = "userdata"

    def describe(self) -> str:
        """Human description of the step."""
        return f"userdata {self.user_data.name} via {self.via}"


def metadata_client(settings: RunSettings) -> MetadataClient:
    """The admin client of the run's metadata server."""
    from beachhead.metadata_server.client import MetadataClient, read_token_file

    assert settings.metadata_server and settings.metadata_token_file
    token = read_token_file(settings.metadata_token_file)
    REDACTOR.register(token)
    return MetadataClient(settings.metadata_server, token)


def instance_id(ctx: StepContext) -> str:
    """The instance id the target's guest is published as: the one a ``userdata`` step
    named, else the target's name made into one."""
    return str(ctx.notes.get(INSTANCE_NOTE) or default_instance_id(ctx.target.name))


# -- the channel --------------------------------------------------------------------------------
class PullSession:
    """Publishes one target's cloud-init data (implements the ``publish_userdata``
    capability)."""

    channel = NAME

    def __init__(self, target: TargetContext) -> None:
        self.target = target

    async def guest_address(self) -> tuple[str | None, str | None]:
        """The address and MAC the metadata server will see the guest at, as far as
        they are known now: a VM's reported address and first NIC; an ssh target's host."""
        if self.target.is_vm:
            from beachhead.agent.vsphere.vmconfig import vm_address

            vcenter, vm = await self.target.vm()
            ip, mac = await vcenter.call(vm_address, vm)
            return self.target.target.address or ip, mac
        host = self.target.guest_address() or self.target.target.host
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return (str(infos[0][4][0]) if infos else None), None

    async def publish(self, step: UserDataStep, ctx: StepContext) -> None:
        """Publish the step's data where it says, journaled and read back."""
        from beachhead.metadata_server.records import default_hostname

        data = read_cloud_data(
            step.user_data,
            step.meta_data,
            step.vendor_data,
            step.network_config,
            source=str(ctx.plan.source),
            where=step.describe(),
        )
        instance = step.instance_id or default_instance_id(ctx.target.name)
        ctx.notes[INSTANCE_NOTE] = instance
        if step.via is Via.GUESTINFO:
            values = guestinfo_values(data, instance, default_hostname(instance))
            for key, value in values.items():
                if value is not None and not key.endswith(".encoding"):
                    REDACTOR.register(value)
            await apply_extra_config(ctx, values, step.describe())
            return
        client = metadata_client(ctx.settings)
        ip, mac = await self.guest_address()
        previous = await client.data(instance)
        seq = ctx.reserve()
        replaces: dict[str, Any] = {"exists": previous is not None}
        if previous is not None:
            replaces["backup"] = ctx.run_dir.save_json_backup(seq, previous)
        with ctx.journaled(
            seq,
            "publish_userdata",
            channel=NAME,
            server=client.url,
            token_file=str(ctx.settings.metadata_token_file),
            instance_id=instance,
            ip=ip,
            mac=mac,
            intended_sha256=data.user_data_sha256,
            client_certs=len(step.client_certs),
            replaces=replaces,
        ) as after:
            await client.publish(
                instance,
                ip=ip,
                mac=mac,
                user_data=data.user_data,
                meta_data=data.meta_data_yaml(),
                vendor_data=data.vendor_data,
                network_config=data.network_config,
                client_certs=[path.read_text(encoding="ascii") for path in step.client_certs],
            )
            published = await client.data(instance)
            found = value_digest_of_base64((published or {}).get("user_data"))
            if found != data.user_data_sha256:
                raise StepFailed(
                    step.describe(), f"user-data sha256: published {data.user_data_sha256}, server has {found}"
                )
            after["sha256"] = data.user_data_sha256

    async def close(self) -> None:
        """Nothing to release: every request opens its own HTTP session."""


class PullChannel:
    """The pull channel (see the module's description)."""

    info = INFO

    def unmet(self, target: TargetContext) -> list[Unmet]:
        """Nothing to connect to: what a step needs (the server, a VM) is checked
        before the run."""
        return []

    async def connect(self, target: TargetContext) -> PullSession:
        """A publisher for the target."""
        return PullSession(target)


# -- the userdata step ----------------------------------------------------------------------------
async def _unpublish(entry: JournalEntry, undo: UndoContext) -> str:
    from beachhead.metadata_server.client import MetadataClient, read_token_file

    intent = entry.intent
    token_file = os.environ.get("BEACHHEAD_METADATA_TOKEN_FILE") or intent["token_file"]
    token = read_token_file(Path(token_file))
    REDACTOR.register(token)
    client = MetadataClient(intent["server"], token)
    instance = intent["instance_id"]
    written = entry.outcome.get("sha256") if entry.outcome and entry.state == "done" else None
    backup = intent["replaces"].get("backup")
    previous = undo.run_dir.load_json_backup(backup) if backup else None
    current = await client.data(instance)
    current_sha = value_digest_of_base64(current["user_data"]) if current else None
    original = value_digest_of_base64(previous["user_data"]) if previous else None
    undo.check_unchanged(f"the user-data of instance {instance}", current_sha, written, original)
    if previous is not None:
        if current_sha == original:
            return "already as before the run"
        await client.republish(instance, previous)
        return f"republished what instance {instance} had before"
    if current is None:
        return "already revoked"
    await client.revoke(instance)
    return f"revoked instance {instance}"


async def _recheck_published(entry: JournalEntry, undo: UndoContext) -> bool | None:
    from beachhead.metadata_server.client import MetadataClient, read_token_file

    intent = entry.intent
    if intent.get("intended_sha256") is None:
        return None
    token_file = os.environ.get("BEACHHEAD_METADATA_TOKEN_FILE") or intent["token_file"]
    current = await MetadataClient(intent["server"], read_token_file(Path(token_file))).data(intent["instance_id"])
    return bool(value_digest_of_base64(current["user_data"] if current else None) == intent["intended_sha256"])


PUBLISH_USERDATA = Operation(
    "publish_userdata",
    describe=lambda entry: f"user-data of instance {entry.intent.get('instance_id')} on {entry.intent.get('server')}",
    revert=_unpublish,
    recheck=_recheck_published,
)


def _client_certs(body: Any, reader: PlanReader, where: str) -> tuple[Path, ...]:
    """``client_certs``: a non-empty list of files relative to the plan, each holding
    exactly one PEM X.509 certificate."""
    from cryptography import x509

    field = f"{where}.client_certs"
    names = body["client_certs"]
    if not isinstance(names, list) or not names:
        raise reader.error(field, "must be a non-empty list of PEM certificate files", body, "client_certs")
    paths = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name or "\x00" in name:
            raise reader.error(f"{field}[{index}]", "must be a file name", body, "client_certs")
        path = (reader.base / name).resolve()
        if not path.is_file():
            raise reader.error(f"{field}[{index}]", f"file not found: {path}", body, "client_certs")
        text = path.read_bytes()
        try:
            if text.count(b"-----BEGIN CERTIFICATE-----") != 1:
                raise ValueError
            x509.load_pem_x509_certificate(text)
        except ValueError:
            reason = f"{path} must hold exactly one PEM X.509 certificate"
            raise reader.error(f"{field}[{index}]", reason, body, "client_certs") from None
        paths.append(path)
    return tuple(dict.fromkeys(paths))


class UserData(StepKind):
    """The ``userdata`` step kind."""

    name = "userdata"
    capability = Capability.PUBLISH_USERDATA
    operations = (PUBLISH_USERDATA,)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> UserDataStep:
        """``{user_data, meta_data?, vendor_data?, network_config?, via?, instance_id?,
        client_certs?}``."""
        body = reader.fields(
            body,
            where,
            parent,
            {"user_data"},
            {"meta_data", "vendor_data", "network_config", "via", "instance_id", "client_certs"},
        )
        files = {
            key: reader.local_file(body, key, where)
            for key in ("meta_data", "vendor_data", "network_config")
            if key in body
        }
        via = body.get("via", "metadata")
        if via not in Via.__members__.values():
            raise reader.error(f"{where}.via", f"must be metadata or guestinfo, got {brief(via)}", body, "via")
        certs = _client_certs(body, reader, where) if "client_certs" in body else ()
        if certs and via != Via.METADATA:
            raise reader.error(f"{where}.client_certs", "only with via: metadata", body, "client_certs")
        return UserDataStep(
            user_data=reader.local_file(body, "user_data", where),
            via=Via(via),
            instance_id=reader.string(body, "instance_id", where) if "instance_id" in body else None,
            client_certs=certs,
            **files,
        )

    def check(self, step: UserDataStep, target: Target, context: CheckContext) -> str | None:
        """``via: guestinfo`` needs a VM; ``via: metadata`` the server's URL and token."""
        if step.via is Via.GUESTINFO:
            return needs_vm("userdata via guestinfo acts on a vSphere VM", target)
        if not (context.settings.metadata_server and context.settings.metadata_token_file):
            return NEEDS_SERVER
        return None

    async def execute(self, step: UserDataStep, ctx: StepContext) -> None:
        """Publish through the pull channel."""
        session: PullSession = await ctx.session(Capability.PUBLISH_USERDATA)
        await session.publish(step, ctx)


# -- what the guest reports --------------------------------------------------------------------------
class GuestReport(StrEnum):
    """What a guest reports to the metadata server, which a plan can wait for."""

    USERDATA_FETCHED = "userdata_fetched"
    PHONED_HOME = "phoned_home"


@dataclass(frozen=True)
class ReportCondition:
    """Wait until the target's guest has fetched its user-data from, or phoned home
    to, the metadata server."""

    report: GuestReport
    timeout: float | None = None

    def describe(self) -> str:
        """Human description of the condition."""
        return "user-data fetched" if self.report is GuestReport.USERDATA_FETCHED else "phoned home"


class GuestReportCondition(ConditionKind):
    """``userdata_fetched`` and ``phoned_home``."""

    names = tuple(report.value for report in GuestReport)

    def parse(self, name: str, body: Any, reader: PlanReader, where: str) -> ReportCondition:
        """A bare name, or ``{name: {timeout: S}}``."""
        return ReportCondition(GuestReport(name), named_timeout(name, body, reader, where))

    def check(self, condition: ReportCondition, target: Target, context: CheckContext) -> str | None:
        """The server's URL and admin token must be given."""
        if context.settings.metadata_server and context.settings.metadata_token_file:
            return None
        return NEEDS_SERVER

    async def wait(self, condition: ReportCondition, ctx: StepContext) -> None:
        """Long-poll the server until the guest reports (within the step's timeout)."""
        from beachhead.metadata_server.events import GuestEvent

        event = GuestEvent.FETCHED if condition.report is GuestReport.USERDATA_FETCHED else GuestEvent.PHONED_HOME
        instance = instance_id(ctx)
        at = await metadata_client(ctx.settings).wait(instance, event, ctx.timeout)
        if at is None:
            raise StepFailed(f"wait for {condition.describe()}", f"not reported within {ctx.timeout:g}s")
        ctx.log.info("metadata.condition_met", condition=str(condition.report), instance=instance, at=at)


@hookimpl
def beachhead_register_channels(register: Any) -> None:
    """Register the pull channel."""
    register(PullChannel())


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``userdata`` step and the guest-report conditions."""
    register(UserData())
    register(GuestReportCondition())
