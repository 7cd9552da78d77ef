"""Packer's boot_command syntax: every token, durations, modifiers, and every malformed
case rejected with its offset before anything is typed; the USB encoding of the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from beachhead.agent.errors import InputError
from beachhead.plugins.boot_command import (
    DEFAULT_WAIT_FOR_S,
    HeldChar,
    Keys,
    Literal,
    Special,
    Wait,
    WaitFor,
    key_count,
    parse,
    parse_boot_command,
    parse_duration,
)
from beachhead.plugins.keyboard import MODIFIERS, NAMED_KEYS, load_layout
from beachhead.plugins.keys_usb import SET1_TO_HID, UsbKey, usb_keys
from tests.conftest import beachhead, write_plan

US = load_layout("us")
WHERE = "steps[2] (type)"


def tokens(text: str) -> list[object]:
    return list(parse(text, where=WHERE))


def special(text: str) -> Special:
    (token,) = tokens(text)
    assert isinstance(token, Special)
    return token


@pytest.mark.parametrize(
    ("token", "key"),
    [
        ("<enter>", "enter"),
        ("<return>", "return"),
        ("<esc>", "esc"),
        ("<tab>", "tab"),
        ("<bs>", "bs"),
        ("<del>", "del"),
        ("<spacebar>", "spacebar"),
        ("<insert>", "insert"),
        ("<home>", "home"),
        ("<end>", "end"),
        ("<pageUp>", "pageUp"),
        ("<pageDown>", "pageDown"),
        ("<left>", "left"),
        ("<right>", "right"),
        ("<up>", "up"),
        ("<down>", "down"),
        ("<menu>", "menu"),
        *[(f"<f{n}>", f"f{n}") for n in range(1, 13)],
    ],
)
def test_every_special_key(token: str, key: str) -> None:
    parsed = special(token)
    assert (parsed.key.name, parsed.action, parsed.offset, parsed.token) == (key, "press", 0, token)
    assert special(token.upper()).key == parsed.key  # Packer's names are case-insensitive
    (action,) = parse_boot_command(token, US, where=WHERE)
    assert isinstance(action, Keys)
    assert [event.down for event in action.events] == [True, False]
    assert action.enter == (key in ("enter", "return"))
    assert SET1_TO_HID.get(parsed.key.scancode), f"{key} has no USB usage id"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("modifier", ["Alt", "Ctrl", "Shift", "Super"])
def test_modifier_on_off_and_press(side: str, modifier: str) -> None:
    name = f"{side}{modifier}"
    key = MODIFIERS[name.lower()]
    on, off = tokens(f"<{name}On><{name.upper()}OFF>")
    assert isinstance(on, Special) and isinstance(off, Special)
    assert (on.key, on.action, off.key, off.action, off.offset) == (key, "on", key, "off", len(name) + 4)
    assert special(f"<{name}>").action == "press"
    down, up = parse_boot_command(f"<{name}On><{name}Off>", US, where=WHERE)
    assert isinstance(down, Keys) and isinstance(up, Keys)
    assert [(e.key, e.down) for e in down.events + up.events] == [(key, True), (key, False)]


def test_meta_is_super_and_keys_can_be_held() -> None:
    assert special("<leftMeta>").key == MODIFIERS["leftsuper"]
    assert special("<rightMetaOn>").key == MODIFIERS["rightsuper"]
    assert special("<f5On>").action == "on"
    assert special("<enterOff>").key == NAMED_KEYS["enter"]
    held = tokens("<cOn><COff>")
    assert held == [HeldChar("c", True, 0, "<cOn>"), HeldChar("C", False, 5, "<COff>")]


def test_ctrl_c_types_c_between_ctrl_down_and_up() -> None:
    actions = parse_boot_command("<leftCtrlOn>c<leftCtrlOff>", US, where=WHERE)
    events = [event for action in actions if isinstance(action, Keys) for event in action.events]
    assert [(e.key.name, e.down) for e in events] == [
        ("leftCtrl", True),
        ("U+0063", True),
        ("U+0063", False),
        ("leftCtrl", False),
    ]
    assert usb_keys(events) == [UsbKey(0x06, frozenset({"leftControl"}))]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("<wait>", 1.0),
        ("<wait5>", 5.0),
        ("<wait10>", 10.0),
        ("<WAIT10>", 10.0),
        ("<wait1m30s>", 90.0),
        ("<wait300ms>", 0.3),
        ("<wait1.5h>", 5400.0),
        ("<wait2h45m>", 9900.0),
        ("<wait10us>", 1e-5),
        ("<wait7µs>", 7e-6),
        ("<wait0>", 0.0),
    ],
)
def test_waits(text: str, seconds: float) -> None:
    (token,) = tokens(text)
    assert isinstance(token, Wait)
    assert token.seconds == pytest.approx(seconds)


def test_durations() -> None:
    assert parse_duration("1m30s") == 90
    assert parse_duration("5") == 5
    assert parse_duration(".5s") == 0.5
    for bad in ("", "5x", "m", "1m30", "-5s", "1 s", "s5"):
        assert parse_duration(bad) is None, bad


def test_wait_for() -> None:
    first, second, third = tokens('<waitFor "login:"><waitfor "a \\"b\\" c" 120s><WAITFOR   "x"  2m >')
    assert first == WaitFor("login:", DEFAULT_WAIT_FOR_S, 0)
    assert second == WaitFor('a "b" c', 120.0, 18)
    assert isinstance(third, WaitFor) and (third.text, third.timeout_s) == ("x", 120.0)


def test_literal_text_and_what_a_lone_angle_bracket_is() -> None:
    parsed = tokens("a < b <<EOF 2<&1 <")
    assert all(isinstance(token, Literal) for token in parsed)
    assert "".join(token.char for token in parsed if isinstance(token, Literal)) == "a < b <<EOF 2<&1 <"
    assert [t.char for t in tokens("<lt>x<GT>") if isinstance(t, Literal)] == ["<", "x", ">"]


def test_compiled_actions_split_at_enter_and_keep_text_out_of_repr() -> None:
    actions = parse_boot_command("root<enter><wait>s3cret!\nip a", US, where=WHERE)
    kinds = [(type(a).__name__, getattr(a, "text", None), getattr(a, "enter", None)) for a in actions]
    assert kinds == [
        ("Keys", "root", False),
        ("Keys", "", True),
        ("Wait", None, None),
        ("Keys", "s3cret!", False),
        ("Keys", "", True),
        ("Keys", "ip a", False),
    ]
    assert "s3cret" not in repr(actions)
    assert key_count(actions) == 4 + 1 + 7 + 1 + 1 + 4  # ! is Shift and 1


@pytest.mark.parametrize(
    ("text", "offset", "token", "reason"),
    [
        ("ab<enetr>", 2, "<enetr>", "unknown special key"),  # hashicorp/packer#9084: never typed
        ("<foo>", 0, "<foo>", "unknown special key"),
        ("x<5>", 1, "<5>", "unknown special key"),
        ("<leftAltOnn>", 0, "<leftAltOnn>", "unknown special key"),
        ("<ab On>", 0, "<ab On>", None),  # a word then a space is text...
        ("xy<enter", 2, "<enter", "unterminated <enter"),
        ("<wait 5>", 0, "<wait ", "unterminated <wait"),
        ("<wait5 >", 0, "<wait5 ", "unterminated <wait5"),
        ("<wait5x>", 0, "<wait5x>", "not a duration"),
        ("<wait-5s>", 0, "<wait-", "unterminated <wait"),
        ('<waitFor "login', 0, '<waitFor "login', "unterminated <waitFor: no closing quote"),
        ('<waitFor "login"', 0, '<waitFor "login"', 'no closing ">"'),
        ("<waitFor login>", 0, "<waitFor login>", 'expected <waitFor "TEXT">'),
        ('<waitFor "">', 0, '<waitFor ""', "non-empty text"),
        ('<waitFor "x" 5q>', 0, '<waitFor "x" 5q>', "not a positive duration"),
        ('<waitFor "x" 0s>', 0, '<waitFor "x" 0s>', "not a positive duration"),
        ("a\x00b", 1, "\\x00", "NUL"),
        ("ok é", 3, "é", "no key types this character on the us layout"),
        ("€", 0, "€", "no key types"),
        ("<éOn>", None, None, None),  # not a token: '<' then 'é': typed as text, é then rejected
    ],
)
def test_malformed_input_names_offset_and_token(
    text: str, offset: int | None, token: str | None, reason: str | None
) -> None:
    if reason is None and token == "<ab On>":
        assert all(isinstance(t, Literal) for t in tokens(text))  # ...not a token
        return
    with pytest.raises(InputError) as caught:
        parse_boot_command(text, US, where=WHERE, source="plan.yaml")
    error = caught.value
    assert (error.source, error.where) == ("plan.yaml", WHERE)
    if offset is not None:
        assert error.reason.startswith(f"at offset {offset}: {token!r}: "), error.reason
    if reason is not None:
        assert reason in error.reason


def test_usb_encoding_of_shifted_and_altgr_text() -> None:
    assert usb_keys(US.events_for_text("aA!\n")) == [
        UsbKey(0x04),
        UsbKey(0x04, frozenset({"leftShift"})),
        UsbKey(0x1E, frozenset({"leftShift"})),
        UsbKey(0x28),
    ]
    assert UsbKey(0x04).hid_code == 0x00040007
    de = load_layout("de")
    assert usb_keys(de.events_for_text("@z")) == [UsbKey(0x14, frozenset({"rightAlt"})), UsbKey(0x1C)]


def test_a_modifier_pressed_alone_is_sent_as_its_own_key() -> None:
    actions = parse_boot_command("<leftSuper><rightShiftOn>a<rightShiftOff>", US, where=WHERE)
    events = [event for action in actions if isinstance(action, Keys) for event in action.events]
    assert usb_keys(events) == [UsbKey(0xE3, frozenset({"leftGui"})), UsbKey(0x04, frozenset({"rightShift"}))]


def test_every_key_the_layouts_type_has_a_usb_usage() -> None:
    for name in ("us", "uk", "de", "fr"):
        layout = load_layout(name)
        for char in map(chr, range(0x20, 0x250)):
            if layout.can_type(char):
                usb_keys(layout.events_for_char(char))  # raises for a key with no usage id


def test_a_plan_with_malformed_text_is_refused_before_anything_runs(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path,
        """
        name: keys
        steps:
          - type: "touch /tmp/never<enter>"
          - type: {text: "echo <enetr>", pace_ms: 5}
        """,
    )
    target = "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET"
    refused = beachhead("run", str(plan), "--target", target, env={"NO_SUCH_VARIABLE_SET": "x"})
    assert refused.returncode == 2, refused.stderr
    assert "at offset 5: '<enetr>': unknown special key" in refused.stderr
    assert "steps[1]" in refused.stderr or "step 2" in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{text: "x", layout: xx}', "unknown keyboard layout 'xx'"),
        ('{text: "x", pace_ms: -1}', "pace_ms"),
        ('{text: "x", verify: maybe}', "must be true or false"),
        ('{text: "x", speed: 3}', "unknown field"),
        ('""', "non-empty"),
        ('{text: "ü"}', "no key types this character on the us layout"),
    ],
)
def test_bad_type_steps(tmp_path: Path, body: str, reason: str) -> None:
    plan = write_plan(tmp_path, f"name: keys\nsteps:\n  - type: {body}\n")
    target = "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET"
    refused = beachhead("run", str(plan), "--target", target, env={"NO_SUCH_VARIABLE_SET": "x"})
    assert refused.returncode == 2 and reason in refused.stderr, refused.stderr


def test_a_type_step_needs_a_console(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "name: keys\nsteps:\n  - type: ls<enter>\n")
    refused = beachhead("run", str(plan), "--target", "ssh://root@host.invalid")
    assert refused.returncode == 2 and "type needs a console" in refused.stderr, refused.stderr


def test_the_target_layout_and_pace(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, 'name: keys\nsteps:\n  - type: "grüße<enter>"\n')
    base = "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET&connect_timeout=1"
    env = {"NO_SUCH_VARIABLE_SET": "x"}
    refused = beachhead("run", str(plan), "--target", base, env=env)
    assert refused.returncode == 2 and "no key types this character on the us layout" in refused.stderr
    for bad, reason in (("&layout=../x", "not a keyboard layout name"), ("&pace_ms=-1", "0 to 10000")):
        refused = beachhead("run", str(plan), "--target", base + bad, env=env)
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr
    # German has keys for ü and ß: the plan is good, and the run fails only at the vCenter.
    failed = beachhead("run", str(plan), "--target", base + "&layout=de&pace_ms=5", env=env)
    assert failed.returncode == 1, failed.stderr


def test_what_verify_accepts_as_the_line_shown() -> None:
    from beachhead.plugins.steps.type import _shows

    screen = "login: root\n\n# cat > /tmp/f\nalpha  bravo charlie\n\n"
    assert _shows(screen, "alpha bravo charlie")
    assert not _shows(screen, "alpha bravo charlie delta")
    assert not _shows(screen, "login: root")  # not the bottom of the screen
    long_line = "x" * 70 + " " + "y" * 30  # wrapped by an 80-column screen
    assert _shows(f"# {long_line[:78]}\n{long_line[78:]}\n", long_line)
    assert _shows(f"# {long_line[:69]}\n{long_line[70:]}\n", long_line.replace(" ", "")) is False
    assert _shows(f"# {'x' * 70}\n{'y' * 30}\n", long_line)  # wrapped at the space
    assert not _shows(f"# {long_line[:78]}\n{long_line[79:]}\n", long_line)  # a key lost at the wrap


def test_screenshot_command_help_and_bad_input(tmp_path: Path) -> None:
    shown = beachhead("screenshot", "--help")
    assert shown.returncode == 0 and "CreateScreenshot_Task" in shown.stdout and "Exit status" in shown.stdout
    refused = beachhead("screenshot", "ssh://root@host.invalid", "-o", str(tmp_path / "x.png"))
    assert refused.returncode == 2 and "not ssh://" in refused.stderr
    refused = beachhead(
        "screenshot",
        "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET&console=serial",
        env={"NO_SUCH_VARIABLE_SET": "x"},
    )
    assert refused.returncode == 2 and "console" in refused.stderr, refused.stderr
    unreachable = beachhead(
        "screenshot",
        "vsphere://u@vc.invalid/vm?password_env=NO_SUCH_VARIABLE_SET",
        "-o",
        str(tmp_path / "x.png"),
        "--connect-timeout",
        "2",
        env={"NO_SUCH_VARIABLE_SET": "x"},
    )
    assert unreachable.returncode == 1 and not (tmp_path / "x.png").exists(), unreachable.stderr
