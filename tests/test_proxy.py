"""The Ollama-compatible proxy: the official client and raw HTTP against a live uvicorn."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections import Counter
from typing import AsyncIterator, Dict, List, Optional

import anyio
import httpx
import ollama
import pytest

from ollama_orchestra import ConfigError, Orchestra, serve_proxy
from ollama_orchestra.sim import SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile

EMBED = "tiny-embed:latest"
MSGS = [{"role": "user", "content": "hello"}]
CLI = [sys.executable, "-m", "ollama_orchestra"]


def pair(**kw: float) -> SimFleet:
    return fleet([tiny_profile("h1", num_parallel=4), tiny_profile("h2", num_parallel=4)], **kw)


@contextlib.asynccontextmanager
async def proxied(orch: Orchestra, token: Optional[str] = None) -> AsyncIterator[str]:
    """The proxy on 127.0.0.1:<free port> for the duration of the block; yields its URL."""
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0, token)
        yield url
        tg.cancel_scope.cancel()


async def close(c: ollama.AsyncClient) -> None:
    await c._client.aclose()  # AsyncClient.close() is untyped


class TestOfficialClient:
    async def test_everything_through_the_proxy(self) -> None:
        """generate, chat (whole and streamed), embed, list, ps, show; both hosts serve."""
        async with pair() as sim, Orchestra(config_for(sim, strategy="round_robin")) as orch:
            async with proxied(orch) as url:
                c = ollama.AsyncClient(host=url)
                try:
                    g = await c.generate(TINY, "hi", options={"num_predict": 4})
                    assert g.done and g.eval_count == 4
                    parts = [p async for p in await c.generate(TINY, "hi", stream=True)]
                    assert parts[-1].done and not parts[0].done
                    assert (await c.chat(TINY, MSGS)).message.content
                    chunks = [p async for p in await c.chat(TINY, MSGS, stream=True)]
                    assert chunks[-1].done
                    assert len((await c.embed(EMBED, "x")).embeddings) == 1
                    assert len((await c.list()).models) == 2
                    await c.ps()
                    assert (await c.show(TINY)).capabilities
                    async with anyio.create_task_group() as tg:
                        for i in range(6):
                            tg.start_soon(c.generate, TINY, f"q{i}")
                finally:
                    await close(c)
            assert len(sim["h1"].requests) > 0 and len(sim["h2"].requests) > 0

    async def test_kill_one_host_mid_run(self) -> None:
        """Killing h1 while requests run through the proxy loses none."""
        async with SimFleet(
            [tiny_profile("h1", num_parallel=4), tiny_profile("h2", num_parallel=4)],
            time_scale=0.02,
            mode="subprocess",
        ) as sim, Orchestra(config_for(sim, strategy="least_loaded")) as orch, proxied(orch) as url:
            c = ollama.AsyncClient(host=url)
            done: List[str] = []
            try:
                async with anyio.create_task_group() as tg:

                    async def one(i: int) -> None:
                        assert (await c.generate(TINY, f"q{i}", options={"num_predict": 16})).done
                        done.append(f"q{i}")

                    for i in range(30):
                        tg.start_soon(one, i)
                    # Subprocess hosts: killing one is a process dying, as in production.
                    await orch.wait_for_state(lambda snap: snap["h1"].requests >= 4)
                    await sim["h1"].kill()
            finally:
                await close(c)
        assert len(done) == 30 and Counter(done).most_common(1)[0][1] == 1


class TestHttp:
    async def test_shapes_metrics_status_and_token(self) -> None:
        """NDJSON streams, error bodies, /metrics, /status; the token is enforced."""
        async with pair() as sim, Orchestra(config_for(sim)) as orch, proxied(
            orch, token="s3cret"
        ) as url:
            auth: Dict[str, str] = {"Authorization": "Bearer s3cret"}
            async with httpx.AsyncClient(base_url=url) as h:
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    r = await h.get("/api/tags", headers=headers)
                    assert r.status_code == 401 and "unauthorized" in r.json()["error"]
                    assert "s3cret" not in r.text
                async with h.stream(
                    "POST", "/api/chat", json={"model": TINY, "messages": MSGS}, headers=auth
                ) as r:
                    assert r.headers["content-type"] == "application/x-ndjson"
                    objs = [json.loads(line) async for line in r.aiter_lines() if line]
                assert objs[-1]["done"] and objs[-1]["done_reason"] == "stop"
                assert "eval_count" in objs[-1] and not objs[0]["done"]
                whole = await h.post(
                    "/api/generate",
                    json={"model": TINY, "prompt": "x", "stream": False},
                    headers=auth,
                )
                assert whole.json()["done"] and whole.json()["response"]
                missing = await h.post("/api/generate", json={"model": "nope"}, headers=auth)
                assert missing.status_code == 404 and "nope" in missing.json()["error"]
                pull = await h.post("/api/pull", json={"model": TINY}, headers=auth)
                assert pull.status_code == 405 and pull.json()["error"]
                assert (await h.get("/", headers=auth)).text == "Ollama is running"
                metrics = await h.get("/metrics", headers=auth)
                assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
                assert "ollama_orchestra_" in metrics.text
                status = (await h.get("/status", headers=auth)).json()
                assert set(status["servers"]) == {"h1", "h2"}
                assert status["servers"]["h1"]["breaker"] == "closed"

    async def test_disconnect_frees_the_backend_slot(self) -> None:
        """A client that leaves mid-stream cancels the upstream request: slots free at once."""
        async with pair(time_scale=0.05) as sim, Orchestra(config_for(sim)) as orch, proxied(
            orch
        ) as url:
            async with httpx.AsyncClient(base_url=url) as h:
                body = {"model": TINY, "prompt": "x", "options": {"num_predict": 100000}}
                async with h.stream("POST", "/api/generate", json=body) as r:
                    async for _ in r.aiter_lines():
                        break
            with anyio.fail_after(5):
                for s in sim:
                    await s.wait_until(lambda st: st.in_flight == 0)
                await orch.wait_for_state(
                    lambda snap: all(s.in_flight == 0 for s in snap.servers.values())
                )
            assert sum(len(s.requests) for s in sim) == 1


class TestServing:
    async def test_non_loopback_needs_the_flag(self) -> None:
        """serve_proxy refuses a non-loopback address unless explicitly allowed."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            with pytest.raises(ConfigError, match="loopback"):
                await serve_proxy(orch, "0.0.0.0", 0)

    async def test_cli_refuses_non_loopback(self) -> None:
        """The CLI needs --allow-non-loopback to bind 0.0.0.0: one line on stderr, exit 2."""
        r = await anyio.run_process(
            [*CLI, "proxy", "--listen", "0.0.0.0:11435", "--server", "a=http://127.0.0.1:1"],
            check=False,
        )
        assert r.returncode == 2 and b"--allow-non-loopback" in r.stderr

    async def test_cli_serves_until_sigterm(self) -> None:
        """`ollama-orchestra proxy` prints its URL, serves, and exits 0 on SIGTERM."""
        async with fleet([tiny_profile("h1")]) as sim:
            argv = [*CLI, "proxy", "--listen", "127.0.0.1:0", "--server", f"h1={sim['h1'].url}"]
            async with await anyio.open_process(argv) as proc:
                assert proc.stdout is not None
                line = b""
                with anyio.fail_after(20):
                    while not line.endswith(b"\n"):
                        line += await proc.stdout.receive()
                assert line.startswith(b"proxy listening on http://127.0.0.1:")
                url = line.decode().split()[-1]
                async with httpx.AsyncClient(base_url=url) as h:
                    assert (await h.get("/api/tags")).json()["models"]
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(20):
                    assert await proc.wait() == 0

    async def test_serves_from_a_config(self) -> None:
        """Given a config, serve_proxy runs its own orchestra."""
        async with fleet([tiny_profile("h1")]) as sim, anyio.create_task_group() as tg:
            url = await tg.start(serve_proxy, config_for(sim), "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=url) as h:
                assert (await h.get("/api/version")).json()["version"]
            tg.cancel_scope.cancel()
