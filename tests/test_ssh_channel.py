"""The ssh channel plugin against a real OpenSSH sshd on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from beachhead.agent.channel import CommandRequest, Outcome
from beachhead.agent.context import RunContext, TargetContext
from beachhead.agent.errors import ChannelUnavailable, StepFailed
from beachhead.agent.plans import Plan
from beachhead.agent.registry import default_plugins
from beachhead.agent.render import RunSpec, render
from beachhead.agent.settings import RunSettings
from beachhead.agent.targets import OsFamily, parse_target
from beachhead.bootstrap.local_sshd import LocalSshd
from beachhead.plugins.ssh import SshSession, open_session
from tests.conftest import BEACHHEAD, await_until, beachhead, needs_root, processes_mentioning, wait_until, write_plan
from tests.secret_search import ProcessSampler


async def connect(uri: str) -> SshSession:
    """An SSH session opened as a run opens one."""
    plugins = default_plugins()
    target = TargetContext(RunContext(plugins, RunSettings(connect_timeout=10)), Plan("p", ()), parse_target(uri))
    return await open_session(target)


@pytest.fixture
async def session(sshd: LocalSshd) -> AsyncIterator[SshSession]:
    opened = await connect(sshd.uri())
    yield opened
    await opened.close()


def command(text: str, **spec: object) -> CommandRequest:
    return render(RunSpec(command=text, **spec), OsFamily.LINUX)  # type: ignore[arg-type]


async def test_run_separates_stdout_stderr_and_exit_status(session: SshSession) -> None:
    outcome = await session.run(command("echo out; echo err >&2; exit 3"))
    assert (outcome.exit_status, outcome.stdout, outcome.stderr) == (3, "out\n", "err\n")
    assert not outcome.ok and outcome.duration_s >= 0


async def test_env_values_reach_the_command_intact(session: SshSession) -> None:
    tricky = 'it\'s a "quoted" $HOME `tick` value'
    outcome = await session.run(command('printf %s "$GREETING"', env={"GREETING": tricky}))
    assert outcome.stdout == tricky


async def test_script_runs_from_stdin(session: SshSession, tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text('set -e\nx=$((6 * 7))\necho "answer $x"\n')
    outcome = await session.run(render(RunSpec(script=script, shell="bash"), OsFamily.LINUX))
    assert outcome.ok and outcome.stdout == "answer 42\n"


async def test_become_without_password(session: SshSession) -> None:
    outcome = await session.run(command('echo "$SUDO_USER $(id -u)"', become=True))
    assert outcome.ok, outcome.stderr
    assert outcome.stdout.strip() == "root 0"


@needs_root
async def test_guest_logins_have_homes_of_their_own(sshd: LocalSshd, session: SshSession) -> None:
    outcome = await session.run(command('printf %s "$HOME"'))
    assert outcome.ok and outcome.stdout == str(sshd.public / "home" / "root")


@needs_root
async def test_password_login_and_sudo_with_password(sshd: LocalSshd, password_env: str) -> None:
    account = sshd.sudo_account
    assert account is not None
    session = await connect(sshd.uri(account, password_env=password_env))
    try:
        plain = await session.run(command("id -un"))
        assert plain.stdout.strip() == account.name
        elevated = await session.run(command('echo "$(id -u) $SUDO_USER"; cat', become=True))
        assert elevated.ok, elevated.stderr
        assert elevated.stdout.strip() == f"0 {account.name}"  # sudo consumed the password line
    finally:
        await session.close()


async def test_upload_verifies_and_sets_mode(session: SshSession, guest_dir: Path, tmp_path: Path) -> None:
    local = tmp_path / "payload.bin"
    local.write_bytes(os.urandom(300_000))
    dest = guest_dir / "payload.bin"
    info = await session.put_file(local, str(dest), 0o640)
    assert dest.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert info.sha256 == hashlib.sha256(local.read_bytes()).hexdigest() and info.size == 300_000
    assert [p.name for p in guest_dir.iterdir()] == ["payload.bin"]  # no partial file left


async def test_upload_keeps_replaced_files_mode(session: SshSession, guest_dir: Path, tmp_path: Path) -> None:
    dest = guest_dir / "tool"
    dest.write_text("old")
    dest.chmod(0o751)
    local = tmp_path / "tool"
    local.write_text("new")
    await session.put_file(local, str(dest), None)
    assert dest.read_text() == "new" and stat.S_IMODE(dest.stat().st_mode) == 0o751


async def test_upload_into_missing_directory_fails_clearly(session: SshSession, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_text("x")
    with pytest.raises(StepFailed, match=r"/nonexistent-dir/f.*No such file"):
        await session.put_file(local, "/nonexistent-dir/f", None)


async def test_download_verifies(session: SshSession, guest_dir: Path, tmp_path: Path) -> None:
    remote = guest_dir / "data"
    remote.write_bytes(os.urandom(100_000))
    local = tmp_path / "out" / "data"
    info = await session.get_file(str(remote), local)
    assert local.read_bytes() == remote.read_bytes()
    assert info.sha256 == hashlib.sha256(remote.read_bytes()).hexdigest()
    with pytest.raises(StepFailed, match="No such file"):
        await session.get_file(str(guest_dir / "absent"), tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


async def test_stat_make_dirs_remove(session: SshSession, guest_dir: Path) -> None:
    deep = guest_dir / "a" / "b" / "c"
    assert not (await session.stat(str(deep))).exists
    created = await session.make_dirs(str(deep))
    assert created == [str(guest_dir / "a"), str(guest_dir / "a" / "b"), str(deep)]
    assert deep.is_dir() and not (await session.stat(str(deep))).is_file
    (deep / "f").write_text("x")
    assert await session.remove_dir(str(deep)) is False  # not empty: kept
    await session.remove(str(deep / "f"))
    assert await session.remove_dir(str(deep)) is True and not deep.exists()


async def test_cancelled_command_is_killed_in_guest(session: SshSession, guest_dir: Path) -> None:
    marker = guest_dir / "still-running"
    task = asyncio.create_task(session.run(command(f"sleep 3 && touch {marker}")))
    await await_until(lambda: processes_mentioning(str(marker)), what="the command runs in the guest")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing is left that would create the marker (an orphan would, once its `sleep 3` ends).
    await await_until(lambda: not processes_mentioning(str(marker)), what="the guest command is gone")
    assert not marker.exists()
    assert (await session.run(command("echo alive"))).stdout == "alive\n"  # connection still usable


async def test_wrong_password_is_not_retryable(sshd: LocalSshd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRONG_PW", "definitely-not-it")
    account = sshd.sudo_account or sshd.login
    with pytest.raises(ChannelUnavailable) as caught:
        await connect(sshd.uri(account, password_env="WRONG_PW"))
    assert "authentication failed" in caught.value.reason and not caught.value.retryable
    assert "definitely-not-it" not in str(caught.value)


async def test_host_key_mismatch_is_refused(sshd: LocalSshd, tmp_path: Path) -> None:
    other = LocalSshd(tmp_path / "other")  # only to generate a different host key
    other._prepare()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(other.known_hosts.read_text().replace(f":{other.port}]", f":{sshd.port}]"))
    other.stop()
    uri = sshd.uri().replace(str(sshd.known_hosts), str(wrong))
    with pytest.raises(ChannelUnavailable) as caught:
        await connect(uri)
    assert "not verifiable" in caught.value.reason and not caught.value.retryable


async def test_unknown_host_key_is_refused_by_default(
    sshd: LocalSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/known_hosts: strict means refuse
    uri = f"ssh://{sshd.login.name}@{sshd.host}:{sshd.port}?key={sshd.login.key_file}"
    with pytest.raises(ChannelUnavailable, match="not verifiable"):
        await connect(uri)
    ignoring = await connect(uri + "&known_hosts=ignore")
    await ignoring.close()


async def test_unreachable_port_is_retryable(sshd: LocalSshd) -> None:
    from beachhead.bootstrap.local_sshd import _free_port

    uri = f"ssh://root@127.0.0.1:{_free_port('127.0.0.1')}?known_hosts=ignore"
    with pytest.raises(ChannelUnavailable) as caught:
        await connect(uri)
    assert "refused" in caught.value.reason and caught.value.retryable


async def test_verification_catches_a_file_that_differs(session: SshSession, guest_dir: Path, tmp_path: Path) -> None:
    from beachhead.agent.checksums import sha256_of
    from beachhead.agent.errors import VerificationFailed

    local = tmp_path / "f"
    local.write_text("expected contents\n")
    remote = guest_dir / "f"
    await session.put_file(local, str(remote), None)
    remote.write_text("tampered contents\n")  # same size, different bytes
    with pytest.raises(VerificationFailed) as caught:
        await session._verify(str(remote), sha256_of(local), local.stat().st_size, None)
    assert sha256_of(local) in caught.value.reason and sha256_of(remote) in caught.value.reason


async def _run_sampling(session: SshSession, request: CommandRequest) -> tuple[Outcome, ProcessSampler]:
    """Run ``request`` while sampling the process table (the guest is this machine)."""
    with ProcessSampler() as sampler:
        outcome = await session.run(request)
    return outcome, sampler


@pytest.mark.parametrize("become", [False, True])
async def test_env_values_never_show_in_the_guests_process_list(session: SshSession, become: bool) -> None:
    secret = f"env-secret-{secrets.token_hex(8)}"
    token = f"cmd-{secrets.token_hex(4)}"
    request = command(f': {token}; sleep 1; printf %s "$MYSECRET" | sha256sum', env={"MYSECRET": secret}, become=become)
    outcome, sampler = await _run_sampling(session, request)
    assert outcome.ok, outcome.stderr
    assert outcome.stdout.split()[0] == hashlib.sha256(secret.encode()).hexdigest()  # it was delivered
    assert sampler.saw(token), "the command was never seen running"
    assert sampler.hits({"MYSECRET": secret}) == []


@needs_root
async def test_env_values_and_the_sudo_password_stay_off_command_lines_with_sudo_s(
    sshd: LocalSshd, password_env: str, tmp_path: Path
) -> None:
    account = sshd.sudo_account
    assert account is not None and account.password is not None
    session = await connect(sshd.uri(account, password_env=password_env))
    secret = f"env-secret-{secrets.token_hex(8)}\n"  # a trailing newline survives too
    script = tmp_path / "s.sh"
    script.write_text(': cmd-script; sleep 1; printf "%s|%s" "$(id -u)" "$MYSECRET" | sha256sum; cat\n')
    try:
        outcome, sampler = await _run_sampling(
            session, render(RunSpec(script=script, become=True, env={"MYSECRET": secret}), OsFamily.LINUX)
        )
    finally:
        await session.close()
    assert outcome.ok, outcome.stderr
    assert outcome.stdout.split()[0] == hashlib.sha256(f"0|{secret}".encode()).hexdigest()
    assert sampler.saw("sudo -S") and sampler.saw("SUDO_COMMAND=")
    assert sampler.hits({"MYSECRET": secret.strip(), "sudo password": account.password}) == []


def _ancestor_sshd(pid: int) -> int:
    """The sshd process serving the connection that started ``pid``."""
    while pid > 1:
        if (Path(f"/proc/{pid}/cmdline").read_bytes()).startswith(b"sshd:"):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    raise AssertionError("no sshd among the command's ancestors")


def test_a_command_whose_connection_died_says_so(sshd: LocalSshd, runs_dir: Path, tmp_path: Path) -> None:
    token = f"lost-{secrets.token_hex(4)}"
    plan = write_plan(tmp_path, f"name: lost\nsteps:\n  - run: 'echo started; : {token}; sleep 30'\n")
    run = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", sshd.uri(), "--json", "--retries", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        [pid] = wait_until(lambda: processes_mentioning(token), timeout=60, what="the command runs in the guest")
        os.kill(_ancestor_sshd(pid), signal.SIGKILL)  # the connection dies, the command does not
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
        for orphan in processes_mentioning(token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
    assert run.returncode == 1, stderr[-2000:]
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))
    [step] = result["steps"]
    assert "connection lost while running; exit status unknown" in step["error"], step["error"]
    assert "None" not in step["error"] and step["exit_code"] is None and step["status"] == "failed"
    undo = beachhead("undo", result["run_id"])  # lists the command as not undoable, and how it ended
    assert "exit status unknown" in undo.stdout + undo.stderr and "exit status None" not in undo.stdout + undo.stderr
