"""Typed recipes (bootstrap/*/recipes/): parameters filled from the step, the target and
the defaults; every recipe parses and types on the us layout; bad recipe steps exit 2
naming the field before anything is typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.plugins.boot_command import compile_tokens, parse
from beachhead.plugins.keyboard import load_layout
from beachhead.plugins.recipes import available, load_recipe
from tests.conftest import beachhead, write_plan

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBeachheadTestKeyOnly test"
TARGET = "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET&connect_timeout=1"


def test_the_shipped_recipes() -> None:
    assert available() == ["linux/console-ssh", "windows/enable-winrm"]


@pytest.mark.parametrize("name", ["linux/console-ssh", "windows/enable-winrm"])
def test_every_recipe_parses_and_types_on_the_us_layout(name: str) -> None:
    params = {"authorized_key": KEY} if name.startswith("linux") else {}
    text = load_recipe(name, params, "w").render("127.0.0.7")
    actions = compile_tokens(parse(text, where="w"), load_layout("us"), where="w")
    assert actions and "${" not in text


def test_parameters_from_the_step_the_target_and_the_defaults() -> None:
    recipe = load_recipe("linux/console-ssh", {"authorized_key": KEY, "interface": "ens3"}, "w")
    text = recipe.render("127.0.0.9")
    assert "ip addr add 127.0.0.9/24 dev ens3<enter>" in text
    assert "ip route" not in text  # no gateway given: its line is left out
    assert f"echo '{KEY}' > /root/.ssh/authorized_keys<enter>" in text
    given = load_recipe(
        "linux/console-ssh", {"authorized_key": KEY, "address": "127.1.2.3", "gateway": "127.1.2.1"}, "w"
    )
    assert "ip addr add 127.1.2.3/24 dev eth0<enter>ip route add default via 127.1.2.1<enter>" in given.render(
        "127.9.9.9"
    )


def test_a_missing_parameter_is_named() -> None:
    with pytest.raises(InputError, match="needs the parameter authorized_key"):
        load_recipe("linux/console-ssh", {}, "w").render("127.0.0.9")


@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ("{recipe: linux/nope}", "recipe", "no recipe 'linux/nope' (known: linux/console-ssh, windows/enable-winrm)"),
        ("{recipe: ../../etc/passwd}", "recipe", "no recipe"),
        ("{recipe: linux/console-ssh, with: {colour: red}}", "recipe", "has no parameter colour"),
        ("{recipe: linux/console-ssh, with: [a]}", "with", "must be a mapping"),
        ("{recipe: linux/console-ssh}", "recipe", "needs the parameter authorized_key"),
        ("{recipe: linux/console-ssh, text: x}", None, "unknown field"),
    ],
)
def test_bad_recipe_steps_exit_2(tmp_path: Path, body: str, where: str | None, reason: str) -> None:
    plan = write_plan(tmp_path, f"name: keys\nsteps:\n  - type: {body}\n")
    refused = beachhead("run", str(plan), "--target", TARGET, env={"NO_SUCH_VARIABLE_SET": "x"})
    assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
    assert str(plan) in refused.stderr
    if where:
        assert f".{where}" in refused.stderr, refused.stderr


def test_the_address_comes_from_the_target(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path, f"name: keys\nsteps:\n  - type: {{recipe: linux/console-ssh, with: {{authorized_key: '{KEY}'}}}}\n"
    )
    refused = beachhead("run", str(plan), "--target", TARGET, env={"NO_SUCH_VARIABLE_SET": "x"})
    assert refused.returncode == 2 and "needs the parameter address" in refused.stderr, refused.stderr
    addressed = beachhead(
        "run", str(plan), "--target", TARGET + "&address=127.0.0.9", env={"NO_SUCH_VARIABLE_SET": "x"}
    )
    assert addressed.returncode != 2, addressed.stderr  # checked; then vc.invalid is unreachable
