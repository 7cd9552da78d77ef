"""Command output that cannot exhaust memory: head and tail kept, the whole stream in
the run directory as it arrives; the capture alone, then `beachhead run` over a real sshd."""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
from pathlib import Path

from beachhead.agent.output import KEPT_BYTES, OutputSink, StreamCapture, safe_name
from beachhead.agent.secrets import REDACTOR, Secret
from beachhead.bootstrap.local_sshd import LocalSshd
from tests.conftest import BEACHHEAD, beachhead, wait_until, write_plan


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_short_stream_is_kept_whole(tmp_path: Path) -> None:
    capture = StreamCapture(tmp_path / "s.stdout")
    capture.write("héllo\n".encode())
    capture.finish()
    assert (capture.text(), capture.total, capture.truncated) == ("héllo\n", 7, False)
    assert capture.file == tmp_path / "s.stdout" and capture.file.read_bytes() == "héllo\n".encode()


def test_nothing_printed_leaves_no_file(tmp_path: Path) -> None:
    with OutputSink(tmp_path, "1") as sink:
        sink.stdout.write(b"")
    assert (sink.stdout.file, sink.stderr.file, list(tmp_path.iterdir())) == (None, None, [])


def test_head_and_tail_in_bounded_memory_and_the_whole_stream_on_disk(tmp_path: Path) -> None:
    kept = 1024
    capture = StreamCapture(tmp_path / "big", kept=kept)
    blocks = [bytes([65 + n % 26]) * 4093 for n in range(2000)]  # ~8 MB in odd-sized blocks
    held_back = max((len(secret) for secret in REDACTOR.substrings()), default=0)  # what may end a secret
    for block in blocks:
        capture.write(block)
        assert capture.memory() <= 3 * kept + held_back
    capture.finish()
    whole = b"".join(blocks)
    assert capture.total == len(whole) and capture.truncated
    assert (tmp_path / "big").read_bytes() == whole
    head, marker, tail = capture.text().partition(f"\n[... {len(whole) - 2 * kept:,} bytes not shown ...]\n")
    assert marker and head.encode() == whole[:kept] and tail.encode() == whole[-kept:]


def test_a_stream_just_over_the_head_is_not_truncated(tmp_path: Path) -> None:
    capture = StreamCapture(None, kept=10)
    capture.write(b"0123456789abcdefghij")  # head 10 + tail 10: nothing left out
    capture.finish()
    assert (capture.text(), capture.truncated) == ("0123456789abcdefghij", False)


def test_a_tail_never_starts_with_half_a_character(tmp_path: Path) -> None:
    capture = StreamCapture(None, kept=8)
    capture.write(b"a" * 100 + "é".encode() * 20)  # the tail's first byte is a continuation byte
    capture.finish()
    assert capture.text().endswith("é" * 4) and "\ufffd" not in capture.text()


def test_secrets_are_masked_even_across_blocks_and_the_head_tail_cut(tmp_path: Path) -> None:
    secret = f"canary-{secrets.token_hex(8)}"
    Secret(secret)  # registered as every secret of a run is
    capture = StreamCapture(tmp_path / "s", kept=16)
    data = (b"x" * 21 + secret.encode() + b"y" * 13) * 5
    for start in range(0, len(data), 5):  # a secret is always cut by some block edge
        capture.write(data[start : start + 5])
    capture.finish()
    spilled = (tmp_path / "s").read_bytes()
    assert secret.encode() not in spilled and spilled.count(b"***") == 5
    assert secret[:8] not in capture.text() and capture.total == len(data)


def test_spill_files_and_directories_are_private(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with OutputSink.for_step(run_dir, "web/01", 3) as sink:
        sink.stdout.write(b"out")
        sink.stderr.write(b"err")
    directory = run_dir / "output" / safe_name("web/01")
    assert safe_name("web/01") != "web_01" and "/" not in safe_name("web/01")
    assert (_mode(run_dir / "output"), _mode(directory)) == (0o700, 0o700)
    assert sorted(p.name for p in directory.iterdir()) == ["3.stderr", "3.stdout"]
    assert all(_mode(p) == 0o600 for p in directory.iterdir())
    with OutputSink.for_step(run_dir, "web/01", 3, attempt=2) as again:  # a resumed run's next attempt
        again.stdout.write(b"out again")
    assert (directory / "3.stdout").read_bytes() == b"out" and again.stdout.file == directory / "3.attempt-2.stdout"


def _json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("{")]


def test_big_output_is_bounded_in_json_and_results_and_kept_whole_in_the_run_directory(
    sshd: LocalSshd, runs_dir: Path, tmp_path: Path
) -> None:
    size = 5_000_000
    plan = write_plan(tmp_path, f"name: big\nsteps:\n  - run: 'yes | head -c {size}; echo done >&2'\n")
    done = beachhead("run", str(plan), "--target", sshd.uri(name="big-out"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = _json_lines(done.stdout)
    assert len(line) < 4 * KEPT_BYTES  # "y\n" is 3 characters in JSON: head and tail ~197 KB
    result = json.loads(line)
    [step] = result["steps"]
    assert (step["stdout_bytes"], step["stdout_truncated"]) == (size, True)
    assert step["stdout"].startswith("y\ny\n") and step["stdout"].endswith("y\ny\n")
    assert f"[... {size - 2 * KEPT_BYTES:,} bytes not shown ...]" in step["stdout"]
    assert (step["stderr"], step["stderr_bytes"], step["stderr_truncated"]) == ("done\n", 5, False)
    run_dir = runs_dir / result["run_id"]
    assert step["stdout_file"] == str(run_dir / "output" / "big-out" / "1.stdout")
    assert step["stderr_file"] == str(run_dir / "output" / "big-out" / "1.stderr")
    spill = Path(step["stdout_file"])
    assert spill.stat().st_size == size and spill.read_bytes() == b"y\n" * (size // 2)
    assert _mode(spill) == 0o600 and _mode(spill.parent) == 0o700 and _mode(spill.parent.parent) == 0o700
    [recorded] = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(recorded) < 4 * KEPT_BYTES and json.loads(recorded)["steps"][0]["stdout_bytes"] == size


def test_output_reaches_the_run_directory_while_the_command_runs(
    sshd: LocalSshd, runs_dir: Path, tmp_path: Path, guest_dir: Path
) -> None:
    flag = guest_dir / "go-on"
    wait_for_flag = f"i=0; while [ ! -e {flag} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
    plan = write_plan(tmp_path, f"name: live\nsteps:\n  - run: 'echo first-part; {wait_for_flag}; echo second-part'\n")
    run = subprocess.Popen(
        [str(BEACHHEAD), "run", str(plan), "--target", sshd.uri(name="live"), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:

        def spilled() -> Path | None:
            assert run.poll() is None, "the run ended before the command could be released"
            found = [p for p in runs_dir.glob("*/output/live/1.stdout") if p.read_bytes()]
            return found[0] if found else None

        spill = wait_until(spilled, timeout=60, what="the first line in the spill file")
        assert spill.read_bytes() == b"first-part\n"  # while the command still waits
        flag.touch()
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 0, stderr[-2000:]
    assert spill.read_bytes() == b"first-part\nsecond-part\n"
    [step] = json.loads(_json_lines(stdout)[0])["steps"]
    assert (step["stdout"], step["stdout_bytes"], step["stdout_truncated"]) == ("first-part\nsecond-part\n", 23, False)
