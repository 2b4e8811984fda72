"""HTTP handling of the Orchestra, unit-tested with respx: shapes, errors, failover, redaction."""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Sequence

import anyio
import httpx
import pytest
import respx

from ollama_orchestra import (
    HealthPolicy,
    NoCapableServer,
    OllamaResponseError,
    Orchestra,
    OrchestraConfig,
    RequestFailed,
    RetryPolicy,
    Server,
    StreamInterrupted,
    Timeouts,
)

M = "qwen2.5:14b"
A = "http://a.test:11434"
B = "http://b.test:11434"


def ndjson(*objs: Dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def gen_stream(text: Sequence[str], model: str = M) -> bytes:
    chunks = [
        {"model": model, "created_at": "2026-01-01T00:00:00Z", "response": t, "done": False}
        for t in text
    ]
    final = {
        "model": model,
        "created_at": "2026-01-01T00:00:00Z",
        "response": "",
        "done": True,
        "done_reason": "stop",
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 3,
        "prompt_eval_duration": 1_000_000,
        "eval_count": len(text),
        "eval_duration": 2_000_000,
    }
    return ndjson(*chunks, final)


def fleet_router(models: Dict[str, List[str]]) -> respx.Router:
    router = respx.Router(assert_all_called=False)
    for url, have in models.items():
        router.get(url + "/api/version").respond(json={"version": "0.12.0"})
        router.get(url + "/api/tags").respond(
            json={"models": [{"name": m, "model": m, "size": 1} for m in have]}
        )
        router.get(url + "/api/ps").respond(json={"models": []})
    return router


def orchestra(
    router: respx.Router,
    *,
    attempts: int = 3,
    strategy: str = "round_robin",
    headers: Any = None,
    timeouts: Optional[Timeouts] = None,
) -> Orchestra:
    cfg = OrchestraConfig(
        timeouts=timeouts or Timeouts(),
        servers=(Server("a", A, headers=headers or {}), Server("b", B)),
        strategy=strategy,
        health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
        retry=RetryPolicy(attempts=attempts, backoff_base_s=0),
    )

    async def no_sleep(_: float) -> None:
        return None

    return Orchestra(cfg, transport=httpx.MockTransport(router.async_handler), sleep=no_sleep)


class TestShapes:
    async def test_generate_assembles_stream(self) -> None:
        """A non-streamed generate joins the chunks and keeps Ollama's statistics."""
        router = fleet_router({A: [M], B: []})
        route = router.post(A + "/api/generate").respond(content=gen_stream(["Hel", "lo"]))
        async with orchestra(router) as orch:
            r = await orch.generate(M, "hi", options={"temperature": 0})
        assert r.response == "Hello" and r.text == "Hello"
        assert r.done and r.done_reason == "stop"
        assert r.eval_count == 2 and r.total_duration == 5_000_000 and r.load_duration == 1_000_000
        assert r.server == "a" and r.attempts == 1
        sent = json.loads(route.calls.last.request.content)
        assert (
            sent["options"] == {"temperature": 0} and sent["prompt"] == "hi" and sent["model"] == M
        )

    async def test_chat_merges_message(self) -> None:
        """A non-streamed chat returns one assistant message with the joined content."""
        router = fleet_router({A: [M], B: [M]})
        body = ndjson(
            {
                "model": M,
                "created_at": "t",
                "message": {"role": "assistant", "content": "Hi"},
                "done": False,
            },
            {
                "model": M,
                "created_at": "t",
                "message": {"role": "assistant", "content": " there"},
                "done": False,
            },
            {
                "model": M,
                "created_at": "t",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "eval_count": 2,
            },
        )
        router.post(A + "/api/chat").respond(content=body)
        router.post(B + "/api/chat").respond(content=body)
        async with orchestra(router) as orch:
            r = await orch.chat(M, [{"role": "user", "content": "hello"}])
        assert r.message == {"role": "assistant", "content": "Hi there"}
        assert r.text == "Hi there" and r.eval_count == 2

    async def test_stream_yields_chunks(self) -> None:
        """generate_stream yields each chunk; the last carries done and the statistics."""
        router = fleet_router({A: [M], B: []})
        router.post(A + "/api/generate").respond(content=gen_stream(["a", "b", "c"]))
        async with orchestra(router) as orch:
            chunks = [c async for c in orch.generate_stream(M, "x")]
        assert [c.response for c in chunks] == ["a", "b", "c", ""]
        assert chunks[-1].done and chunks[-1].eval_count == 3
        assert all(c.server == "a" for c in chunks)

    async def test_embed(self) -> None:
        """embed returns Ollama's embeddings and where they ran."""
        router = fleet_router({A: ["nomic-embed-text:latest"], B: []})
        router.post(A + "/api/embed").respond(
            json={"model": "nomic-embed-text", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 1}
        )
        async with orchestra(router) as orch:
            e = await orch.embed("nomic-embed-text", ["a"])
        assert e.embeddings == [[0.1, 0.2]] and e.server == "a"


class TestErrors:
    async def test_400_is_raised_at_once(self) -> None:
        """A 400 is the caller's fault: OllamaResponseError with Ollama's message, no retry."""
        router = fleet_router({A: [M], B: [M]})
        ra = router.post(A + "/api/generate").respond(400, json={"error": "invalid options"})
        rb = router.post(B + "/api/generate").respond(400, json={"error": "invalid options"})
        async with orchestra(router) as orch:
            with pytest.raises(OllamaResponseError) as info:
                await orch.generate(M, "x")
        assert info.value.status_code == 400 and info.value.error == "invalid options"
        assert ra.call_count + rb.call_count == 1

    async def test_500_fails_over(self) -> None:
        """A 500 on one server is retried at once on the other."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(500, json={"error": "boom"})
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            results = [await orch.generate(M, "x") for _ in range(4)]
            assert orch.state()["a"].errors >= 1
        assert {r.server for r in results} == {"b"}
        assert any(r.attempts == 2 for r in results)

    async def test_connect_error_marks_down_and_fails_over(self) -> None:
        """A refused connection marks the server down at once and goes elsewhere."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").mock(side_effect=httpx.ConnectError("refused"))
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            r = await orch.generate(M, "x")
            r2 = await orch.generate(M, "x")
            assert not orch.state()["a"].healthy
        assert r.server == "b" and r2.server == "b" and r2.attempts == 1

    async def test_404_on_one_host_reroutes(self) -> None:
        """A 404 'model not found' corrects that server's list and goes to one that has it."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(404, json={"error": f"model '{M}' not found"})
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            first = await orch.generate(M, "x")
            assert M not in orch.state()["a"].models
            second = await orch.generate(M, "x")
        assert first.server == "b" and second.server == "b" and second.attempts == 1

    async def test_404_everywhere_is_no_capable_server(self) -> None:
        """When every server answers 404, the request raises NoCapableServer."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(404, json={"error": f"model '{M}' not found"})
        router.post(B + "/api/generate").respond(404, json={"error": f"model '{M}' not found"})
        async with orchestra(router) as orch:
            with pytest.raises(NoCapableServer):
                await orch.generate(M, "x")

    async def test_exhausted_retries_list_every_attempt(self) -> None:
        """RequestFailed lists every attempt with its server and error."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(500, json={"error": "boom a"})
        router.post(B + "/api/generate").respond(503, json={"error": "busy b"})
        async with orchestra(router, attempts=3) as orch:
            with pytest.raises(RequestFailed) as info, anyio.fail_after(5):
                await orch.generate(M, "x")
        attempts = info.value.attempts
        assert len(attempts) == 3
        assert {a.server for a in attempts[:2]} == {"a", "b"}
        assert any("boom a" in a.error for a in attempts) and any(
            "busy b" in a.error for a in attempts
        )

    async def test_no_retry_override(self) -> None:
        """retry=False makes one attempt only."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(500, json={"error": "boom"})
        router.post(B + "/api/generate").respond(500, json={"error": "boom"})
        async with orchestra(router) as orch:
            with pytest.raises(RequestFailed) as info:
                await orch.generate(M, "x", retry=False)
        assert len(info.value.attempts) == 1

    async def test_error_line_mid_stream_is_retried_for_one_answer(self) -> None:
        """A stream ending in an error line is retried elsewhere when nothing was yielded yet."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(
            content=ndjson({"model": M, "response": "x", "done": False}, {"error": "runner died"})
        )
        router.post(B + "/api/generate").respond(content=gen_stream(["fine"]))
        async with orchestra(router) as orch:
            r = await orch.generate(M, "x")
        assert r.response == "fine" and r.server == "b" and r.attempts == 2

    async def test_unknown_model_before_any_request(self) -> None:
        """A model nobody has fails fast with NoCapableServer, no request sent."""
        router = fleet_router({A: [M], B: [M]})
        route = router.post(A + "/api/generate")
        async with orchestra(router) as orch:
            with pytest.raises(NoCapableServer):
                await orch.generate("nope", "x")
        assert route.call_count == 0


class TestSecrets:
    async def test_auth_header_sent_never_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """An Authorization header reaches the server but no log line, repr or state."""
        caplog.set_level(logging.DEBUG)
        router = fleet_router({A: [M], B: []})
        route = router.post(A + "/api/generate").respond(500, json={"error": "boom"})
        async with orchestra(router, headers={"Authorization": "Bearer s3cret"}) as orch:
            with pytest.raises(RequestFailed):
                await orch.generate(M, "x")
            assert route.calls.last.request.headers["Authorization"] == "Bearer s3cret"
            text = repr(orch) + repr(orch.config) + repr(orch.state()) + orch.prometheus()
        assert "s3cret" not in text
        assert "s3cret" not in caplog.text


class TestSilentHost:
    """A host that goes silent mid-answer is cut after read_s, collected or streamed."""

    @staticmethod
    def hanging(router: respx.Router, url: str, never: Any) -> None:
        """``url`` sends one chunk of a generate answer, then nothing ever again."""

        async def body() -> Any:
            yield gen_stream(["Hel"]).split(b"\n")[0] + b"\n"
            await never.wait()

        router.post(url + "/api/generate").mock(
            side_effect=lambda request: httpx.Response(200, content=body())
        )

    def silent_fleet(self, never: Any) -> Orchestra:
        router = fleet_router({A: [M], B: [M]})
        self.hanging(router, A, never)
        self.hanging(router, B, never)
        return orchestra(router, attempts=2, timeouts=Timeouts(first_byte_s=5, read_s=0.05))

    async def test_collected_answer_is_retried_then_fails(self) -> None:
        """Collected: each silent attempt ends after read_s and the request fails naming it."""
        never = anyio.Event()
        async with self.silent_fleet(never) as orch:
            with pytest.raises(RequestFailed) as info, anyio.fail_after(5):
                await orch.generate(M, "x")
        assert [a.server for a in info.value.attempts] in (["a", "b"], ["b", "a"])
        assert all("no chunk within read_s=0.05s" in a.error for a in info.value.attempts)

    async def test_stream_is_interrupted(self) -> None:
        """Streamed: the text already yielded comes back in StreamInterrupted."""
        never = anyio.Event()
        async with self.silent_fleet(never) as orch:

            async def read_all() -> None:
                async with orch.generate_stream(M, "x") as stream:
                    async for _ in stream:
                        pass

            with pytest.raises(StreamInterrupted) as info, anyio.fail_after(5):
                await read_all()
        assert info.value.partial == "Hel"
        assert "no chunk within read_s" in str(info.value)
