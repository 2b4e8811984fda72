"""Breaker trips shared through a real Redis: a host one orchestra finds failing is avoided
by the others within a second, without echo, and breakers stay local while Redis is down."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Dict, List

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from ollama_orchestra import (
    BreakerPolicy,
    Coordination,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    Server,
)
from ollama_orchestra._breaker import BreakerEvent, CircuitBreaker
from ollama_orchestra.sim import Faults, SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server, until

__all__ = ["redis_server"]

REMOTE = "tripped in another process (via Redis)"


def breaker_config(sim: SimFleet, url: str) -> OrchestraConfig:
    """Round robin over x and y; two failures trip a breaker for 30 s; health probes rare (so
    only requests and Redis move the breakers)."""
    base = config_for(
        sim,
        strategy="round_robin",
        breaker=BreakerPolicy(failure_threshold=2, cooldown_s=30.0),
        health=HealthPolicy(
            interval_s=60.0, down_interval_s=60.0, timeout_s=1.0, startup_timeout_s=5
        ),
    )
    servers = tuple(Server(s.name, s.url, max_concurrency=2) for s in base.servers)
    return base.replace(servers=servers, coordination=Coordination(url, timeout_s=0.5))


class Opened:
    """Breaker events of one orchestra; ``wait(name)`` returns once ``name``'s opened."""

    def __init__(self) -> None:
        self.events: List[BreakerEvent] = []
        self._opened: Dict[str, anyio.Event] = {}

    def _event(self, name: str) -> anyio.Event:
        return self._opened.setdefault(name, anyio.Event())

    def __call__(self, event: BreakerEvent) -> None:
        self.events.append(event)
        if event.new == "open" and event.model is None:
            self._event(event.name).set()

    async def wait(self, name: str) -> None:
        await self._event(name).wait()


async def trip_x(sim: SimFleet, orch: Orchestra) -> None:
    """Make host x answer 502 (a host failure) and send through ``orch`` until its breaker for x opens; every
    request still succeeds (on y)."""
    await sim["x"].set_faults(Faults(status=502))
    for i in range(20):
        assert (await orch.generate(TINY, f"q{i}")).server == "y"
        if orch.breaker("x").state == "open":
            break
    assert orch.breaker("x").state == "open"


def two_hosts() -> SimFleet:
    return fleet([tiny_profile("x", num_parallel=2), tiny_profile("y", num_parallel=2)])


class TestTripShared:
    """A trip in one orchestra opens the others' breaker for that host within a second."""

    async def test_trip_seen_by_the_other_within_a_second(self, redis_server: RedisProcess) -> None:
        seen_a, seen_b = Opened(), Opened()
        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config, on_breaker_change=seen_a) as a, Orchestra(
                config, on_breaker_change=seen_b
            ) as b:
                assert b.breaker("x").state == "closed"
                await trip_x(sim, a)
                with anyio.fail_after(1.0):
                    await seen_b.wait("x")
                opened = [e for e in seen_b.events if e.name == "x" and e.new == "open"]
                assert [e.reason for e in opened] == [REMOTE]
                assert b.breaker("x").state == "open"
                reopens = b.breaker("x").reopens_at()
                assert reopens is not None and 25.0 < reopens - b._clock() <= 30.0
                assert b.state()["x"].breaker == "open"

                # x is healthy again, but b keeps off it for the cooldown.
                await sim["x"].clear_faults()
                before = sim["x"].state().requests
                for i in range(6):
                    assert (await b.generate(TINY, f"b{i}")).server == "y"
                assert sim["x"].state().requests == before
                assert b.breaker("y").state == "closed"

    async def test_a_later_orchestra_catches_up(self, redis_server: RedisProcess) -> None:
        """An orchestra that starts after the trip opens its breaker from the key in Redis."""
        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config) as a:
                await trip_x(sim, a)  # x keeps failing (c's startup health probe too)
                shared = a.balancer.shared_breakers  # type: ignore[attr-defined]
                await until(lambda: shared.published >= 1, "published")  # in the background
                async with Orchestra(config) as c:
                    assert c.breaker("x").state == "open"
                    assert c.breaker("y").state == "closed"

    async def test_close_after_probe_is_shared(self, redis_server: RedisProcess) -> None:
        """A successful half-open probe in one orchestra closes the others' breaker too."""
        seen_b = Opened()
        closed_b = anyio.Event()

        def on_b(event: BreakerEvent) -> None:
            seen_b(event)
            if event.name == "x" and event.new == "closed":
                closed_b.set()

        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config) as a, Orchestra(config, on_breaker_change=on_b) as b:
                await trip_x(sim, a)
                with anyio.fail_after(1.0):
                    await seen_b.wait("x")
                await sim["x"].clear_faults()
                a.breaker("x").record_probe_success()  # as a's health monitor would
                permit = a.breaker("x").admit()
                assert permit is not None and permit.probe
                a.breaker("x").record_success(permit)
                with anyio.fail_after(1.0):
                    await closed_b.wait()
                assert b.breaker("x").state == "closed"


class TestNoEcho:
    """A change received from Redis is applied, never published again."""

    async def test_received_trip_is_not_republished(self, redis_server: RedisProcess) -> None:
        import redis.asyncio as aioredis

        seen_b = Opened()
        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            listener = aioredis.Redis.from_url(redis_server.url)
            pubsub: Any = listener.pubsub()
            try:
                await pubsub.subscribe("ollama-orchestra:breakers")
                async with Orchestra(config) as a, Orchestra(config, on_breaker_change=seen_b) as b:
                    await trip_x(sim, a)
                    with anyio.fail_after(1.0):
                        await seen_b.wait("x")
                    # A sentinel published by b after it applied a's trip: any echo of that
                    # trip was started before it, so it would arrive first.
                    br = b.breaker("y")
                    for _ in range(2):
                        permit = br.admit()
                        assert permit is not None
                        br.record_failure(permit, "boom")
                    messages: List[Dict[str, Any]] = []
                    with anyio.fail_after(5):
                        while not any(m["server"] == "y" for m in messages):
                            raw = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=1.0
                            )
                            if raw is not None:
                                messages.append(json.loads(raw["data"]))
                    assert [(m["server"], m["state"]) for m in messages] == [
                        ("x", "open"),
                        ("y", "open"),
                    ]
                    assert messages[0]["from"] != messages[1]["from"]
                    assert b.balancer.shared_breakers.applied == 1  # type: ignore[attr-defined]
                    assert b.balancer.shared_breakers.published == 1  # type: ignore[attr-defined]
                    assert a.breaker("y").state == "open"  # b's own trip reached a
            finally:
                await pubsub.aclose()
                await listener.aclose()


class TestRedisDown:
    """With Redis down, breakers trip locally as without coordination; logged once."""

    async def test_breakers_trip_locally(
        self, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "ollama_orchestra.coordination")
        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config) as a:
                redis_server.stop()
                await trip_x(sim, a)
                br = a.breaker("y")
                for _ in range(2):  # a second trip while down: not logged again
                    permit = br.admit()
                    assert permit is not None
                    br.record_failure(permit, "boom")
                assert br.state == "open"
                shared = a.balancer.shared_breakers  # type: ignore[attr-defined]
                await until(lambda: "breaker trips not shared" in caplog.text, "logged")
                assert shared.published == 0
                assert a.breaker("x").state == "open"
        logged = [r for r in caplog.records if "breaker trips not shared" in r.getMessage()]
        assert len(logged) == 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestForceOpen:
    """CircuitBreaker.force_open/force_close: a trip or close seen elsewhere, applied here."""

    def test_opens_for_the_remaining_time(self) -> None:
        clock, events = FakeClock(), []  # type: ignore[var-annotated]
        br = CircuitBreaker(
            "s", BreakerPolicy(cooldown_s=2.0), clock=clock, on_change=events.append
        )
        assert br.force_open(1.5, "elsewhere")
        assert br.state == "open" and br.reopens_at() == pytest.approx(101.5)
        assert [(e.old, e.new, e.reason) for e in events] == [("closed", "open", "elsewhere")]
        assert not br.force_open(1.0)  # already open longer: nothing happens
        assert br.force_open(5.0)  # longer: the reopening moves, no new event
        assert br.reopens_at() == pytest.approx(105.0) and len(events) == 1
        assert br.snapshot().trips == 1
        clock.now = 105.0
        assert br.state == "half_open"
        assert br.force_close("closed elsewhere")
        assert br.state == "closed" and not br.force_close()

    def test_rejects_bad_input(self) -> None:
        br = CircuitBreaker("s")
        with pytest.raises(TypeError, match="remaining_s"):
            br.force_open("1")  # type: ignore[arg-type]
        assert not br.force_open(0.0) and br.state == "closed"


class TestOneProber:
    """Half-open: exactly one orchestra sends the probe request; the others wait for its
    verdict and follow it."""

    async def test_one_prober_fleet_wide(self, redis_server: RedisProcess) -> None:
        seen_b = Opened()
        closed_b = anyio.Event()

        def on_b(event: BreakerEvent) -> None:
            seen_b(event)
            if event.name == "x" and event.new == "closed":
                closed_b.set()

        async with fleet([tiny_profile("x", num_parallel=2)]) as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config) as a, Orchestra(config, on_breaker_change=on_b) as b:
                for _ in range(2):  # x fails twice in a: its breaker trips
                    permit = a.breaker("x").admit()
                    assert permit is not None
                    a.breaker("x").record_failure(permit, "boom")
                with anyio.fail_after(1.0):
                    await seen_b.wait("x")
                for orch in (a, b):  # a health probe answered in both: half-open in both
                    orch.breaker("x").record_probe_success()
                    assert orch.breaker("x").state == "half_open"
                answers: List[str] = []

                async def one(orch: Orchestra, prompt: str) -> None:
                    answers.append((await orch.generate(TINY, prompt)).server)

                sim["x"].pause()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(one, a, "a")
                    await sim["x"].wait_until(lambda st: st.in_flight == 1)  # a's probe
                    before = len(seen_b.events)
                    tg.start_soon(one, b, "b")
                    await until(lambda: b.breaker("x").state == "open", "b waits for a's probe")
                    assert [e.reason for e in seen_b.events[before:]] == [
                        "another process probes it (via Redis)"
                    ]
                    assert sim["x"].state().in_flight == 1 and b.balancer.waiting == 1
                    sim["x"].resume()  # a's probe succeeds: closed in a, then in b
                    with anyio.fail_after(5):
                        await closed_b.wait()
                assert answers == ["x", "x"]
                assert a.breaker("x").state == b.breaker("x").state == "closed"
                assert seen_b.events[-1].reason == "closed in another process (via Redis)"


# A worker process: an orchestra on hosts x and y whose breaker for x trips (two failures),
# waits until the trip is published, prints "tripped".
WORKER = r"""
import sys

import anyio

from ollama_orchestra import (
    BreakerPolicy, Coordination, HealthPolicy, Orchestra, OrchestraConfig, Server,
)


async def main(x: str, y: str, redis: str) -> None:
    config = OrchestraConfig(
        servers=(Server("x", x, max_concurrency=2), Server("y", y, max_concurrency=2)),
        strategy="round_robin",
        coordination=Coordination(redis),
        breaker=BreakerPolicy(failure_threshold=2, cooldown_s=30.0),
        health=HealthPolicy(interval_s=60.0, down_interval_s=60.0, startup_timeout_s=5),
    )
    async with Orchestra(config) as orch:
        breaker = orch.breaker("x")
        for _ in range(2):  # two failed requests on x (as in the in-process tests)
            permit = breaker.admit()
            assert permit is not None
            breaker.record_failure(permit, "502")
        assert breaker.state == "open"
        for _ in range(3000):  # the publish runs in the background (polled in the worker)
            if orch.balancer.shared_breakers.published:
                break
            await anyio.sleep(0.01)
        print("tripped", flush=True)


anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
"""


class TestProcesses:
    """A trip in a worker process opens this process's breaker within a second."""

    async def test_trip_in_another_process(self, redis_server: RedisProcess) -> None:
        seen = Opened()
        async with two_hosts() as sim:
            config = breaker_config(sim, redis_server.url)
            async with Orchestra(config, on_breaker_change=seen) as b:
                args = [sim["x"].url, sim["y"].url, redis_server.url]
                proc = await anyio.open_process([sys.executable, "-c", WORKER, *args], stderr=None)
                try:
                    assert proc.stdout is not None
                    with anyio.fail_after(60):
                        line = await BufferedByteReceiveStream(proc.stdout).receive_until(
                            b"\n", 100
                        )
                    assert line == b"tripped"
                    with anyio.fail_after(1.0):
                        await seen.wait("x")
                    assert seen.events[-1].reason == REMOTE
                    with anyio.fail_after(30):
                        assert await proc.wait() == 0
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                before = sim["x"].state().requests
                for i in range(4):
                    assert (await b.generate(TINY, f"b{i}")).server == "y"
                assert sim["x"].state().requests == before
