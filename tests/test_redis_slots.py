"""Shared slots through a real Redis: limits across stores, wake-ups, priority, expiry."""

from __future__ import annotations

import sys
from typing import List

import anyio
import anyio.lowlevel
import pytest

from ollama_orchestra import ConfigError, MissingExtra
from ollama_orchestra._redis_slots import RedisSlots

from .redis_fixture import RedisProcess, redis_server

__all__ = ["redis_server"]


async def _queued(store: RedisSlots, n: int) -> None:
    """Wait until ``n`` waiters are queued for server ``h`` in Redis (polls Redis' count)."""
    with anyio.fail_after(5):
        for _ in range(10_000):
            if await store.waiting("h") >= n:
                return
            await anyio.sleep(0.01)


class TestSharedLimit:
    """Two stores on one Redis never hold more than a server's slots between them."""

    async def test_third_waits_until_a_release_in_the_other_store(
        self, redis_server: RedisProcess
    ) -> None:
        async with RedisSlots(redis_server.url, poll_s=30) as a, RedisSlots(
            redis_server.url, poll_s=30
        ) as b:
            la = await a.acquire("h", 2)
            await b.acquire("h", 2)
            got = anyio.Event()

            async def third() -> None:
                await b.acquire("h", 2)
                got.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(third)
                await anyio.wait_all_tasks_blocked()
                assert not got.is_set()
                assert await a.in_flight("h") == 2
                await a.release("h", la)
                with anyio.fail_after(5):  # woken by pub/sub, not the 30 s poll
                    await got.wait()
            assert await a.in_flight("h") == 2

    async def test_many_tasks_never_exceed_slots(self, redis_server: RedisProcess) -> None:
        """Every waiter is woken by the releases (pub/sub), none left to the 30 s poll."""
        peak: List[int] = [0]
        live = [0]
        async with RedisSlots(redis_server.url, poll_s=30) as a, RedisSlots(
            redis_server.url, poll_s=30
        ) as b:

            async def worker(store: RedisSlots) -> None:
                lease = await store.acquire("h", 3)
                live[0] += 1
                peak[0] = max(peak[0], live[0], await store.in_flight("h"))
                await anyio.lowlevel.checkpoint()
                live[0] -= 1
                await store.release("h", lease)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(worker, a if i % 2 else b)
        assert peak[0] == 3


class TestPriority:
    """A waiter with a higher priority is served before earlier, lower-priority ones."""

    async def test_high_priority_first(self, redis_server: RedisProcess) -> None:
        order: List[str] = []
        async with RedisSlots(redis_server.url, poll_s=30) as a, RedisSlots(
            redis_server.url, poll_s=30
        ) as b:
            held = await a.acquire("h", 1)

            async def wait(store: RedisSlots, name: str, priority: int) -> None:
                lease = await store.acquire("h", 1, priority)
                order.append(name)
                await store.release("h", lease)

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, a, "low", 0)
                await _queued(a, 1)
                tg.start_soon(wait, b, "high", 5)
                await _queued(a, 2)  # both queued in Redis
                await a.release("h", held)
        assert order == ["high", "low"]


class TestExpiry:
    """A holder that stops renewing loses its slot after the lease TTL; a live one keeps it."""

    async def test_dead_holder_slot_frees(self, redis_server: RedisProcess) -> None:
        async with RedisSlots(redis_server.url, ttl_s=0.3, poll_s=0.05) as b:
            dead = RedisSlots(redis_server.url, ttl_s=0.3)
            async with dead:
                await dead.acquire("h", 1)
            # ``dead`` exited without releasing: no heartbeat renews its lease any more.
            with anyio.fail_after(5):
                await b.acquire("h", 1)

    async def test_heartbeat_keeps_lease(self, redis_server: RedisProcess) -> None:
        async with RedisSlots(redis_server.url, ttl_s=0.3, poll_s=0.05) as a, RedisSlots(
            redis_server.url, ttl_s=0.3, poll_s=0.05
        ) as b:
            await a.acquire("h", 1)
            with anyio.move_on_after(1.2):  # four TTLs
                await b.acquire("h", 1)
                pytest.fail("a renewed lease was taken")
            assert await a.in_flight("h") == 1


class TestConfig:
    """A bad URL is a ConfigError that does not show the password; no redis package: MissingExtra."""

    def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "redis.asyncio", None)
        with pytest.raises(MissingExtra, match="redis"):
            RedisSlots("redis://127.0.0.1:1/0")

    def test_bad_url(self) -> None:
        with pytest.raises(ConfigError, match="coordination") as info:
            RedisSlots("http://user:s3cret@host/")
        assert "s3cret" not in str(info.value)
