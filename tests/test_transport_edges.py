"""The transport and the proxy at their edges: bad bodies, a fleet that is down, broken
streams, and the ASGI messages a server sends besides requests."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, List, MutableMapping

import httpx
import pytest
import pytest_asyncio

from ollama_orchestra import (
    ConfigError,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    OrchestraTransport,
    RetryPolicy,
    Server,
    proxy_app,
    serve_proxy,
)
from ollama_orchestra.sim import Faults, SimServer

from .conftest import TINY, config_for, fleet, tiny_profile

Message = MutableMapping[str, Any]


@pytest_asyncio.fixture
async def one() -> AsyncIterator[Orchestra]:
    """An orchestra on one simulated host, with one attempt per request."""
    async with fleet([tiny_profile("h1")]) as sim, Orchestra(
        config_for(sim, retry=RetryPolicy(attempts=1))
    ) as orch:
        orch.sim = sim  # type: ignore[attr-defined]
        yield orch


def raw(orch: Orchestra) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=OrchestraTransport(orch), base_url="http://orchestra")


class TestBadBodies:
    """A body Ollama would refuse is refused the same way, before any server is asked."""

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            (b"{not json", "invalid JSON"),
            (b"[1, 2]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
            (b"", "missing request body"),
            (b'{"prompt": "x"}', "model is required"),
        ],
    )
    async def test_400_with_ollamas_message(
        self, one: Orchestra, content: bytes, error: str
    ) -> None:
        """400 and Ollama's {"error": ...} body."""
        async with raw(one) as h:
            r = await h.post("/api/generate", content=content)
        assert r.status_code == 400
        assert r.json()["error"].startswith(error)

    async def test_repr_names_the_orchestra(self, one: Orchestra) -> None:
        """The transport's repr shows the orchestra it routes to."""
        assert repr(OrchestraTransport(one)) == f"<OrchestraTransport {one!r}>"


class TestFleetDown:
    """With no server up, the fleet-wide routes answer 503, not an empty list."""

    async def test_version_tags_and_generate(self) -> None:
        """/api/version, /api/tags and /api/ps: 503 naming the problem; generate: 503 too."""
        async with fleet([tiny_profile("h1")]) as sim:
            config = config_for(sim, wait_for_healthy_s=0.0)
            await sim["h1"].kill()
            async with Orchestra(config) as orch, raw(orch) as h:
                version = await h.get("/api/version")
                tags = await h.get("/api/tags")
                ps = await h.get("/api/ps")
                generate = await h.post("/api/generate", json={"model": TINY, "prompt": "x"})
        assert version.status_code == 503
        assert version.json()["error"] == "no server of the fleet has reported its version yet"
        assert tags.status_code == 503 and "/api/tags" in tags.json()["error"]
        assert ps.status_code == 503
        assert generate.status_code in (404, 503)


class TestBrokenStream:
    """A stream that breaks after its first chunk ends with Ollama's error line."""

    async def test_error_line_after_partial_output(self, sim_server: SimServer) -> None:
        """Chunks already sent stay; the last line is {"error": ...} naming the server."""
        config = OrchestraConfig(
            servers=[Server("s", sim_server.url)],
            retry=RetryPolicy(attempts=2, backoff_base_s=0.01, backoff_max_s=0.01),
            health=HealthPolicy(interval_s=60),
        )
        async with Orchestra(config) as orch, raw(orch) as h:
            await sim_server.set_faults(Faults(reset_after_chunks=3))
            body = {"model": TINY, "prompt": "x", "options": {"num_predict": 12}}
            async with h.stream("POST", "/api/generate", json=body) as r:
                lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert r.status_code == 200
        assert [line.get("response") for line in lines[:-1]] != []
        assert "error" in lines[-1] and "interrupted" in lines[-1]["error"]


class TestAsgiEdges:
    """The proxy app handles ASGI's other messages as a server expects."""

    async def test_lifespan_and_websocket(self, one: Orchestra) -> None:
        """Lifespan startup and shutdown complete; a websocket scope is ignored."""
        app = proxy_app(one)
        incoming: List[Message] = [
            {"type": "lifespan.startup"},
            {"type": "lifespan.shutdown"},
        ]
        sent: List[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app({"type": "lifespan"}, receive, send)
        assert [m["type"] for m in sent] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        await app({"type": "websocket"}, receive, send)
        assert len(sent) == 2

    async def test_client_gone_before_body(self, one: Orchestra) -> None:
        """A client that leaves before its body arrived gets nothing, and nothing is sent."""
        sent: List[Dict[str, Any]] = []

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(dict(message))

        scope = {"type": "http", "method": "POST", "path": "/api/generate", "headers": []}
        await proxy_app(one)(scope, receive, send)
        assert sent == []
        assert one.metrics().servers["h1"].requests == 0

    async def test_head_has_no_body(self, one: Orchestra) -> None:
        """HEAD / answers 200 with an empty body, as Ollama does."""
        sent: List[Message] = []
        incoming: List[Message] = [{"type": "http.request", "body": b""}]

        async def receive() -> Message:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "HEAD", "path": "/", "headers": [], "query_string": b""}
        await proxy_app(one)(scope, receive, send)
        assert sent[0]["status"] == 200
        assert [m.get("body") for m in sent[1:]] == [b""]


class TestServeProxyArguments:
    """serve_proxy checks its arguments before it binds."""

    async def test_empty_token(self) -> None:
        """A blank token is refused: it would let anyone in while looking protected."""
        config = OrchestraConfig(servers=[Server("a", "http://127.0.0.1:9")])
        with pytest.raises(ConfigError, match=r"^token='\(empty\)': must not be empty"):
            await serve_proxy(config, token="  ")

    async def test_port_in_use(self, sim_server: SimServer) -> None:
        """A port already taken is named in the error, and nothing is left running."""
        config = OrchestraConfig(servers=[Server("a", sim_server.url)])
        with pytest.raises(
            ConfigError, match=rf"^listen='127.0.0.1:{sim_server.port}': cannot bind"
        ):
            await serve_proxy(config, "127.0.0.1", sim_server.port)
