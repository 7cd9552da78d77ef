"""The Windows stand-in's programs, run as the launcher and the WinRS endpoint run
them: the runner CLI as a real subprocess on a temporary guest root."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from beachhead.bootstrap.lab.windows.cmdline import argv, quote, split_arguments
from beachhead.bootstrap.lab.windows.run import resolve
from tests.conftest import wait_until

RUNNER = [sys.executable, "-m", "beachhead.bootstrap.lab.windows.run"]
NOT_RECOGNIZED = b"'%s' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"


@dataclass
class Done:
    """A finished run: the whole Windows exit status and the output bytes."""

    status: int
    stdout: bytes
    stderr: bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A guest root as the lab prepares it for the Windows stand-in."""
    guest = tmp_path / "guest"
    for sub in ("C/Users/Administrator", "C/Windows/Temp"):
        (guest / sub).mkdir(parents=True)
    return guest


def runner_command(root: Path, line: str, status: Path, record: Path | None = None) -> list[str]:
    extra = ["--record", str(record)] if record else []
    return [*RUNNER, "--root", str(root), "--status-file", str(status), *extra, "--", line]


def win(root: Path, line: str, stdin: bytes = b"", record: Path | None = None, **env: str) -> Done:
    """Run one Windows command line in the guest at ``root``."""
    status = root.parent / "status"
    environment = {**os.environ, "USER": "Administrator", "HOSTNAME": "win-01", **env}
    done = subprocess.run(
        runner_command(root, line, status, record), input=stdin, capture_output=True, env=environment, timeout=60
    )
    whole = int(status.read_text())
    assert whole & 0xFF == done.returncode
    return Done(whole, done.stdout, done.stderr)


def test_command_lines_split_as_the_c_runtime_splits_them() -> None:
    assert split_arguments(r'a "b c" d\"e "f\\" g\\h ""') == ["a", "b c", 'd"e', "f\\", r"g\\h", ""]
    assert argv(r'"C:\Program Files\x.exe" -y "two words"') == [r"C:\Program Files\x.exe", "-y", "two words"]
    for value in ["", "plain", "two words", 'quote"inside', "trailing\\", 'both \\"']:
        assert split_arguments(quote(value)) == [value]


def test_resolve_finds_only_the_programs_the_guest_has() -> None:
    assert resolve(r'"C:\Windows\System32\cmd.exe" /d /s /c "echo hi"') == "cmd.exe"
    assert resolve("CertUtil -hashfile x") == "certutil.exe"
    assert resolve(r"c:/windows/system32/FINDSTR.EXE x") == "findstr.exe"
    assert resolve("powershell.exe -NoProfile") is None  # this Windows has no PowerShell
    assert resolve(r"C:\Tools\cmd.exe /c x") is None
    assert resolve("notepad") is None


def test_cmd_quote_rules_and_operators(root: Path) -> None:
    done = win(root, 'cmd.exe /d /s /c "echo one& echo two && echo three || echo never"')
    assert done.stdout == b"one\r\ntwo \r\nthree \r\n" and done.status == 0
    # Without /s, a leading quote goes with the last one on the line.
    assert win(root, 'cmd /c "echo "quoted""').stdout == b'"quoted"\r\n'
    failed = win(root, "cmd /c type C:\\missing.txt && echo yes || echo no")
    assert (failed.stdout, failed.stderr) == (b"no\r\n", b"The system cannot find the file specified.\r\n")
    assert failed.status == 1
    assert win(root, "cmd /c echo a^&b ^> c").stdout == b"a&b > c\r\n"
    assert win(root, 'cmd /c echo "a & b"').stdout == b'"a & b"\r\n'
    grouped = win(root, "cmd /c (echo x & echo y) > C:\\g.txt && type C:\\g.txt")
    assert grouped.stdout == b"x \r\ny\r\n"


def test_redirections(root: Path) -> None:
    win(root, r'cmd /c echo first> C:\out.txt & echo second>>"C:\out.txt"')
    # The space before & belongs to the first echo, as on Windows.
    assert (root / "C/out.txt").read_bytes() == b"first \r\nsecond\r\n"
    both = win(root, r"cmd /c type C:\out.txt C:\nope.txt > C:\all.txt 2>&1")
    assert b"first \r\nsecond\r\n" in (root / "C/all.txt").read_bytes()
    assert b"cannot find the file" in (root / "C/all.txt").read_bytes() and both.stdout == b""
    win(root, r"cmd /c type C:\nope.txt 2> C:\err.txt")
    assert (root / "C/err.txt").read_bytes() == b"The system cannot find the file specified.\r\n"
    copied = win(root, r'cmd /c findstr "^" < C:\out.txt')
    assert copied.stdout == b"first \r\nsecond\r\n"
    assert (
        win(root, r"cmd /c echo x > C:\no\such\dir\f.txt").stderr == b"The system cannot find the path specified.\r\n"
    )
    assert win(root, r"cmd /c echo quiet > nul").stdout == b""


def test_variables_are_expanded_once_per_line(root: Path) -> None:
    done = win(root, "cmd /c echo %GREETING% %UNDEFINED% %USERPROFILE% %COMPUTERNAME%", GREETING="hi")
    assert done.stdout == b"hi %UNDEFINED% C:\\Users\\Administrator WIN-01\r\n"
    # The whole line is expanded before `set` runs, as cmd.exe does it.
    assert win(root, 'cmd /c set "X=new"&& echo %X%').stdout == b"%X%\r\n"
    assert win(root, 'cmd /c set "X=new"&& set X').stdout == b"X=new\r\n"
    missing = win(root, "cmd /c set NOSUCHPREFIX")
    assert missing.status == 1 and missing.stderr == b"Environment variable NOSUCHPREFIX not defined\r\n"


def test_batch_files_run_line_by_line(root: Path) -> None:
    batch = root / "C/Users/Administrator/job.cmd"
    batch.write_bytes(
        b'@set "WHO=batch"\r\n'
        b":: a comment, and a label\r\n:top\r\n"
        b"@echo %WHO% sees %1 and %2, 100%% of %* %UNDEFINED%.\r\n"
        b"echo shown\r\n"
        b"@echo off\r\n"
        b"echo quiet\r\n"
        b"type C:\\nope\r\n"
        b"exit /b %ERRORLEVEL%\r\n"
        b"echo never\r\n"
    )
    done = win(root, r'cmd.exe /d /s /c ""C:\Users\Administrator\job.cmd" one "two words""')
    assert done.stdout == (
        b'batch sees one and "two words", 100% of one "two words" .\r\n'
        b"\r\nC:\\Users\\Administrator>echo shown\r\nshown\r\nquiet\r\n"
    )
    assert done.status == 1 and b"cannot find" in done.stderr
    # Named without call, a batch file ends the one that named it; exit /b ends a batch
    # file alone, and the command line goes on.
    (root / "C/Users/Administrator/inner.bat").write_bytes(b"@echo inner\r\n@exit /b 3\r\n")
    batch.write_bytes(b"@inner.bat\r\n@echo after\r\n")
    chained = win(root, r"cmd /c C:\Users\Administrator\job.cmd & echo line %ERRORLEVEL%")
    assert chained.stdout == b"inner\r\nline 0\r\n"  # the line was expanded before the batch ran
    assert chained.status == 3  # echo leaves the errorlevel as it is


def test_builtins(root: Path) -> None:
    assert win(root, "cmd /c echo.").stdout == b"\r\n"
    assert win(root, "cmd /c echo").stdout == b"ECHO is on.\r\n"
    assert win(root, "cmd /c echo off").stdout == b""
    assert win(root, "cmd /c ver").stdout == b"\r\nMicrosoft Windows [Version 10.0.17763.1]\r\n"
    assert win(root, "cmd /c hostname").stdout.strip() != b""
    assert win(root, "cmd /c whoami").stdout == b"win-01\\administrator\r\n"
    made = win(root, r"cmd /c mkdir C:\a\b\c && cd C:\A\B && cd")
    assert made.stdout == b"C:\\a\\b\r\n" and (root / "C/a/b/c").is_dir()
    again = win(root, r"cmd /c md C:\a\b\c")
    assert again.status == 1 and again.stderr == b"A subdirectory or file C:\\a\\b\\c already exists.\r\n"
    (root / "C/a/src.txt").write_bytes(b"data")
    copy = win(root, r"cmd /c copy /y C:\a\src.txt C:\a\b\dst.txt")
    assert copy.stdout == b"        1 file(s) copied.\r\n" and (root / "C/a/b/dst.txt").read_bytes() == b"data"
    assert win(root, r"cmd /c move /y C:\a\b\dst.txt C:\a\src.txt").stdout == b"        1 file(s) moved.\r\n"
    assert not (root / "C/a/b/dst.txt").exists()
    assert win(root, r"cmd /c dir /b C:\a").stdout == b"b\r\nsrc.txt\r\n"
    assert win(root, r"cmd /c dir /b C:\a\*.none").status == 1
    gone = win(root, r"cmd /c del /f /q C:\a\src.txt & del C:\a\src.txt")
    assert gone.stderr == b"Could Not Find C:\\a\\src.txt\r\n" and not (root / "C/a/src.txt").exists()
    full = win(root, r"cmd /c rd C:\a")
    assert full.stderr == b"The directory is not empty.\r\n"
    assert win(root, r"cmd /c rd /s /q C:\a").status == 0 and not (root / "C/a").exists()
    assert win(root, "cmd /c exit /b 7").status == 7
    assert win(root, "cmd /c type C:\\nope & exit").status == 1  # exit keeps the errorlevel


def test_files_are_found_in_any_case_and_never_outside_the_root(root: Path, tmp_path: Path) -> None:
    (root / "C/Data").mkdir()
    (root / "C/Data/File.TXT").write_bytes(b"content\r\n")
    assert win(root, r"cmd /c type c:\DATA\file.txt").stdout == b"content\r\n"
    assert win(root, "cmd /c type C:/Data/File.TXT").stdout == b"content\r\n"
    (tmp_path / "secret").write_text("outside")
    escaped = win(root, r"cmd /c type C:\..\..\..\secret")
    assert escaped.status == 1 and b"outside" not in escaped.stdout
    (root / "C/link").symlink_to(tmp_path)
    refused = win(root, r"cmd /c type C:\link\secret")
    assert (refused.status, refused.stdout, refused.stderr) == (1, b"", b"Access is denied.\r\n")
    assert win(root, r"certutil -hashfile C:\link\secret SHA256").status == 0x80070005


def test_findstr(root: Path) -> None:
    text = b"alpha line\r\nBeta line\nunix only\n\r\nlast without end"
    copied = win(root, 'cmd /d /c findstr "^"', stdin=text)
    assert copied.stdout == text + b"\r\n" and copied.status == 0
    (root / "C/t.txt").write_bytes(b"cat\r\ncatalog\r\nthe cat sat\r\ndog\r\n")
    assert win(root, r"findstr cat C:\t.txt").stdout == b"cat\r\ncatalog\r\nthe cat sat\r\n"
    assert win(root, r'findstr "\<cat\>" C:\t.txt').stdout == b"cat\r\nthe cat sat\r\n"
    assert win(root, r"findstr /r ^c.*g$ C:\t.txt").stdout == b"catalog\r\n"
    assert win(root, r"findstr [dx]og C:\t.txt").stdout == b"dog\r\n"
    assert win(root, r"findstr /v /i CAT C:\t.txt").stdout == b"dog\r\n"
    assert win(root, r'findstr /c:"cat sat" C:\t.txt').stdout == b"the cat sat\r\n"
    assert win(root, r'findstr "sat dog" C:\t.txt').stdout == b"the cat sat\r\ndog\r\n"  # either word
    assert win(root, r'findstr /l "c.t" C:\t.txt').status == 1
    assert win(root, r"findstr /n dog C:\t.txt").stdout == b"4:dog\r\n"
    missing = win(root, r"findstr x C:\nope.txt")
    assert (missing.status, missing.stderr) == (1, b"FINDSTR: Cannot open C:\\nope.txt\r\n")


def test_certutil_encode_decode(root: Path) -> None:
    data = os.urandom(1000)
    (root / "C/blob.bin").write_bytes(data)
    encoded = win(root, r"certutil -encode C:\blob.bin C:\blob.b64")
    assert encoded.status == 0
    assert encoded.stdout.endswith(b"CertUtil: -encode command completed successfully.\r\n")
    lines = (root / "C/blob.b64").read_bytes().split(b"\r\n")
    assert lines[0] == b"-----BEGIN CERTIFICATE-----" and lines[-2:] == [b"-----END CERTIFICATE-----", b""]
    assert all(len(line) == 64 for line in lines[1:-3]) and base64.b64decode(b"".join(lines[1:-2])) == data
    exists = win(root, r"certutil -encode C:\blob.bin C:\blob.b64")
    assert exists.status == 0x80070050
    assert exists.stderr == (
        b"CertUtil: -encode command FAILED: 0x80070050 (WIN32: 80 ERROR_FILE_EXISTS)\r\nCertUtil: The file exists.\r\n"
    )
    assert win(root, r"certutil -decode C:\blob.b64 C:\back.bin").status == 0
    assert (root / "C/back.bin").read_bytes() == data
    # What a real certutil -encode of "hello world\r\n" writes, and plain base64 without the lines.
    (root / "C/real.txt").write_bytes(
        b"-----BEGIN CERTIFICATE-----\r\naGVsbG8gd29ybGQNCg==\r\n-----END CERTIFICATE-----\r\n"
    )
    assert win(root, r"certutil -f -decode C:\real.txt C:\hello.txt").status == 0
    assert (root / "C/hello.txt").read_bytes() == b"hello world\r\n"
    (root / "C/plain.txt").write_bytes(base64.b64encode(data[:300]) + b"\n")
    assert win(root, r"certutil -decode C:\plain.txt C:\plain.bin").status == 0
    assert (root / "C/plain.bin").read_bytes() == data[:300]
    (root / "C/bad.txt").write_bytes(b"not base64 at all!")
    assert win(root, r"certutil -decode C:\bad.txt C:\bad.bin").status == 0x80090005


def test_certutil_hashfile(root: Path) -> None:
    data = os.urandom(5000)
    (root / "C/Windows/Temp/f.bin").write_bytes(data)
    for algorithm in ("MD5", "SHA1", "SHA256", "SHA512"):
        done = win(root, rf"certutil -hashfile C:\Windows\Temp\f.bin {algorithm}")
        digest = hashlib.new(algorithm.lower(), data).hexdigest().encode()
        header = rf"{algorithm} hash of C:\Windows\Temp\f.bin:".encode()
        assert done.stdout == header + b"\r\n" + digest + b"\r\nCertUtil: -hashfile command completed successfully.\r\n"
    assert win(root, r"certutil -hashfile C:\Windows\Temp\f.bin").stdout.startswith(b"SHA1 hash of ")
    assert win(root, r"certutil -hashfile C:\Windows\Temp\f.bin SHA3").status == 0x80090008
    assert win(root, r"certutil -hashfile C:\nope SHA256").status == 0x80070002


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_taskkill_ends_a_whole_tree(root: Path) -> None:
    status = root.parent / "tree-status"
    line = "cmd /d /c timeout /t 30 /nobreak | timeout /t 30 /nobreak"
    tree = subprocess.Popen(runner_command(root, line, status), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(_children(tree.pid)) < 2:
            assert time.monotonic() < deadline, "the pipeline's programs did not start"
            time.sleep(0.05)
        children = _children(tree.pid)
        killed = win(root, f"taskkill /PID {tree.pid} /T /F")
        assert killed.status == 0
        for child in children:
            assert f"SUCCESS: The process with PID {child} (child process of PID {tree.pid})".encode() in killed.stdout
        assert f"SUCCESS: The process with PID {tree.pid} (child process of PID ".encode() in killed.stdout
        assert tree.wait(timeout=10) == -9
        for child in children:  # SIGKILL is sent; the process may take a moment to end
            wait_until(lambda child=child: _gone(child), timeout=10, what=f"pid {child} ended")
    finally:
        tree.kill()
        tree.wait()
    nobody = win(root, "taskkill /PID 999999999 /F")
    assert (nobody.status, nobody.stderr) == (128, b'ERROR: The process "999999999" not found.\r\n')


def test_powershell_is_recorded_and_missing(root: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    script = "Write-Output 'hi'; exit 3"
    encoded = base64.b64encode(script.encode("utf-16-le")).decode()
    direct = win(root, f"powershell.exe -NoProfile -NonInteractive -EncodedCommand {encoded}", record=record)
    assert (direct.status, direct.stderr) == (9009, b"The system cannot find the file specified.\r\n")
    inside = win(root, "cmd /c powershell -NoProfile -Command -", stdin=b"Get-Date\r\n", record=record)
    assert (inside.status, inside.stderr) == (9009, NOT_RECOGNIZED % b"powershell")
    first, second = [json.loads(line) for line in (record / "powershell.jsonl").read_text().splitlines()]
    assert first["script"] == script and first["argv"][0] == "powershell.exe"
    assert first["parameters"]["noprofile"] is True and "stdin" not in first
    assert (second["script"], second["stdin"]) == ("-", "Get-Date\r\n")


def test_missing_programs(root: Path) -> None:
    inside = win(root, 'cmd /d /s /c "nosuch.exe /x"')
    assert (inside.status, inside.stderr) == (9009, NOT_RECOGNIZED % b"nosuch.exe")
    direct = win(root, r"C:\Tools\tool.exe --help")
    assert (direct.status, direct.stderr) == (9009, b"The system cannot find the file specified.\r\n")
    nested = win(root, 'cmd /c "cmd /c nosuch"')
    assert nested.status == 9009
