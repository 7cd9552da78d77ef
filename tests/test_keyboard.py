"""Keyboard layouts from xkb-data through libxkbcommon: which key at which level types a character on
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


DEAD_CIRCUMFLEX, DEAD_DIAERESIS, DEAD_ACUTE, DEAD_GRAVE, DEAD_TILDE = 0xFE52, 0xFE57, 0xFE51, 0xFE50, 0xFE53


def dead_then(layout: str, char: str) -> tuple[tuple[int, list[tuple[int, bool]]], list[tuple[int, bool]]]:
    """((dead keysym, its events), the events of the key after it) typing ``char``."""
    events = load_layout(layout).events_for_char(char)
    dead = [e for e in events if e.dead]
    rest = [e for e in events if not e.dead]
    assert dead and events[: len(dead)] == dead, f"{char!r} on {layout} starts with a dead key"
    assert [e.text for e in rest if e.text] == [char] and all(e.text is None for e in dead)
    keysyms = {e.keysym for e in dead if e.key.name == "dead"}
    assert len(keysyms) == 1
    return (keysyms.pop(), [(e.key.scancode, e.down) for e in dead]), [(e.key.scancode, e.down) for e in rest]


# The default xkb variants (what Debian and Windows install): dead keys, composed by
# libX11's Compose table. fr: ^ key (AD11) dead circumflex, Shift+^ dead diaeresis;
# de: ^ key (TLDE) dead circumflex, the key right of ß dead acute, Shift on it dead grave.
@pytest.mark.parametrize(
    ("layout", "char", "dead", "after"),
    [
        ("fr", "ê", (DEAD_CIRCUMFLEX, plain(0x1A)), plain(0x12)),
        ("fr", "â", (DEAD_CIRCUMFLEX, plain(0x1A)), plain(0x10)),  # a is AZERTY's AD01
        ("fr", "ô", (DEAD_CIRCUMFLEX, plain(0x1A)), plain(0x18)),
        ("fr", "Ô", (DEAD_CIRCUMFLEX, plain(0x1A)), with_held([SHIFT], 0x18)),
        ("fr", "ë", (DEAD_DIAERESIS, with_held([SHIFT], 0x1A)), plain(0x12)),
        ("fr", "ï", (DEAD_DIAERESIS, with_held([SHIFT], 0x1A)), plain(0x17)),
        ("fr", "¨", (DEAD_DIAERESIS, with_held([SHIFT], 0x1A)), with_held([SHIFT], 0x1A)),  # Compose: twice
        ("de", "^", (DEAD_CIRCUMFLEX, plain(0x29)), plain(0x39)),  # the dead key, then space
        ("de", "ê", (DEAD_CIRCUMFLEX, plain(0x29)), plain(0x12)),
        ("de", "â", (DEAD_CIRCUMFLEX, plain(0x29)), plain(0x1E)),
        ("de", "ô", (DEAD_CIRCUMFLEX, plain(0x29)), plain(0x18)),
        ("de", "é", (DEAD_ACUTE, plain(0x0D)), plain(0x12)),
        ("de", "`", (DEAD_GRAVE, with_held([SHIFT], 0x0D)), plain(0x39)),
        ("de", "à", (DEAD_GRAVE, with_held([SHIFT], 0x0D)), plain(0x1E)),
    ],
)
def test_dead_key_sequences(
    layout: str, char: str, dead: tuple[int, list[tuple[int, bool]]], after: list[tuple[int, bool]]
) -> None:
    assert dead_then(layout, char) == (dead, after)


def test_the_nodeadkeys_variant_types_accents_directly() -> None:
    assert strokes("de-nodeadkeys", "^") == plain(0x29)
    assert strokes("de(nodeadkeys)", "^") == strokes("de-nodeadkeys", "^")
    assert not any(e.dead for e in load_layout("fr-nodeadkeys").events_for_text("^¨"))
    assert not load_layout("fr-nodeadkeys").can_type("ê")  # no dead key composes it
    assert load_layout("de-nodeadkeys").windows_layout_id == 0x0407


def test_composed_characters_carry_their_own_keysym() -> None:
    # A keysym backend leaves the dead events out and sends the composed keysym.
    events = load_layout("fr").events_for_char("ê")
    assert [(e.keysym, e.down) for e in events if not e.dead] == [(0xEA, True), (0xEA, False)]
    assert {e.keysym for e in events if e.dead and e.key.name == "dead"} == {DEAD_CIRCUMFLEX}


def test_what_the_layouts_do_not_compose() -> None:
    assert not load_layout("fr").can_type("ñ")  # fr and de have no dead tilde
    assert not load_layout("de").can_type("ñ")
    assert not any(e.dead for e in load_layout("us").events_for_text("^`~'\""))


def test_alias_names_and_windows_layout_ids() -> None:
    assert load_layout("US").name == load_layout("us").name
    assert load_layout("us").name == "us" and load_layout("uk").name == "gb"
    assert load_layout("en-gb").name == "gb"
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
    with pytest.raises(InputError, match="xkb cannot compile it"):
        load_layout("de-nosuchvariant")


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
