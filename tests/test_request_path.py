"""The one request path: streamed and collected requests are the same exchange, timed alike."""

from __future__ import annotations

from typing import Any, Dict, List

import anyio
import anyio.lowlevel
import pytest

from ollama_orchestra import Orchestra

from .conftest import TINY, config_for, fleet, tiny_profile


class _Clock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _service_time(mode: str) -> float:
    """The service time recorded for one request of ``mode`` that first waited for a slot."""
    clock = _Clock()
    async with fleet([tiny_profile("h1", num_parallel=1)]) as sim, Orchestra(
        config_for(sim), clock=clock
    ) as orch:
        holder = orch.generate_stream(TINY, "hold", options={"num_predict": 50})
        async with holder:
            await holder.__anext__()  # the only slot is taken
            done = anyio.Event()

            async def queued() -> None:
                if mode == "stream":
                    async with orch.generate_stream(TINY, "q", options={"num_predict": 3}) as s:
                        [c async for c in s]
                else:
                    await orch.generate(TINY, "q", options={"num_predict": 3})
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(queued)
                with anyio.fail_after(5):
                    while orch.balancer.waiting == 0:
                        await anyio.lowlevel.checkpoint()
                clock.now += 100.0  # the queue wait: must not count as service time
                await holder.aclose()  # closed early: no verdict, no latency sample
                with anyio.fail_after(10):
                    await done.wait()
        return orch.state()["h1"].latency_s[TINY]


class TestServiceTime:
    async def test_streamed_and_collected_record_the_same_service_time(self) -> None:
        """Streamed and collected requests record the same service time, queue wait not in it."""
        streamed = await _service_time("stream")
        collected = await _service_time("collect")
        assert streamed == collected
        assert streamed < 100.0


class TestSend:
    async def test_send_yields_ollama_objects_and_the_answer_details(self) -> None:
        """``send`` yields Ollama's objects, and tells the server and attempts once known."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            body: Dict[str, Any] = {"model": TINY, "prompt": "x", "options": {"num_predict": 3}}
            for collect in (False, True):
                stream = orch.send("/api/generate", body, collect=collect)
                async with stream:
                    objs: List[Dict[str, Any]] = [o async for o in stream]
                assert objs[-1]["done"] is True
                assert stream.server == "h1" and stream.attempts == 1
            async with orch.send(
                "/api/embed", {"model": "tiny-embed:latest", "input": "x"}
            ) as answer:
                (obj,) = [o async for o in answer]
            assert "embeddings" in obj

    @pytest.mark.parametrize("collect", [False, True])
    async def test_send_frees_its_slot(self, collect: bool) -> None:
        """Every slot is free again after ``send`` ends, collected or streamed."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            stream = orch.send("/api/generate", {"model": TINY, "prompt": "x"}, collect=collect)
            async with stream:
                await stream.__anext__()
            assert orch.state()["h1"].in_flight == 0
