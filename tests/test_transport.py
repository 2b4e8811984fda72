"""The official ollama client, unchanged but for ``transport=``, runs on a simulated fleet."""

from __future__ import annotations

import json
from collections import Counter
from typing import AsyncIterator, List

import anyio
import httpx
import ollama
import pytest
import pytest_asyncio

from ollama_orchestra import Orchestra, OrchestraTransport
from ollama_orchestra.sim import Faults, SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile

EMBED = "tiny-embed:latest"
MSGS = [{"role": "user", "content": "hello"}]


def pair() -> SimFleet:
    return fleet([tiny_profile("h1"), tiny_profile("h2")])


@pytest_asyncio.fixture
async def orch() -> AsyncIterator[Orchestra]:
    async with pair() as sim, Orchestra(
        config_for(sim, strategy="round_robin", roles={"planning": TINY})
    ) as o:
        o.sim = sim  # type: ignore[attr-defined]
        yield o


def client(orch: Orchestra) -> ollama.AsyncClient:
    return ollama.AsyncClient(host="http://orchestra", transport=OrchestraTransport(orch))


async def close(c: ollama.AsyncClient) -> None:
    await c._client.aclose()  # AsyncClient.close() is untyped


def raw(orch: Orchestra) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=OrchestraTransport(orch), base_url="http://orchestra")


class TestOfficialClient:
    async def test_generate_and_chat(self, orch: Orchestra) -> None:
        """generate and chat, whole and streamed, come back in the client's own types."""
        c = client(orch)
        try:
            g = await c.generate(TINY, "hi", options={"num_predict": 5})
            assert g.done and g.eval_count == 5 and g.response
            parts = [p async for p in await c.generate(TINY, "hi", stream=True)]
            assert [p.done for p in parts][-1] and not parts[0].done
            ch = await c.chat(TINY, MSGS, options={"num_predict": 3})
            assert ch.message.role == "assistant" and ch.message.content and ch.eval_count == 3
            chunks = [p async for p in await c.chat(TINY, MSGS, stream=True)]
            assert chunks[-1].done and chunks[-1].done_reason == "stop"
            text = "".join(p.message.content or "" for p in chunks)
            assert text
        finally:
            await close(c)

    async def test_embed_list_ps_show(self, orch: Orchestra) -> None:
        """embed, legacy embeddings, list, ps and show answer for the fleet."""
        c = client(orch)
        try:
            e = await c.embed(EMBED, ["a", "b"])
            assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 32
            legacy = await c.embeddings(EMBED, "a")
            assert len(legacy.embedding) == 32
            names = [str(m.model) for m in (await c.list()).models]
            assert sorted(names) == sorted([TINY, EMBED])  # the union, no duplicates
            assert {m.model for m in (await c.ps()).models} <= {TINY, EMBED}
            assert "completion" in ((await c.show(TINY)).capabilities or [])
        finally:
            await close(c)

    async def test_roles_resolve(self, orch: Orchestra) -> None:
        """A role name works wherever a model name does."""
        c = client(orch)
        try:
            assert (await c.generate("planning", "x")).model == TINY
        finally:
            await close(c)

    async def test_both_hosts_serve(self, orch: Orchestra) -> None:
        """Concurrent requests spread over both hosts."""
        c = client(orch)
        try:
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(c.generate, TINY, f"q{i}")
        finally:
            await close(c)
        served = orch.metrics().servers
        assert served["h1"].requests > 0 and served["h2"].requests > 0

    async def test_kill_one_host_mid_run_loses_nothing(self) -> None:
        """Killing h1 while requests run: every request, streamed or not, still completes."""
        async with SimFleet(
            [tiny_profile("h1", num_parallel=4), tiny_profile("h2", num_parallel=4)],
            time_scale=0.02,
            mode="subprocess",
        ) as sim, Orchestra(config_for(sim, strategy="least_loaded")) as orch:
            c = client(orch)
            done: List[str] = []
            try:
                async with anyio.create_task_group() as tg:

                    async def whole(i: int) -> None:
                        r = await c.generate(TINY, f"q{i}", options={"num_predict": 16})
                        assert r.done
                        done.append(f"q{i}")

                    async def streamed(i: int) -> None:
                        parts = [
                            p
                            async for p in await c.chat(
                                TINY, [{"role": "user", "content": f"s{i}"}], stream=True
                            )
                        ]
                        assert parts[-1].done
                        done.append(f"s{i}")

                    for i in range(30):
                        tg.start_soon(whole, i)
                    # Subprocess hosts: killing one is a process dying, as in production.
                    await orch.wait_for_state(lambda snap: snap["h1"].requests >= 4)
                    await sim["h1"].kill()
                    for i in range(10):  # streams started after the kill
                        tg.start_soon(streamed, i)
            finally:
                await close(c)
            assert orch.metrics().failovers >= 1
        assert len(done) == 40 and Counter(done).most_common(1)[0][1] == 1


class TestShapesAndErrors:
    async def test_stream_is_ndjson_with_a_final_chunk(self, orch: Orchestra) -> None:
        """A streamed answer is NDJSON; the last line has done and the statistics."""
        async with raw(orch) as h, h.stream(
            "POST", "/api/generate", json={"model": TINY, "prompt": "x"}
        ) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert all(not o["done"] for o in lines[:-1])
        final = lines[-1]
        assert final["done"] and final["done_reason"] == "stop"
        assert {"total_duration", "eval_count", "eval_duration", "model"} <= set(final)

    async def test_stream_false_is_one_object(self, orch: Orchestra) -> None:
        """stream: false gives one JSON object with the whole text, as Ollama does."""
        async with raw(orch) as h:
            r = await h.post("/api/chat", json={"model": TINY, "messages": MSGS, "stream": False})
        body = r.json()
        assert r.headers["content-type"].startswith("application/json")
        assert body["done"] and body["message"]["role"] == "assistant"
        assert len(body["message"]["content"]) > 0 and "eval_count" in body

    @pytest.mark.parametrize(
        ("method", "path", "body", "status"),
        [
            ("POST", "/api/generate", {"model": "nope", "prompt": "x"}, 404),
            ("POST", "/api/show", {"model": "nope"}, 404),
            ("POST", "/api/generate", {"prompt": "x"}, 400),
            ("POST", "/api/generate", {"model": TINY, "options": {"num_predict": "x"}}, 400),
            ("POST", "/api/chat", {"model": EMBED, "messages": MSGS}, 400),
            ("POST", "/api/pull", {"model": TINY}, 405),
            ("DELETE", "/api/delete", {"model": TINY}, 405),
            ("POST", "/api/copy", {"source": TINY, "destination": "x"}, 405),
        ],
        ids=[
            "unknown",
            "show-unknown",
            "no-model",
            "bad-option",
            "no-chat",
            "pull",
            "delete",
            "copy",
        ],
    )
    async def test_errors_are_ollama_shaped(
        self, orch: Orchestra, method: str, path: str, body: object, status: int
    ) -> None:
        """Errors carry Ollama's {"error": ...} body and the right status."""
        async with raw(orch) as h:
            r = await h.request(method, path, json=body)
        assert r.status_code == status
        assert isinstance(r.json()["error"], str) and r.json()["error"]

    async def test_refusal_reaches_the_official_client(self, orch: Orchestra) -> None:
        """pull through the transport raises ResponseError 405 with a clear message."""
        c = client(orch)
        try:
            with pytest.raises(ollama.ResponseError) as info:
                await c.pull(TINY)
        finally:
            await close(c)
        assert info.value.status_code == 405 and "each server directly" in info.value.error

    async def test_fleet_exhausted_is_502(self, orch: Orchestra) -> None:
        """When every host fails, the answer is 502 with the orchestra's attempt list."""
        sim: SimFleet = orch.sim  # type: ignore[attr-defined]
        for s in sim:
            await s.set_faults(Faults(status=500))
        async with raw(orch) as h:
            r = await h.post("/api/generate", json={"model": TINY, "prompt": "x"})
        assert r.status_code == 502
        assert "h1" in r.json()["error"] and "h2" in r.json()["error"]

    async def test_root_version_and_unknown_path(self, orch: Orchestra) -> None:
        """/ says Ollama is running; /api/version answers; unknown paths are 404."""
        async with raw(orch) as h:
            assert (await h.get("/")).text == "Ollama is running"
            assert (await h.get("/api/version")).json()["version"]
            assert (await h.get("/api/nothing")).status_code == 404
            assert (await h.get("/api/generate")).status_code == 405
