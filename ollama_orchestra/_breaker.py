"""A hand-rolled async circuit breaker, driven by an injectable clock.

Each server has one for the failures of the host (refused, reset, hung, a 5xx), and each
(server, model) pair one for the failures of a model there (it does not load, its runner
dies: :class:`ModelBreakers`), so one broken model does not take its host out of rotation
for every other model.

::

    closed ──(N consecutive failures, or failure rate over the window)──► open
    open ──(cooldown elapsed, or a health probe succeeded)──► half_open
    half_open ──(a probe request succeeds)──► closed
    half_open ──(a probe request fails)──► open, with a longer cooldown (capped)

All methods are synchronous and run on the event loop's thread; coroutines interleave only
at awaits, so the state needs no lock. Each admitted request carries a :class:`Permit`
stamped with the breaker's generation, so a late outcome from a request admitted before a
state change cannot corrupt the new state.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Deque, Dict, Iterator, Optional, Tuple, TypeVar

from ._clock import now as clock_now
from ._config import BreakerPolicy
from ._errors import OrchestraError

__all__ = [
    "BreakerEvent",
    "BreakerOpen",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "ModelBreakers",
    "Permit",
]

log = logging.getLogger("ollama_orchestra.breaker")

T = TypeVar("T")


class BreakerState(str):
    """``"closed"``, ``"open"`` or ``"half_open"`` (a ``str``, so it compares and prints plainly)."""


CLOSED = BreakerState("closed")
OPEN = BreakerState("open")
HALF_OPEN = BreakerState("half_open")


class BreakerOpen(OrchestraError):
    """The breaker refused the call: the server is cooling down."""

    def __init__(self, name: str, reopens_in_s: Optional[float]) -> None:
        self.name = name
        self.reopens_in_s = reopens_in_s
        when = f"; retry in {reopens_in_s:.2f}s" if reopens_in_s is not None else ""
        super().__init__(f"circuit breaker for {name} is open{when}")


@dataclass(frozen=True)
class Permit:
    """The right to send one request, issued by :meth:`CircuitBreaker.admit`."""

    generation: int
    probe: bool


@dataclass(frozen=True)
class BreakerEvent:
    """A state change: ``old`` → ``new`` at clock time ``at``, and why.

    ``name`` is the server's; ``model`` is set for a (server, model) breaker.
    """

    name: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str
    model: Optional[str] = None


@dataclass(frozen=True)
class BreakerSnapshot:
    """A frozen view of one breaker."""

    name: str
    state: BreakerState
    consecutive_failures: int
    failure_rate: float
    trips: int
    opened_at: Optional[float]
    cooldown_s: float
    probes_out: int


class CircuitBreaker:
    """Guards one server: refuses requests while it keeps failing, probes it back gently.

    Args:
        name: the server's name (in events and logs).
        policy: thresholds, window, cooldowns, probes.
        clock: the time source (tests pass a fake one).
        on_change: called with every :class:`BreakerEvent`.
        model: set for a breaker that guards one model on the server.
    """

    def __init__(
        self,
        name: str,
        policy: Optional[BreakerPolicy] = None,
        *,
        clock: Callable[[], float] = clock_now,
        on_change: Optional[Callable[[BreakerEvent], None]] = None,
        model: Optional[str] = None,
    ) -> None:
        if policy is not None and not isinstance(policy, BreakerPolicy):
            raise TypeError(f"policy must be a BreakerPolicy, got {policy!r}")
        self.name = name
        self.model = model
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._state = CLOSED
        self._generation = 0
        self._consecutive = 0
        self._window: Deque[bool] = deque(maxlen=self.policy.window)  # True = failure
        self._trips = 0
        self._opened_at: Optional[float] = None
        self._cooldown = self.policy.cooldown_s
        self._probes_out = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self._label} {self.state} failures={self._consecutive}>"

    @property
    def _label(self) -> str:
        return self.name if self.model is None else f"{self.name} model {self.model}"

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if (
            self._state is OPEN
            and self._opened_at is not None
            and self._clock() >= self._opened_at + self._cooldown
        ):
            self._move(HALF_OPEN, "cooldown over")
        return self._state

    def reopens_at(self) -> Optional[float]:
        """When an open breaker turns half-open (clock time), else ``None``."""
        if self.state is OPEN and self._opened_at is not None:
            return self._opened_at + self._cooldown
        return None

    def can_admit(self) -> bool:
        """Would a request be admitted now? (No side effect beyond the lazy cooldown check.)"""
        state = self.state
        if state is CLOSED:
            return True
        if state is HALF_OPEN:
            return self._probes_out < self.policy.half_open_probes
        return False

    def failure_rate(self) -> float:
        return sum(self._window) / len(self._window) if self._window else 0.0

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=self.name,
            state=self.state,
            consecutive_failures=self._consecutive,
            failure_rate=self.failure_rate(),
            trips=self._trips,
            opened_at=self._opened_at,
            cooldown_s=self._cooldown,
            probes_out=self._probes_out,
        )

    # -- the request path --------------------------------------------------------------------

    def admit(self) -> Optional[Permit]:
        """Admit one request: a permit, or ``None`` when the breaker refuses."""
        state = self.state
        if state is CLOSED:
            return Permit(self._generation, probe=False)
        if state is HALF_OPEN and self._probes_out < self.policy.half_open_probes:
            self._probes_out += 1
            return Permit(self._generation, probe=True)
        return None

    def release(self, permit: Permit) -> None:
        """The request ended with no verdict on the server (cancelled, or the caller's error)."""
        if permit.probe and permit.generation == self._generation and self._probes_out > 0:
            self._probes_out -= 1

    def record_success(self, permit: Permit) -> None:
        if permit.generation != self._generation:
            return  # admitted under an earlier state: stale
        if permit.probe:
            self._probes_out = max(0, self._probes_out - 1)
            self._close("probe request succeeded")
            return
        self._consecutive = 0
        self._window.append(False)

    def record_failure(self, permit: Permit, cause: Optional[str] = None) -> None:
        """The request failed on the server; ``cause`` (the error) goes into the log line."""
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._probes_out = max(0, self._probes_out - 1)
            self._trip(_with_cause("probe request failed", cause), repeated=True)
            return
        self._failure(cause)

    # -- the health monitor's feed -------------------------------------------------------------

    def record_probe_success(self) -> None:
        """A health probe answered: an open breaker may try requests again now."""
        if self._state is OPEN:
            self._move(HALF_OPEN, "health probe succeeded")

    def record_probe_failure(self, cause: Optional[str] = None) -> None:
        """A health probe failed: counts like a failed request.

        While closed it adds to the failure counts; while half-open it re-opens with a longer
        cooldown, as a failed probe request would (the host is still down); while open it
        changes nothing.
        """
        state = self.state
        if state is CLOSED:
            self._failure(cause)
        elif state is HALF_OPEN:
            self._trip(_with_cause("health probe failed", cause), repeated=True)

    # -- news from other processes (shared breakers) -------------------------------------

    def force_open(self, remaining_s: float, reason: str = "tripped elsewhere") -> bool:
        """Open for ``remaining_s`` more seconds, as a trip seen elsewhere (another process)
        says; ``False`` (and no event) when already open at least that long.

        The cooldown stays the policy's (or longer, to cover ``remaining_s``), so a later
        failed probe grows it as usual; ``opened_at`` is set back to when a trip with that
        cooldown would have opened.
        """
        if isinstance(remaining_s, bool) or not isinstance(remaining_s, (int, float)):
            raise TypeError(f"remaining_s must be a number, got {remaining_s!r}")
        if not remaining_s > 0:
            return False
        now = self._clock()
        until = self.reopens_at()
        if until is not None and until >= now + remaining_s:
            return False
        self._cooldown = max(self._cooldown, float(remaining_s))
        self._opened_at = now + float(remaining_s) - self._cooldown
        if self._state is OPEN:  # open, but not for as long: only the reopening moves
            return True
        self._trips += 1
        self._move(OPEN, reason)
        return True

    def force_close(self, reason: str = "closed elsewhere") -> bool:
        """Close, as a successful probe seen elsewhere says; ``False`` when already closed."""
        if self._state is CLOSED:
            return False
        self._close(reason)
        return True

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` through the breaker: refused with :class:`BreakerOpen` while open."""
        permit = self.admit()
        if permit is None:
            at = self.reopens_at()
            raise BreakerOpen(self._label, None if at is None else max(0.0, at - self._clock()))
        try:
            result = await fn()
        except Exception:
            self.record_failure(permit)
            raise
        except BaseException:
            self.release(permit)
            raise
        self.record_success(permit)
        return result

    # -- transitions -------------------------------------------------------------------------

    def _failure(self, cause: Optional[str] = None) -> None:
        self._consecutive += 1
        self._window.append(True)
        p = self.policy
        if self._consecutive >= p.failure_threshold:
            self._trip(
                _with_cause(f"{self._consecutive} consecutive failures", cause), repeated=False
            )
        elif len(self._window) >= p.min_calls and self.failure_rate() >= p.failure_rate:
            self._trip(
                _with_cause(
                    f"failure rate {self.failure_rate():.0%} over {len(self._window)} calls", cause
                ),
                repeated=False,
            )

    def _trip(self, reason: str, *, repeated: bool) -> None:
        p = self.policy
        if repeated:
            self._cooldown = min(p.cooldown_max_s, self._cooldown * p.cooldown_multiplier)
        self._trips += 1
        self._opened_at = self._clock()
        self._move(OPEN, reason)

    def _close(self, reason: str) -> None:
        self._consecutive = 0
        self._window.clear()
        self._cooldown = self.policy.cooldown_s
        self._opened_at = None
        self._move(CLOSED, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._generation += 1
        self._probes_out = 0
        if new is OPEN and old is CLOSED:
            # Opening is news: WARNING. Re-opening after a failed half-open trial is the same
            # outage going on, at most once per (growing) cooldown: INFO.
            log.warning(
                "breaker %s: %s -> open (%s; cooldown %.2fs)",
                self._label,
                old,
                reason,
                self._cooldown,
            )
        elif new is OPEN:
            log.info(
                "breaker %s: %s -> open again (%s; cooldown %.2fs)",
                self._label,
                old,
                reason,
                self._cooldown,
            )
        else:
            log.info("breaker %s: %s -> %s (%s)", self._label, old, new, reason)
        if self._on_change is not None:
            try:
                self._on_change(
                    BreakerEvent(self.name, old, new, self._clock(), reason, self.model)
                )
            except Exception:
                log.exception("breaker %s: on_change hook raised", self._label)


class ModelBreakers:
    """One :class:`CircuitBreaker` per (server, model), made on first use.

    A failure that is the model's (Ollama's 500 "error loading model", a runner that died)
    opens only that model's breaker on that server; the host keeps serving other models.

    Args:
        policy: thresholds, window, cooldowns, probes (the servers' policy).
        clock: the time source.
        on_change: called with every :class:`BreakerEvent` (``event.model`` set).
    """

    def __init__(
        self,
        policy: Optional[BreakerPolicy] = None,
        *,
        clock: Callable[[], float] = clock_now,
        on_change: Optional[Callable[[BreakerEvent], None]] = None,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._breakers: Dict[Tuple[str, str], CircuitBreaker] = {}

    def get(self, server: str, model: str) -> Optional[CircuitBreaker]:
        """The breaker of ``model`` on ``server``, if it was ever used."""
        return self._breakers.get((server, model))

    def breaker(self, server: str, model: str) -> CircuitBreaker:
        """The breaker of ``model`` on ``server`` (made, closed, on first use)."""
        key = (server, model)
        br = self._breakers.get(key)
        if br is None:
            br = self._breakers[key] = CircuitBreaker(
                server, self.policy, clock=self._clock, on_change=self._on_change, model=model
            )
        return br

    def can_admit(self, server: str, model: str) -> bool:
        br = self._breakers.get((server, model))
        return br is None or br.can_admit()

    def reopens_at(self, server: str, model: str) -> Optional[float]:
        br = self._breakers.get((server, model))
        return None if br is None else br.reopens_at()

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))


def _with_cause(reason: str, cause: Optional[str]) -> str:
    return f"{reason}, last: {cause}" if cause else reason
