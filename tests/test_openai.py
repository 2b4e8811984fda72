"""OpenAI's ``/v1`` API: the translation, a simulated host and the proxy, with the real SDK."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
import warnings
from typing import Any, AsyncIterator, Dict, List, Tuple

import anyio
import anyio.to_thread
import httpx
import openai
import pytest

from ollama_orchestra import Orchestra, serve_proxy
from ollama_orchestra._openai import (
    OpenAIError,
    chat_completion,
    chat_request,
    completion_request,
    embed_request,
    openai_app,
    owned_by,
    unix_time,
)
from ollama_orchestra.sim import Faults, HostProfile, ModelSpec, SimFleet, SimServer

from .conftest import TINY, config_for, fleet, tiny_profile

EMBED = "tiny-embed:latest"
MSGS: List[Any] = [{"role": "user", "content": "hello"}]


@contextlib.asynccontextmanager
async def proxied(orch: Orchestra) -> AsyncIterator[str]:
    """The proxy on a free port for the duration of the block; yields its URL."""
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0)
        yield url
        tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def host_and_proxy() -> AsyncIterator[Tuple[SimFleet, str, str]]:
    """One simulated host, and the proxy in front of it: ``(fleet, host URL, proxy URL)``."""
    async with fleet([tiny_profile("h1", num_parallel=4)]) as sim, Orchestra(
        config_for(sim)
    ) as orch, proxied(orch) as url:
        yield sim, sim["h1"].url, url


def client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not the values (ids, times, text)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


async def answers(base: str) -> Dict[str, Any]:
    """Every /v1 answer kind from ``base``, as the SDK parsed it (JSON-ready dicts)."""
    c = client(base)
    out: Dict[str, Any] = {}
    try:
        chat = await c.chat.completions.create(model=TINY, messages=MSGS, max_tokens=4)
        out["chat"] = chat.model_dump()
        stream = await c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
        out["chat_stream"] = [chunk.model_dump() async for chunk in stream]
        stream = await c.chat.completions.create(
            model=TINY, messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
        out["chat_stream_usage"] = [chunk.model_dump() async for chunk in stream]
        done = await c.completions.create(model=TINY, prompt="hi", max_tokens=3)
        out["completion"] = done.model_dump()
        cstream = await c.completions.create(
            model=TINY, prompt="hi", stream=True, stream_options={"include_usage": True}
        )
        out["completion_stream_usage"] = [chunk.model_dump() async for chunk in cstream]
        emb = await c.embeddings.create(model=EMBED, input=["a", "b"])
        out["embeddings"] = emb.model_dump()
        out["models"] = [m.model_dump() async for m in c.models.list()]
        out["model"] = (await c.models.retrieve(TINY)).model_dump()
    finally:
        await c.close()
    return out


class TestTranslation:
    """OpenAI requests become the native ones Ollama's middleware builds."""

    def test_chat_fields(self) -> None:
        """max_tokens, stop, sampling, format, tools and reasoning map as in FromChatRequest."""
        native = chat_request(
            {
                "model": "m",
                "messages": MSGS,
                "max_tokens": 7,
                "stop": "END",
                "seed": 3,
                "presence_penalty": 0.5,
                "response_format": {"type": "json_object"},
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "reasoning_effort": "xhigh",
                "max_completion_tokens": 99,
                "n": 3,
                "user": "someone",
            }
        )
        assert native == {
            "model": "m",
            "messages": [{"role": "user", "content": "hello"}],
            "options": {
                "stop": ["END"],
                "num_predict": 7,
                "temperature": 1.0,
                "seed": 3,
                "presence_penalty": 0.5,
                "top_p": 1.0,
            },
            "stream": False,
            "format": "json",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "think": "max",
        }

    def test_chat_messages(self) -> None:
        """Content parts, images, tool calls and tool results become native messages."""
        png = base64.b64encode(b"\x89PNG").decode()
        native = chat_request(
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/png;base64,{png}"},
                            },
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"x": 1}'},
                            }
                        ],
                    },
                    {"role": "tool", "content": "42", "tool_call_id": "c1"},
                ],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "object"}},
                },
                "reasoning": {"effort": "none"},
            }
        )
        assert native["messages"] == [
            {"role": "user", "content": "look"},
            {"role": "user", "content": "", "images": [png]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}, "id": "c1"}],
            },
            {"role": "tool", "content": "42", "tool_name": "f", "tool_call_id": "c1"},
        ]
        assert native["format"] == {"type": "object"}
        assert native["think"] is False

    def test_completion_fields(self) -> None:
        """Completions send their penalties always, and top_p 0 as 1.0 (plain Go numbers)."""
        native = completion_request(
            {"model": "m", "prompt": "p", "suffix": "s", "top_p": 0, "stop": ["a"], "stream": True}
        )
        assert native == {
            "model": "m",
            "prompt": "p",
            "options": {
                "stop": ["a"],
                "temperature": 1.0,
                "frequency_penalty": 0.0,
                "presence_penalty": 0.0,
                "top_p": 1.0,
            },
            "stream": True,
            "suffix": "s",
        }

    def test_embeddings_fields(self) -> None:
        """An empty string input is one empty text; dimensions pass; the format is kept."""
        assert embed_request({"model": "m", "input": "", "dimensions": 8}) == (
            {"model": "m", "input": [""], "dimensions": 8},
            "",
        )
        assert (
            embed_request({"model": "m", "input": "x", "encoding_format": "base64"})[1] == "base64"
        )

    @pytest.mark.parametrize(
        ("build", "body", "message"),
        [
            (chat_request, {"model": "m", "messages": []}, "[] is too short - 'messages'"),
            (chat_request, {"model": "m"}, "[] is too short - 'messages'"),
            (chat_request, {"model": "m", "messages": MSGS, "max_tokens": 1.5}, "'max_tokens'"),
            (chat_request, {"model": "m", "messages": MSGS, "stream": "yes"}, "'stream'"),
            (chat_request, {"model": 3, "messages": MSGS}, "'model'"),
            (chat_request, {"model": "m", "messages": MSGS, "reasoning_effort": "lots"}, "lots"),
            (
                chat_request,
                {"model": "m", "messages": [{"role": "user", "content": 5}]},
                "content type",
            ),
            (
                chat_request,
                {
                    "model": "m",
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": "http://x/y.png"}],
                        }
                    ],
                },
                "image URLs are not currently supported",
            ),
            (completion_request, {"model": "m", "prompt": ["a"]}, "'prompt'"),
            (completion_request, {"model": "m", "prompt": "a", "stop": ["a", 1]}, "'stop'"),
            (embed_request, {"model": "m"}, "invalid input"),
            (embed_request, {"model": "m", "input": []}, "invalid input"),
            (
                embed_request,
                {"model": "m", "input": "x", "encoding_format": "int8"},
                "encoding_format",
            ),
        ],
    )
    def test_bad_requests(self, build: Any, body: Dict[str, Any], message: str) -> None:
        """A bad field is a 400 that names it (and its value), before any work."""
        with pytest.raises(OpenAIError) as info:
            build(body)
        assert info.value.status == 400
        assert message in info.value.message

    def test_names_and_times(self) -> None:
        """owned_by is the name's namespace (library by default); times keep their offset."""
        assert owned_by("tiny:latest") == "library"
        assert owned_by("someone/tiny:7b") == "someone"
        assert owned_by("hf.co/org/repo:Q4") == "org"
        assert unix_time("2026-01-01T00:00:00Z") == 1767225600
        assert unix_time("2026-01-01T01:30:00.123456789+01:30") == 1767225600


def events(raw: bytes) -> List[Any]:
    """The data of each server-sent event: parsed JSON, or the ``[DONE]`` marker."""
    out: List[Any] = []
    for event in raw.decode().split("\n\n"):
        if event:
            assert event.startswith("data: ")
            data = event[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def through_middleware(
    path: str, body: Dict[str, Any], native_status: int, native_parts: List[bytes]
) -> Tuple[int, bytes, Dict[str, Any]]:
    """Run ``openai_app`` over a fake native app that answers with ``native_parts`` as its
    body writes; returns the status, the body and the native request it received."""
    seen: Dict[str, Any] = {}

    async def native(scope: Any, receive: Any, send: Any) -> None:
        seen["path"] = scope["path"]
        seen["body"] = json.loads((await receive())["body"])
        start = {"type": "http.response.start", "status": native_status, "headers": []}
        await send(start)
        for i, part in enumerate(native_parts):
            more = i < len(native_parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": more})

    sent: List[Any] = []
    incoming = [{"type": "http.request", "body": json.dumps(body).encode()}]

    async def receive() -> Any:
        return incoming.pop() if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await openai_app(native)(scope, receive, send)
    status = sent[0]["status"]
    return status, b"".join(m.get("body", b"") for m in sent[1:]), seen


class TestAnswers:
    """Native answers become OpenAI's, as Ollama's writers make them."""

    async def test_lines_split_across_writes(self) -> None:
        """NDJSON lines cut anywhere between writes still make one event each."""
        lines = [
            {
                "model": "m",
                "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": "a"},
                "done": False,
            },
            {
                "model": "m",
                "created_at": "2026-01-01T00:00:01Z",
                "message": {"role": "assistant", "content": "b"},
                "done": False,
            },
            {
                "model": "m",
                "created_at": "2026-01-01T00:00:02Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 2,
            },
        ]
        raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        parts = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # cut anywhere
        body = {
            "model": "m",
            "messages": MSGS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        status, out, seen = await through_middleware("/v1/chat/completions", body, 200, parts)
        assert status == 200 and seen["path"] == "/api/chat" and seen["body"]["stream"] is True
        got = events(out)
        assert [e["choices"][0]["delta"] for e in got[:2]] == [
            {"role": "assistant", "content": "a"},
            {"content": "b"},
        ]
        assert got[2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        assert got[3]["choices"] == [] and got[3]["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
        }
        assert got[4] == "[DONE]" and len(got) == 5
        assert {e["created"] for e in got[:4]} == {1767225600}  # the first answer's, throughout

    async def test_reasoning_and_tool_calls_in_a_stream(self) -> None:
        """Thinking with content splits in two chunks; tool calls make finish_reason tool_calls."""
        call = {"function": {"name": "f", "arguments": {"x": 1}}}
        lines = [
            {
                "model": "m",
                "message": {"role": "assistant", "content": "c", "thinking": "t"},
                "done": False,
            },
            {
                "model": "m",
                "message": {"role": "assistant", "content": "", "tool_calls": [call]},
                "done": False,
            },
            {
                "model": "m",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
            },
        ]
        raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        body = {"model": "m", "messages": MSGS, "stream": True}
        _, out, _ = await through_middleware("/v1/chat/completions", body, 200, [raw])
        deltas = [e["choices"][0]["delta"] for e in events(out)[:-1]]
        assert deltas == [
            {"role": "assistant", "reasoning": "t"},
            {"content": "c"},
            {
                "content": "",
                "tool_calls": [
                    {
                        "id": "",
                        "index": 0,
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x":1}'},
                    }
                ],
            },
            {},
        ]
        assert events(out)[-2]["choices"][0]["finish_reason"] == "tool_calls"

    def test_whole_chat_with_tool_calls(self) -> None:
        """A whole answer with tool calls finishes with tool_calls and keeps the reasoning."""
        final = {
            "model": "m",
            "created_at": "2026-01-01T00:00:00Z",
            "message": {
                "role": "assistant",
                "content": "",
                "thinking": "t",
                "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
            },
            "done": True,
            "done_reason": "stop",
        }
        choice = chat_completion("chatcmpl-1", final)["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["reasoning"] == "t"
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}

    async def test_native_errors(self) -> None:
        """A native error keeps its status; its message moves into OpenAI's error object."""
        body = {"model": "m", "prompt": "p"}
        status, out, _ = await through_middleware(
            "/v1/completions", body, 404, [b'{"error":"model ', b"'m' not found\"}"]
        )
        assert status == 404
        assert json.loads(out) == {
            "error": {
                "message": "model 'm' not found",
                "type": "not_found_error",
                "param": None,
                "code": None,
            }
        }
        status, out, _ = await through_middleware("/v1/completions", body, 502, [b"bad gateway"])
        assert status == 502 and json.loads(out)["error"]["message"] == "bad gateway"


class TestSimulatedHost:
    """A simulated host answers /v1 as Ollama does."""

    async def test_every_route_with_the_async_sdk(self, sim_server: SimServer) -> None:
        """Chat, streams with and without usage, completions, embeddings and models."""
        got = await answers(sim_server.url)
        chat = got["chat"]
        assert chat["id"].startswith("chatcmpl-") and chat["object"] == "chat.completion"
        assert chat["system_fingerprint"] == "fp_ollama" and chat["model"] == TINY
        assert chat["choices"][0]["finish_reason"] == "length"
        assert chat["choices"][0]["message"]["role"] == "assistant"
        assert chat["usage"]["completion_tokens"] == 4
        assert chat["usage"]["total_tokens"] == 4 + chat["usage"]["prompt_tokens"]

        chunks = got["chat_stream"]
        assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(c["choices"][0]["delta"]["role"] is None for c in chunks[1:])
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"][0]["delta"]["content"] is None
        assert all(c["usage"] is None for c in chunks)
        with_usage = got["chat_stream_usage"]
        assert (
            with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["completion_tokens"] == 16
        )
        assert all(c["usage"] is None for c in with_usage[:-1])

        done = got["completion"]
        assert done["object"] == "text_completion" and done["id"].startswith("cmpl-")
        assert done["choices"][0]["text"] and done["usage"]["completion_tokens"] == 3
        cchunks = got["completion_stream_usage"]
        assert cchunks[-1]["choices"] == [] and cchunks[-1]["usage"]["completion_tokens"] == 16
        assert cchunks[-2]["choices"][0]["finish_reason"] == "stop"

        emb = got["embeddings"]
        assert emb["object"] == "list" and emb["model"] == EMBED
        assert [d["index"] for d in emb["data"]] == [0, 1]
        assert len(emb["data"][0]["embedding"]) == 32
        assert emb["usage"]["prompt_tokens"] == emb["usage"]["total_tokens"] > 0

        assert [m["id"] for m in got["models"]] == [TINY, EMBED]
        assert got["models"][0]["owned_by"] == "library" and got["models"][0]["object"] == "model"
        assert got["model"]["id"] == TINY and got["model"]["created"] == 1767225600

    async def test_native_request_recorded(self, sim_server: SimServer) -> None:
        """The host runs the native request the middleware built (options translated)."""
        c = client(sim_server.url)
        try:
            await c.chat.completions.create(
                model=TINY, messages=MSGS, max_tokens=2, stop=["x"], temperature=0.2
            )
        finally:
            await c.close()
        record = sim_server.requests[-1]
        assert record.route == "/api/chat" and record.messages == (
            {"role": "user", "content": "hello"},
        )
        assert record.options == {"stop": ["x"], "num_predict": 2, "temperature": 0.2, "top_p": 1.0}

    async def test_sync_sdk(self, sim_server: SimServer) -> None:
        """The synchronous client, from a worker thread: chat, a stream, embeddings, models."""

        def work() -> Tuple[str, List[str], int, List[str]]:
            with openai.OpenAI(base_url=sim_server.url + "/v1", api_key="x", max_retries=0) as c:
                whole = c.chat.completions.create(model=TINY, messages=MSGS)
                stream = c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
                parts = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
                emb = c.embeddings.create(model=EMBED, input="x")
                models = [m.id for m in c.models.list()]
                return whole.choices[0].message.content or "", parts, len(emb.data), models

        whole, parts, embedded, models = await anyio.to_thread.run_sync(work)
        assert whole.strip() and "".join(parts).strip()
        assert embedded == 1 and models == [TINY, EMBED]

    async def test_server_sent_events(self, sim_server: SimServer) -> None:
        """A stream is `data: {...}` events ending with `data: [DONE]`, as text/event-stream."""
        async with httpx.AsyncClient(base_url=sim_server.url) as h:
            body = {"model": TINY, "messages": MSGS, "stream": True, "max_tokens": 2}
            r = await h.post("/v1/chat/completions", json=body)
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        events = r.text.split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        assert all(e.startswith("data: {") for e in events[:-2])
        finish = json.loads(events[-3][len("data: ") :])
        assert finish["choices"][0]["delta"] == {} and "usage" not in finish

    async def test_base64_embeddings(self, sim_server: SimServer) -> None:
        """encoding_format=base64 sends little-endian float32s: the same vector as floats."""
        async with httpx.AsyncClient(base_url=sim_server.url) as h:
            floats = await h.post("/v1/embeddings", json={"model": EMBED, "input": "a"})
            b64 = await h.post(
                "/v1/embeddings", json={"model": EMBED, "input": "a", "encoding_format": "base64"}
            )
        vector = floats.json()["data"][0]["embedding"]
        raw = base64.b64decode(b64.json()["data"][0]["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(vector, rel=1e-6)

    async def test_errors(self, sim_server: SimServer) -> None:
        """A missing model is 404 not_found_error; bad JSON and bad fields are 400."""
        c = client(sim_server.url)
        try:
            with pytest.raises(openai.NotFoundError) as missing:
                await c.chat.completions.create(model="nope", messages=MSGS)
            with pytest.raises(openai.NotFoundError):
                await c.models.retrieve("nope")
            with pytest.raises(openai.BadRequestError) as empty:
                await c.chat.completions.create(model=TINY, messages=[])
            with pytest.raises(openai.BadRequestError):
                await c.embeddings.create(model=TINY, input="x")  # cannot embed
        finally:
            await c.close()
        assert missing.value.body == {
            "message": "model 'nope' not found",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
        assert (
            isinstance(empty.value.body, dict)
            and empty.value.body["type"] == "invalid_request_error"
        )
        async with httpx.AsyncClient(base_url=sim_server.url) as h:
            bad = await h.post("/v1/completions", content=b"{not json")
            unknown = await h.get("/v1/nothing")
            wrong = await h.get("/v1/chat/completions")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert unknown.status_code == 404 and wrong.status_code == 405

    async def test_stream_error_after_first_chunk(self) -> None:
        """A native stream that fails midway ends with an error event the SDK raises."""
        async with SimServer(
            tiny_profile(), time_scale=0.01, faults=Faults(stream_error_after_chunks=2)
        ) as host:
            c = client(host.url)
            try:
                stream = await c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
                seen: List[Any] = []

                async def read() -> None:
                    async for chunk in stream:
                        seen.append(chunk)

                with pytest.raises(openai.APIError, match="simulated"):
                    await read()
            finally:
                await c.close()
        assert len(seen) == 2

    async def test_status_fault_in_openai_shape(self) -> None:
        """A host answering 503 answers /v1 with 503 in OpenAI's error shape."""
        faults = Faults(status=503)
        async with SimServer(
            tiny_profile(), time_scale=0.01, faults=faults
        ) as host, httpx.AsyncClient(base_url=host.url) as h:
            r = await h.post("/v1/chat/completions", json={"model": TINY, "messages": MSGS})
        assert r.status_code == 503
        assert (
            r.json()["error"]["type"] == "api_error"
            and "server busy" in r.json()["error"]["message"]
        )


class TestProxy:
    """The proxy serves /v1 from the fleet with a host's own shapes."""

    async def test_same_shapes_as_a_host(self) -> None:
        """Every answer kind has the same fields and types through the proxy as direct."""
        async with host_and_proxy() as (_, host, proxy):
            direct = await answers(host)
            proxied_answers = await answers(proxy)
        assert set(direct) == set(proxied_answers)
        for kind, answer in direct.items():
            assert shape(proxied_answers[kind]) == shape(answer), kind
            if isinstance(answer, list):
                assert len(proxied_answers[kind]) == len(answer), kind

    async def test_sync_sdk_through_the_proxy(self) -> None:
        """The synchronous client, from a worker thread, streamed and not."""
        async with host_and_proxy() as (_, _, proxy):

            def work() -> Tuple[str, List[str]]:
                with openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0) as c:
                    whole = c.chat.completions.create(model=TINY, messages=MSGS)
                    stream = c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
                    parts = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
                    return whole.choices[0].message.content or "", parts

            whole, parts = await anyio.to_thread.run_sync(work)
        assert whole.strip() and "".join(parts).strip()

    async def test_models_are_the_fleets(self) -> None:
        """/v1/models lists the union of the hosts' models; retrieve finds any of them."""
        tiny = tiny_profile("h2").models[0]
        other = HostProfile("h2", (tiny, ModelSpec("solo:latest", size_gb=0.1, load_s=0.01)))
        async with fleet([tiny_profile("h1"), other]) as sim, Orchestra(
            config_for(sim)
        ) as orch, proxied(orch) as url:
            c = client(url)
            try:
                ids = [m.id async for m in c.models.list()]
                assert (await c.models.retrieve("solo:latest")).owned_by == "library"
                with pytest.raises(openai.NotFoundError):
                    await c.models.retrieve("nope")
            finally:
                await c.close()
        assert ids == [TINY, EMBED, "solo:latest"]

    async def test_errors(self) -> None:
        """A model no host has is 404; bad JSON is 400; both in OpenAI's shape."""
        async with host_and_proxy() as (_, _, proxy):
            c = client(proxy)
            try:
                with pytest.raises(openai.NotFoundError) as missing:
                    await c.chat.completions.create(model="nope", messages=MSGS)
                with pytest.raises(openai.NotFoundError):
                    await c.embeddings.create(model="nope", input="x")
            finally:
                await c.close()
            async with httpx.AsyncClient(base_url=proxy) as h:
                bad = await h.post("/v1/chat/completions", content=b"[1,")
        assert isinstance(missing.value.body, dict)
        assert missing.value.body["type"] == "not_found_error"
        assert "nope" in missing.value.body["message"]
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"

    @pytest.mark.parametrize("fault", ["killed", "failing"])
    async def test_failover(self, fault: str) -> None:
        """With one host down or failing every request, OpenAI requests succeed on the other."""
        async with fleet(
            [tiny_profile("h1", num_parallel=4), tiny_profile("h2", num_parallel=4)]
        ) as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch, proxied(orch) as url:
            if fault == "killed":
                await sim["h1"].kill()
            else:
                await sim["h1"].set_faults(Faults(error_rate=1.0))
            c = client(url)
            try:
                for _ in range(3):
                    chat = await c.chat.completions.create(model=TINY, messages=MSGS)
                    assert chat.choices[0].message.content
                    stream = await c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
                    chunks = [chunk async for chunk in stream]
                    assert chunks[-1].choices[0].finish_reason == "stop"
                    emb = await c.embeddings.create(model=EMBED, input="x")
                    assert len(emb.data) == 1
            finally:
                await c.close()
            assert sim["h2"].state().completed == 9
            if fault == "failing":
                assert len(sim["h1"].requests) > 0  # it was tried, and the request moved on

    async def test_stream_error_after_first_chunk(self) -> None:
        """A stream cut after its first chunk ends with an error event, as from a host."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            await sim["h1"].set_faults(Faults(stream_error_after_chunks=2))
            async with proxied(orch) as url:
                c = client(url)
                try:
                    stream = await c.chat.completions.create(model=TINY, messages=MSGS, stream=True)
                    with pytest.raises(openai.APIError):
                        async for _ in stream:
                            pass
                finally:
                    await c.close()

    async def test_disconnect_frees_the_slot(self) -> None:
        """A client leaving a /v1 stream cancels the upstream request: the slots free at once."""
        async with host_and_proxy() as (sim, _, proxy):
            c = client(proxy)
            try:
                stream = await c.chat.completions.create(
                    model=TINY, messages=MSGS, stream=True, max_tokens=100000
                )
                async for _ in stream:
                    break
                await stream.close()
            finally:
                await c.close()
            with anyio.fail_after(5):
                await sim["h1"].wait_until(lambda st: st.in_flight == 0)
            assert sim["h1"].state().completed == 0

    async def test_bearer_token(self) -> None:
        """With a token, the SDK's api_key is the bearer token the proxy checks."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(
            config_for(sim)
        ) as orch, anyio.create_task_group() as tg:
            url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0, "s3cret")
            good = openai.AsyncOpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
            bad = openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
            try:
                assert [m.id async for m in good.models.list()]
                with pytest.raises(openai.AuthenticationError):
                    await bad.models.list()
            finally:
                await good.close()
                await bad.close()
            tg.cancel_scope.cancel()


class TestLiteLLM:
    """LiteLLM's openai/ provider works through the proxy."""

    async def test_openai_provider(self) -> None:
        """acompletion (whole and streamed) and aembedding through the proxy."""
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        # LiteLLM imports modules lazily on its first calls, and some warn (pydantic about its
        # own TypedDicts): not ours to fix, and the suite turns warnings into errors.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            litellm = pytest.importorskip("litellm")
            async with host_and_proxy() as (_, _, proxy):
                base = proxy + "/v1"
                whole = await litellm.acompletion(
                    model=f"openai/{TINY}", messages=MSGS, api_base=base, api_key="x"
                )
                assert whole.choices[0].message.content
                stream = await litellm.acompletion(
                    model=f"openai/{TINY}", messages=MSGS, api_base=base, api_key="x", stream=True
                )
                text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
                assert text.strip()
                emb = await litellm.aembedding(
                    model=f"openai/{EMBED}", input=["a"], api_base=base, api_key="x"
                )
                assert len(emb.data) == 1
