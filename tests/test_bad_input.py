"""Bad input never costs more than it is worth (issue 10).

Plan and targets files that would take gigabytes (an alias bomb, a huge file), crash the
parser (deep nesting), hide a second value (a key written twice), or carry values nothing
can use (nan, a NUL byte, a broken URI, a 5,000-character run id) end at once with exit
status 2 and one line naming the file and the field or line. The CLI runs here in 1 GiB
of address space, so a regression dies of MemoryError (exit 1) instead of eating the
machine; a target where nothing listens means a plan that got through fails (exit 1)
rather than running anything.
"""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path
from typing import Any

import pytest

from beachhead.agent.errors import InputError, brief, brief_names
from beachhead.agent.journal import RunDirectory
from beachhead.agent.plans import PlanReader, load_plan
from beachhead.agent.registry import default_plugins
from beachhead.agent.targets import load_targets_file, parse_target
from beachhead.agent.yamlio import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES, load_yaml
from tests.conftest import BEACHHEAD, write_plan

MEMORY_LIMIT = 1 << 30
UNREACHABLE = "ssh://127.0.0.1:1"  # nothing listens there
#: Far more than an error message should ever quote of one value.
LONG = 10_000
MESSAGE_LIMIT = 400


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def bounded(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI as a user runs it, in at most 1 GiB and 60 seconds."""
    return subprocess.run(
        [str(BEACHHEAD), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        preexec_fn=_limit_memory,
        check=False,
    )


def run_plan(plan: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``beachhead run PLAN`` against a target where nothing listens, without retries."""
    return bounded("run", str(plan), "--target", UNREACHABLE, "--retries", "0", "--connect-timeout", "5", *extra)


def refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2, no traceback, and a short error line that holds every fragment."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(("beachhead: error:", "Error:")), result.stderr[-3000:]
    assert len(line) < MESSAGE_LIMIT, line[:3000]
    for fragment in fragments:
        assert fragment in line, line
    return line


def alias_bomb(levels: int = 10, width: int = 10) -> str:
    """``[&a0 [x, ...], &a1 [*a0, ...], ...]``: some 500 bytes that stand for
    ``width ** levels`` strings once the aliases are expanded."""
    items = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(items) + "]"


def shared_lists(levels: int, width: int = 10) -> list[Any]:
    """The Python value of :func:`alias_bomb`: lists that share their elements."""
    value: list[Any] = ["x"] * width
    for _ in range(levels - 1):
        value = [value] * width
    return value


# -- alias bombs ------------------------------------------------------------------------------
def test_an_alias_bomb_in_a_plan_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, f"name: bomb\ntimeout: {alias_bomb()}\nsteps: [{{run: ls}}]\n")
    assert plan.stat().st_size < 700
    refused(run_plan(plan), str(plan), "line 2", "too many YAML aliases")


def test_an_alias_bomb_in_a_targets_file_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    targets = write_plan(tmp_path, f"- {{host: 127.0.0.1, port: {alias_bomb()}}}\n", "targets.yaml")
    refused(bounded("run", str(plan), "--targets", str(targets)), str(targets), "line 1", "too many YAML aliases")


@pytest.mark.parametrize(
    "text",
    [
        f"bomb: {alias_bomb()}\n",
        f"? {alias_bomb()}\n: key\n",  # as a mapping key
        "".join(
            f"a{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" if i else f"k{j}: x" for j in range(10)) + "}\n"
            for i in range(10)
        ),
        "".join(
            f"a{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}\n" if i else "a0: &m0 {k: x}\n"
            for i in range(10)
        ),  # through merge keys
    ],
    ids=["sequence", "key", "mapping", "merge"],
)
def test_alias_bombs_are_refused_in_every_form(tmp_path: Path, text: str) -> None:
    path = write_plan(tmp_path, text, "bomb.yaml")
    with pytest.raises(InputError) as caught:
        load_yaml(path)
    assert "too many YAML aliases" in caught.value.reason and caught.value.where is not None


def test_aliases_up_to_the_budget_load(tmp_path: Path) -> None:
    """``&a`` marks 10 nodes (a list of nine): MAX_ALIAS_NODES / 10 uses of it load, one
    more is refused."""
    uses = MAX_ALIAS_NODES // 10
    base = "base: &a [" + ", ".join(["x"] * 9) + "]\n"
    path = write_plan(tmp_path, base + "uses: [" + ", ".join(["*a"] * uses) + "]\n", "ok.yaml")
    loaded = load_yaml(path)
    assert len(loaded["uses"]) == uses and loaded["uses"][0] == ["x"] * 9
    path = write_plan(tmp_path, base + "uses: [" + ", ".join(["*a"] * (uses + 1)) + "]\n", "over.yaml")
    with pytest.raises(InputError, match="too many YAML aliases"):
        load_yaml(path)


def test_an_alias_inside_what_it_names_is_refused(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "steps: &a [*a]\n", "loop.yaml")
    with pytest.raises(InputError) as caught:
        load_yaml(path)
    assert caught.value.where == "line 1, column 12" and "*a" in caught.value.reason


# -- error messages quote a bounded rendering of a value ----------------------------------------
def test_brief_renders_only_what_it_shows() -> None:
    bomb = shared_lists(levels=10)  # 10**10 strings if walked
    shown = brief(bomb)
    assert len(shown) <= 80 and shown.startswith("[[[[") and shown.endswith("...")
    looped: list[Any] = [1]
    looped.append(looped)
    assert brief(looped) == "[1, [1, [1, [...]]]]"
    assert brief("x" * LONG) == "'" + "x" * 76 + "..."
    assert brief({"a": 1, "b": [None, 2.5, True]}) == "{'a': 1, 'b': [None, 2.5, True]}"
    assert brief(float("nan")) == "nan" and brief("a\x00b") == "'a\\x00b'"
    assert brief(10**5000).startswith("<an integer of")
    assert len(brief_names(str(i) for i in range(10**12))) <= 80
    assert brief_names(["run", "upload"]) == "run, upload"


def test_plan_errors_quote_a_bounded_value(tmp_path: Path) -> None:
    """A value built in Python (as through the API) that would expand to 10**10 strings:
    the error message quotes 80 characters of it."""
    plan = {"name": "x", "timeout": shared_lists(levels=10), "steps": [{"run": "ls"}]}
    with pytest.raises(InputError) as caught:
        PlanReader(tmp_path / "plan.yaml", default_plugins()).read(plan)
    assert caught.value.where == "timeout" and len(str(caught.value)) < MESSAGE_LIMIT


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (f"name: x\ntimeout: {[1] * LONG}\nsteps: [{{run: ls}}]\n", "timeout (line 2)"),
        (f"name: x\nos: {'w' * LONG}\nsteps: [{{run: ls}}]\n", "os (line 2)"),
        (f"name: x\nchannels: [{'c' * LONG}]\nsteps: [{{run: ls}}]\n", "channels (line 2)"),
        (f"name: x\nsteps:\n  - ? {'k' * LONG}\n    : ls\n", "step 1 (line 3)"),  # YAML's explicit key
        ("name: x\nsteps:\n  - {" + ", ".join(f"k{i}: 1" for i in range(LONG)) + "}\n", "step 1 (line 3)"),
        (f"name: x\nsteps:\n  - upload: {{src: setup.sh, dest: /x, mode: '{'9' * LONG}'}}\n", "step 1 (upload).mode"),
        (f"name: x\nsteps:\n  - run: {{command: ls, shell: {'z' * LONG}}}\n", "step 1 (run).shell (line 3)"),
        (f"name: x\nsteps:\n  - power: {'p' * LONG}\n", "step 1 (power) (line 3)"),
        (
            f"name: x\nsteps:\n  - userdata: {{user_data: setup.sh, via: {'v' * LONG}}}\n",
            "step 1 (userdata).via (line 3)",
        ),
        (f"name: x\nsteps:\n  - extra_config: {{guestinfo.a: {[1] * LONG}}}\n", "step 1 (extra_config).guestinfo.a"),
        (f"name: x\nsteps:\n  - wait: {{port: {[1] * LONG}}}\n", "step 1 (wait).port (line 3)"),
        ("name: x\nsteps:\n  - wait: {" + ", ".join(f"c{i}: 1" for i in range(LONG)) + "}\n", "step 1 (wait)"),
    ],
    ids=["timeout", "os", "channel", "kind", "keys", "mode", "shell", "power", "via", "extra_config", "port", "cond"],
)
def test_plan_errors_quote_at_most_80_characters(tmp_path: Path, body: str, where: str) -> None:
    (tmp_path / "setup.sh").write_text("echo hi\n")
    path = write_plan(tmp_path, body)
    with pytest.raises(InputError) as caught:
        load_plan(path)
    assert caught.value.where is not None and caught.value.where.startswith(where), caught.value.where
    assert len(caught.value.reason) < MESSAGE_LIMIT, caught.value.reason[:500]


@pytest.mark.parametrize(
    ("uri", "where"),
    [
        ("ssh:/" + "h" * LONG, None),
        ("ssh://h?os=" + "o" * LONG, "os"),
        ("ssh://h?known_hosts=ignore&name=a&" + "p" * LONG + "=1", "p" * LONG),
        ("vsphere://u@vc/vm?password_env=HOME&console=" + "c" * LONG, "console"),
        ("vsphere://u@vc/vm?password_env=HOME&insecure=" + "i" * LONG, "insecure"),
        ("vsphere://u@vc/vm?password_env=HOME&ssh_user=u&ssh_port=" + "9" * LONG, "ssh_port"),
    ],
    ids=["not-a-uri", "os", "parameter", "console", "insecure", "ssh_port"],
)
def test_target_errors_quote_a_bounded_value(uri: str, where: str | None) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == where
    assert len(caught.value.reason) < MESSAGE_LIMIT, caught.value.reason[:500]


def test_a_list_in_a_targets_file_is_not_written_into_a_uri(tmp_path: Path) -> None:
    path = write_plan(tmp_path, f"- {{host: h, port: {[1] * LONG}}}\n", "targets.yaml")
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.where == "entry 1.port (line 1)"
    assert "must be a string or a number" in caught.value.reason and len(caught.value.reason) < MESSAGE_LIMIT


# -- size -----------------------------------------------------------------------------------------
def test_a_plan_past_the_size_cap_is_refused_unparsed(tmp_path: Path, runs_dir: Path) -> None:
    line = "  - run: echo hello world\n"
    plan = write_plan(tmp_path, "name: big\nsteps:\n" + line * (2 * MAX_FILE_BYTES // len(line)))
    refused(run_plan(plan), str(plan), "larger than 1 MiB")


def test_the_size_cap_is_checked_before_the_whole_file_is_read(runs_dir: Path) -> None:
    """An endless plan file: refused after 1 MiB, not read until memory runs out."""
    refused(run_plan(Path("/dev/zero")), "/dev/zero", "larger than 1 MiB")


def test_a_targets_file_past_the_size_cap_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    targets = write_plan(tmp_path, f"- {UNREACHABLE}\n" * (MAX_FILE_BYTES // len(UNREACHABLE)), "targets.yaml")
    refused(bounded("run", str(plan), "--targets", str(targets)), str(targets), "larger than 1 MiB")


def test_the_size_cap_is_exact(tmp_path: Path) -> None:
    at_cap = tmp_path / "at.yaml"
    at_cap.write_text("#" + "x" * (MAX_FILE_BYTES - 2) + "\n")
    assert at_cap.stat().st_size == MAX_FILE_BYTES and load_yaml(at_cap) is None
    over = tmp_path / "over.yaml"
    over.write_text("#" + "x" * (MAX_FILE_BYTES - 1) + "\n")
    with pytest.raises(InputError, match="larger than 1 MiB"):
        load_yaml(over)


def test_the_size_cap_comes_before_decoding(tmp_path: Path) -> None:
    """The first MiB may end inside a character: the file is still too large, not garbled."""
    path = tmp_path / "wide.yaml"
    path.write_text("\u00e9" * (MAX_FILE_BYTES // 2 + 1), encoding="utf-8")
    with pytest.raises(InputError, match="larger than 1 MiB"):
        load_yaml(path)


# -- depth ----------------------------------------------------------------------------------------
def test_deep_nesting_is_refused_without_a_traceback(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: deep\nsteps: " + "[" * 100_000 + "]" * 100_000 + "\n")
    refused(run_plan(plan), str(plan), "line 2", f"nested deeper than {MAX_DEPTH} levels")


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n", "ok.yaml")
    value = load_yaml(path)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []
    path = write_plan(tmp_path, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", "deep.yaml")
    with pytest.raises(InputError, match="nested deeper"):
        load_yaml(path)


def test_an_integer_too_long_to_print_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\ntimeout: 1" + "0" * 5000 + "\nsteps: [{run: ls}]\n")
    refused(run_plan(plan), str(plan), "line 2", "integer longer than")


def test_seconds_too_large_for_a_float(tmp_path: Path) -> None:
    plan = {"name": "x", "timeout": 10**400, "steps": [{"run": "ls"}]}
    with pytest.raises(InputError, match="too large"):
        PlanReader(tmp_path / "plan.yaml", default_plugins()).read(plan)


# -- duplicate keys -------------------------------------------------------------------------------
def test_a_key_written_twice_in_a_step_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    marker = tmp_path / "marker"
    plan = write_plan(tmp_path, f"name: x\nsteps:\n  - run: {{command: echo a, command: touch {marker}}}\n")
    refused(run_plan(plan), str(plan), "line 3", "duplicate key 'command'", "on line 3 and again on line 3")
    assert not marker.exists()


def test_a_plan_name_written_twice_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: first\nsteps:\n  - run: ls\nname: second\n")
    refused(run_plan(plan), str(plan), "line 4, column 1", "duplicate key 'name'", "on line 1 and again on line 4")


def test_a_key_written_twice_in_a_targets_file_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    targets = write_plan(tmp_path, "- host: 127.0.0.1\n  port: 1\n  host: 127.0.0.2\n", "targets.yaml")
    refused(bounded("run", str(plan), "--targets", str(targets)), "duplicate key 'host'", "line 1 and again on line 3")


def test_keys_merged_in_may_still_be_overridden(tmp_path: Path) -> None:
    """``<<: *defaults`` then a key of its own is YAML's merge, not a key written twice."""
    path = write_plan(
        tmp_path,
        """
        defaults: &d {command: ls, timeout: 5}
        one: {<<: *d, timeout: 7}
        two: {<<: [*d, {become: true}], timeout: 9}
        """,
        "merge.yaml",
    )
    loaded = load_yaml(path)
    assert loaded["one"] == {"command": "ls", "timeout": 7}
    assert loaded["two"] == {"command": "ls", "timeout": 9, "become": True}
    path = write_plan(tmp_path, "one: {<<: {a: 1}, b: 2, b: 3}\n", "twice.yaml")
    with pytest.raises(InputError, match="duplicate key 'b'"):
        load_yaml(path)


# -- values nothing can use -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ("name: x\ntimeout: .nan\nsteps: [{run: ls}]\n", "timeout (line 2)", "got nan"),
        ("name: x\ntimeout: .inf\nsteps: [{run: ls}]\n", "timeout (line 2)", "got inf"),
        ("name: x\nsteps:\n  - run: {command: ls, timeout: .NaN}\n", "step 1 (run).timeout (line 3)", "positive"),
        ("name: x\nsteps:\n  - wait: {port: 22, timeout: .inf}\n", "step 1 (wait).timeout (line 3)", "positive"),
        ("name: x\nwait: [{port: 22, timeout: .nan}]\nsteps: [{run: ls}]\n", "wait[1].timeout (line 2)", "positive"),
        (
            "name: x\nsteps:\n  - wait: {tools_running: {timeout: .nan}}\n",
            "step 1 (wait).tools_running.timeout (line 3)",
            "positive",
        ),
        ('name: x\nsteps:\n  - run: "echo \\x00"\n', "step 1 (run) (line 3)", "NUL byte"),
        ('name: x\nsteps:\n  - run: {command: ls, env: {A: "a\\0b"}}\n', "step 1 (run).env.A (line 3)", "NUL byte"),
    ],
    ids=["nan", "inf", "run-nan", "port-inf", "plan-wait-nan", "vm-wait-nan", "nul-command", "nul-env"],
)
def test_values_nothing_can_use_are_refused(tmp_path: Path, body: str, where: str, reason: str) -> None:
    path = write_plan(tmp_path, body)
    with pytest.raises(InputError) as caught:
        load_plan(path)
    assert caught.value.where == where
    assert reason in caught.value.reason


def test_a_nan_timeout_exits_2_naming_the_field(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps:\n  - run: {command: ls, timeout: .nan}\n")
    refused(run_plan(plan), str(plan), "step 1 (run).timeout (line 3)", "got nan")


def test_a_nul_in_a_command_exits_2_naming_the_step(tmp_path: Path, runs_dir: Path) -> None:
    plan = write_plan(tmp_path, 'name: x\nsteps:\n  - run: "echo \\x00"\n')
    refused(run_plan(plan), str(plan), "step 1 (run) (line 3)", "NUL byte")


@pytest.mark.parametrize("option", ["--step-timeout", "--connect-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_command_line_seconds_must_be_finite(tmp_path: Path, runs_dir: Path, option: str, value: str) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    refused(run_plan(plan, option, value), option, "finite")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_connect_timeout_must_be_finite(value: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(f"ssh://h?connect_timeout={value}")
    assert caught.value.where == "connect_timeout" and "positive number of seconds" in caught.value.reason


def test_connect_timeout_in_a_targets_file_must_be_finite(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "- {host: h, connect_timeout: .nan}\n", "targets.yaml")
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.where == "entry 1 (line 1).connect_timeout"


@pytest.mark.parametrize("uri", ["ssh://root@[::1?key=x", "ssh://[::1", "vsphere://u@[vc/vm?password_env=HOME"])
def test_an_unclosed_bracket_names_the_host(uri: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_target(uri)
    assert caught.value.where == "host" and "not a valid URI" in caught.value.reason


def test_an_unclosed_bracket_exits_2(runs_dir: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    refused(bounded("run", str(plan), "--target", "ssh://root@[::1?key=x"), "--target: host", "not a valid URI")


def test_an_unclosed_bracket_in_a_targets_file_mapping(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "- {uri: 'ssh://[::1', known_hosts: ignore}\n", "targets.yaml")
    with pytest.raises(InputError) as caught:
        load_targets_file(path)
    assert caught.value.where == "entry 1.uri (line 1)" and "not a valid URI" in caught.value.reason


def test_port_zero_in_a_targets_file_exits_2(tmp_path: Path, runs_dir: Path) -> None:
    """Already refused before issue 10 (``test_port_zero_is_rejected`` covers URIs); kept
    here so the targets-file path stays covered."""
    plan = write_plan(tmp_path, "name: x\nsteps: [{run: ls}]\n")
    targets = write_plan(tmp_path, "- {host: 127.0.0.1, port: 0}\n", "targets.yaml")
    refused(bounded("run", str(plan), "--targets", str(targets)), "entry 1 (line 1).port", "1-65535")


# -- run ids --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["journal", "undo"])
def test_a_5000_character_run_id_exits_2(runs_dir: Path, command: str) -> None:
    refused(bounded(command, "a" * 5000), "RUN_ID", "not a run id")


@pytest.mark.parametrize("run_id", ["", ".", "..", "../etc", "a/b", ".hidden", "a b", "a\nb", "a\x00b", "a" * 101])
def test_run_ids_are_validated(runs_dir: Path, run_id: str) -> None:
    with pytest.raises(InputError, match="not a run id"):
        RunDirectory.open(runs_dir, run_id)


def test_a_real_run_id_still_opens(runs_dir: Path) -> None:
    created = RunDirectory.create(runs_dir, {"plan": "x"})
    assert RunDirectory.open(runs_dir, created.run_id).path == created.path
