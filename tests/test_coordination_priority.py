"""Waiters served across processes highest priority first, through a real Redis: a request
yields a free slot to a waiter of a higher priority queued in another orchestra, and a waiter
that leaves Redis' queue wakes the ones it held back."""

from __future__ import annotations

import sys
from typing import List

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from ollama_orchestra import Orchestra
from ollama_orchestra._redis_slots import RedisSlots
from ollama_orchestra.sim import SimState

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


# Process A: an orchestra on host ``h`` (1 slot, shared through Redis) sends "holder", then,
# once holder has the slot, "low" (priority 0); prints "ready" once low waits, "low done"
# once it is answered.
WORKER = r"""
import sys

import anyio

from ollama_orchestra import Coordination, HealthPolicy, Orchestra, OrchestraConfig, Server


async def main(url: str, redis: str) -> None:
    config = OrchestraConfig(
        servers=(Server("h", url, max_concurrency=1),),
        coordination=Coordination(redis),
        health=HealthPolicy(interval_s=60, down_interval_s=60, startup_timeout_s=5),
    )
    async with Orchestra(config) as orch:

        async def low() -> None:
            await orch.generate("tiny:latest", "low", priority=0)
            print("low done", flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(orch.generate, "tiny:latest", "holder")
            for _ in range(3000):  # polled in the worker: holder has the slot
                if orch.balancer.in_use("h") == 1:
                    break
                await anyio.sleep(0.01)
            tg.start_soon(low)
            for _ in range(3000):
                if orch.balancer.waiting == 1:
                    break
                await anyio.sleep(0.01)
            print("ready", flush=True)


anyio.run(main, sys.argv[1], sys.argv[2])
"""


class TestPriorityAcrossRealProcesses:
    """Process A holds the one slot and has a low-priority request waiting; this process's
    later high-priority request is served next."""

    async def test_high_priority_in_b_first(self, redis_server: RedisProcess) -> None:
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            sim["h"].pause()
            proc = await anyio.open_process(
                [sys.executable, "-c", WORKER, sim["h"].url, redis_server.url], stderr=None
            )
            try:
                assert proc.stdout is not None
                lines = BufferedByteReceiveStream(proc.stdout)

                async def line() -> bytes:
                    with anyio.fail_after(30):
                        return await lines.receive_until(b"\n", 100)

                assert await line() == b"ready"
                config = shared_config(sim, redis_server.url, slots=1)
                async with Orchestra(config) as b, RedisSlots(redis_server.url) as redis:
                    await _queued(redis, 1)  # A's low waits in Redis' queue
                    high_done = anyio.Event()

                    async def high() -> None:
                        await b.generate(TINY, "high", priority=5)
                        high_done.set()

                    def second_done(st: SimState) -> bool:
                        if st.completed == 2:  # holder, then one more: stop there
                            sim["h"].pause()
                            return True
                        return False

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(high)
                        await _queued(redis, 2)
                        tg.start_soon(sim["h"].wait_until, second_done)
                        await anyio.wait_all_tasks_blocked()
                        sim["h"].resume()
                        with anyio.fail_after(10):  # the second one served was "high"
                            await high_done.wait()
                        sim["h"].resume()
                    assert await line() == b"low done"
                    with anyio.fail_after(30):
                        assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
