"""The ``type`` step: keystrokes at the guest's console, in Packer's ``boot_command``
syntax (:mod:`beachhead.plugins.boot_command`), through the ``keys`` channel.

``- type: "root<enter><wait>ip a<enter>"`` or
``- type: {text: ..., layout: de, pace_ms: 20, verify: true, timeout: 120}`` or, instead
of ``text``, a recipe (:mod:`beachhead.plugins.recipes`):
``- type: {recipe: linux/console-ssh, with: {authorized_key: "ssh-ed25519 ..."}}``, its
parameters from ``with:``, the target (``address=``) and the recipe defaults.

The whole text is parsed and compiled for the layout (``us`` unless given) when the plan
is read: a malformed token or a character the layout cannot type is bad input, and
nothing is typed. ``pace_ms`` is the pause between key events (the console backend's
own default otherwise); ``verify: true`` reads the screen (OCR) before each Enter and,
when the line typed did not arrive intact, erases and retypes it (at most
:data:`VERIFY_ATTEMPTS` times, each time at twice the pace, which the rest of the step
keeps) before pressing Enter; it suits lines the console echoes (not a password
prompt's).

The typed text may be a password: it is never logged or journaled. The journal entry
(``type``) records counts only; keystrokes cannot be taken back, so undo lists it as
kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from beachhead.agent.channel import Capability
from beachhead.agent.context import StepContext
from beachhead.agent.errors import InputError, StepFailed, brief
from beachhead.agent.hookspecs import hookimpl
from beachhead.agent.plans import PlanReader
from beachhead.agent.stepkinds import CheckContext, Operation, StepKind
from beachhead.agent.targets import Target
from beachhead.plugins.boot_command import Action, Keys, Token, Wait, WaitFor, compile_tokens, key_count, parse
from beachhead.plugins.keyboard import NAMED_KEYS, KeyEvent, load_layout, press
from beachhead.plugins.recipes import Recipe, load_recipe

DEFAULT_LAYOUT = "us"
VERIFY_ATTEMPTS = 3
VERIFY_SETTLE_S = 2.0  # how long a typed line may take to show before it counts as garbled
VERIFY_POLL_S = 0.3
#: Screens read at least, however long OCR takes: on a loaded machine one read can
#: outlast the settle time, and its screenshot predate the line's last keys.
VERIFY_MIN_READS = 2
RETYPE_MIN_PACE_S = 0.01  # a line retyped is paced at least this much, doubling per retry
MAX_PACE_MS = 10_000
RECIPE_CHECK_ADDRESS = "192.0.2.1"  # TEST-NET-1: only to parse a recipe before a target is known


@dataclass(frozen=True)
class TypeStep:
    """Type the step's text (its parsed ``tokens``) at the console, with the step's
    ``layout`` when it gives one, else the target's ``layout=``, else ``us``."""

    tokens: tuple[Token, ...] = field(repr=False)
    layout: str | None = None
    pace_ms: float | None = None
    verify: bool = False
    timeout: float | None = None
    recipe: Recipe | None = None
    kind: ClassVar[str] = "type"

    def layout_for(self, target: Target) -> str:
        """The layout the step types with on ``target``: the step's, else the target's, else us."""
        return self.layout or target.layout or DEFAULT_LAYOUT

    def actions_for(self, target: Target, where: str = "type") -> tuple[Action, ...]:
        """The actions typing the text on ``target``'s layout (:class:`InputError`
        naming the offset of a character the layout has no key for)."""
        tokens = self.tokens
        if self.recipe is not None:  # the target's address fills the recipe's ${address}
            tokens = tuple(parse(self.recipe.render(target.address, where), where=where))
        return tuple(compile_tokens(tokens, load_layout(self.layout_for(target)), where=where))

    def describe(self) -> str:
        """Human description of the step (counts only: the text may be a password)."""
        waits = sum(1 for token in self.tokens if isinstance(token, Wait | WaitFor))
        typed = len(self.tokens) - waits
        extra = f", {waits} wait{'s' * (waits != 1)}" if waits else ""
        layout = f", {self.layout}" if self.layout else ""
        return f"type {typed} keys{layout}{extra}{', verified' if self.verify else ''}"


TYPE = Operation(
    "type",
    describe=lambda entry: f"{entry.intent.get('keys', '?')} keys typed at the {entry.intent.get('console')} console",
    kept=lambda entry: "keystrokes cannot be taken back",
)


class Type(StepKind):
    """The ``type`` step kind."""

    name = "type"
    capability = Capability.TYPE_KEYS
    operations = (TYPE,)

    def parse(self, body: Any, reader: PlanReader, where: str, parent: Any) -> TypeStep:
        """A boot-command string, or a mapping with ``text`` and options."""
        if isinstance(body, str):
            body = {"text": body}
            mapping = parent
        else:
            options = {"layout", "pace_ms", "verify", "timeout"}
            if isinstance(body, dict) and "recipe" in body:
                body = reader.fields(body, where, parent, {"recipe"}, options | {"with"})
            else:
                body = reader.fields(body, where, parent, {"text"}, options)
            mapping = body
        recipe = _recipe(body, reader, where) if "recipe" in body else None
        text = body["text"] if recipe is None else _render_for_check(recipe, reader, where, body)
        text_where = where if mapping is parent else f"{where}.{'text' if recipe is None else 'recipe'}"
        if not isinstance(text, str) or not text:
            raise reader.error(text_where, "must be a non-empty string of boot_command text", mapping, "text")
        layout_name = body.get("layout")
        if layout_name is not None and not isinstance(layout_name, str):
            raise reader.error(f"{where}.layout", f"must be a layout name such as de, got {brief(layout_name)}", body)
        try:
            layout = load_layout(layout_name) if layout_name else None
        except InputError as exc:
            raise reader.error(f"{where}.layout", exc.reason, body, "layout") from None
        try:
            tokens = parse(text, where=text_where)
            if layout is not None:  # else the target's layout decides, at check time
                compile_tokens(tokens, layout, where=text_where)
        except InputError as exc:
            raise reader.error(text_where, exc.reason, mapping, "text") from None
        pace = body.get("pace_ms")
        if pace is not None and (
            isinstance(pace, bool) or not isinstance(pace, int | float) or not 0 <= pace <= MAX_PACE_MS
        ):
            raise reader.error(f"{where}.pace_ms", f"must be 0 to {MAX_PACE_MS} milliseconds, got {brief(pace)}", body)
        verify = body.get("verify", False)
        if not isinstance(verify, bool):
            raise reader.error(f"{where}.verify", "must be true or false", body, "verify")
        timeout = reader.seconds(body.get("timeout"), f"{where}.timeout", body, "timeout")
        return TypeStep(
            tuple(tokens),
            layout_name,
            None if pace is None else float(pace),
            verify,
            timeout,
            recipe,
        )

    def check(self, step: TypeStep, target: Target, context: CheckContext) -> str | None:
        """A console to type into (vsphere:// and vnc:// targets), and keys on the
        layout for every character."""
        if target.scheme not in ("vsphere", "vnc"):
            return f"type needs a console: a vsphere:// or vnc:// target, not {target.scheme}://"
        try:
            step.actions_for(target)
        except InputError as exc:
            return f"{exc.reason} (target {target.name})"
        return None

    async def execute(self, step: TypeStep, ctx: StepContext) -> None:
        """Type the actions over the keys channel, journaled (counts only)."""
        from beachhead.plugins.keys import KeysSession

        layout = step.layout_for(ctx.target)
        actions = step.actions_for(ctx.target)
        ctx.target_context.notes.setdefault("keys.layout", layout)
        session: KeysSession = await ctx.session(Capability.TYPE_KEYS)
        backend = await session.ready(ctx)
        pace_ms = next(p for p in (step.pace_ms, ctx.target.pace_ms, session.default_pace_ms) if p is not None)
        typist = Typist(backend, pace_ms / 1000, ctx)
        seq = ctx.reserve()
        details = {"console": str(session.kind), "keys": key_count(actions), "layout": layout, "pace_ms": pace_ms}
        with ctx.journaled(seq, "type", channel=session.channel, **details) as after:
            try:
                await typist.perform(actions, verify=step.verify)
            finally:
                final = {
                    "keys_sent": typist.sent,
                    "retyped_lines": typist.retyped,
                    "final_pace_ms": typist.pace_s * 1000,
                }
                after.update(final)
                ctx.log.info("type.sent", pace_ms=pace_ms, **final)


class Typist:
    """Performs compiled actions on one console backend, counting what it sent."""

    def __init__(self, backend: Any, pace_s: float, ctx: StepContext | None = None) -> None:
        self.backend = backend
        self.pace_s = pace_s
        self.ctx = ctx
        self.sent = 0
        self.retyped = 0
        self._pending: list[KeyEvent] = []

    async def _flush(self) -> None:
        if self._pending:
            events, self._pending = self._pending, []
            await self.backend.send(events, self.pace_s)
            self.sent += sum(1 for event in events if event.down)

    async def perform(self, actions: Sequence[Action], *, verify: bool = False) -> None:
        """Send every action in order; with ``verify``, check each line before its Enter."""
        line: list[Keys] = []
        checkable = True
        for action in actions:
            if isinstance(action, Keys):
                if action.enter and verify and line and checkable:
                    await self._flush()
                    await self._verify_line(line)
                elif not action.enter:
                    line.append(action)
                    checkable = checkable and bool(action.text)
                self._pending.extend(action.events)
                if action.enter:
                    line, checkable = [], True
                continue
            await self._flush()
            line, checkable = [], False  # a wait: what was typed may have been consumed
            if isinstance(action, Wait):
                await asyncio.sleep(action.seconds)
            else:
                from beachhead.plugins.screen_text import wait_for_text

                await wait_for_text(self.backend.screenshot, action.text, action.timeout_s)
        await self._flush()

    async def _verify_line(self, line: Sequence[Keys]) -> None:
        """Retype ``line`` until the screen shows it intact (before Enter is pressed)."""
        expected = "".join(keys.text for keys in line)
        for attempt in range(VERIFY_ATTEMPTS + 1):
            if await self._shown(expected):
                return
            if attempt == VERIFY_ATTEMPTS:
                break
            self.retyped += 1
            # The console lost keys: type slower from here on (the rest of the step too).
            self.pace_s = max(2 * self.pace_s, RETYPE_MIN_PACE_S)
            if self.ctx is not None:
                self.ctx.log.warning(
                    "type.retype", attempt=attempt + 1, characters=len(expected), pace_ms=self.pace_s * 1000
                )
            # Backspace over the line, with room for keys a flaky console repeated.
            self._pending.extend(press(NAMED_KEYS["bs"]) * (2 * len(expected) + 8))
            for keys in line:
                self._pending.extend(keys.events)
            await self._flush()
        raise StepFailed("type", f"a line of {len(expected)} characters did not arrive intact after retyping")

    async def _shown(self, expected: str) -> bool:
        """Whether the screen shows ``expected``, read until it does or the console had
        :data:`VERIFY_SETTLE_S` (and :data:`VERIFY_MIN_READS` reads) to draw the keys
        still in its queue."""
        from beachhead.plugins.screen_text import screen_text

        deadline = asyncio.get_running_loop().time() + VERIFY_SETTLE_S
        reads = 0
        while True:
            reads += 1
            if _shows(await screen_text(await self.backend.screenshot()), expected):
                return True
            if reads >= VERIFY_MIN_READS and asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(VERIFY_POLL_S)


def _shows(screen: str, expected: str) -> bool:
    """Whether the bottom of the screen holds ``expected`` (whitespace runs ignored, as
    OCR renders them; a line longer than the screen is wide wraps onto the next rows)."""
    wanted = " ".join(expected.split())
    if not wanted:
        return True
    rows = [" ".join(row.split()) for row in screen.splitlines() if row.strip()]
    bottom = rows[-(2 + len(expected) // 40) :]
    # A wrapped line continues on the next row, with or without the space it wrapped at.
    return wanted in " ".join(bottom) or wanted in "".join(bottom)


def _recipe(body: Any, reader: PlanReader, where: str) -> Recipe:
    """The step's ``recipe`` with its ``with:`` parameters (strings or numbers)."""
    name, params = body["recipe"], body.get("with", {})
    if not isinstance(name, str):
        raise reader.error(
            f"{where}.recipe", f"must be a recipe name such as linux/console-ssh, got {brief(name)}", body
        )
    if not isinstance(params, dict) or not all(
        isinstance(v, str | int) and not isinstance(v, bool) for v in params.values()
    ):
        raise reader.error(f"{where}.with", "must be a mapping of parameter names to strings or numbers", body, "with")
    try:
        return load_recipe(name, {str(k): str(v) for k, v in params.items()}, f"{where}.recipe")
    except InputError as exc:
        raise reader.error(exc.where, exc.reason, body, "recipe") from None


def _render_for_check(recipe: Recipe, reader: PlanReader, where: str, body: Any) -> str:
    """The recipe's text with a stand-in address (the target's comes at check time),
    so its syntax is checked when the plan is read."""
    try:
        return recipe.render(RECIPE_CHECK_ADDRESS, f"{where}.recipe")
    except InputError as exc:
        raise reader.error(exc.where, exc.reason, body, "recipe") from None


@hookimpl
def beachhead_register_steps(register: Any) -> None:
    """Register the ``type`` step kind."""
    register(Type())
