"""The failure classification as a table: every status and transport error, retried where,
counted by which breaker (respx), and client errors that never count against a host (sim)."""

from __future__ import annotations

import json
from typing import Any, Callable, List, Optional, Tuple, Type

import anyio
import httpx
import pytest
import respx
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from ollama_orchestra import (
    BreakerPolicy,
    HealthPolicy,
    OllamaResponseError,
    Orchestra,
    OrchestraConfig,
    RequestFailed,
    RetryPolicy,
    Server,
)
from ollama_orchestra._failover import OUTCOMES, from_status, status_kind

from .conftest import TINY, config_for, fleet, tiny_profile
from .test_client_http import A, B, M, fleet_router, gen_stream

# Ollama's own error texts (ollama/ollama v0.33.0-rc2: api/types.go, server/routes.go,
# server/sched.go, llm/llama_server.go, llm/status.go), as a host would send them.
OPTION_TYPE = 'option "num_ctx" must be of type integer'
BAD_FORMAT = 'invalid format: "yaml"; expected "json" or a valid JSON Schema object'
RUNNER_DIED = "llama runner process has terminated: exit status 2"
LOAD_FAILED = "error loading model /models/blobs/sha256-abc"
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"

# (id, what host "a" does, retried on "b"?, a's host-breaker failures, a's model-breaker
# failures, error raised to the caller or None)
ROWS = [
    ("connect-refused", httpx.ConnectError("refused"), True, 1, 0, None),
    ("connect-timeout", httpx.ConnectTimeout("slow"), True, 1, 0, None),
    ("first-byte-timeout", httpx.ReadTimeout("hung"), True, 1, 0, None),
    ("write-timeout", httpx.WriteTimeout("hung"), True, 1, 0, None),
    ("reset", httpx.RemoteProtocolError("peer closed"), True, 1, 0, None),
    ("read-error", httpx.ReadError("broken"), True, 1, 0, None),
    ("500-generic", (500, "something broke"), True, 1, 0, None),
    ("502", (502, "bad gateway"), True, 1, 0, None),
    ("504", (504, "gateway timeout"), True, 1, 0, None),
    ("500-runner-died", (500, RUNNER_DIED), True, 0, 1, None),
    ("500-load-failed", (500, LOAD_FAILED), True, 0, 1, None),
    ("503-queue-full", (503, QUEUE_FULL), True, 0, 0, None),
    ("429", (429, "too many requests"), True, 0, 0, None),
    ("404-model-not-found", (404, f"model '{M}' not found"), True, 0, 0, None),
    ("400", (400, "invalid options"), False, 0, 0, OllamaResponseError),
    ("401", (401, "unauthorized"), False, 0, 0, OllamaResponseError),
    ("404-other", (404, "page gone"), False, 0, 0, OllamaResponseError),
    ("422", (422, "unprocessable"), False, 0, 0, OllamaResponseError),
    ("500-option-type", (500, OPTION_TYPE), False, 0, 0, OllamaResponseError),
    ("500-bad-format", (500, BAD_FORMAT), False, 0, 0, OllamaResponseError),
]


def orchestra(router: respx.Router) -> Orchestra:
    cfg = OrchestraConfig(
        servers=(Server("a", A), Server("b", B)),
        strategy="round_robin",
        health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
        retry=RetryPolicy(attempts=3, backoff_base_s=0),
    )

    async def no_sleep(_: float) -> None:
        return None

    return Orchestra(cfg, transport=httpx.MockTransport(router.async_handler), sleep=no_sleep)


class TestClassificationTable:
    @pytest.mark.parametrize(
        ("outcome", "retried", "host_failures", "model_failures", "raises"),
        [row[1:] for row in ROWS],
        ids=[row[0] for row in ROWS],
    )
    async def test_each_outcome(
        self,
        outcome: Any,
        retried: bool,
        host_failures: int,
        model_failures: int,
        raises: Optional[Type[Exception]],
    ) -> None:
        """Each failure is retried (or not) and counted by the breaker the table names."""
        router = fleet_router({A: [M], B: [M]})
        ra = router.post(A + "/api/generate")
        if isinstance(outcome, Exception):
            ra.mock(side_effect=outcome)
        else:
            ra.respond(outcome[0], json={"error": outcome[1]})
        rb = router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            if raises is not None:
                with pytest.raises(raises):
                    await orch.generate(M, "x")
            else:
                r = await orch.generate(M, "x")
                assert r.server == "b" and r.attempts == 2
            host = orch.breaker("a").snapshot()
            model = orch.model_breaker("a", M).snapshot()
            assert ra.call_count == 1
            assert rb.call_count == (1 if retried else 0)
            assert host.consecutive_failures == host_failures
            assert model.consecutive_failures == model_failures
            assert orch.breaker("b").snapshot().consecutive_failures == 0

    def test_table_rows(self) -> None:
        """The table itself: only the caller's errors are not retried; busy and missing
        models count against no breaker; a model's failure counts against that model only."""
        assert {k for k, o in OUTCOMES.items() if not o.retry} == {"client"}
        assert {k for k, o in OUTCOMES.items() if o.breaker == "server"} == {
            "connect",
            "timeout",
            "reset",
            "server",
        }
        assert {k for k, o in OUTCOMES.items() if o.breaker == "model"} == {"model"}

    @pytest.mark.parametrize("status", list(range(400, 600)))
    def test_every_status(self, status: int) -> None:
        """Every 4xx is the caller's but 404-not-found, 408 and 429; every 5xx the host's but
        503 (busy) and a 500 whose text says the request or the model is at fault."""
        kind = status_kind(status, "boom")
        if status in (408, 429, 503):
            assert kind == "busy"
        elif status < 500:
            assert kind == "client"
            assert isinstance(from_status(status, {"error": "boom"}, "a", M), OllamaResponseError)
        else:
            assert kind == "server"
        assert status_kind(500, OPTION_TYPE) == "client"
        assert status_kind(500, RUNNER_DIED) == "model"
        assert status_kind(404, f"model '{M}' not found") == "not_found"

    async def test_mid_stream_error_of_a_model(self) -> None:
        """An error line naming a dead runner before any text counts against the model only."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(
            content=b'{"error": "' + RUNNER_DIED.encode() + b'"}\n'
        )
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            r = await orch.generate(M, "x")
            assert orch.model_breaker("a", M).snapshot().consecutive_failures == 1
            assert orch.breaker("a").snapshot().consecutive_failures == 0
        assert r.server == "b"


class TestMidStreamErrors:
    async def test_a_bad_format_error_line_is_the_callers(self) -> None:
        """Ollama streams a bad ``format`` as an error line after its 200: the caller's
        error, not retried, no breaker failure."""
        router = fleet_router({A: [M], B: [M]})
        ra = router.post(A + "/api/generate").respond(
            content=json.dumps({"error": BAD_FORMAT}).encode() + b"\n"
        )
        rb = router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            with pytest.raises(OllamaResponseError, match="invalid format"):
                await orch.generate(M, "x")
            assert orch.breaker("a").snapshot().consecutive_failures == 0
            assert orch.model_breaker("a", M).snapshot().consecutive_failures == 0
        assert ra.call_count == 1 and rb.call_count == 0

    async def test_a_garbled_runner_answer_is_the_hosts(self) -> None:
        """A 500 from decoding the runner's answer ("invalid character") is the host's."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(
            500, json={"error": "invalid character '<' looking for beginning of value"}
        )
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        async with orchestra(router) as orch:
            r = await orch.generate(M, "x")
            assert orch.breaker("a").snapshot().consecutive_failures == 1
        assert r.server == "b"


class TestBackoff:
    async def test_no_backoff_while_an_untried_server_is_eligible(self) -> None:
        """A failed attempt goes to the next server at once: no backoff sleep."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(500, json={"error": "boom"})
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        slept: List[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)

        cfg = OrchestraConfig(
            servers=(Server("a", A), Server("b", B)),
            strategy="round_robin",
            health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
            retry=RetryPolicy(attempts=3, backoff_base_s=1, jitter=False),
        )
        transport = httpx.MockTransport(router.async_handler)
        async with Orchestra(cfg, transport=transport, sleep=sleep) as orch:
            r = await orch.generate(M, "x")
        assert r.server == "b" and r.attempts == 2
        assert [d for d in slept if d > 0] == []

    async def test_a_server_whose_model_breaker_is_open_is_not_untried(self) -> None:
        """A server refused by its model's breaker does not count as one left to try: once
        the others have failed, the retry backs off."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(503, json={"error": QUEUE_FULL})
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        slept: List[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)

        cfg = OrchestraConfig(
            servers=(Server("a", A), Server("b", B)),
            health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
            retry=RetryPolicy(attempts=2, backoff_base_s=1, jitter=False),
            breaker=BreakerPolicy(failure_threshold=1, cooldown_s=60),
        )
        transport = httpx.MockTransport(router.async_handler)
        async with Orchestra(cfg, transport=transport, sleep=sleep) as orch:
            mb = orch.model_breaker("b", M)
            permit = mb.admit()
            assert permit is not None
            mb.record_failure(permit)
            assert mb.state == "open"
            with pytest.raises(RequestFailed):
                await orch.generate(M, "x")
        assert [d for d in slept if d > 0] == [1]


class TestPerModelBreaker:
    async def test_model_failure_leaves_other_models_on_the_host(self) -> None:
        """A model that fails to load on a host opens its breaker there; the host keeps
        serving its other models, and other hosts keep serving that model."""
        other = "llama3.2:1b"
        router = fleet_router({A: [M, other], B: [M]})
        ra = router.post(A + "/api/generate")

        def answer(request: httpx.Request) -> httpx.Response:
            if b'"' + M.encode() + b'"' in request.content:
                return httpx.Response(500, json={"error": LOAD_FAILED})
            return httpx.Response(200, content=gen_stream(["ok"], model=other))

        ra.mock(side_effect=answer)
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        cfg = OrchestraConfig(
            servers=(Server("a", A), Server("b", B)),
            strategy="round_robin",
            health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
            retry=RetryPolicy(attempts=3, backoff_base_s=0),
            breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60),
        )
        async with Orchestra(cfg, transport=httpx.MockTransport(router.async_handler)) as orch:
            for _ in range(4):
                await orch.generate(M, "x")
            assert orch.model_breaker("a", M).state == "open"
            assert orch.breaker("a").state == "closed"
            before = ra.call_count
            served = [(await orch.generate(M, "x")).server for _ in range(3)]
            assert served == ["b", "b", "b"]
            assert ra.call_count == before
            r = await orch.generate(other, "x")
        assert r.server == "a"


class TestClientErrorsOnRealSockets:
    async def test_malformed_request_500s_leave_the_breaker_closed(self) -> None:
        """Three requests a host refuses with Ollama's 500 for a bad option type are the
        caller's errors: not retried, and the host's breaker stays closed."""
        calls: List[str] = []

        def route(method: str, path: str) -> Tuple[int, Any]:
            if path == "/api/version":
                return 200, {"version": "0.12.0"}
            if path == "/api/tags":
                return 200, {"models": [{"name": M, "model": M, "size": 1}]}
            if path == "/api/ps":
                return 200, {"models": []}
            calls.append(path)
            return 500, {"error": OPTION_TYPE}

        async with anyio.create_task_group() as tg:
            port = await tg.start(_tiny_http_server, route)
            cfg = OrchestraConfig(
                servers=(Server("h", f"http://127.0.0.1:{port}", max_concurrency=4),),
                health=HealthPolicy(interval_s=3600),
                breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60),
            )
            async with Orchestra(cfg) as orch:
                for _ in range(3):
                    with pytest.raises(OllamaResponseError, match="must be of type integer"):
                        await orch.generate(M, "x", options={"num_ctx": "big"})
                assert orch.breaker("h").state == "closed"
                assert orch.breaker("h").snapshot().consecutive_failures == 0
                assert orch.state()["h"].healthy
            tg.cancel_scope.cancel()
        assert calls == ["/api/generate"] * 3

    async def test_simulated_400s_leave_the_breaker_closed(self) -> None:
        """Requests the simulated Ollama answers with 400 open no breaker and are not retried."""
        async with fleet([tiny_profile("h1", num_parallel=4)]) as sim:
            cfg = config_for(sim, breaker=BreakerPolicy(failure_threshold=2, cooldown_s=60))
            async with Orchestra(cfg) as orch:
                for _ in range(3):
                    with pytest.raises(OllamaResponseError) as info:
                        await orch.generate(TINY, "x", keep_alive="soon")
                    assert info.value.status_code == 400
                assert orch.breaker("h1").state == "closed"
                assert orch.breaker("h1").snapshot().consecutive_failures == 0
                r = await orch.generate(TINY, "still fine")
        assert r.server == "h1" and r.attempts == 1


async def _tiny_http_server(
    route: Callable[[str, str], Tuple[int, Any]],
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A minimal HTTP/1.1 host on 127.0.0.1 answering ``route(method, path)`` as JSON."""

    async def handle(stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            while len(body) < length:
                body += await stream.receive()
            status, obj = route(method, path)
            payload = json.dumps(obj).encode()
            await stream.send(
                b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % (status, len(payload)) + payload
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener:
        task_status.started(listener.extra(SocketAttribute.local_port))
        await listener.serve(handle)
