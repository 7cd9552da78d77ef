"""Keys as the console backends send them, and keyboard layouts from real layout data.

Every backend of the ``keys`` channel (vSphere USB scan codes, VNC, RDP) is fed the
same thing: a sequence of :class:`KeyEvent`, each a key going down or up. A key is
named by its position, the PC/XT set-1 make code (extended keys as ``0xE0xx``), which
USB usage codes and RDP scan codes are derived from, and carries the X11 keysym that
keysym-based backends (VNC) send instead.

A :class:`Layout` turns text into key events for one keyboard layout. Its data is
QEMU's keymaps (``/usr/share/qemu/keymaps/NAME``, Debian's qemu-system-data; generated
by ``qemu-keymap`` from xkb-data): one ``KEYSYM SCANCODE [shift] [altgr]`` line per
character a key types at each level, and keysym names resolve to characters through
X11's ``keysymdef.h`` (Debian's x11proto-dev). A character no key types directly but
that decomposes into a base letter and an accent is typed as the layout's dead key
for that accent followed by the letter.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from beachhead.agent.errors import InputError

KEYMAP_DIR = Path("/usr/share/qemu/keymaps")
KEYSYMDEF = Path("/usr/include/X11/keysymdef.h")


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
    the level its modifiers select (for keysym and Unicode backends)."""

    key: Key
    down: bool
    keysym: int
    text: str | None = None


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

# The accent each dead key adds, by the combining character that unicodedata's
# decomposition puts after the base letter.
_DEAD_KEYS = {
    "\u0300": "dead_grave",
    "\u0301": "dead_acute",
    "\u0302": "dead_circumflex",
    "\u0303": "dead_tilde",
    "\u0308": "dead_diaeresis",
    "\u030a": "dead_abovering",
    "\u030c": "dead_caron",
    "\u0327": "dead_cedilla",
}

# Windows keyboard layout ids (KLIDs), announced by RDP clients.
WINDOWS_LAYOUT_IDS = {
    "en-us": 0x0409,
    "en-gb": 0x0809,
    "de": 0x0407,
    "de-ch": 0x0807,
    "fr": 0x040C,
    "fr-be": 0x080C,
    "fr-ca": 0x0C0C,
    "fr-ch": 0x100C,
    "es": 0x040A,
    "it": 0x0410,
    "nl": 0x0413,
    "pt": 0x0816,
    "pt-br": 0x0416,
    "sv": 0x041D,
    "da": 0x0406,
    "no": 0x0414,
    "fi": 0x040B,
    "pl": 0x0415,
    "cz": 0x0405,
    "hu": 0x040E,
    "ru": 0x0419,
    "tr": 0x041F,
    "ja": 0x0411,
}

LAYOUT_ALIASES = {"us": "en-us", "uk": "en-gb", "gb": "en-gb"}

_LINE = re.compile(r"^(\S+)\s+(0x[0-9a-fA-F]+)((?:\s+\S+)*)\s*$")
_DEFINE = re.compile(r"^#define XK_(\S+)\s+(0x[0-9a-fA-F]+)\s*(?:/\*\s*\(?U\+([0-9A-Fa-f]+))?")
_ISO_KEY = 0x56  # the key between left Shift and Z that only 105-key (ISO) keyboards have


@functools.cache
def keysyms() -> dict[str, tuple[int, str | None]]:
    """Every X11 keysym name with its value and the character it types (``None`` for
    function keys and dead keys), from ``keysymdef.h``."""
    try:
        text = KEYSYMDEF.read_text(encoding="ascii", errors="replace")
    except OSError as err:
        raise InputError(
            str(KEYSYMDEF), "keysyms", f"cannot read X11 keysyms ({err.strerror}): install x11proto-dev"
        ) from None
    table: dict[str, tuple[int, str | None]] = {}
    for line in text.splitlines():
        match = _DEFINE.match(line)
        if match:
            name, value, codepoint = match.groups()
            table.setdefault(name, (int(value, 16), chr(int(codepoint, 16)) if codepoint else None))
    return table


def _keysym_of(name: str) -> tuple[int, str | None] | None:
    if re.fullmatch(r"U[0-9A-Fa-f]{4,6}", name):
        codepoint = int(name[1:], 16)
        return 0x01000000 | codepoint, chr(codepoint)
    return keysyms().get(name)


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

    def __init__(self, name: str, strokes: dict[str, _Stroke], dead: dict[str, _Stroke]) -> None:
        self.name = name
        self._strokes = strokes
        self._dead = dead

    @property
    def windows_layout_id(self) -> int:
        """The layout's Windows KLID (0x0409 for US English), for RDP."""
        return WINDOWS_LAYOUT_IDS.get(self.name, 0x0409)

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
        decomposed = unicodedata.normalize("NFD", char)
        if len(decomposed) == 2 and decomposed[1] in _DEAD_KEYS:
            dead = self._dead.get(_DEAD_KEYS[decomposed[1]])
            base = self._strokes.get(decomposed[0])
            if dead is not None and base is not None:
                return self._typed(dead, None) + self._typed(base, char)
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
    """The layouts QEMU's keymaps provide, plus the short aliases (``us``, ``uk``)."""
    names = sorted(path.name for path in KEYMAP_DIR.glob("*") if path.is_file()) if KEYMAP_DIR.is_dir() else []
    return sorted(set(names) | {alias for alias, target in LAYOUT_ALIASES.items() if target in names})


def load_layout(name: str) -> Layout:
    """The layout ``name`` (``us``, ``uk``, ``de``, ``fr``, or any QEMU keymap name, in
    any case), read once per process."""
    canonical = LAYOUT_ALIASES.get(name.lower(), name.lower())
    path = KEYMAP_DIR / canonical
    if "/" in canonical or not path.is_file():
        known = ", ".join(layout_names()) or f"none: {KEYMAP_DIR} is missing (install qemu-system-data)"
        raise InputError(str(path), "layout", f"unknown keyboard layout {name!r} (known: {known})")
    return _load_layout(canonical)


@functools.cache
def _load_layout(canonical: str) -> Layout:
    path = KEYMAP_DIR / canonical
    strokes: dict[str, _Stroke] = {}
    dead: dict[str, _Stroke] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        name_, code, flags = match.group(1), int(match.group(2), 16), set(match.group(3).split())
        if flags & {"numlock", "inhibit"} or (canonical == "en-us" and code == _ISO_KEY):
            continue  # keypad duplicates; and US keyboards (ANSI, 104 keys) lack the ISO key
        found = _keysym_of(name_)
        if found is None:
            continue
        keysym, char = found
        stroke = _Stroke(code, "shift" in flags, "altgr" in flags, keysym)
        if name_.startswith("dead_"):
            dead.setdefault(name_, stroke)
            continue
        variants = [(char, stroke)]
        if "addupper" in flags and char is not None and char.upper() != char:
            upper = _keysym_of(name_.upper()) or (keysym, char.upper())
            variants.append((char.upper(), _Stroke(code, True, stroke.altgr, upper[0])))
        for typed, candidate in variants:
            if typed is None or typed in _CONTROL_CHARACTERS:
                continue
            current = strokes.get(typed)
            if current is None or candidate.cost < current.cost:
                strokes[typed] = candidate
    return Layout(canonical, strokes, dead)
