"""Failover on the simulated fleet: each fault as a client sees it; requests succeed elsewhere."""

from __future__ import annotations

from collections import Counter
from typing import Any, List

import anyio
import pytest

from ollama_orchestra import (
    BreakerPolicy,
    GenerateResponse,
    NoCapableServer,
    NoHealthyServer,
    Orchestra,
    RequestFailed,
    Server,
    StreamInterrupted,
    Timeouts,
)
from ollama_orchestra.sim import Faults, SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile


def pair() -> SimFleet:
    return fleet([tiny_profile("h1"), tiny_profile("h2")])


async def run_many(orch: Orchestra, n: int, **kw: Any) -> List[GenerateResponse]:
    out: List[GenerateResponse] = []
    async with anyio.create_task_group() as tg:

        async def one(i: int) -> None:
            out.append(await orch.generate(TINY, f"q{i}", **kw))

        for i in range(n):
            tg.start_soon(one, i)
    return out


class TestFaultsFailOver:
    @pytest.mark.parametrize(
        "faults",
        [
            Faults(status=500),
            Faults(status=503),
            Faults(reset_after_chunks=2),
            Faults(stream_error_after_chunks=2),
            Faults(error_rate=0.5),
        ],
        ids=["500", "503", "reset", "error-line", "error-rate"],
    )
    async def test_requests_succeed_elsewhere(self, faults: Faults) -> None:
        """With one host failing, every request still succeeds, on the other host if need be."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].set_faults(faults)
            results = await run_many(orch, 12)
        assert len(results) == 12 and all(r.done for r in results)
        assert any(r.attempts == 2 for r in results)
        assert all(r.server == "h2" for r in results if r.attempts > 1)

    async def test_refused(self) -> None:
        """A refusing host is marked down at once; requests go to the other."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].kill()
            results = await run_many(orch, 8)
            assert not orch.state()["h1"].healthy
        assert {r.server for r in results} == {"h2"}

    async def test_hang_caught_by_first_byte_timeout(self) -> None:
        """A hung host is caught by the first-byte timeout and the request moves on."""
        async with pair() as sim:
            cfg = config_for(sim, strategy="round_robin", timeouts=Timeouts(first_byte_s=0.3))
            async with Orchestra(cfg) as orch:
                await sim["h1"].set_faults(Faults(hang=True))
                results = await run_many(orch, 4)
        assert {r.server for r in results} == {"h2"}
        assert any(r.attempts == 2 for r in results)

    async def test_slow_host_is_not_cut_off(self) -> None:
        """A slow but alive host finishes its answer: no total timeout by default."""
        async with fleet([tiny_profile("h1")], time_scale=0.05) as sim, Orchestra(
            config_for(sim, timeouts=Timeouts(first_byte_s=5, read_s=5))
        ) as orch:
            await sim["h1"].set_faults(Faults(slow=20))
            r = await orch.generate(TINY, "x", options={"num_predict": 32})
        assert r.eval_count == 32 and r.attempts == 1

    async def test_404_on_one_host_only(self) -> None:
        """A host that answers 404 for a model it was said to have loses it; requests reroute."""
        async with fleet([tiny_profile("h1"), tiny_profile("h2")]) as sim:
            servers = (
                Server("h1", sim["h1"].url, models=(TINY, "ghost:latest")),
                Server("h2", sim["h2"].url, models=("ghost:latest",)),
            )
            cfg = config_for(sim).replace(servers=servers)
            async with Orchestra(cfg) as orch:
                with pytest.raises(NoCapableServer, match="ghost"):
                    await orch.generate("ghost", "x")
                assert "ghost:latest" not in orch.state()["h1"].models
                assert (await orch.generate(TINY, "x")).server == "h1"

    async def test_flapping_host(self) -> None:
        """A flapping host never makes a request fail."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].set_faults(Faults(flap_period_s=0.05))
            results = await run_many(orch, 30)
            await sim["h1"].clear_faults()
        assert len(results) == 30

    async def test_nothing_can_serve(self) -> None:
        """When every host fails, RequestFailed lists each attempt's server and error."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch:
            for s in sim:
                await s.set_faults(Faults(status=500))
            with pytest.raises(RequestFailed) as info:
                await orch.generate(TINY, "x")
        attempts = info.value.attempts
        assert len(attempts) == 3
        assert {a.server for a in attempts} == {"h1", "h2"}
        assert all("500" in a.error for a in attempts)

    async def test_all_down_is_no_healthy_server(self) -> None:
        """With every host refusing, the request ends in NoHealthyServer after the bounded wait."""
        async with pair() as sim, Orchestra(config_for(sim, wait_for_healthy_s=0.2)) as orch:
            for s in sim:
                await s.kill()
            with pytest.raises((NoHealthyServer, RequestFailed)):
                await orch.generate(TINY, "x")


class TestStreams:
    async def test_failover_before_first_chunk_is_transparent(self) -> None:
        """A stream whose first host fails before any chunk comes from the other host, whole."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            await sim["h1"].set_faults(Faults(status=500))
            for _ in range(2):
                chunks = [
                    c async for c in orch.generate_stream(TINY, "x", options={"num_predict": 5})
                ]
                assert [c.done for c in chunks] == [False] * 5 + [True]
                assert {c.server for c in chunks} == {"h2"}

    async def test_break_after_text_raises_stream_interrupted(self) -> None:
        """Once text was yielded, a broken stream raises StreamInterrupted with the partial text."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            await sim["h1"].set_faults(Faults(reset_after_chunks=3))
            got: List[str] = []

            async def consume() -> None:
                async for chunk in orch.generate_stream(TINY, "x", options={"num_predict": 10}):
                    got.append(chunk.response)

            with pytest.raises(StreamInterrupted) as info:
                await consume()
            assert info.value.partial == "".join(got) and len(got) == 3
            assert info.value.server == "h1"
            assert orch.breaker("h1").snapshot().consecutive_failures == 1
            assert orch.balancer.in_use("h1") == 0

    async def test_early_close_releases_the_slot(self) -> None:
        """Leaving a stream early (async with) frees its slot at once."""
        async with fleet([tiny_profile("h1", num_parallel=1)]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            async with orch.chat_stream(
                TINY, [{"role": "user", "content": "x"}], options={"num_predict": 1000}
            ) as stream:
                async for _ in stream:
                    break
            assert orch.balancer.in_use("h1") == 0
            assert (await orch.generate(TINY, "next", options={"num_predict": 2})).eval_count == 2


class TestBreakerIntegration:
    async def test_open_breaker_keeps_work_away(self) -> None:
        """A host failing every request (502) trips its breaker and stops getting attempts."""
        async with pair() as sim:
            cfg = config_for(
                sim,
                strategy="round_robin",
                breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60),
            )
            async with Orchestra(cfg) as orch:
                await sim["h1"].set_faults(Faults(status=502))
                await run_many(orch, 6)
                assert orch.state()["h1"].breaker == "open"
                before = sim["h1"].state().requests
                results = await run_many(orch, 10)
                assert sim["h1"].state().requests == before
                assert orch.metrics().servers["h1"].breaker_trips == 1
        assert all(r.server == "h2" and r.attempts == 1 for r in results)

    async def test_model_failure_opens_only_that_models_breaker(self) -> None:
        """A 500 "llama runner process has terminated" trips the (host, model) breaker only."""
        async with pair() as sim:
            cfg = config_for(
                sim,
                strategy="round_robin",
                breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60),
            )
            async with Orchestra(cfg) as orch:
                await sim["h1"].set_faults(Faults(status=500))
                await run_many(orch, 6)
                assert orch.model_breaker("h1", TINY).state == "open"
                assert orch.breaker("h1").state == "closed"
                assert orch.state()["h1"].breaker == "closed"
                before = sim["h1"].state().requests
                results = await run_many(orch, 10)
                assert sim["h1"].state().requests == before
        assert all(r.server == "h2" and r.attempts == 1 for r in results)


class TestKillMidRun:
    async def test_kill_one_host_with_200_requests_in_flight(self) -> None:
        """Killing one of two hosts mid-run loses no request and answers none twice."""
        async with fleet(
            [tiny_profile("h1", num_parallel=4), tiny_profile("h2", num_parallel=4)],
            time_scale=0.02,
        ) as sim, Orchestra(config_for(sim, strategy="least_loaded")) as orch:
            results: List[GenerateResponse] = []
            prompts: List[str] = []
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    r = await orch.generate(TINY, f"q{i}", options={"num_predict": 16})
                    prompts.append(f"q{i}")
                    results.append(r)

                for i in range(200):
                    tg.start_soon(one, i)
                await sim["h1"].wait_until(lambda st: st.completed >= 10)
                await sim["h1"].kill()
            metrics = orch.metrics()
        assert len(results) == 200 and sorted(prompts) == sorted(f"q{i}" for i in range(200))
        assert Counter(prompts).most_common(1)[0][1] == 1
        assert metrics.failovers >= 1
        assert any(r.server == "h1" for r in results) and any(r.server == "h2" for r in results)
