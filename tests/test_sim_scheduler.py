"""The simulator's scheduler and timing behave like Ollama's."""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, List

import anyio
import httpx
import pytest

from ollama_orchestra import SimConfigError
from ollama_orchestra.sim import Faults, HostProfile, ModelSpec, SimServer, aggregate_speedup

A = "a:latest"
B = "b:latest"


def profile(**kw: Any) -> HostProfile:
    models = (
        ModelSpec(
            A, size_gb=1, decode_tps=200.0, load_s=kw.pop("load_s", 2.0), default_num_predict=8
        ),
        ModelSpec(B, size_gb=1, decode_tps=200.0, load_s=2.0, default_num_predict=8),
    )
    return HostProfile("h", models, **kw)


async def generate(http: httpx.AsyncClient, model: str = A, **body: Any) -> Dict[str, Any]:
    r = await http.post(
        "/api/generate", json={"model": model, "prompt": "hello", "stream": False, **body}
    )
    assert r.status_code == 200, r.text
    data: Dict[str, Any] = r.json()
    return data


class TestSlots:
    async def test_extra_request_waits_for_a_slot(self) -> None:
        """With N slots the N+1th request waits; the wait is in total_duration, not load_duration."""
        async with SimServer(profile(num_parallel=2), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, options={"num_predict": 1})  # warm the model
            results: List[Dict[str, Any]] = []
            async with anyio.create_task_group() as tg:

                async def one() -> None:
                    results.append(await generate(http, options={"num_predict": 64}))

                srv.pause()
                for _ in range(3):
                    tg.start_soon(one)
                st = await srv.wait_until(lambda s: s.in_flight == 2 and s.waiting_for_slot == 1)
                assert st.queued == 1
                srv.resume()
            waited = max(
                results,
                key=lambda r: r["total_duration"] - r["eval_duration"] - r["prompt_eval_duration"],
            )
            others = [r for r in results if r is not waited]
            slot_wait = (
                waited["total_duration"]
                - waited["eval_duration"]
                - waited["prompt_eval_duration"]
                - waited["load_duration"]
            )
            assert slot_wait >= 0.7 * min(r["eval_duration"] for r in others)
            assert waited["load_duration"] < 0.2 * slot_wait

    async def test_batching_slows_each_request_but_raises_throughput(self) -> None:
        """Two requests at once each decode slower than one alone, as llama.cpp batches do."""
        async with SimServer(profile(num_parallel=2), time_scale=0.02) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, options={"num_predict": 1})
            alone = await generate(http, options={"num_predict": 100})
            pair: List[Dict[str, Any]] = []
            srv.pause()  # start both together, so they decode side by side throughout
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(_append, pair, generate(http, options={"num_predict": 100}))
                await srv.wait_until(lambda st: st.in_flight == 2)
                srv.resume()
        rate_alone = alone["eval_count"] / alone["eval_duration"]
        rate_pair = sum(r["eval_count"] / r["eval_duration"] for r in pair) / 2
        expected = aggregate_speedup(2) / 2
        assert rate_pair / rate_alone == pytest.approx(expected, rel=0.15)


async def _append(out: List[Dict[str, Any]], coro: Any) -> None:
    out.append(await coro)


class TestLoading:
    async def test_cold_then_warm_load_duration(self) -> None:
        """A cold load takes the model's load time; a warm one takes milliseconds."""
        async with SimServer(profile(load_s=3.0), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            cold = await generate(http)
            warm = await generate(http)
        assert cold["load_duration"] == pytest.approx(3e9, rel=0.3)
        assert warm["load_duration"] < 0.05 * 3e9

    async def test_eviction_beyond_max_loaded_models(self) -> None:
        """With room for one model, loading another evicts the first."""
        async with SimServer(
            profile(max_loaded_models=1), time_scale=0.01
        ) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            await generate(http, A)
            assert srv.state().loaded == (A,)
            await generate(http, B)
            st = srv.state()
            ps = (await http.get("/api/ps")).json()["models"]
        assert st.loaded == (B,) and st.evictions == 1 and st.loads == 2
        assert [m["name"] for m in ps] == [B]

    async def test_eviction_by_vram(self) -> None:
        """Models that do not fit together in VRAM evict each other."""
        models = (ModelSpec(A, size_gb=16, load_s=0.5), ModelSpec(B, size_gb=16, load_s=0.5))
        async with SimServer(
            HostProfile("h", models, vram_gb=24), time_scale=0.01
        ) as srv, httpx.AsyncClient(base_url=srv.url) as http:
            await generate(http, A, options={"num_predict": 1})
            await generate(http, B, options={"num_predict": 1})
            assert srv.state().loaded == (B,)

    async def test_503_beyond_max_queue(self) -> None:
        """Requests waiting for a load beyond max_queue get Ollama's 503."""
        async with SimServer(
            profile(max_queue=1, load_s=100.0), time_scale=0.01
        ) as srv, httpx.AsyncClient(base_url=srv.url) as http, anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(http.post, "/api/generate", json={"model": A, "prompt": "x"})
            )
            await srv.wait_until(lambda s: s.loading == A)
            r = await http.post("/api/generate", json={"model": B, "prompt": "x"})
            tg.cancel_scope.cancel()
        assert r.status_code == 503
        assert r.json() == {
            "error": "server busy, please try again.  maximum pending requests exceeded"
        }

    async def test_keep_alive_expiry_shows_in_ps(self) -> None:
        """A model's keep-alive runs out after the request; /api/ps then no longer lists it."""
        async with SimServer(profile(), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, keep_alive="2s")
            ps = (await http.get("/api/ps")).json()["models"]
            assert [m["name"] for m in ps] == [A] and ps[0]["expires_at"]
            with anyio.fail_after(5):
                await srv.wait_until(lambda s: s.loaded == ())
            assert (await http.get("/api/ps")).json()["models"] == []

    async def test_time_scale_preserves_reported_durations(self) -> None:
        """Reported durations are simulated time: the same at two time scales."""
        out = []
        for scale in (0.01, 0.03):
            async with SimServer(profile(), time_scale=scale) as srv, httpx.AsyncClient(
                base_url=srv.url
            ) as http:
                out.append(await generate(http, options={"num_predict": 200}))
        a, b = out
        assert b["eval_duration"] == pytest.approx(a["eval_duration"], rel=0.1)
        assert b["load_duration"] == pytest.approx(a["load_duration"], rel=0.2)
        assert b["total_duration"] == pytest.approx(
            a["total_duration"], rel=0.3
        )  # includes real overhead, scaled


class TestClients:
    async def test_disconnect_frees_the_slot(self) -> None:
        """A client that goes away mid-stream frees its slot at once."""
        async with SimServer(profile(num_parallel=1), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            async with http.stream(
                "POST",
                "/api/generate",
                json={"model": A, "prompt": "x", "options": {"num_predict": 100000}},
            ) as r:
                async for line in r.aiter_lines():
                    assert json.loads(line)["done"] is False
                    break
            with anyio.fail_after(5):
                st = await srv.wait_until(lambda s: s.in_flight == 0)
            assert st.waiting_for_slot == 0
            assert (await generate(http, options={"num_predict": 2}))["eval_count"] == 2

    async def test_request_log(self) -> None:
        """The host logs what it received, for tests to check routing and prompts."""
        async with SimServer(profile(), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, prompt="what is 2+2", options={"num_predict": 1, "temperature": 0})
            logged = (await http.get("/_sim/requests")).json()["requests"]
        assert srv.requests[0].prompt == "what is 2+2"
        assert logged[0]["prompt"] == "what is 2+2" and logged[0]["options"]["temperature"] == 0


class TestValidation:
    @pytest.mark.parametrize(
        ("factory", "field"),
        [
            (lambda: ModelSpec(""), "ModelSpec.name"),
            (lambda: ModelSpec("x", decode_tps=0), "ModelSpec('x:latest').decode_tps"),
            (
                lambda: ModelSpec("x", capabilities=("vision",)),
                "ModelSpec('x:latest').capabilities",
            ),
            (lambda: HostProfile("h", ()), "HostProfile('h').models"),
            (
                lambda: HostProfile("h", (ModelSpec("x"),), num_parallel=0),
                "HostProfile('h').num_parallel",
            ),
            (
                lambda: HostProfile("h", (ModelSpec("x", size_gb=30),), vram_gb=24),
                "HostProfile('h').vram_gb",
            ),
            (lambda: ModelSpec("x", revision=2), "ModelSpec('x:latest').revision"),  # type: ignore[arg-type]
            (lambda: Faults(error_rate=2), "Faults.error_rate"),
            (lambda: Faults(status=200), "Faults.status"),
            (lambda: Faults.from_mapping({"explode": True}), "faults.explode"),
            (lambda: SimServer(profile(), host="10.0.0.1"), "host"),
        ],
    )
    def test_bad_config_names_field(self, factory: Any, field: str) -> None:
        """Bad simulator config raises SimConfigError naming the field and value."""
        with pytest.raises(SimConfigError) as info:
            factory()
        assert info.value.field == field


class TestKeepAliveOrder:
    async def test_busy_eviction_picks_shortest_keep_alive_and_waits(self) -> None:
        """With every runner busy, the shortest keep-alive is evicted once its request ends."""
        models = tuple(ModelSpec(n, size_gb=1, load_s=0.5) for n in ("a", "b", "c"))
        async with SimServer(
            HostProfile("h", models, max_loaded_models=2, num_parallel=1), time_scale=0.01
        ) as srv, httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
            await generate(http, "a", prompt="", keep_alive="1h")
            await generate(http, "b", prompt="", keep_alive="10m")
            done: List[str] = []

            async def run(model: str, keep_alive: str) -> None:
                await generate(http, model, keep_alive=keep_alive, options={"num_predict": 2})
                done.append(model)

            srv.pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "a", "1h")
                tg.start_soon(run, "b", "10m")
                await srv.wait_until(lambda s: s.in_flight == 2)
                tg.start_soon(run, "c", "5m")
                st = await srv.wait_until(lambda s: s.evictions == 1)
                # b is on its way out but still finishing its request; a stays.
                assert st.loaded == ("a:latest",) and st.in_flight_by_model["b:latest"] == 1
                assert done == []
                srv.resume()
            assert srv.state().loaded == ("a:latest", "c:latest")
            assert sorted(done) == ["a", "b", "c"]

    async def test_ps_lists_longest_keep_alive_first(self) -> None:
        """/api/ps orders by remaining keep-alive, a negative keep_alive (forever) first."""
        models = tuple(ModelSpec(n, size_gb=1, load_s=0.5) for n in ("a", "b", "c"))
        async with SimServer(HostProfile("h", models), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, "a", prompt="", keep_alive="10m")
            await generate(http, "b", prompt="", keep_alive=-1)
            await generate(http, "c", prompt="", keep_alive=3600)
            ps = (await http.get("/api/ps")).json()["models"]
        assert [m["name"] for m in ps] == ["b:latest", "c:latest", "a:latest"]
        assert all(m["expires_at"].endswith("Z") and m["size_vram"] for m in ps)

    @pytest.mark.parametrize(
        ("bad", "error"),
        [
            ("soon", 'time: invalid duration "soon"'),
            ("5", 'time: missing unit in duration "5"'),
            (True, "Unsupported type: 'bool'"),
            ([1], "Unsupported type: '[]interface {}'"),
        ],
    )
    async def test_bad_keep_alive_is_400(self, bad: object, error: str) -> None:
        """An unparseable keep_alive is a 400 with Ollama's message (api.Duration, v0.33)."""
        async with SimServer(profile(), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            r = await http.post(
                "/api/generate", json={"model": A, "prompt": "x", "keep_alive": bad}
            )
        assert (r.status_code, r.json()) == (400, {"error": error})

    async def test_default_length_stops_and_num_predict_hits_length(self) -> None:
        """The model's default answer ends with "stop"; an explicit num_predict with "length"."""
        async with SimServer(profile(), time_scale=0.01) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            default = await generate(http)
            capped = await generate(http, options={"num_predict": 3})
        assert (default["eval_count"], default["done_reason"]) == (8, "stop")
        assert (capped["eval_count"], capped["done_reason"]) == (3, "length")
        assert len(capped["response"].split()) == 3


class TestEventDrivenDecode:
    async def test_a_slow_decode_wakes_per_token_not_per_tick(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A decode sleeps until its next token is due: no timer polls in between."""
        from ollama_orchestra.sim import _decode

        wakes = 0
        advance = _decode.Job.advance

        def counting(job: _decode.Job, now: float, time_scale: float) -> None:
            nonlocal wakes
            wakes += 1
            advance(job, now, time_scale)

        monkeypatch.setattr(_decode.Job, "advance", counting)
        slow = HostProfile("h", (ModelSpec(A, size_gb=1, decode_tps=5.0, load_s=0.0),))
        async with SimServer(slow, time_scale=1.0) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            data = await generate(http, options={"num_predict": 2})
        assert data["eval_count"] == 2
        # 0.4 s of decoding: a 20 ms polling tick would have woken ~20 times.
        assert wakes <= 8, wakes

    async def test_rates_follow_the_set_of_decoding_requests(self) -> None:
        """Two decodes share the GPU until the shorter ends; the longer then runs alone."""
        async with SimServer(profile(num_parallel=2), time_scale=0.1) as srv, httpx.AsyncClient(
            base_url=srv.url
        ) as http:
            await generate(http, options={"num_predict": 1})  # warm the model
            results: Dict[int, Dict[str, Any]] = {}

            async def one(n: int) -> None:
                results[n] = await generate(http, prompt=f"p{n}", options={"num_predict": n})

            srv.pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 20)
                tg.start_soon(one, 60)
                await srv.wait_until(lambda s: s.in_flight == 2)
                srv.resume()
        alone = 200.0
        shared = alone * aggregate_speedup(2) / 2
        expected = 20 / shared + 40 / alone
        assert results[60]["eval_duration"] / 1e9 == pytest.approx(expected, rel=0.15)
        assert results[20]["eval_duration"] / 1e9 == pytest.approx(20 / shared, rel=0.15)
