"""Two proxies in front of one fleet, sharing its slots through a real Redis: each builds its
orchestra from a config with ``coordination``, and together they never overfill a host."""

from __future__ import annotations

from typing import List

import anyio
import httpx

from ollama_orchestra import serve_proxy
from ollama_orchestra._redis_slots import RedisSlots

from .conftest import TINY, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server
from .test_coordination import _Peak, shared_config

__all__ = ["redis_server"]


class TestTwoProxies:
    """8 requests through two proxies on a host with 2 slots: never more than 2 run on it."""

    async def test_never_overfill(self, redis_server: RedisProcess) -> None:
        peak = _Peak()
        async with fleet([tiny_profile("h", num_parallel=8)]) as sim:
            config = shared_config(sim, redis_server.url, slots=2)
            async with anyio.create_task_group() as proxies, httpx.AsyncClient(
                timeout=60
            ) as http, RedisSlots(redis_server.url) as redis:
                urls: List[str] = [
                    await proxies.start(serve_proxy, config, "127.0.0.1", 0) for _ in range(2)
                ]
                for url in urls:
                    status = (await http.get(url + "/status")).json()
                    assert status["coordination"] == "redis"
                answers: List[str] = []

                async def one(url: str, i: int) -> None:
                    body = {"model": TINY, "prompt": f"q{i}", "stream": False}
                    response = await http.post(url + "/api/generate", json=body)
                    response.raise_for_status()
                    answers.append(response.json()["response"])

                sim["h"].pause()
                async with anyio.create_task_group() as watch:
                    watch.start_soon(peak.watch, sim, "h")
                    async with anyio.create_task_group() as tg:
                        for i in range(8):
                            tg.start_soon(one, urls[i % 2], i)
                        await sim["h"].wait_until(lambda st: st.in_flight == 2)
                        # The six others wait in the proxies, queued in Redis too.
                        for _ in range(1500):
                            if await redis.waiting("h") == 6:
                                break
                            await anyio.sleep(0.01)
                        assert await redis.waiting("h") == 6
                        assert sim["h"].state().in_flight == 2
                        sim["h"].resume()
                    watch.cancel_scope.cancel()
                assert len(answers) == 8 and all(answers)
                proxies.cancel_scope.cancel()
        assert peak.value == 2
