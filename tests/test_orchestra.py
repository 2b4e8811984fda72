"""The Orchestra on a simulated fleet: work spreads, slots stay busy, routing follows the model."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import List

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from ollama_orchestra import (
    GenerateResponse,
    HealthPolicy,
    NoCapableServer,
    Orchestra,
    OrchestraClosed,
)
from ollama_orchestra.sim import SimFleet

from .conftest import OTHER, TINY, config_for, fleet, tiny_profile, two_model_profile


class TestSpreading:
    async def test_both_hosts_serve(self) -> None:
        """Concurrent requests are answered by both hosts."""
        async with fleet([tiny_profile("h1"), tiny_profile("h2")]) as sim, Orchestra(
            config_for(sim)
        ) as orch, anyio.create_task_group() as tg:
            results: List[GenerateResponse] = []

            async def one(i: int) -> None:
                results.append(await orch.generate(TINY, f"q{i}"))

            for i in range(12):
                tg.start_soon(one, i)
        assert len(results) == 12
        assert set(Counter(r.server for r in results)) == {"h1", "h2"}
        assert all(r.response and r.done for r in results)

    @pytest.mark.parametrize("strategy", ["least_loaded", "hybrid"])
    async def test_saturated_fleet_keeps_every_slot_busy(self, strategy: str) -> None:
        """With more work than slots, every slot is busy and the excess waits in the orchestra."""
        async with fleet(
            [tiny_profile("h1", num_parallel=2), tiny_profile("h2", num_parallel=3)]
        ) as sim, Orchestra(config_for(sim, strategy=strategy)) as orch:
            for s in sim:
                s.pause()
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(orch.generate, TINY, f"q{i}")
                await sim["h1"].wait_until(lambda st: st.in_flight == 2)
                await sim["h2"].wait_until(lambda st: st.in_flight == 3)
                await wait_all_tasks_blocked()
                assert orch.balancer.waiting == 3
                assert orch.balancer.in_use("h1") == 2
                assert orch.balancer.in_use("h2") == 3
                # Nothing queues inside a host: Ollama's own queue stays empty.
                assert sim["h1"].state().queued == 0
                assert sim["h2"].state().queued == 0
                for s in sim:
                    s.resume()
            assert orch.balancer.waiting == 0

    async def test_faster_host_gets_more_work_under_hybrid(self) -> None:
        """A host twice as fast serves about twice the requests."""
        profiles = [tiny_profile("slow", speed=1.0), tiny_profile("fast", speed=2.0)]
        async with fleet(profiles, time_scale=1.0) as sim, Orchestra(
            config_for(sim, strategy="hybrid")
        ) as orch:
            results: List[GenerateResponse] = []
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    results.append(await orch.generate(TINY, f"q{i}", options={"num_predict": 64}))

                for i in range(30):
                    tg.start_soon(one, i)
        counts = Counter(r.server for r in results)
        ratio = counts["fast"] / counts["slow"]
        assert 1.35 <= ratio <= 2.8, counts


class TestModelRouting:
    @pytest.mark.parametrize("strategy", ["model_aware", "hybrid"])
    async def test_goes_where_the_model_is_loaded(self, strategy: str) -> None:
        """A request goes to the host that has its model loaded, not one that must cold-load it."""
        async with fleet([two_model_profile("h1"), two_model_profile("h2")]) as sim, Orchestra(
            config_for(sim, strategy=strategy)
        ) as orch:
            await orch.generate(OTHER, "", keep_alive=-1)  # load OTHER somewhere
            where_other = next(s for s in sim if OTHER in s.state().loaded).name
            warm = "h2" if where_other == "h1" else "h1"
            # Load TINY on the other host directly, behind the orchestra's back.
            async with __import__("httpx").AsyncClient() as http:
                await http.post(
                    sim[warm].url + "/api/generate", json={"model": TINY, "keep_alive": -1}
                )
            await orch.refresh()
            assert [m.name for m in orch.state()[warm].loaded] == [TINY]
            served = [(await orch.generate(TINY, f"q{i}")).server for i in range(4)]
            assert sum(s.state().loads for s in sim) == 2  # no cold load caused by routing
        assert served == [warm] * 4

    async def test_model_aware_waits_for_busy_warm_host(self) -> None:
        """With the warm host busy, model_aware waits for it instead of cold-loading elsewhere."""
        async with fleet(
            [two_model_profile("h1", num_parallel=1), two_model_profile("h2", num_parallel=1)]
        ) as sim, Orchestra(config_for(sim, strategy="model_aware")) as orch:
            first = await orch.generate(TINY, "warm up", keep_alive=-1)
            warm, cold = first.server, ("h2" if first.server == "h1" else "h1")
            sim[warm].pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(orch.generate, TINY, "busy")
                await sim[warm].wait_until(lambda st: st.in_flight == 1)
                got: List[str] = []

                async def second() -> None:
                    got.append((await orch.generate(TINY, "second")).server)

                tg.start_soon(second)
                await wait_all_tasks_blocked()
                assert orch.balancer.waiting == 1
                assert sim[cold].state().requests == 0
                sim[warm].resume()
        assert got == [warm]

    async def test_cold_load_refreshes_what_is_loaded(self) -> None:
        """A request that cold-loads its model may have evicted another: the orchestra re-reads
        /api/ps at once instead of routing on a stale list until the next probe (a minute)."""
        slow_probes = HealthPolicy(interval_s=60.0, timeout_s=1.0, startup_timeout_s=5)
        async with fleet([two_model_profile("h1", max_loaded_models=1)]) as sim, Orchestra(
            config_for(sim, health=slow_probes)
        ) as orch:
            await orch.generate(OTHER, "first")
            assert [m.name for m in orch.state()["h1"].loaded] == [OTHER]
            await orch.generate(TINY, "evicts OTHER")  # 20 s load (simulated): a cold load
            assert list(sim["h1"].state().loaded) == [TINY]
            with anyio.fail_after(5):
                snap = await orch.wait_for_state(
                    lambda s: [m.name for m in s["h1"].loaded] == [TINY]
                )
        assert snap["h1"].healthy

    async def test_unknown_model(self) -> None:
        """A model no host has raises NoCapableServer naming what each host has."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            with pytest.raises(NoCapableServer) as info:
                await orch.generate("llama3:70b", "x")
        assert info.value.available["h1"] == ("tiny-embed:latest", TINY)

    async def test_roles_resolve_to_models(self) -> None:
        """A role name works wherever a model name does."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(
            config_for(sim, roles={"coding": TINY})
        ) as orch:
            r = await orch.chat("coding", [{"role": "user", "content": "hi"}])
            e = await orch.embed("tiny-embed", ["a", "b"])
        assert r.model == TINY and r.text
        assert len(e.embeddings) == 2 and e.server == "h1"


class TestHealth:
    async def test_killed_host_is_dropped_and_taken_back(self) -> None:
        """A killed host is marked down by probes and gets no work; restarted, it is taken back."""
        async with fleet([tiny_profile("h1"), tiny_profile("h2")]) as sim, Orchestra(
            config_for(sim, strategy="round_robin")
        ) as orch:
            await sim["h1"].kill()
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: not s["h1"].healthy)
            served = {(await orch.generate(TINY, f"q{i}")).server for i in range(4)}
            assert served == {"h2"}
            await sim["h1"].restart()
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["h1"].healthy)
            served = {(await orch.generate(TINY, f"q{i}")).server for i in range(4)}
            assert served == {"h1", "h2"}


class TestLifecycle:
    async def test_cancelled_request_frees_its_slot_everywhere(self) -> None:
        """Cancelling a running request frees the orchestra's slot and the host's."""
        async with fleet([tiny_profile("h1", num_parallel=1)]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            sim["h1"].pause()
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(orch.generate, TINY, "x")
                    await sim["h1"].wait_until(lambda st: st.in_flight == 1)
                    scope.cancel()
            assert orch.balancer.in_use("h1") == 0
            with anyio.fail_after(5):
                await sim["h1"].wait_until(lambda st: st.in_flight == 0)
            sim["h1"].resume()
            assert (await orch.generate(TINY, "after")).server == "h1"

    async def test_exit_leaks_no_task(self) -> None:
        """Leaving 'async with' stops the monitor: no task is left behind."""
        async with fleet([tiny_profile("h1")]) as sim:
            before = {t for t in asyncio.all_tasks() if not t.done()}
            async with Orchestra(config_for(sim)) as orch:
                await orch.generate(TINY, "x")
            await wait_all_tasks_blocked()
            after = {t for t in asyncio.all_tasks() if not t.done()} - before
            leftover = [
                t
                for t in after
                if "uvicorn" not in repr(t.get_coro()) and "SimHost" not in repr(t.get_coro())
            ]
            assert leftover == []
            with pytest.raises(OrchestraClosed):
                await orch.generate(TINY, "x")

    async def test_first_request_knows_the_fleet(self, sim_fleet: SimFleet) -> None:
        """Entering returns after the first probe round: models are known before any request."""
        async with Orchestra(config_for(sim_fleet)) as orch:
            snap = orch.state()
        assert all(s.healthy and s.probed for s in snap.servers.values())
        assert "qwen2.5-coder:32b" in snap["ollama01"].models
        assert snap["ollama02"].version


class TestConnections:
    async def test_connections_are_reused(self) -> None:
        """Sequential requests reuse pooled connections instead of opening one each."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            before = sim["h1"].state().connections
            for i in range(10):
                await orch.generate(TINY, f"q{i}")
            async for _ in orch.generate_stream(TINY, "s"):
                pass
            opened = sim["h1"].state().connections - before
        assert opened <= 2

    async def test_requests_do_not_share_the_probes_connections(self) -> None:
        """Requests use a pool of their own: the health probes' idle connections stay apart."""
        probes_rarely = HealthPolicy(interval_s=60.0, timeout_s=1.0, startup_timeout_s=5)
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(
            config_for(sim, health=probes_rarely)
        ) as orch:
            probed = sim["h1"].state().connections  # the first probe round's, idle now
            await orch.generate(TINY, "q")
            opened = sim["h1"].state().connections - probed
        assert probed >= 1
        assert opened == 1
