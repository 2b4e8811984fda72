"""The circuit breaker: every transition, driven by a fake clock."""

from __future__ import annotations

from typing import List, Tuple

import anyio
import pytest

from ollama_orchestra import BreakerOpen, BreakerPolicy, CircuitBreaker
from ollama_orchestra._breaker import BreakerEvent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    *,
    failure_threshold: int = 3,
    failure_rate: float = 0.5,
    half_open_probes: int = 1,
) -> Tuple[CircuitBreaker, Clock, List[BreakerEvent]]:
    clock = Clock()
    events: List[BreakerEvent] = []
    policy = BreakerPolicy(
        failure_threshold=failure_threshold,
        window=10,
        min_calls=4,
        failure_rate=failure_rate,
        cooldown_s=1.0,
        cooldown_max_s=4.0,
        half_open_probes=half_open_probes,
    )
    return CircuitBreaker("s", policy, clock=clock, on_change=events.append), clock, events


def fail(br: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = br.admit()
        assert permit is not None
        br.record_failure(permit)


def succeed(br: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        permit = br.admit()
        assert permit is not None
        br.record_success(permit)


class TestTransitions:
    def test_opens_after_consecutive_failures(self) -> None:
        """N consecutive failures open the breaker; a success in between resets the count."""
        br, _, events = make(failure_rate=1.0)
        fail(br, 2)
        succeed(br)
        fail(br, 2)
        assert br.state == "closed"
        fail(br)
        assert br.state == "open" and not br.can_admit() and br.admit() is None
        assert [(e.old, e.new) for e in events] == [("closed", "open")]

    def test_opens_on_failure_rate(self) -> None:
        """A failure rate over the window opens it, once min_calls outcomes are in."""
        br, _, _ = make(failure_threshold=100)
        fail(br)
        succeed(br)
        fail(br)
        assert br.state == "closed"  # 3 calls < min_calls
        succeed(br)
        assert br.state == "closed"  # 2/4 = 50%... reached on the next failure
        fail(br)
        assert br.state == "open"

    def test_cooldown_then_half_open_then_close(self) -> None:
        """After the cooldown the breaker half-opens; a successful probe closes it."""
        br, clock, events = make()
        fail(br, 3)
        assert br.reopens_at() == 1.0
        clock.now = 0.99
        assert br.state == "open"
        clock.now = 1.0
        assert br.state == "half_open"
        permit = br.admit()
        assert permit is not None and permit.probe
        br.record_success(permit)
        assert br.state == "closed"
        assert [e.new for e in events] == ["open", "half_open", "closed"]

    def test_failed_probe_reopens_with_longer_cooldown_capped(self) -> None:
        """A failed probe re-opens with the cooldown multiplied, up to the cap."""
        br, clock, _ = make()
        fail(br, 3)
        cooldowns = []
        for _ in range(4):
            clock.now = br.reopens_at() or clock.now
            assert br.state == "half_open"
            fail(br)
            cooldowns.append(br.snapshot().cooldown_s)
        assert cooldowns == [2.0, 4.0, 4.0, 4.0]
        clock.now = br.reopens_at() or clock.now
        succeed(br)
        assert br.state == "closed" and br.snapshot().cooldown_s == 1.0

    def test_half_open_admits_bounded_probes(self) -> None:
        """Half-open admits at most half_open_probes requests at once."""
        br, clock, _ = make(half_open_probes=2)
        fail(br, 3)
        clock.now = 1.0
        p1, p2, p3 = br.admit(), br.admit(), br.admit()
        assert p1 is not None and p2 is not None and p3 is None
        br.release(p1)  # ended with no verdict: the probe slot is free again
        assert br.can_admit()

    async def test_concurrent_probes(self) -> None:
        """Concurrent callers in half-open: one probe runs, the others are refused."""
        br, clock, _ = make()
        fail(br, 3)
        clock.now = 1.0
        gate = anyio.Event()
        outcomes: List[str] = []

        async def call() -> None:
            async def work() -> str:
                await gate.wait()
                return "ok"

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

    def test_stale_permit_is_ignored(self) -> None:
        """An outcome from a request admitted before a state change does not corrupt the state."""
        br, _, _ = make()
        old = br.admit()
        assert old is not None
        fail(br, 3)
        br.record_success(old)
        assert br.state == "open"

    def test_probe_feed(self) -> None:
        """Monitor probes: failures count while closed; a success while open half-opens early."""
        br, _, _ = make()
        br.record_probe_failure()
        br.record_probe_failure()
        br.record_probe_failure()
        assert br.state == "open"
        br.record_probe_success()
        assert br.state == "half_open"

    async def test_call_records_and_raises(self) -> None:
        """call() records failures and raises BreakerOpen while open."""
        br, _, _ = make()

        async def boom() -> None:
            raise RuntimeError("x")

        for _ in range(3):
            with pytest.raises(RuntimeError):
                await br.call(boom)
        with pytest.raises(BreakerOpen) as info:
            await br.call(boom)
        assert info.value.reopens_in_s == pytest.approx(1.0)

    def test_hook_errors_do_not_break_it(self) -> None:
        """A raising on_change hook is logged, the breaker still works."""

        def bad(_: BreakerEvent) -> None:
            raise ValueError("hook")

        br = CircuitBreaker("s", BreakerPolicy(failure_threshold=1), on_change=bad)
        fail(br)
        assert br.state == "open"
