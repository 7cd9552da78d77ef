"""Keyboard layouts from QEMU's keymaps: which key at which level types a character on
us, uk, de and fr, AltGr, dead keys, and the errors for what cannot be typed."""

from __future__ import annotations

import pytest

from beachhead.agent.errors import InputError
from beachhead.plugins.keyboard import (
    ALTGR,
    LEFT_SHIFT,
    NAMED_KEYS,
    KeyEvent,
    hold,
    layout_names,
    load_layout,
    press,
)


def strokes(layout: str, char: str) -> list[tuple[int, bool]]:
    """(set-1 scancode, down) of each event typing ``char``."""
    return [(event.key.scancode, event.down) for event in load_layout(layout).events_for_char(char)]


def plain(code: int) -> list[tuple[int, bool]]:
    return [(code, True), (code, False)]


def with_held(modifiers: list[int], code: int) -> list[tuple[int, bool]]:
    return [(m, True) for m in modifiers] + plain(code) + [(m, False) for m in reversed(modifiers)]


SHIFT, ALT_GR = LEFT_SHIFT.scancode, ALTGR.scancode


@pytest.mark.parametrize(
    ("layout", "char", "expected"),
    [
        ("us", "a", plain(0x1E)),
        ("us", "A", with_held([SHIFT], 0x1E)),
        ("us", "!", with_held([SHIFT], 0x02)),
        ("us", "@", with_held([SHIFT], 0x03)),
        ("us", "\\", plain(0x2B)),
        ("us", "|", with_held([SHIFT], 0x2B)),
        ("us", "~", with_held([SHIFT], 0x29)),
        ("us", " ", plain(0x39)),
        ("us", "\n", plain(0x1C)),
        ("us", "\t", plain(0x0F)),
        ("uk", '"', with_held([SHIFT], 0x03)),
        ("uk", "@", with_held([SHIFT], 0x28)),
        ("uk", "£", with_held([SHIFT], 0x04)),
        ("uk", "#", plain(0x2B)),
        ("uk", "\\", plain(0x56)),  # the ISO key US keyboards lack
        ("de", "z", plain(0x15)),
        ("de", "y", plain(0x2C)),
        ("de", "ß", plain(0x0C)),
        ("de", "ü", plain(0x1A)),
        ("de", "@", with_held([ALT_GR], 0x10)),  # AltGr+q
        ("de", "{", with_held([ALT_GR], 0x08)),
        ("de", "\\", with_held([ALT_GR], 0x0C)),
        ("de", "|", with_held([ALT_GR], 0x56)),
        ("de", "€", with_held([ALT_GR], 0x12)),
        ("de", ">", with_held([SHIFT], 0x56)),
        ("fr", "a", plain(0x10)),  # AZERTY
        ("fr", "q", plain(0x1E)),
        ("fr", "é", plain(0x03)),
        ("fr", "1", with_held([SHIFT], 0x02)),
        ("fr", "@", with_held([ALT_GR], 0x0B)),
        ("fr", "#", with_held([ALT_GR], 0x04)),
    ],
)
def test_characters(layout: str, char: str, expected: list[tuple[int, bool]]) -> None:
    assert strokes(layout, char) == expected


def test_dead_keys_on_fr() -> None:
    # ë: no key types it; the dead diaeresis then e does.
    events = load_layout("fr").events_for_char("ë")
    dead, letter = events[:-2], events[-2:]
    assert [e.key.name for e in dead if e.key.scancode != ALT_GR] == ["dead", "dead"]
    assert [(e.key.scancode, e.down) for e in letter] == plain(0x12)
    assert letter[0].text == "ë" and all(e.text is None for e in dead)


def test_alias_names_and_windows_layout_ids() -> None:
    assert load_layout("US").name == load_layout("us").name
    assert load_layout("us").name == "en-us" and load_layout("uk").name == "en-gb"
    assert (load_layout("us").windows_layout_id, load_layout("de").windows_layout_id) == (0x0409, 0x0407)
    assert {"us", "uk", "de", "fr"} <= set(layout_names())


def test_us_and_de_differ_and_events_carry_keysyms_and_text() -> None:
    assert strokes("us", "z") != strokes("de", "z")
    down = load_layout("us").events_for_char("A")[1]
    assert (down.keysym, down.text, down.down) == (0x41, "A", True)


def test_text_is_every_character_in_turn() -> None:
    us = load_layout("us")
    assert us.events_for_text("ab") == us.events_for_char("a") + us.events_for_char("b")


def test_what_cannot_be_typed() -> None:
    with pytest.raises(InputError, match=r"no key types 'é' \(U\+00E9\)"):
        load_layout("us").events_for_char("é")
    assert not load_layout("us").can_type("€")
    assert not load_layout("de").can_type("\x07")
    with pytest.raises(InputError, match="unknown keyboard layout 'xx'"):
        load_layout("xx")
    with pytest.raises(InputError, match="unknown keyboard layout"):
        load_layout("../etc/passwd")


def test_press_and_hold() -> None:
    enter = NAMED_KEYS["enter"]
    assert press(enter) == [KeyEvent(enter, True, enter.keysym), KeyEvent(enter, False, enter.keysym)]
    held = hold([LEFT_SHIFT, ALTGR], press(enter))
    assert [(e.key, e.down) for e in held] == [
        (LEFT_SHIFT, True),
        (ALTGR, True),
        (enter, True),
        (enter, False),
        (ALTGR, False),
        (LEFT_SHIFT, False),
    ]
