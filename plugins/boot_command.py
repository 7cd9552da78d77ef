"""Packer's ``boot_command`` syntax, parsed strictly, and compiled into console actions.

The text is literal characters and ``<…>`` tokens (names are case-insensitive, as in
Packer):

- keys: ``<enter>`` ``<return>`` ``<esc>`` ``<tab>`` ``<bs>`` ``<del>`` ``<spacebar>``
  ``<insert>`` ``<home>`` ``<end>`` ``<pageUp>`` ``<pageDown>`` ``<left>`` ``<right>``
  ``<up>`` ``<down>`` ``<menu>`` ``<f1>``…``<f12>``;
- modifiers, pressed alone (``<leftAlt>``) or held and released (``<leftAltOn>`` …
  ``<leftAltOff>``): ``leftAlt`` ``leftCtrl`` ``leftShift`` ``leftSuper`` ``rightAlt``
  ``rightCtrl`` ``rightShift`` ``rightSuper`` (``leftMeta``/``rightMeta`` are Super);
  any key above, and a single letter or digit, may be held the same way (``<cOn>``);
- waits: ``<wait>`` (1 s), ``<wait5>`` (whole seconds), ``<wait1m30s>`` (a Go duration:
  numbers with ``ns`` ``us`` ``µs`` ``ms`` ``s`` ``m`` ``h``);
- ``<waitFor "TEXT">`` / ``<waitFor "TEXT" 120s>``: wait until TEXT is on the screen
  (30 s unless a duration follows; ``\\"`` and ``\\\\`` escape inside the quotes);
- ``<lt>`` and ``<gt>`` type ``<`` and ``>`` (Beachhead's, not Packer's).

Where Packer types whatever it does not recognise as literal text (so ``<enetr>`` is
typed as six characters into an installer prompt, hashicorp/packer#9084), this parser
rejects it: a ``<`` followed by a word and ``>`` must be a known token, and a ``<``
followed by a token's name must be closed (``<enter`` or ``<wait 5>`` is an error). A
``<`` that starts neither (``a < b``, ``<<EOF``, ``2<&1``) is the character ``<``. Every
error names the character offset and the token. A character the layout has no key for
is rejected when the text is compiled for that layout, also before anything is typed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from beachhead.agent.errors import InputError
from beachhead.plugins.keyboard import MODIFIERS, NAMED_KEYS, Key, KeyEvent, Layout, press

DEFAULT_WAIT_FOR_S = 30.0

MENU = Key("menu", 0xE05D, 0xFF67)
SPECIAL_KEYS: dict[str, Key] = {**NAMED_KEYS, "menu": MENU}
_MODIFIER_ALIASES = {"leftmeta": "leftsuper", "rightmeta": "rightsuper"}

_WORD = re.compile(r"[A-Za-z0-9.µμ]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ESCAPES = {"lt": "<", "gt": ">"}


# -- the parsed tokens -------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    """A character to type (``offset`` is where it stands in the text)."""

    char: str = field(repr=False)
    offset: int


@dataclass(frozen=True)
class Special:
    """A named key: pressed and released (``action`` ``press``) or held ``on`` / ``off``."""

    key: Key
    action: str
    offset: int
    token: str


@dataclass(frozen=True)
class HeldChar:
    """``<cOn>`` / ``<cOff>``: a character's key held down or released."""

    char: str
    on: bool
    offset: int
    token: str


@dataclass(frozen=True)
class Wait:
    """A pause of ``seconds``."""

    seconds: float
    offset: int = 0


@dataclass(frozen=True)
class WaitFor:
    """Wait until ``text`` is on the screen, at most ``timeout_s``."""

    text: str
    timeout_s: float
    offset: int = 0


Token = Literal | Special | HeldChar | Wait | WaitFor


# -- the compiled actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Key events to send. ``text`` is what they type as characters (empty for a named
    key), kept out of ``repr`` since it may be a password; ``enter`` marks the Enter key
    (where ``verify: true`` checks the line typed before it)."""

    events: tuple[KeyEvent, ...] = field(repr=False)
    text: str = field(default="", repr=False)
    enter: bool = False


Action = Keys | Wait | WaitFor


def _error(where: str, source: str | None, offset: int, token: str, reason: str) -> InputError:
    return InputError(source, where, f"at offset {offset}: {token!r}: {reason}")


def parse_duration(text: str) -> float | None:
    """A Go duration (``1m30s``, ``1.5h``, ``300ms``) or whole seconds (``5``) in
    seconds; None when ``text`` is neither."""
    if text.isdigit():
        return float(text)
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total if text else None


def _token_names() -> set[str]:
    names = set(SPECIAL_KEYS) | set(MODIFIERS) | set(_MODIFIER_ALIASES) | set(_ESCAPES) | {"wait", "waitfor"}
    return names


def _modifier(name: str) -> Key | None:
    return MODIFIERS.get(_MODIFIER_ALIASES.get(name, name))


def _word_token(word: str, offset: int, token: str, where: str, source: str | None) -> list[Token]:
    """The tokens of ``<word>``."""
    lower = word.lower()
    if lower in _ESCAPES:
        return [Literal(_ESCAPES[lower], offset)]
    if lower.startswith("wait"):
        if lower == "wait":
            return [Wait(1.0, offset)]
        seconds = parse_duration(word[4:])
        if seconds is None:
            raise _error(where, source, offset, token, "not a duration (e.g. <wait5>, <wait1m30s>, <wait300ms>)")
        return [Wait(seconds, offset)]
    key = SPECIAL_KEYS.get(lower) or _modifier(lower)
    if key is not None:
        return [Special(key, "press", offset, token)]
    for suffix, action in (("on", "on"), ("off", "off")):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            base = lower[: -len(suffix)]
            held = SPECIAL_KEYS.get(base) or _modifier(base)
            if held is not None:
                return [Special(held, action, offset, token)]
            if len(base) == 1 and base.isalnum():
                return [HeldChar(word[0], action == "on", offset, token)]
    raise _error(where, source, offset, token, "unknown special key (write <lt> for a literal '<'; names are Packer's)")


def _wait_for(text: str, start: int, where: str, source: str | None) -> tuple[WaitFor, int]:
    """``<waitFor "TEXT" [DURATION]>`` starting at ``start``: the token and the offset after it."""
    position = start + len("<waitfor")

    def bad(reason: str, end: int | None = None) -> InputError:
        token = text[start : end if end is not None else min(len(text), position + 20)]
        return _error(where, source, start, token, reason)

    while position < len(text) and text[position] in " \t":
        position += 1
    if position >= len(text) or text[position] != '"':
        raise bad('expected <waitFor "TEXT"> or <waitFor "TEXT" 120s>')
    position += 1
    chars: list[str] = []
    while True:
        if position >= len(text):
            raise bad('unterminated <waitFor: no closing quote and ">"', len(text))
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in '"\\':
            chars.append(text[position + 1])
            position += 2
            continue
        if char == '"':
            position += 1
            break
        chars.append(char)
        position += 1
    if not chars:
        raise bad("<waitFor needs a non-empty text", position)
    close = text.find(">", position)
    if close < 0:
        raise bad('unterminated <waitFor: no closing ">"', len(text))
    duration = text[position:close].strip()
    timeout = DEFAULT_WAIT_FOR_S
    if duration:
        parsed = parse_duration(duration)
        if parsed is None or parsed <= 0:
            raise bad(f"not a positive duration: {duration!r} (e.g. 120s, 2m)", close + 1)
        timeout = parsed
    return WaitFor("".join(chars), timeout, start), close + 1


def parse(text: str, *, where: str, source: str | None = None) -> list[Token]:
    """The tokens of boot-command ``text``; :class:`InputError` (at ``source``,
    ``where``) naming the offset and token of the first malformed one."""
    if "\x00" in text:
        raise _error(where, source, text.index("\x00"), "\\x00", "contains a NUL byte")
    names = _token_names()
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char != "<":
            tokens.append(Literal(char, position))
            position += 1
            continue
        word = _WORD.match(text, position + 1)
        assert word is not None  # the pattern matches the empty string
        end = word.end()
        if word.group().lower() == "waitfor" and end < len(text) and text[end] in ' \t"':
            waited, position = _wait_for(text, position, where, source)
            tokens.append(waited)
            continue
        if word.group() and word.group()[0].isalnum() and end < len(text) and text[end] == ">":
            tokens.extend(_word_token(word.group(), position, text[position : end + 1], where, source))
            position = end + 1
            continue
        lower = word.group().lower()
        if lower in names or (lower.startswith("wait") and parse_duration(lower[4:]) is not None):
            token = text[position : min(len(text), end + 1)]
            raise _error(where, source, position, token, f"unterminated <{word.group()}: expected '>' here")
        tokens.append(Literal("<", position))
        position += 1
    return tokens


def compile_tokens(tokens: Sequence[Token], layout: Layout, *, where: str, source: str | None = None) -> list[Action]:
    """The actions that type ``tokens`` on a keyboard with ``layout``: consecutive
    characters become one :class:`Keys` (split at each Enter); :class:`InputError`
    names the offset of a character the layout has no key for."""
    actions: list[Action] = []
    pending: list[KeyEvent] = []
    typed: list[str] = []

    def flush() -> None:
        if pending:
            actions.append(Keys(tuple(pending), "".join(typed)))
            pending.clear()
            typed.clear()

    for token in tokens:
        if isinstance(token, Literal):
            if token.char in "\r\n":
                flush()
                actions.append(Keys(tuple(layout.events_for_char("\n")), "", enter=True))
                continue
            try:
                pending.extend(layout.events_for_char(token.char))
            except InputError:
                shown = token.char if token.char.isprintable() else f"U+{ord(token.char):04X}"
                raise _error(
                    where,
                    source,
                    token.offset,
                    shown,
                    f"no key types this character on the {layout.name} layout",
                ) from None
            typed.append(token.char)
        elif isinstance(token, Special):
            flush()
            if token.action == "press":
                enter = token.key.name in ("enter", "return")
                actions.append(Keys(tuple(press(token.key)), "", enter=enter))
            else:
                down = token.action == "on"
                actions.append(Keys((KeyEvent(token.key, down, token.key.keysym),)))
        elif isinstance(token, HeldChar):
            flush()
            try:
                strokes = layout.events_for_char(token.char)
            except InputError:
                raise _error(where, source, token.offset, token.token, "no key types this character") from None
            main = next(event for event in strokes if event.down and not _is_modifier(event.key))
            actions.append(Keys((KeyEvent(main.key, token.on, main.keysym),)))
        else:
            flush()
            actions.append(token)
    flush()
    return actions


def _is_modifier(key: Key) -> bool:
    return key.scancode in {modifier.scancode for modifier in MODIFIERS.values()}


def parse_boot_command(text: str, layout: Layout, *, where: str, source: str | None = None) -> list[Action]:
    """Parse ``text`` and compile it for ``layout`` (see :func:`parse`, :func:`compile_tokens`)."""
    return compile_tokens(parse(text, where=where, source=source), layout, where=where, source=source)


def key_count(actions: Sequence[Action]) -> int:
    """How many keys the actions press (for logs: never the text itself)."""
    return sum(1 for action in actions if isinstance(action, Keys) for event in action.events if event.down)
