"""Channel selection for one target, per step, against live state.

For a capability, the candidates are the channels that have it, reach the target's kind
of URI and serve its OS family, in the plan's ``channels:`` order or the order the
taxonomy declares for that family. The first candidate that has an open session, or
whose prerequisites hold now and that connects, serves the step; every candidate passed
over is recorded with its reason (the step's ``channels_tried``, a
``channel.selected`` or ``channel.fallback`` event).

A channel that could not connect is skipped for a while, not for the rest of the run,
and then tried again (once, without backoff) by a later step. How long depends on what
the failed attempt cost: one that failed quickly (connection refused: the guest is up
but the service is not, and a step may just have started it) is probed again by the
very next step; one that failed slowly (a timeout) is skipped until ten times its cost
has passed, at most five minutes, so no step waits on it in vain. Authentication
failures and host key mismatches are not retried. When no
candidate can be used now but some wait only for the VM (an address, VMware Tools), the
step waits for the VM's next change, within the connect timeout, and selects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beachhead.agent.channel import Capability, Channel, Unmet
from beachhead.agent.errors import ChannelUnavailable
from beachhead.agent.results import StepResult

if TYPE_CHECKING:
    from beachhead.agent.context import TargetContext

QUICK_FAILURE_S = 2.0
COOLDOWN_FACTOR = 10.0
MAX_COOLDOWN_S = 300.0


@dataclass
class Failure:
    """The last time a channel could not connect to this target; ``cost`` is how long
    its last attempt took (not counting the backoff between attempts)."""

    reason: str
    retryable: bool
    at: float
    cost: float

    def retry_at(self) -> float:
        """When the channel may be tried again (never, when retrying cannot help)."""
        if not self.retryable:
            return float("inf")
        if self.cost < QUICK_FAILURE_S:
            return self.at
        return self.at + min(MAX_COOLDOWN_S, COOLDOWN_FACTOR * self.cost)


@dataclass(frozen=True)
class Verdict:
    """Whether a channel could serve a capability now, and why not."""

    channel: str
    unmet: tuple[Unmet, ...] = ()
    failure: str | None = None
    connected: bool = False

    @property
    def usable(self) -> bool:
        """True when the channel would be tried."""
        return not self.unmet and self.failure is None

    @property
    def reason(self) -> str | None:
        """Why it would be passed over, or None."""
        if self.unmet:
            return "; ".join(item.reason for item in self.unmet)
        return self.failure


class ChannelSelector:
    """Picks and opens the channel for each step of one target; owns its sessions."""

    def __init__(self, target: TargetContext) -> None:
        self.target = target
        self.sessions: dict[str, Any] = {}
        self.failures: dict[str, Failure] = {}
        self._last_attempt_s = 0.0

    @property
    def _name(self) -> str:
        return self.target.target.name

    def candidates(self, capability: Capability) -> list[Channel]:
        """The channels that could serve ``capability`` on this target, in order."""
        context = self.target
        return context.run.plugins.candidates(capability, context.target, context.os, context.plan.channels)

    def verdicts(self, capability: Capability) -> list[Verdict]:
        """Each candidate's state now, without connecting (``beachhead channels``)."""
        now = time.monotonic()
        verdicts = []
        for channel in self.candidates(capability):
            name = channel.info.name
            failure = self.failures.get(name)
            waiting = None
            if failure is not None and now < failure.retry_at():
                waiting = f"could not connect {now - failure.at:.0f}s ago: {failure.reason}"
            verdicts.append(Verdict(name, tuple(channel.unmet(self.target)), waiting, connected=name in self.sessions))
        return verdicts

    async def session(self, capability: Capability, result: StepResult) -> Any:
        """The session to serve ``capability`` now, recording in ``result`` every
        channel considered; raises :class:`ChannelUnavailable` with every reason when
        none can."""
        deadline = time.monotonic() + self.target.settings.connect_timeout
        while True:
            await self.target.refresh()
            candidates = self.candidates(capability)
            if not candidates:
                raise ChannelUnavailable(
                    "no channel",
                    self._name,
                    f"no channel can {capability} on {self._name} ({self.target.target.scheme}://, {self.target.os})",
                )
            passed: list[dict[str, str]] = []
            transient = False
            for channel in candidates:
                name = channel.info.name
                session = self.sessions.get(name)
                if session is None:
                    session, why, waits = await self._try(channel)
                    if session is None:
                        passed.append({"channel": name, "result": why[0], "reason": why[1]})
                        transient = transient or waits
                        continue
                result.channels_tried.extend([*passed, {"channel": name, "result": "used"}])
                self._announce(name, result, passed)
                return session
            result.channels_tried.extend(passed)
            left = deadline - time.monotonic()
            if transient and left > 0:
                self.target.log.info(
                    "channel.waiting", step=result.number, capability=str(capability), passed_over=passed
                )
                if await self.target.wait_for_change(left):
                    continue
            if len(passed) == 1:
                raise ChannelUnavailable(passed[0]["channel"], self._name, passed[0]["reason"])
            raise ChannelUnavailable(
                "/".join(channel.info.name for channel in candidates),
                self._name,
                "; ".join(f"{item['channel']}: {item['reason']}" for item in passed),
            )

    async def _try(self, channel: Channel) -> tuple[Any, tuple[str, str], bool]:
        """Open ``channel`` if its prerequisites hold and it is not cooling down: the
        session, or None with (result, reason) and whether waiting for the VM may help."""
        name = channel.info.name
        unmet = channel.unmet(self.target)
        if unmet:
            reason = "; ".join(item.reason for item in unmet)
            return None, ("unmet", reason), any(item.transient for item in unmet)
        failure = self.failures.get(name)
        now = time.monotonic()
        if failure is not None and now < failure.retry_at():
            return None, ("skipped", f"could not connect {now - failure.at:.0f}s ago: {failure.reason}"), False
        try:
            session = await self._connect(channel, attempts=1 if failure else self.target.settings.retries + 1)
        except ChannelUnavailable as exc:
            self.failures[name] = Failure(exc.reason, exc.retryable, time.monotonic(), self._last_attempt_s)
            self.target.log.warning("channel.unavailable", channel=name, reason=exc.reason, retryable=exc.retryable)
            return None, ("failed", exc.reason), False
        self.failures.pop(name, None)
        self.sessions[name] = session
        return session, ("used", ""), False

    async def _connect(self, channel: Channel, attempts: int) -> Any:
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                session = await channel.connect(self.target)
                self.target.log.info("channel.connected", channel=channel.info.name, attempt=attempt + 1)
                return session
            except ChannelUnavailable as exc:
                self._last_attempt_s = time.monotonic() - started
                if not exc.retryable or attempt + 1 == attempts:
                    raise
                delay = self.backoff(attempt)
                self.target.log.warning(
                    "channel.retry",
                    channel=channel.info.name,
                    reason=exc.reason,
                    attempt=attempt + 1,
                    delay_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _announce(self, name: str, result: StepResult, passed: list[dict[str, str]]) -> None:
        event = "channel.fallback" if passed else "channel.selected"
        self.target.log.info(event, channel=name, step=result.number, kind=result.kind, passed_over=passed)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 2``: exponential, with jitter."""
        return float(self.target.settings.retry_delay * 2**attempt * (0.5 + random.random()))

    async def drop(self, name: str) -> None:
        """Close and forget the session of channel ``name`` (its connection broke)."""
        session = self.sessions.pop(name, None)
        if session is not None:
            with contextlib.suppress(Exception):
                await session.close()

    async def close(self) -> None:
        """Close every open session."""
        for name in list(self.sessions):
            await self.drop(name)
