"""Waiters served across processes highest priority first, through a real Redis: a request
yields a free slot to a waiter of a higher priority queued in another orchestra, and a waiter
that leaves Redis' queue wakes the ones it held back."""

from __future__ import annotations

from typing import List

import anyio

from ollama_orchestra import Orchestra
from ollama_orchestra._redis_slots import RedisSlots

from .conftest import TINY, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server, until
from .test_coordination import shared_config

__all__ = ["redis_server"]


async def _queued(redis: RedisSlots, n: int) -> None:
    """Wait until ``n`` waiters are queued for host ``h`` in Redis (polls Redis' count)."""
    counted = [0]

    async def count() -> None:
        counted[0] = await redis.waiting("h")

    for _ in range(1500):
        await count()
        if counted[0] >= n:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"{counted[0]} waiters queued in Redis, not {n}")


class TestPriorityAcrossProcesses:
    """One slot: a high-priority waiter of orchestra B is served before an earlier
    low-priority waiter of orchestra A, though A frees the slot."""

    async def test_high_priority_elsewhere_first(self, redis_server: RedisProcess) -> None:
        order: List[str] = []
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url, slots=1)
            async with Orchestra(config) as a, Orchestra(config) as b, RedisSlots(
                redis_server.url
            ) as redis:

                async def one(orch: Orchestra, name: str, priority: int) -> None:
                    await orch.generate(TINY, name, priority=priority)
                    order.append(name)

                sim["h"].pause()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(one, a, "holder", 0)
                    await sim["h"].wait_until(lambda st: st.in_flight == 1)
                    tg.start_soon(one, a, "low", 0)
                    await until(lambda: a.balancer.waiting == 1, "low waits in a")
                    await _queued(redis, 1)
                    tg.start_soon(one, b, "high", 5)
                    await until(lambda: b.balancer.waiting == 1, "high waits in b")
                    await _queued(redis, 2)
                    sim["h"].resume()
                assert await redis.waiting("h") == 0  # both left Redis' queue
        assert order == ["holder", "high", "low"]

    async def test_equal_priorities_unaffected(self, redis_server: RedisProcess) -> None:
        """Waiters of one priority do not hold each other back: all are served."""
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url, slots=2)
            async with Orchestra(config) as a, Orchestra(config) as b:
                done: List[str] = []

                async def one(orch: Orchestra, name: str) -> None:
                    await orch.generate(TINY, name)
                    done.append(name)

                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        for i in range(6):
                            tg.start_soon(one, a if i % 2 else b, f"q{i}")
                assert len(done) == 6


class TestLeaving:
    """A higher-priority waiter holds a free slot back only while it waits: leaving wakes the
    ones it held back at once; one whose process died expires with the lease TTL."""

    async def test_leaving_wakes_the_lower_waiter(self, redis_server: RedisProcess) -> None:
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            # ttl_s 60: the periodic read (every 20 s) cannot be what wakes it.
            config = shared_config(sim, redis_server.url, slots=1, ttl_s=60.0)
            async with Orchestra(config) as a, RedisSlots(redis_server.url) as other:
                await other.join([("other-high", 5, ["h"])])  # another process's waiter
                got = anyio.Event()

                async def low() -> None:
                    await a.generate(TINY, "low")
                    got.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(low)
                    await _queued(other, 2)  # refused (it yields), then queued
                    await until(lambda: a.balancer.waiting == 1, "low waits")
                    assert not got.is_set() and sim["h"].state().requests == 0
                    await other.leave("other-high", ["h"])
                    with anyio.fail_after(10):
                        await got.wait()

    async def test_dead_process_waiter_expires(self, redis_server: RedisProcess) -> None:
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            config = shared_config(sim, redis_server.url, slots=1, ttl_s=0.6)
            async with Orchestra(config) as a:
                async with RedisSlots(redis_server.url, ttl_s=0.6) as dead:
                    await dead.join([("dead-high", 5, ["h"])])
                # ``dead`` is gone without leaving: its waiter is not renewed any more.
                with anyio.fail_after(10):
                    answer = await a.generate(TINY, "low")
                assert answer.response and sim["h"].state().completed == 1
