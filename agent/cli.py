"""The ``beachhead`` command line.

Exit status: 0 when everything succeeded, 1 when a step or target failed (its output is
printed), 2 for bad input (the file, field and reason are printed; nothing ran),
130 when interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from beachhead import __version__
from beachhead.agent.api import RunReport, resume_run, run_plan
from beachhead.agent.errors import BeachheadError, InputError
from beachhead.agent.exits import errors_exit, run_async
from beachhead.agent.explain import CAPABILITY_ORDER, Explanation, explain_channels
from beachhead.agent.hook_cli import customize_command
from beachhead.agent.journal import RunDirectory, default_runs_dir
from beachhead.agent.logs import configure_logging
from beachhead.agent.plans import load_plan
from beachhead.agent.progress import RichProgress
from beachhead.agent.registry import default_plugins
from beachhead.agent.results import StepResult, TargetResult
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import OsFamily, Target, load_targets_file, parse_target
from beachhead.agent.undo import Undoer, describe_entry

if TYPE_CHECKING:
    from beachhead.agent.vsphere.vmlogs import LogFile

MAX_FAILURES_SHOWN = 10
MAX_STEP_TABLE_TARGETS = 12  # runs of at most this many targets list every step


class _Seconds(click.FloatRange):
    """A positive, finite number of seconds (click's range lets ``nan`` and ``inf`` through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, or a usage error (exit 2) naming the option."""
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return seconds


SECONDS = _Seconds(min=0, min_open=True)

connect_timeout_option = click.option(
    "--connect-timeout",
    type=SECONDS,
    default=RunSettings.connect_timeout,
    show_default=True,
    help="Seconds to wait for one connection attempt.",
)
runs_dir_option = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run directories live [default: $BEACHHEAD_RUNS_DIR or ~/.local/state/beachhead/runs].",
)


class PluginCommands(click.Group):
    """The ``beachhead`` group: the core commands, and those the plugins add
    (``beachhead_add_commands``), loaded only when a command is not a core one or the
    commands are listed, so ``beachhead --version`` and ``beachhead run`` load none."""

    _loaded = False

    def _load_plugins(self) -> None:
        if not self._loaded:
            self._loaded = True
            default_plugins().add_commands(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A core command, else one a plugin adds."""
        if cmd_name not in self.commands:
            self._load_plugins()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command, the plugins' included."""
        self._load_plugins()
        return super().list_commands(ctx)


@click.group(cls=PluginCommands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="beachhead")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log events at this level and above to stderr [default: info, or warning on a terminal].",
)
@click.option(
    "--log-json/--no-log-json",
    default=None,
    help="Force JSON log lines on or off [default: JSON unless stderr is a terminal].",
)
def main(log_level: str | None, log_json: bool | None) -> None:
    """Beachhead: get freshly provisioned VMs customized through SSH and, as they land,
    WinRM, VMware Tools, keystrokes and cloud-init pulls.

    \b
    Start with:
      beachhead channels                 what channels are installed
      beachhead channels --target URI    which channel would serve a guest now, and why
      beachhead run PLAN --target URI    run a plan on one or more guests
      beachhead journal RUN_ID           what a run wrote
      beachhead undo RUN_ID              revert it
    """
    level = log_level or ("warning" if sys.stderr.isatty() else "info")
    configure_logging(level, log_json)
    _raise_open_file_limit()


def _raise_open_file_limit() -> None:
    """Let the process hold as many connections as the system allows it: the usual soft
    limit (1,024 open files) is less than a fan-out to 1,000 guests needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


# -- run ------------------------------------------------------------------------------------
class _ResultPrinter:
    """Prints each target's JSON line as soon as it finishes (``--json``)."""

    def __init__(self, progress: RichProgress | None) -> None:
        self.inner = progress

    def target_started(self, target: Target, total_steps: int) -> None:
        if self.inner:
            self.inner.target_started(target, total_steps)

    def step_started(self, target: Target, result: StepResult) -> None:
        if self.inner:
            self.inner.step_started(target, result)

    def step_finished(self, target: Target, result: StepResult) -> None:
        if self.inner:
            self.inner.step_finished(target, result)

    def target_finished(self, result: TargetResult) -> None:
        if self.inner:
            self.inner.target_finished(result)
        click.echo(json.dumps(result.to_json()))


def _channels_used(result: TargetResult) -> str:
    """The channels the target's steps went over, in order of first use."""
    used = dict.fromkeys(step.channel for step in result.steps if step.channel)
    return ", ".join(name for name in used if name) or "-"


def _steps_done(result: TargetResult) -> str:
    """``done/total`` of the steps that apply to the target, and how many did not."""
    done = sum(step.status == "ok" for step in result.steps)
    not_for_os = sum(step.skip_reason is not None for step in result.steps)
    text = f"{done}/{len(result.steps) - not_for_os}"
    return f"{text} ({not_for_os} skipped: os)" if not_for_os else text


def _step_status(step: StepResult) -> Text:
    if step.status == "ok":
        again = f" (attempt {step.done_in_attempt})" if step.done_in_attempt is not None else ""
        return Text.assemble(("ok", "green"), again)
    if step.status == "failed":
        return Text.assemble(("failed", "red"), f": {step.error}")
    return Text(f"skipped: {step.skip_reason}" if step.skip_reason else "skipped")


def _steps_table(report: RunReport) -> Table:
    """One row per step and target: what it was, the channel it went over, how it went."""
    table = Table(title="steps", title_justify="left")
    for column in ("target", "#", "step", "channel", "status"):
        table.add_column(column)
    for result in report.results:
        for step in result.steps:
            number = str(step.number) if step.number is not None else "wait"
            table.add_row(
                result.target,
                number,
                Text(step.description),
                step.channel or "-",
                _step_status(step),
                end_section=step is result.steps[-1],
            )
    return table


def _summary(report: RunReport, steps: bool | None = None) -> None:
    console = Console()
    if steps is None:
        steps = len(report.results) <= MAX_STEP_TABLE_TARGETS
    if steps:
        console.print(_steps_table(report), highlight=False)
    table = Table(title=f"run {report.run_id}", title_justify="left")
    for column in ("target", "status", "channels", "steps", "seconds", "error"):
        table.add_column(column)
    for result in report.results:
        status = "[green]ok[/]" if result.ok else "[red]failed[/]"
        table.add_row(
            result.target,
            status,
            _channels_used(result),
            _steps_done(result),
            f"{result.duration_s:.1f}",
            result.error or "",
        )
    console.print(table)
    if not steps:
        console.print(f"(each step's channel and status: {report.run_dir / 'results.jsonl'}, or --json)")
    shown = 0
    for result in report.results:
        failed = result.failed_step
        if failed is None or not (failed.stdout or failed.stderr):
            continue
        if shown == MAX_FAILURES_SHOWN:
            console.print(f"(output of the other failed targets: {report.run_dir / 'results.jsonl'})")
            break
        shown += 1
        console.rule(f"{result.target}: {failed.description}")
        if failed.stdout:
            console.print("[bold]stdout[/]", failed.stdout.rstrip(), markup=True, highlight=False)
        if failed.stderr:
            console.print("[bold]stderr[/]", failed.stderr.rstrip(), markup=True, highlight=False)
    console.print(f"journal: beachhead journal {report.run_id}    undo: beachhead undo {report.run_id}")


@main.command()
@click.argument("plan", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--target",
    "-t",
    "target_uris",
    multiple=True,
    metavar="URI",
    help="A guest, e.g. ssh://root@10.0.0.5?key=~/.ssh/id_ed25519 (repeatable).",
)
@click.option(
    "--targets",
    "targets_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML list of target URIs or mappings with the same fields.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 10000),
    default=50,
    show_default=True,
    help="How many targets run at once.",
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON object per target on stdout.")
@click.option(
    "--steps/--no-steps",
    "steps_table",
    default=None,
    help=f"List every step of every target (channel, status, why skipped) before the summary "
    f"[default: for runs of at most {MAX_STEP_TABLE_TARGETS} targets].",
)
@click.option(
    "--step-timeout",
    type=SECONDS,
    default=RunSettings.step_timeout,
    show_default=True,
    help="Seconds a step may take when neither it nor the plan sets a timeout.",
)
@connect_timeout_option
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=RunSettings.retries,
    show_default=True,
    help="Extra connection attempts (exponential backoff) before a channel counts as unreachable.",
)
@click.option(
    "--wire-log",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Record every SOAP call to vCenter and every HTTP transfer in FILE (JSON lines, secrets redacted).",
)
@click.option(
    "--metadata-server",
    envvar="BEACHHEAD_METADATA_SERVER",
    metavar="URL",
    default=None,
    help="Metadata server for `userdata` steps (via: metadata) and phoned_home / userdata_fetched waits.",
)
@click.option(
    "--metadata-token-file",
    envvar="BEACHHEAD_METADATA_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File with the metadata server's admin token.",
)
@click.option(
    "--resume",
    "resume_id",
    metavar="RUN_ID",
    default=None,
    help="Continue a failed or interrupted run: finished targets are left alone, the others restart "
    "at the step that did not complete (same run id, next attempt). Takes the run's plan and targets.",
)
@runs_dir_option
def run(
    plan: Path | None,
    target_uris: tuple[str, ...],
    targets_file: Path | None,
    concurrency: int,
    json_output: bool,
    steps_table: bool | None,
    step_timeout: float,
    connect_timeout: float,
    retries: int,
    wire_log: Path | None,
    metadata_server: str | None,
    metadata_token_file: Path | None,
    resume_id: str | None,
    runs_dir: Path | None,
) -> None:
    """Run PLAN on every target (or continue a run with --resume RUN_ID).

    \b
    Target URIs:
      ssh://USER@HOST[:PORT]?key=PATH&known_hosts=PATH|ignore&password_env=VAR&name=LABEL
      winrm://USER@HOST[:PORT]?password_env=VAR&transport=ntlm|basic|certificate&scheme=http|https
               [&ca_file=PATH][&insecure=1][&cert_pem=PATH&cert_key_pem=PATH][&name=LABEL]
      vsphere://USER@VCENTER[:PORT]/VM?password_env=VAR&guest_user=NAME&guest_password_env=VAR
                 [&scheme=http|https][&insecure=1][&ca_file=PATH]   (VM: name or instance uuid)
                 [&ssh_user=NAME&ssh_key=PATH&ssh_password_env=VAR&ssh_port=N]
                 [&known_hosts=PATH|ignore|vsphere|serial][&address=IP]
                 [&winrm_user=NAME&winrm_password_env=VAR&winrm_transport=ntlm|basic|certificate]
                 [&winrm_scheme=http|https&winrm_port=N][&console=usb|vnc|rdp]
    A vsphere:// target is one VM with every route into it: each step goes over the most
    preferred channel for its OS that can serve now (Linux: ssh, then guest operations),
    at the address VMware Tools reports; ssh_* default to the guest login, and its host
    keys are pinned from the guest through vSphere (known_hosts=vsphere) when it has one.
    `beachhead channels --target URI` shows the choice.
    Passwords are never given on the command line: *password_env names the environment
    variable that holds one. Host keys are checked against ~/.ssh/known_hosts unless
    known_hosts names another file or says ignore; vCenter certificates against the
    system's CAs or ca_file, unless insecure=1.

    Exit status: 0 all targets ok, 1 some failed, 2 bad input (nothing ran).
    """
    with errors_exit():
        if resume_id is not None and (target_uris or targets_file):
            raise InputError("--resume", None, "a resumed run keeps its targets: give no --target or --targets")
        if resume_id is None and plan is None:
            raise InputError("PLAN", None, "missing: give the plan file (or --resume RUN_ID)")
        loaded = load_plan(plan) if plan is not None else None
        targets = [parse_target(uri) for uri in target_uris]
        if targets_file is not None:
            targets.extend(load_targets_file(targets_file))
        settings = RunSettings(
            concurrency=concurrency,
            step_timeout=step_timeout,
            connect_timeout=connect_timeout,
            retries=retries,
            wire_log=wire_log,
            metadata_server=metadata_server,
            metadata_token_file=metadata_token_file,
        )
        live = RichProgress(len(targets)) if sys.stderr.isatty() and resume_id is None else None
        progress = _ResultPrinter(live) if json_output else live
        run_ids: list[str] = []

        async def go() -> RunReport:
            if resume_id is not None:
                run_ids.append(resume_id)
                return await resume_run(resume_id, plan=loaded, settings=settings, runs_dir=runs_dir, progress=progress)
            assert loaded is not None
            with live or contextlib.nullcontext():
                return await run_plan(
                    loaded,
                    targets,
                    settings=settings,
                    runs_dir=runs_dir,
                    progress=progress,
                    on_run_dir=lambda d: run_ids.append(d.run_id),
                )

        try:
            report = run_async(go())
        except SystemExit:
            if run_ids:
                click.echo(f"run {run_ids[0]} interrupted: see beachhead journal {run_ids[0]}", err=True)
            raise
        if report.left_alone:
            click.echo(f"left alone (finished in an earlier attempt): {', '.join(report.left_alone)}", err=True)
        if not json_output:
            _summary(report, steps_table)
        if report.journal_error:
            click.echo(f"beachhead: failed: the run stopped: {report.journal_error}", err=True)
        sys.exit(0 if report.ok else 1)


# -- journal / undo / runs ----------------------------------------------------------------------
@main.command()
@click.argument("run_id")
@click.option("--json", "json_output", is_flag=True, help="Print the raw journal records, one JSON object per line.")
@runs_dir_option
def journal(run_id: str, json_output: bool, runs_dir: Path | None) -> None:
    """Show what run RUN_ID wrote, and how each write ended."""
    with errors_exit():
        run_dir = RunDirectory.open(default_runs_dir(runs_dir), run_id)
        if json_output:
            for record in run_dir.records():
                click.echo(json.dumps(record))
            return
        meta = run_dir.metadata()
        table = Table(
            title=f"run {run_id}: plan {meta.get('plan')} started {meta.get('started')}", title_justify="left"
        )
        for column in ("#", "target", "operation", "what", "state", "undo"):
            table.add_column(column)
        plugins = default_plugins()
        for entry in run_dir.entries():
            operation = plugins.operations.get(entry.op)
            undo = entry.undo["phase"] if entry.undo else ("-" if operation and not operation.undoable else "")
            table.add_row(
                str(entry.seq),
                entry.intent.get("target", ""),
                entry.op,
                describe_entry(entry, plugins),
                entry.state,
                undo,
            )
        Console().print(table)


@main.command()
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Revert files even when they changed again after the run.")
@click.option("--json", "json_output", is_flag=True, help="Print the report as one JSON object.")
@connect_timeout_option
@runs_dir_option
def undo(run_id: str, force: bool, json_output: bool, connect_timeout: float, runs_dir: Path | None) -> None:
    """Revert what run RUN_ID wrote: restore replaced files, delete created ones, put
    extraConfig values back, and list what cannot be undone (commands, power
    operations). Safe to run again."""
    with errors_exit():
        run_dir = RunDirectory.open(default_runs_dir(runs_dir), run_id)
        undoer = Undoer(run_dir, default_plugins(), connect_timeout=connect_timeout, force=force)
        report = run_async(undoer.undo())
        if json_output:
            click.echo(json.dumps(report.to_json()))
        else:
            for line in report.undone:
                click.echo(f"undone      {line}")
            for line in report.not_undoable:
                click.echo(f"cannot undo {line}")
            for line in report.failed:
                click.echo(f"FAILED      {line}")
            if report.already_undone:
                click.echo(f"{report.already_undone} entries were already undone")
            if not (report.undone or report.not_undoable or report.failed):
                click.echo("nothing to undo")
        sys.exit(0 if report.ok else 1)


@main.command()
@runs_dir_option
def runs(runs_dir: Path | None) -> None:
    """List past runs, newest first."""
    root = default_runs_dir(runs_dir)
    table = Table(title=str(root), title_justify="left")
    for column in ("run id", "plan", "targets"):
        table.add_column(column)
    if root.is_dir():
        for path in sorted(root.iterdir(), reverse=True):
            with contextlib.suppress(BeachheadError):
                meta = RunDirectory.open(root, path.name).metadata()
                table.add_row(path.name, str(meta.get("plan")), str(len(meta.get("targets", []))))
    Console().print(table)


# -- channels -----------------------------------------------------------------------------------
@main.command()
@click.option("--json", "json_output", is_flag=True, help="Print as JSON.")
@click.option(
    "--target",
    "target_uri",
    metavar="URI",
    default=None,
    help="Explain, per capability, which channel would serve this guest now and why each other would not.",
)
@click.option(
    "--os",
    "os_family",
    type=click.Choice([family.value for family in OsFamily]),
    default=None,
    help="The guest's OS family, when the target does not declare it (else read from the VM, else linux).",
)
@connect_timeout_option
def channels(json_output: bool, target_uri: str | None, os_family: str | None, connect_timeout: float) -> None:
    """Show the channel taxonomy the installed plugins declare, or, with --target, which
    channel each capability would use on that guest now and why the others would not
    (checks live prerequisites: connects to its vCenter, changes nothing).

    Exit status with --target: 0 when some channel can run commands on the guest now,
    1 when none can, 2 for a bad URI.
    """
    plugins = default_plugins()
    if target_uri is not None:
        with errors_exit():
            target = parse_target(target_uri)
            family = OsFamily(os_family) if os_family else None
            settings = RunSettings(connect_timeout=connect_timeout)
            explanation = run_async(explain_channels(target, family, plugins, settings))
        if json_output:
            click.echo(json.dumps(explanation.to_json(), indent=2))
        else:
            _print_explanation(explanation)
        sys.exit(0 if explanation.can_run else 1)
    infos = [channel.info for channel in plugins.ordered()]
    if json_output:
        click.echo(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "summary": i.summary,
                        "direction": i.direction.value,
                        "medium": i.medium.value,
                        "os_families": sorted(i.os_families),
                        "prerequisites": [p.value for p in i.prerequisites],
                        "capabilities": sorted(i.capabilities),
                        "preference": {str(family): rank for family, rank in sorted(i.preference.items())},
                        "target_schemes": sorted(i.target_schemes),
                    }
                    for i in infos
                ],
                indent=2,
            )
        )
        return
    table = Table(title="channels", title_justify="left")
    for column in ("channel", "direction", "medium", "preference", "prerequisites", "capabilities", "targets"):
        table.add_column(column)
    for i in infos:
        table.add_row(
            i.name,
            i.direction.value,
            i.medium.value,
            ", ".join(f"{family} {rank}" for family, rank in sorted(i.preference.items())),
            ", ".join(p.value for p in i.prerequisites),
            ", ".join(sorted(i.capabilities)),
            ", ".join(f"{s}://" for s in sorted(i.target_schemes)),
        )
    Console().print(table)


def _print_explanation(explanation: Explanation) -> None:
    console = Console()
    console.print(
        f"target {explanation.target} ({explanation.os}{', ' + explanation.state if explanation.state else ''})"
    )
    table = Table(title_justify="left")
    for column in ("capability", "channel", "now"):
        table.add_column(column)
    for capability in CAPABILITY_ORDER:
        for verdict in explanation.capabilities.get(capability, []):
            table.add_row(str(capability), verdict["channel"], verdict["verdict"])
    console.print(table)


# -- logs ---------------------------------------------------------------------------------------
@main.command()
@click.argument("target_uri", metavar="URI")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save the logs under DIR/VM/ (with vCenter's diagnostic logs) instead of printing vmware.log.",
)
@connect_timeout_option
def logs(target_uri: str, output: Path | None, connect_timeout: float) -> None:
    """Fetch a VM's logs: its vmware.log files from the VM's datastore folder, and with
    --output also the logs vCenter's DiagnosticManager offers.

    \b
    URI: vsphere://USER@VCENTER[:PORT]/VM?password_env=VAR[&ca_file=PATH|&insecure=1]
    """
    with errors_exit():
        target = parse_target(target_uri)
        if target.scheme != "vsphere":
            raise InputError(
                "URI", "scheme", f"logs come from vCenter: give a vsphere:// target, not {target.scheme}://"
            )
        fetched = run_async(_fetch_logs(target, connect_timeout, with_diagnostics=output is not None))
    if output is None:
        click.echo(fetched[0].text, nl=False)
        return
    folder = output / (target.vm or target.name).replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    for log_file in fetched:
        (folder / log_file.name).write_text(log_file.text)
        click.echo(f"{folder / log_file.name}  {len(log_file.text.encode())} bytes")


async def _fetch_logs(target: Target, connect_timeout: float, *, with_diagnostics: bool) -> list[LogFile]:
    from beachhead.agent.vsphere.connection import vcenter_pool
    from beachhead.agent.vsphere.vmlogs import diagnostic_logs, vm_logs

    async with vcenter_pool() as pool:
        vcenter, vm = await pool.vm_of(target, connect_timeout)
        fetched = await vm_logs(vcenter, vm)
        if with_diagnostics:
            fetched += await diagnostic_logs(vcenter)
        return fetched


main.add_command(customize_command)
