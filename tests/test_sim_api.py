"""The simulator speaks Ollama's API: the official `ollama` client cannot tell it apart."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, List

import anyio
import httpx
import ollama
import pytest

from ollama_orchestra.sim import SimServer

TINY = "tiny:latest"


@pytest.fixture
async def client(sim_server: SimServer) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=sim_server.url) as c:
        yield c


EMBED = "tiny-embed:latest"


class TestOfficialAsyncClient:
    async def test_generate(self, client: ollama.AsyncClient) -> None:
        """generate returns a typed response with Ollama's statistics."""
        r = await client.generate(model=TINY, prompt="Say hi", options={"num_predict": 5})
        assert r.done and r.done_reason == "length"
        assert len((r.response or "").split()) == 5
        assert r.eval_count == 5 and r.prompt_eval_count and r.prompt_eval_count > 0
        assert r.total_duration and r.load_duration is not None and r.eval_duration
        assert r.total_duration >= r.load_duration

    async def test_generate_stream(self, client: ollama.AsyncClient) -> None:
        """A streamed generate yields one chunk per token, then a final chunk with stats."""
        parts = [
            p
            async for p in await client.generate(
                model=TINY, prompt="Say hi", stream=True, options={"num_predict": 4}
            )
        ]
        assert [p.done for p in parts] == [False] * 4 + [True]
        assert parts[-1].eval_count == 4 and parts[-1].total_duration
        assert parts[0].eval_count is None  # statistics only on the last chunk

    async def test_chat_and_stream(self, client: ollama.AsyncClient) -> None:
        """chat returns an assistant message, streamed or not; the text is deterministic."""
        msgs = [{"role": "user", "content": "hello"}]
        r1 = await client.chat(model=TINY, messages=msgs, options={"num_predict": 6})
        r2 = await client.chat(model=TINY, messages=msgs, options={"num_predict": 6})
        assert r1.message.role == "assistant" and r1.message.content
        assert r1.message.content == r2.message.content
        parts = [
            p
            async for p in await client.chat(
                model=TINY, messages=msgs, stream=True, options={"num_predict": 6}
            )
        ]
        assert "".join(p.message.content or "" for p in parts) == r1.message.content
        assert parts[-1].done

    async def test_embed_list_ps_show(self, client: ollama.AsyncClient) -> None:
        """embed, list, ps and show parse into the client's types."""
        e = await client.embed(model=EMBED, input=["a", "b"])
        assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 32
        assert abs(sum(x * x for x in e.embeddings[0]) - 1.0) < 1e-6
        listed = await client.list()
        assert {m.model for m in listed.models} == {TINY, EMBED}
        ps = await client.ps()
        assert [m.model for m in ps.models] == [EMBED]
        assert ps.models[0].expires_at is not None
        shown = await client.show(TINY)
        assert shown.details is not None and shown.details.family
        assert shown.capabilities is not None and "completion" in shown.capabilities

    async def test_unknown_model_is_404(self, client: ollama.AsyncClient) -> None:
        """An unknown model is the client's ResponseError with status 404."""
        with pytest.raises(ollama.ResponseError) as info:
            await client.generate(model="nope", prompt="x")
        assert info.value.status_code == 404
        assert "not found" in info.value.error


class TestOfficialSyncClient:
    async def test_sync_client(self, sim_server: SimServer) -> None:
        """The sync client works too (run in a thread so the server keeps serving)."""

        def use() -> List[Any]:
            with ollama.Client(host=sim_server.url) as client:
                g = client.generate(model=TINY, prompt="x", options={"num_predict": 3})
                c = client.chat(
                    model=TINY,
                    messages=[{"role": "user", "content": "x"}],
                    options={"num_predict": 3},
                )
                s = list(
                    client.chat(
                        model=TINY,
                        messages=[{"role": "user", "content": "x"}],
                        stream=True,
                        options={"num_predict": 3},
                    )
                )
                e = client.embed(model=EMBED, input="x")
                return [g, c, s, e, client.list(), client.ps(), client.show(TINY)]

        g, c, s, e, listed, ps, shown = await anyio.to_thread.run_sync(use)
        assert g.eval_count == 3 and c.message.content and s[-1].done
        assert len(e.embeddings) == 1 and len(listed.models) == 2 and ps.models and shown.details


class TestRawShapes:
    async def test_root_version_and_errors(self, sim_server: SimServer) -> None:
        """'/', '/api/version' and Ollama's error bodies, as plain HTTP sees them."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            root = await http.get("/")
            assert root.status_code == 200 and root.text == "Ollama is running"
            assert (await http.head("/")).status_code == 200
            assert (await http.get("/api/version")).json()["version"]
            missing = await http.post("/api/generate", content=b"")
            assert missing.status_code == 400 and missing.json() == {
                "error": "missing request body"
            }
            bad = await http.post("/api/generate", content=b"{not json")
            assert bad.status_code == 400 and "error" in bad.json()
            no_model = await http.post("/api/chat", json={"messages": []})
            assert no_model.status_code == 400 and no_model.json() == {"error": "model is required"}
            wrong_cap = await http.post(
                "/api/chat", json={"model": EMBED, "messages": [{"role": "user", "content": "x"}]}
            )
            assert wrong_cap.status_code == 400 and wrong_cap.json() == {
                "error": f'"{EMBED}" does not support chat'
            }

    async def test_stream_content_type_and_final_chunk(self, sim_server: SimServer) -> None:
        """Streams are application/x-ndjson; durations only in the final chunk, in ns."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            r = await http.post(
                "/api/generate", json={"model": TINY, "prompt": "x", "options": {"num_predict": 2}}
            )
            assert r.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(x) for x in r.text.splitlines()]
            assert [x["done"] for x in lines] == [False, False, True]
            for key in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            ):
                assert key in lines[-1] and key not in lines[0]
                assert isinstance(lines[-1][key], int)

    async def test_load_and_unload(self, sim_server: SimServer) -> None:
        """An empty prompt loads the model; with keep_alive 0 it unloads it."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            r = await http.post("/api/generate", json={"model": TINY})
            assert r.json()["done_reason"] == "load"
            assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == [TINY]
            r = await http.post("/api/generate", json={"model": TINY, "keep_alive": 0})
            assert r.json()["done_reason"] == "unload"
            assert (await http.get("/api/ps")).json()["models"] == []

    async def test_legacy_embeddings(self, sim_server: SimServer) -> None:
        """/api/embeddings answers {"embedding": [...]}."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            r = await http.post("/api/embeddings", json={"model": EMBED, "prompt": "hello"})
            assert r.status_code == 200 and len(r.json()["embedding"]) == 32

    async def test_errors_on_non_streaming_routes(self, sim_server: SimServer) -> None:
        """Errors of embed and non-streamed generate keep their status (not a server crash)."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            cases = [
                ("/api/embed", {"model": "nope", "input": "x"}, 404, "model 'nope' not found"),
                (
                    "/api/embeddings",
                    {"model": "nope", "prompt": "x"},
                    404,
                    "model 'nope' not found",
                ),
                (
                    "/api/embed",
                    {"model": TINY, "input": "x"},
                    400,
                    f'"{TINY}" does not support embeddings',
                ),
                (
                    "/api/generate",
                    {"model": EMBED, "prompt": "x", "stream": False},
                    400,
                    f'"{EMBED}" does not support generate',
                ),
                (
                    "/api/generate",
                    {"model": "nope", "prompt": "x", "stream": False},
                    404,
                    "model 'nope' not found",
                ),
            ]
            for path, body, status, error in cases:
                r = await http.post(path, json=body)
                assert (r.status_code, r.json()) == (status, {"error": error}), path

    async def test_embeddings_are_deterministic_unit_vectors(self, sim_server: SimServer) -> None:
        """The same text embeds to the same unit vector; different texts differ."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            body = {"model": EMBED, "input": ["alpha", "beta", "alpha"]}
            first = (await http.post("/api/embed", json=body)).json()
            again = (await http.post("/api/embed", json=body)).json()
        vecs = first["embeddings"]
        assert vecs == again["embeddings"] and vecs[0] == vecs[2] and vecs[0] != vecs[1]
        assert all(abs(sum(x * x for x in v) - 1.0) < 1e-9 for v in vecs)
        assert first["prompt_eval_count"] >= 3 and first["total_duration"] >= first["load_duration"]
