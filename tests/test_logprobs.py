"""``logprobs``: the simulator produces them as Ollama does, and every path keeps them all."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import anyio
import httpx
import pytest

from ollama_orchestra import OllamaResponseError, Orchestra, OrchestraTransport, serve_proxy
from ollama_orchestra.sim import HostProfile, ModelSpec

from .conftest import TINY, config_for, fleet, tiny_profile

MSGS = [{"role": "user", "content": "hello"}]


def gather(objs: List[Dict[str, Any]]) -> List[Any]:
    return [lp for o in objs for lp in o.get("logprobs") or []]


def ndjson(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


class TestSimulator:
    async def test_shape_and_determinism(self) -> None:
        """Each token chunk carries its token's entry (api.Logprob); the same request gives the
        same values; top_logprobs gives that many alternatives, the chosen one first."""
        async with fleet([tiny_profile("h1")]) as sim, httpx.AsyncClient(
            base_url=sim["h1"].url
        ) as h:
            body = {"model": TINY, "prompt": "x", "logprobs": True, "top_logprobs": 3}
            first = ndjson((await h.post("/api/generate", json=body)).text)
            again = ndjson((await h.post("/api/generate", json=body)).text)
            plain = ndjson(
                (await h.post("/api/generate", json={"model": TINY, "prompt": "x"})).text
            )
        tokens = first[:-1]
        assert all(len(o["logprobs"]) == 1 for o in tokens) and "logprobs" not in first[-1]
        for o in tokens:
            entry = o["logprobs"][0]
            assert entry["token"] == o["response"] and entry["logprob"] < 0
            assert entry["bytes"] == list(o["response"].encode())
            top = entry["top_logprobs"]
            assert len(top) == 3 and top[0]["token"] == entry["token"]
            assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert gather(first) == gather(again)
        assert gather(plain) == []


class TestEveryPath:
    @pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
    async def test_transport_and_proxy_keep_every_chunk(self, path: str) -> None:
        """Non-streamed and streamed, through the transport and the proxy, the logprobs equal
        those the simulated host gives directly (the upstream request is always streamed)."""
        body: Dict[str, Any] = {"model": TINY, "logprobs": True, "top_logprobs": 2}
        body.update({"prompt": "x"} if path == "/api/generate" else {"messages": MSGS})
        whole = dict(body, stream=False)
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(
            config_for(sim)
        ) as orch, anyio.create_task_group() as tg:
            url = await tg.start(serve_proxy, orch, "127.0.0.1", 0)
            async with httpx.AsyncClient() as h, httpx.AsyncClient(
                transport=OrchestraTransport(orch), base_url="http://orchestra"
            ) as via:
                direct_whole = (await h.post(sim["h1"].url + path, json=whole)).json()
                direct = gather(ndjson((await h.post(sim["h1"].url + path, json=body)).text))
                answers = [
                    (await via.post(path, json=whole)).json()["logprobs"],
                    (await h.post(url + path, json=whole)).json()["logprobs"],
                    gather(ndjson((await via.post(path, json=body)).text)),
                    gather(ndjson((await h.post(url + path, json=body)).text)),
                ]
            tg.cancel_scope.cancel()
        assert len(direct) > 1 and direct_whole["logprobs"] == direct
        assert answers == [direct] * 4

    async def test_the_request_methods(self) -> None:
        """orch.generate/chat and their streams take logprobs and top_logprobs and keep all."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            async with httpx.AsyncClient(base_url=sim["h1"].url) as h:
                body = {"model": TINY, "prompt": "x", "logprobs": True, "top_logprobs": 1}
                direct = gather(ndjson((await h.post("/api/generate", json=body)).text))
                chat_body = {"model": TINY, "messages": MSGS, "logprobs": True}
                direct_chat = gather(ndjson((await h.post("/api/chat", json=chat_body)).text))
            g = await orch.generate(TINY, "x", logprobs=True, top_logprobs=1)
            assert g.logprobs == direct
            streamed = [
                c async for c in orch.generate_stream(TINY, "x", logprobs=True, top_logprobs=1)
            ]
            assert [lp for c in streamed for lp in c.logprobs or []] == direct
            c = await orch.chat(TINY, MSGS, logprobs=True)
            assert c.logprobs == direct_chat and "top_logprobs" not in direct_chat[0]
            chunks = [c async for c in orch.chat_stream(TINY, MSGS, logprobs=True)]
            assert [lp for c in chunks for lp in c.logprobs or []] == direct_chat
            assert (await orch.generate(TINY, "x")).logprobs is None
            sent = sim["h1"].requests[-1]
            assert sent.route == "/api/generate"

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"think": "extreme"}, ValueError),
            ({"think": 1}, TypeError),
            ({"logprobs": "yes"}, TypeError),
            ({"top_logprobs": 21}, ValueError),
            ({"top_logprobs": True}, ValueError),
        ],
    )
    async def test_bad_arguments_fail_before_any_work(
        self, kwargs: Dict[str, Any], error: type
    ) -> None:
        """think, logprobs and top_logprobs of the wrong type or range: a typed error that
        names the argument, before a server is asked."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            name = next(iter(kwargs))
            with pytest.raises(error, match=name):
                await orch.generate(TINY, "x", **kwargs)
            with pytest.raises(error, match=name):
                await orch.chat(TINY, MSGS, **kwargs)
            assert sim["h1"].requests == ()

    async def test_think_levels_are_passed_through(self) -> None:
        """think takes Ollama's levels as well as booleans; a model that cannot think
        answers 400 as Ollama does (a client error: no breaker counts it)."""
        thinker = ModelSpec(
            "thinker:latest",
            size_gb=1,
            decode_tps=400.0,
            load_s=0.1,
            capabilities=("completion", "thinking"),
            default_num_predict=2,
        )
        async with fleet([HostProfile("h1", (thinker,))]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            for level in ("high", "medium", "low", "max", True, False):
                await orch.generate("thinker:latest", "x", think=level)
            assert len(sim["h1"].requests) == 6
        async with fleet([tiny_profile("h1"), tiny_profile("h2")]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            with pytest.raises(OllamaResponseError, match="does not support thinking"):
                await orch.chat(TINY, MSGS, think="low")
            await orch.chat(TINY, MSGS, think=False)
            assert all(str(orch.breaker(n).state) == "closed" for n in ("h1", "h2"))
