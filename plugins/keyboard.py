"""Keys as the console backends send them, and keyboard layouts from real layout data.

Every backend of the ``keys`` channel (vSphere USB scan codes, VNC, RDP) is fed the
same thing: a sequence of :class:`KeyEvent`, each a key going down or up. A key is
named by its position, the PC/XT set-1 make code (extended keys as ``0xE0xx``), which
USB usage codes and RDP scan codes are derived from, and carries the X11 keysym that
keysym-based backends (VNC) send instead.

A :class:`Layout` turns text into key events for one keyboard layout. Its data is
xkb-data compiled by libxkbcommon (the ``xkbcommon`` binding): for every key of the
main block, the characters each of its levels types and the modifiers (Shift, AltGr)
that select the level; XKB keycode minus 8 is the set-1 make code there. A layout is
the xkb default variant (``de``, ``fr``: dead keys included, as Debian and Windows
install them) unless a variant is named (``de-nodeadkeys``). A character no key types
is typed as a dead key then a character when libX11's Compose table (through
libxkbcommon's compose API) composes it from that pair: ``ê`` is dead circumflex then
``e``, and a dead key's own spacing accent (``^`` on ``de``) is the dead key then space.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from beachhead.agent.errors import InputError


@dataclass(frozen=True)
class Key:
    """A physical key: its name, set-1 make code (``0xE0xx`` when extended) and keysym."""

    name: str
    scancode: int
    keysym: int

    @property
    def extended(self) -> bool:
        """True for keys sent with the ``0xE0`` prefix (arrows, right Ctrl, ...)."""
        return self.scancode > 0xFF


@dataclass(frozen=True)
class KeyEvent:
    """One key going down or up; ``keysym`` and ``text`` say what a press produces at
    the level its modifiers select (for keysym and Unicode backends). ``dead`` marks the
    dead key that starts a composed character: a keysym backend, which sends the
    composed character's keysym with the next key, leaves those events out."""

    key: Key
    down: bool
    keysym: int
    text: str | None = None
    dead: bool = False  # a dead key (and its modifiers) before the key it composes with


def _key(name: str, scancode: int, keysym: int) -> Key:
    return Key(name, scancode, keysym)


LEFT_SHIFT = _key("leftShift", 0x2A, 0xFFE1)
RIGHT_SHIFT = _key("rightShift", 0x36, 0xFFE2)
LEFT_CTRL = _key("leftCtrl", 0x1D, 0xFFE3)
RIGHT_CTRL = _key("rightCtrl", 0xE01D, 0xFFE4)
LEFT_ALT = _key("leftAlt", 0x38, 0xFFE9)
RIGHT_ALT = _key("rightAlt", 0xE038, 0xFFEA)
ALTGR = _key("altGr", 0xE038, 0xFE03)  # the right Alt key, as ISO_Level3_Shift
LEFT_SUPER = _key("leftSuper", 0xE05B, 0xFFEB)
RIGHT_SUPER = _key("rightSuper", 0xE05C, 0xFFEC)

MODIFIERS: dict[str, Key] = {
    key.name.lower(): key
    for key in (LEFT_SHIFT, RIGHT_SHIFT, LEFT_CTRL, RIGHT_CTRL, LEFT_ALT, RIGHT_ALT, LEFT_SUPER, RIGHT_SUPER)
}

# Keys named in Packer's boot_command syntax (lower-cased), by position.
NAMED_KEYS: dict[str, Key] = {
    "enter": _key("enter", 0x1C, 0xFF0D),
    "return": _key("return", 0x1C, 0xFF0D),
    "esc": _key("esc", 0x01, 0xFF1B),
    "tab": _key("tab", 0x0F, 0xFF09),
    "bs": _key("bs", 0x0E, 0xFF08),
    "del": _key("del", 0xE053, 0xFFFF),
    "spacebar": _key("spacebar", 0x39, 0x0020),
    "insert": _key("insert", 0xE052, 0xFF63),
    "home": _key("home", 0xE047, 0xFF50),
    "end": _key("end", 0xE04F, 0xFF57),
    "pageup": _key("pageUp", 0xE049, 0xFF55),
    "pagedown": _key("pageDown", 0xE051, 0xFF56),
    "left": _key("left", 0xE04B, 0xFF51),
    "up": _key("up", 0xE048, 0xFF52),
    "right": _key("right", 0xE04D, 0xFF53),
    "down": _key("down", 0xE050, 0xFF54),
    **{f"f{n}": _key(f"f{n}", 0x3A + n, 0xFFBD + n) for n in range(1, 11)},
    "f11": _key("f11", 0x57, 0xFFC8),
    "f12": _key("f12", 0x58, 0xFFC9),
}

# Control characters in literal text are the keys that type them.
_CONTROL_CHARACTERS = {"\n": NAMED_KEYS["enter"], "\r": NAMED_KEYS["enter"], "\t": NAMED_KEYS["tab"]}

# Windows keyboard layout ids (KLIDs), announced by RDP clients.
WINDOWS_LAYOUT_IDS = {
    "us": 0x0409,
    "gb": 0x0809,
    "de": 0x0407,
    "ch": 0x0807,
    "ch(fr)": 0x100C,
    "fr": 0x040C,
    "be": 0x080C,
    "ca": 0x0C0C,
    "es": 0x040A,
    "it": 0x0410,
    "nl": 0x0413,
    "pt": 0x0816,
    "br": 0x0416,
    "se": 0x041D,
    "dk": 0x0406,
    "no": 0x0414,
    "fi": 0x040B,
    "pl": 0x0415,
    "cz": 0x0405,
    "hu": 0x040E,
    "ru": 0x0419,
    "tr": 0x041F,
    "jp": 0x0411,
}

# Short and QEMU-style names for xkb layouts.
LAYOUT_ALIASES = {"uk": "gb", "en-us": "us", "en-gb": "gb"}

XKB_RULES_LIST = Path("/usr/share/X11/xkb/rules/evdev.lst")
COMPOSE_LOCALE = "en_US.UTF-8"  # libX11's Compose table for UTF-8 locales
_ISO_KEY = 0x56  # the key between left Shift and Z that only 105-key (ISO) keyboards have
_NAME = re.compile(r"^([a-z]{2,8})(?:-([a-z0-9_]+)|\(([a-z0-9_]+)\))?$")
_SHIFT_MASK, _LEVEL3_MASK = 0x01, 0x80  # xkb's Shift and Mod5 (LevelThree, AltGr)
_KEYPAD = re.compile(r"^KP")


def _keysym_of_char(char: str) -> int:
    # Latin-1 keysyms are their code points; every other character has a Unicode keysym.
    codepoint = ord(char)
    return codepoint if 0x20 <= codepoint <= 0xFF else 0x01000000 | codepoint


@dataclass(frozen=True)
class _Stroke:
    scancode: int
    shift: bool
    altgr: bool
    keysym: int

    @property
    def cost(self) -> int:
        # Shift before AltGr: some levels xkb gives AltGr (uk's AltGr+q for @) are not
        # on every system's variant of the layout (Windows' UK has no AltGr+q).
        return int(self.shift) + 2 * int(self.altgr)


class Layout:
    """A keyboard layout: which key, at which level, types each character."""

    def __init__(
        self, name: str, strokes: dict[str, _Stroke], composed: dict[str, tuple[_Stroke, _Stroke]], windows_id: int
    ) -> None:
        self.name = name
        self._strokes = strokes
        self._composed = composed
        self._windows_id = windows_id

    @property
    def windows_layout_id(self) -> int:
        """The layout's Windows KLID (0x0409 for US English), for RDP."""
        return self._windows_id

    def can_type(self, char: str) -> bool:
        """True when the layout has keys that type ``char``."""
        try:
            self.events_for_char(char)
        except InputError:
            return False
        return True

    def events_for_char(self, char: str) -> list[KeyEvent]:
        """The key events that type ``char``: its key pressed and released, with Shift
        and AltGr held around it as its level needs, after a dead key when the layout
        types it as an accent on a base letter."""
        if char in _CONTROL_CHARACTERS:
            return press(_CONTROL_CHARACTERS[char], text=char)
        stroke = self._strokes.get(char)
        if stroke is not None:
            return self._typed(stroke, char)
        composed = self._composed.get(char)
        if composed is not None:
            dead, base = composed
            dead_events = [replace(event, dead=True) for event in self._typed(dead, None)]
            return dead_events + self._typed(replace(base, keysym=_keysym_of_char(char)), char)
        raise InputError(f"layout {self.name}", "text", f"no key types {char!r} (U+{ord(char):04X})")

    def events_for_text(self, text: str) -> list[KeyEvent]:
        """The key events that type ``text``, character by character."""
        events: list[KeyEvent] = []
        for char in text:
            events.extend(self.events_for_char(char))
        return events

    def _typed(self, stroke: _Stroke, char: str | None) -> list[KeyEvent]:
        key = Key(f"U+{ord(char):04X}" if char else "dead", stroke.scancode, stroke.keysym)
        held = [modifier for modifier, on in ((LEFT_SHIFT, stroke.shift), (ALTGR, stroke.altgr)) if on]
        return hold(held, press(key, keysym=stroke.keysym, text=char))


def press(key: Key, *, keysym: int | None = None, text: str | None = None) -> list[KeyEvent]:
    """``key`` pressed and released."""
    produced = key.keysym if keysym is None else keysym
    return [KeyEvent(key, True, produced, text), KeyEvent(key, False, produced, None)]


def hold(modifiers: Sequence[Key], events: Iterable[KeyEvent]) -> list[KeyEvent]:
    """``events`` with ``modifiers`` pressed before them and released after, in reverse."""
    downs = [KeyEvent(modifier, True, modifier.keysym) for modifier in modifiers]
    ups = [KeyEvent(modifier, False, modifier.keysym) for modifier in reversed(modifiers)]
    return downs + list(events) + ups


def layout_names() -> list[str]:
    """The xkb layouts xkb-data lists, plus the short aliases (``uk``)."""
    return list(_layout_names())


@functools.cache
def _layout_names() -> tuple[str, ...]:
    # Read once per process: every load_layout (each type step, each target) asks.
    try:
        lines = XKB_RULES_LIST.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ()
    names: set[str] = set()
    in_layouts = False
    for line in lines:
        if line.startswith("!"):
            in_layouts = line.strip() == "! layout"
        elif in_layouts and line.strip():
            names.add(line.split()[0])
    return tuple(
        sorted(names | {alias for alias, target in LAYOUT_ALIASES.items() if target in names and "-" not in alias})
    )


def load_layout(name: str) -> Layout:
    """The layout ``name``: an xkb layout (``us``, ``uk``, ``de``, ``fr``, ...; in any
    case) in its default variant, or ``LAYOUT-VARIANT`` / ``LAYOUT(VARIANT)``
    (``de-nodeadkeys``); compiled once per process."""
    lowered = name.lower()
    lowered = LAYOUT_ALIASES.get(lowered, lowered)
    match = _NAME.match(lowered)
    layout, variant = (match.group(1), match.group(2) or match.group(3) or "") if match else ("", "")
    if not match or layout not in layout_names():
        known = ", ".join(layout_names()) or f"none: {XKB_RULES_LIST} is missing (install xkb-data)"
        raise InputError(name, "layout", f"unknown keyboard layout {name!r} (known: {known})")
    return _load_layout(layout, variant)


@functools.cache
def _load_layout(layout: str, variant: str) -> Layout:
    name = f"{layout}({variant})" if variant else layout
    try:
        import xkbcommon.xkb as xkb
    except ImportError as err:  # the binding loads libxkbcommon through cffi
        raise InputError(name, "layout", f"cannot load libxkbcommon ({err})") from None
    context = xkb.Context()
    try:
        keymap = context.keymap_new_from_names(layout=layout, variant=variant or None)
    except xkb.XKBKeymapCreationFailure:
        raise InputError(name, "layout", f"unknown keyboard layout {name!r} (xkb cannot compile it)") from None
    strokes: dict[str, _Stroke] = {}
    dead: dict[int, _Stroke] = {}
    for keycode in range(keymap.min_keycode(), keymap.max_keycode() + 1):
        scancode = keycode - 8
        if not 0x01 <= scancode <= 0x58 or keymap.num_layouts_for_key(keycode) == 0:
            continue  # characters are on the main block; the rest differ from set 1
        if _KEYPAD.match(keymap.key_get_name(keycode) or "") or (layout == "us" and scancode == _ISO_KEY):
            continue  # keypad duplicates; and US keyboards (ANSI, 104 keys) lack the ISO key
        for level in range(keymap.num_levels_for_key(keycode, 0)):
            masks = [
                m for m in keymap.key_get_mods_for_level(keycode, 0, level) if not m & ~(_SHIFT_MASK | _LEVEL3_MASK)
            ]
            syms = keymap.key_get_syms_by_level(keycode, 0, level)
            if not masks or len(syms) != 1:
                continue
            mask = min(masks, key=lambda m: bin(m).count("1"))
            stroke = _Stroke(scancode, bool(mask & _SHIFT_MASK), bool(mask & _LEVEL3_MASK), syms[0])
            if (xkb.keysym_get_name(syms[0]) or "").startswith("dead_"):
                if syms[0] not in dead or stroke.cost < dead[syms[0]].cost:
                    dead[syms[0]] = stroke
                continue
            char = xkb.keysym_to_string(syms[0])
            if char is None or len(char) != 1 or not char.isprintable():
                continue
            current = strokes.get(char)
            if current is None or stroke.cost < current.cost:
                strokes[char] = stroke
    return Layout(
        name,
        strokes,
        _composed(xkb, context, strokes, dead),
        WINDOWS_LAYOUT_IDS.get(name, WINDOWS_LAYOUT_IDS.get(layout, 0x0409)),
    )


def _composed(
    xkb: Any, context: Any, strokes: dict[str, _Stroke], dead: dict[int, _Stroke]
) -> dict[str, tuple[_Stroke, _Stroke]]:
    """Each character the Compose table makes from one of the layout's dead keys and a
    character it types, when no key types it directly: (dead key, that character)."""
    if not dead:
        return {}
    try:
        table = context.compose_table_new_from_locale(COMPOSE_LOCALE)
    except xkb.XKBComposeTableCreationFailure:
        raise InputError(COMPOSE_LOCALE, "layout", "cannot read libX11's Compose table (install libx11-data)") from None
    state = table.compose_state_new()
    composed: dict[str, tuple[_Stroke, _Stroke]] = {}
    # A dead key's own accent is often the dead key twice (dead diaeresis then space is '"').
    for dead_stroke in sorted(dead.values(), key=lambda stroke: stroke.cost):
        for stroke in [*strokes.values(), dead_stroke]:
            state.reset()
            state.feed(dead_stroke.keysym)
            state.feed(stroke.keysym)
            if state.get_status() != xkb.ComposeStatus.XKB_COMPOSE_COMPOSED:
                continue
            char = state.get_utf8()
            if not char or len(char) != 1 or char in strokes:
                continue
            current = composed.get(char)
            if current is None or dead_stroke.cost + stroke.cost < current[0].cost + current[1].cost:
                composed[char] = (dead_stroke, stroke)
    return composed
