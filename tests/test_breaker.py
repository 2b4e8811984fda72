"""The circuit breaker, driven by a fake clock: every transition, no sleeping."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

import anyio
import pytest

from ollama_orchestra._breaker import BreakerEvent, BreakerOpen, CircuitBreaker, Permit
from ollama_orchestra._config import BreakerPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, events: List[BreakerEvent], **policy: Any) -> CircuitBreaker:
    defaults: Dict[str, Any] = {
        "failure_threshold": 3,
        "window": 10,
        "min_calls": 10,
        "cooldown_s": 2.0,
    }
    defaults.update(policy)
    return CircuitBreaker(
        "s1",
        BreakerPolicy(**defaults),
        clock=clock,
        on_change=events.append,
    )


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = b.admit()
        assert permit is not None
        b.record_failure(permit)


def succeed(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = b.admit()
        assert permit is not None
        b.record_success(permit)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> List[BreakerEvent]:
    return []


class TestClosed:
    def test_opens_after_consecutive_failures(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """failure_threshold consecutive failures open the breaker."""
        b = make(clock, events)
        fail(b, 2)
        assert b.state == "closed"
        fail(b)
        assert b.state == "open"
        assert b.admit() is None
        assert not b.can_admit()

    def test_success_resets_consecutive_count(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A success between failures resets the consecutive count."""
        b = make(clock, events)
        fail(b, 2)
        succeed(b)
        fail(b, 2)
        assert b.state == "closed"
        assert b.snapshot().consecutive_failures == 2

    def test_rate_window_needs_min_calls(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """The failure rate trips only once min_calls outcomes are in the window."""
        b = make(clock, events, failure_threshold=100, window=6, min_calls=4, failure_rate=0.5)
        fail(b)
        succeed(b)
        fail(b)
        assert b.state == "closed"  # 3 calls < min_calls, although the rate is 67%
        fail(b)
        assert b.state == "open"  # 4 calls, 3 failures: 75% reaches the threshold
        assert "failure rate" in events[-1].reason

    def test_rate_window_slides(self, clock: FakeClock, events: List[BreakerEvent]) -> None:
        """Old outcomes leave the window, so old failures stop counting."""
        b = make(clock, events, failure_threshold=100, window=4, min_calls=4, failure_rate=0.75)
        fail(b, 2)
        succeed(b, 4)
        assert b.snapshot().failure_rate == 0.0
        fail(b, 2)
        assert b.state == "closed"
        fail(b)
        assert b.state == "open"

    def test_can_admit_has_no_side_effect(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """can_admit never takes a probe slot."""
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.0)
        assert b.can_admit() and b.can_admit()
        assert b.snapshot().probes_out == 0


class TestOpenAndCooldown:
    def test_cooldown_turns_half_open_lazily(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """Open turns half-open once the cooldown is over, and reopens_at says when."""
        b = make(clock, events)
        fail(b, 3)
        assert b.reopens_at() == pytest.approx(102.0)
        clock.advance(1.999)
        assert b.state == "open"
        clock.advance(0.001)
        assert b.state == "half_open"
        assert b.reopens_at() is None

    def test_reopens_at_none_when_closed(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """reopens_at is None unless open."""
        assert make(clock, events).reopens_at() is None

    def test_cooldown_grows_and_is_capped(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """Each failed half-open probe multiplies the cooldown, up to cooldown_max_s."""
        b = make(clock, events, cooldown_multiplier=3.0, cooldown_max_s=10.0)
        fail(b, 3)
        seen = []
        for _ in range(4):
            seen.append(b.snapshot().cooldown_s)
            clock.advance(b.snapshot().cooldown_s)
            fail(b)  # the probe fails
        seen.append(b.snapshot().cooldown_s)
        assert seen == [2.0, 6.0, 10.0, 10.0, 10.0]
        assert b.snapshot().trips == 5

    def test_half_open_success_closes_and_resets(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A successful probe closes the breaker, resets the cooldown and clears the window."""
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.0)
        fail(b)
        assert b.snapshot().cooldown_s == 4.0
        clock.advance(4.0)
        succeed(b)
        snap = b.snapshot()
        assert (snap.state, snap.cooldown_s, snap.failure_rate, snap.consecutive_failures) == (
            "closed",
            2.0,
            0.0,
            0,
        )
        assert snap.opened_at is None


class TestHalfOpen:
    def test_probes_are_bounded(self, clock: FakeClock, events: List[BreakerEvent]) -> None:
        """Half-open admits at most half_open_probes requests at once."""
        b = make(clock, events, half_open_probes=2)
        fail(b, 3)
        clock.advance(2.0)
        p1, p2 = b.admit(), b.admit()
        assert p1 is not None and p2 is not None and p1.probe and p2.probe
        assert b.admit() is None
        assert not b.can_admit()
        assert b.snapshot().probes_out == 2

    def test_release_frees_a_probe_without_state_change(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """release() returns a probe slot and leaves the state alone."""
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.0)
        p = b.admit()
        assert p is not None and b.admit() is None
        b.release(p)
        assert b.state == "half_open"
        assert b.admit() is not None

    def test_second_probe_outcome_is_stale(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """After one probe decides, the other probe's late failure does not reopen."""
        b = make(clock, events, half_open_probes=2)
        fail(b, 3)
        clock.advance(2.0)
        p1, p2 = b.admit(), b.admit()
        assert p1 is not None and p2 is not None
        b.record_success(p1)
        b.record_failure(p2)
        assert b.state == "closed"
        assert b.snapshot().consecutive_failures == 0


class TestStalePermits:
    def test_late_success_does_not_close(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A success from a request admitted while closed does not close a breaker opened since."""
        b = make(clock, events)
        early = b.admit()
        assert early is not None
        fail(b, 3)
        b.record_success(early)
        assert b.state == "open"

    def test_late_failure_does_not_reopen(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A failure from a request admitted before the trip does not touch the half-open state."""
        b = make(clock, events)
        early = b.admit()
        assert early is not None
        fail(b, 3)
        clock.advance(2.0)
        assert b.state == "half_open"
        b.record_failure(early)
        b.release(early)
        assert b.state == "half_open"
        assert b.snapshot().trips == 1

    def test_stale_release_keeps_probe_count(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """Releasing a permit from an earlier generation frees no current probe slot."""
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.0)
        old = b.admit()
        assert old is not None
        b.record_failure(old)  # reopens
        clock.advance(4.0)
        current = b.admit()
        assert current is not None
        b.release(Permit(old.generation, probe=True))
        assert b.snapshot().probes_out == 1


class TestMonitorFeed:
    def test_probe_success_while_open_goes_half_open(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A successful health probe ends the cooldown early."""
        b = make(clock, events)
        fail(b, 3)
        b.record_probe_success()
        assert b.state == "half_open"
        assert events[-1].reason == "health probe succeeded"

    def test_probe_success_while_closed_resets_nothing(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A successful health probe does not clear request failures."""
        b = make(clock, events)
        fail(b, 2)
        b.record_probe_success()
        assert b.snapshot().consecutive_failures == 2

    def test_probe_failures_count(self, clock: FakeClock, events: List[BreakerEvent]) -> None:
        """Failed health probes count as failures while closed."""
        b = make(clock, events)
        fail(b, 1)
        b.record_probe_failure()
        b.record_probe_failure()
        assert b.state == "open"

    def test_probe_failure_while_half_open_reopens(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A failed health probe in half-open re-opens with a longer cooldown."""
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.0)
        assert b.state == "half_open"
        b.record_probe_failure()
        assert b.state == "open"
        assert b.snapshot().cooldown_s == 4.0

    def test_probe_failure_while_open_changes_nothing(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A failed health probe while open neither extends nor re-trips."""
        b = make(clock, events)
        fail(b, 3)
        b.record_probe_failure()
        assert b.snapshot().trips == 1
        assert b.reopens_at() == pytest.approx(102.0)


class TestEvents:
    def test_events_in_order_with_times(
        self, clock: FakeClock, events: List[BreakerEvent], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Each transition emits one event, in order, and logs WARNING on open, INFO otherwise."""
        caplog.set_level(logging.INFO, logger="ollama_orchestra.breaker")
        b = make(clock, events)
        fail(b, 3)
        clock.advance(2.5)
        succeed(b)
        assert [(e.old, e.new, e.at) for e in events] == [
            ("closed", "open", 100.0),
            ("open", "half_open", 102.5),
            ("half_open", "closed", 102.5),
        ]
        assert all(e.name == "s1" for e in events)
        levels = [r.levelno for r in caplog.records if r.name == "ollama_orchestra.breaker"]
        assert levels == [logging.WARNING, logging.INFO, logging.INFO]

    def test_hook_error_does_not_break_the_breaker(self, clock: FakeClock) -> None:
        """A raising on_change hook is logged, and the transition still happens."""

        def boom(event: BreakerEvent) -> None:
            raise RuntimeError("hook")

        b = CircuitBreaker("s1", BreakerPolicy(failure_threshold=1), clock=clock, on_change=boom)
        fail(b)
        assert b.state == "open"


class TestCall:
    async def test_call_records_outcomes_and_raises_breaker_open(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """call() runs the function, records failures, then refuses with BreakerOpen."""
        b = make(clock, events, failure_threshold=2)

        async def bad() -> int:
            raise ConnectionError("down")

        async def good() -> int:
            return 7

        assert await b.call(good) == 7
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await b.call(bad)
        clock.advance(0.5)
        with pytest.raises(BreakerOpen) as info:
            await b.call(good)
        assert info.value.reopens_in_s == pytest.approx(1.5)
        assert "s1" in str(info.value)
        clock.advance(1.5)
        assert await b.call(good) == 7
        assert b.state == "closed"

    async def test_call_cancellation_releases_probe(
        self, clock: FakeClock, events: List[BreakerEvent]
    ) -> None:
        """A BaseException (cancellation) releases the probe without a verdict."""
        b = make(clock, events, failure_threshold=1)
        fail(b)
        clock.advance(2.0)

        async def cancelled() -> int:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await b.call(cancelled)
        assert b.state == "half_open"
        assert b.snapshot().probes_out == 0


class TestConcurrentProbes:
    async def test_concurrent_callers_in_half_open(self) -> None:
        """Concurrent callers in half-open: one probe runs, the others are refused; it closes."""
        now = [0.0]
        br = CircuitBreaker(
            "s", BreakerPolicy(failure_threshold=1, cooldown_s=1.0), clock=lambda: now[0]
        )
        permit = br.admit()
        assert permit is not None
        br.record_failure(permit)
        now[0] = 1.0
        gate = anyio.Event()
        outcomes: List[str] = []

        async def work() -> str:
            await gate.wait()
            return "ok"

        async def call() -> None:
            try:
                outcomes.append(await br.call(work))
            except BreakerOpen:
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            gate.set()
        assert sorted(outcomes) == ["ok", "refused", "refused"]
        assert br.state == "closed"


class TestLogLines:
    def test_opening_is_one_warning_with_the_cause(
        self, clock: FakeClock, events: List[BreakerEvent], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Opening logs one WARNING naming the last error; re-opening after a failed trial
        (the same outage going on) is INFO."""
        caplog.set_level(logging.INFO, logger="ollama_orchestra.breaker")
        b = make(clock, events)
        for _ in range(3):
            permit = b.admit()
            assert permit is not None
            b.record_failure(permit, "500 model runner crashed")
        clock.advance(2.5)
        b.record_probe_failure("connection refused")
        records = [r for r in caplog.records if r.name == "ollama_orchestra.breaker"]
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "closed -> open" in warnings[0]
        assert "last: 500 model runner crashed" in warnings[0]
        reopened = [r.getMessage() for r in records if "open again" in r.getMessage()]
        assert len(reopened) == 1 and "last: connection refused" in reopened[0]
        assert records[-1].levelno == logging.INFO
