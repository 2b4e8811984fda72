"""Orchestras sharing slots through a real Redis: the fleet-wide limit, the fallback to local
limits while Redis is down, and the rejoin when it is back."""

from __future__ import annotations

import logging
from typing import Any, List

import anyio
import pytest

from ollama_orchestra import Coordination, Orchestra, OrchestraConfig, Server
from ollama_orchestra._redis_slots import RedisSlots
from ollama_orchestra.sim import SimFleet, SimState

from .conftest import TINY, config_for, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server, until

__all__ = ["redis_server"]


def shared_config(sim: SimFleet, url: str, *, slots: int = 2, **kwargs: Any) -> OrchestraConfig:
    """The fleet with ``slots`` per server (the hosts themselves accept more)."""
    base = config_for(sim)
    servers = tuple(Server(s.name, s.url, max_concurrency=slots) for s in base.servers)
    coordination = Coordination(url, **kwargs) if url else None
    return base.replace(servers=servers, coordination=coordination)


def _mode_shown(orch: Orchestra) -> str:
    """The coordination mode as ``metrics()`` and the Prometheus text both show it (checked
    to agree: exactly one mode's gauge is 1)."""
    mode = orch.metrics().coordination
    lines = [
        ln
        for ln in orch.prometheus().splitlines()
        if ln.startswith("ollama_orchestra_coordination{")
    ]
    on = [ln for ln in lines if ln.endswith(" 1")]
    assert len(lines) == 3 and on == [f'ollama_orchestra_coordination{{mode="{mode}"}} 1']
    return mode


class _Peak:
    """The most requests the host ever ran at once, from the simulator's own count (every
    change of its scheduler is seen)."""

    def __init__(self) -> None:
        self.value = 0

    def see(self, st: SimState) -> bool:
        self.value = max(self.value, st.in_flight)
        return False

    async def watch(self, sim: SimFleet, name: str) -> None:
        await sim[name].wait_until(self.see)


async def _burst(
    sim: SimFleet,
    orchs: List[Orchestra],
    per_orch: int,
    *,
    running: int,
    waiting: int,
) -> List[str]:
    """``per_orch`` requests from each orchestra on a paused host: wait until ``running`` run
    and ``waiting`` wait in the orchestras, then let them all finish."""
    answers: List[str] = []

    async def one(orch: Orchestra, i: int) -> None:
        answers.append((await orch.generate(TINY, f"q{i}")).response)

    sim["h"].pause()
    async with anyio.create_task_group() as tg:
        for i in range(per_orch):
            for orch in orchs:
                tg.start_soon(one, orch, i)
        await sim["h"].wait_until(lambda st: st.in_flight == running)
        await until(lambda: sum(o.balancer.waiting for o in orchs) == waiting, "queued")
        sim["h"].resume()
    return answers


class TestSharedLimit:
    """Two orchestras on one Redis never run more than a server's slots on it together."""

    async def test_two_orchestras_hold_two_slots(self, redis_server: RedisProcess) -> None:
        peak = _Peak()
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url)
            async with Orchestra(config) as a, Orchestra(config) as b:
                assert a.state().coordination == "redis"
                async with anyio.create_task_group() as watch:
                    watch.start_soon(peak.watch, sim, "h")
                    answers = await _burst(sim, [a, b], 3, running=2, waiting=4)
                    watch.cancel_scope.cancel()
                assert len(answers) == 6 and all(answers)
                assert a.balancer.in_use("h") == b.balancer.in_use("h") == 0
        assert peak.value == 2

    async def test_without_coordination_they_overfill(self) -> None:
        """The control: without Redis each orchestra fills the host's slots by itself."""
        peak = _Peak()
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, "")
            async with Orchestra(config) as a, Orchestra(config) as b:
                assert a.state().coordination is None
                assert _mode_shown(a) == "off"
                async with anyio.create_task_group() as watch:
                    watch.start_soon(peak.watch, sim, "h")
                    await _burst(sim, [a, b], 3, running=4, waiting=2)
                    watch.cancel_scope.cancel()
        assert peak.value == 4


class TestCancellation:
    """Cancelled requests, running or waiting, give every Redis slot back."""

    async def test_cancelled_requests_release_redis_slots(self, redis_server: RedisProcess) -> None:
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url)
            async with Orchestra(config) as orch, RedisSlots(redis_server.url) as redis:
                sim["h"].pause()
                async with anyio.create_task_group() as tg:
                    for i in range(5):
                        tg.start_soon(orch.generate, TINY, f"q{i}")
                    await sim["h"].wait_until(lambda st: st.in_flight == 2)
                    assert await redis.in_flight("h") == 2
                    tg.cancel_scope.cancel()
                assert orch.balancer.in_use("h") == 0 and orch.balancer.waiting == 0
                live = [2]

                async def count() -> None:
                    live[0] = await redis.in_flight("h")

                for _ in range(500):  # the releases are on their way (background, shielded)
                    await count()
                    if live[0] == 0:
                        break
                    await anyio.sleep(0.01)
                assert live[0] == 0
                sim["h"].resume()


class TestFallback:
    """Redis down: local limits, logged once, shown in state(); back: shared again."""

    async def test_redis_stops_and_returns(
        self, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "ollama_orchestra.coordination")
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(
                sim, redis_server.url, ttl_s=0.6, timeout_s=0.3, fallback_share=0.5
            )
            async with Orchestra(config) as orch:
                assert orch.state().coordination == "redis"
                assert _mode_shown(orch) == "redis"
                answers: List[str] = []

                async def one(i: int) -> None:
                    answers.append((await orch.generate(TINY, f"q{i}")).response)

                sim["h"].pause()
                async with anyio.create_task_group() as tg:
                    for i in range(4):
                        tg.start_soon(one, i)
                    await sim["h"].wait_until(lambda st: st.in_flight == 2)
                    redis_server.stop()  # mid-run: two running, two waiting
                    sim["h"].resume()
                    for i in range(4, 8):
                        tg.start_soon(one, i)
                assert len(answers) == 8 and all(answers)
                await until(lambda: orch.state().coordination == "local-fallback", "fallback")
                assert orch.state().to_dict()["coordination"] == "local-fallback"
                assert _mode_shown(orch) == "local-fallback"
                # On local limits: half of the host's two slots.
                answers += await _burst(sim, [orch], 3, running=1, waiting=2)
                assert len(answers) == 11 and all(answers)

                redis_server.start()
                await until(lambda: orch.state().coordination == "redis", "rejoined")
                assert _mode_shown(orch) == "redis"
                answers += await _burst(sim, [orch], 3, running=2, waiting=1)
                assert len(answers) == 14 and all(answers)
        warnings = [r for r in caplog.records if "using local limits" in r.getMessage()]
        assert len(warnings) == 1
        assert "answers again" in caplog.text

    async def test_redis_slow(self, redis_server: RedisProcess) -> None:
        """A Redis that accepts but does not answer (frozen) counts as down after timeout_s."""
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url, ttl_s=0.6, timeout_s=0.2)
            async with Orchestra(config) as orch:
                assert orch.state().coordination == "redis"
                redis_server.freeze()
                try:
                    answers = await _burst(sim, [orch], 3, running=1, waiting=2)
                    assert len(answers) == 3 and all(answers)
                    assert orch.state().coordination == "local-fallback"
                finally:
                    redis_server.thaw()
                await until(lambda: orch.state().coordination == "redis", "rejoined")
                answers = await _burst(sim, [orch], 3, running=2, waiting=1)
                assert len(answers) == 3 and all(answers)

    async def test_redis_down_at_start(
        self, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, "ollama_orchestra.coordination")
        redis_server.stop()
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            url = redis_server.url.replace("redis://", "redis://:s3cret@")
            config = shared_config(sim, url, ttl_s=0.6, timeout_s=0.3)
            async with Orchestra(config) as orch:
                assert orch.state().coordination == "local-fallback"
                answers = await _burst(sim, [orch], 3, running=1, waiting=2)
                assert len(answers) == 3 and all(answers)
        assert "using local limits" in caplog.text
        assert "s3cret" not in caplog.text
