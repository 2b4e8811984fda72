"""The proxy's bounds, checked with raw sockets: body size, header and body time, idle
connections, open connections; its token; its trailing error line; its CLI's one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any, AsyncIterator, List, Optional, Tuple

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest

from ollama_orchestra import ConfigError, Orchestra, ProxyLimits, proxy_app, serve_proxy
from ollama_orchestra.cli import main
from ollama_orchestra.sim import Faults, SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile
from .test_serving_timers import send_then_jump_clock

QUICK = ProxyLimits(
    max_body_bytes=1000,
    header_timeout_s=0.2,
    body_timeout_s=0.2,
    keep_alive_s=0.2,
    max_connections=2,
)
GENERATE = {"model": TINY, "prompt": "x", "stream": False, "options": {"num_predict": 2}}


@contextlib.asynccontextmanager
async def proxied(
    limits: ProxyLimits = QUICK, *, token: Optional[str] = None, sim: Optional[SimFleet] = None
) -> AsyncIterator[Tuple[Orchestra, str, int]]:
    """A proxy with ``limits`` on a one-host simulated fleet: (orchestra, host, port)."""
    async with contextlib.AsyncExitStack() as stack:
        if sim is None:
            sim = await stack.enter_async_context(fleet([tiny_profile("h1", num_parallel=4)]))
        orch = await stack.enter_async_context(Orchestra(config_for(sim)))
        tg = await stack.enter_async_context(anyio.create_task_group())
        url: str = await tg.start(
            lambda task_status: serve_proxy(
                orch, "127.0.0.1", 0, token, limits=limits, task_status=task_status
            )
        )
        host, port = url.rsplit("/", 1)[-1].split(":")
        yield orch, host, int(port)
        tg.cancel_scope.cancel()


async def read_until_closed(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with anyio.fail_after(5):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data


def request(path: str, body: bytes, *, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def answer(raw: bytes) -> Tuple[int, bytes]:
    """The status and body of the first response in ``raw``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class TestBodies:
    async def test_content_length_over_the_limit_is_413_before_reading(self) -> None:
        """A declared length over the limit: 413 at once, in Ollama's shape; nothing read."""
        async with proxied() as (_, host, port), await anyio.connect_tcp(host, port) as s:
            await s.send(
                b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n{"
            )
            status, body = answer(await read_until_closed(s))
        assert status == 413
        assert json.loads(body) == {"error": "request body too large: the limit is 1000 bytes"}

    async def test_a_chunked_body_over_the_limit_is_413_while_reading(self) -> None:
        """Without Content-Length, the limit is checked as the chunks arrive."""
        async with proxied() as (orch, host, port), await anyio.connect_tcp(host, port) as s:
            await s.send(
                b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(3):
                await s.send(b"200\r\n" + b" " * 0x200 + b"\r\n")
            status, body = answer(await read_until_closed(s))
            assert orch.state()["h1"].in_flight == 0
        assert status == 413 and b"too large" in body

    async def test_a_body_within_the_limit_is_served(self) -> None:
        """The limit leaves ordinary requests alone."""
        async with proxied() as (_, host, port), httpx.AsyncClient() as h:
            r = await h.post(f"http://{host}:{port}/api/generate", json=GENERATE)
        assert r.status_code == 200 and r.json()["done"]


BODY_S = 17.3  # a body deadline no other timer of the test's loop shares
SLOW = ProxyLimits(header_timeout_s=60, body_timeout_s=BODY_S, keep_alive_s=60)


async def body_deadline(since: float) -> float:
    """The loop time the body deadline armed after loop time ``since`` falls due, once armed."""
    loop: Any = asyncio.get_running_loop()
    with anyio.fail_after(5):
        while True:
            latest = loop.time() + BODY_S
            due = [
                t.when()
                for t in loop._scheduled
                if not t.cancelled() and since + BODY_S <= t.when() <= latest
            ]
            if due:
                (when,) = due
                return float(when)
            await anyio.lowlevel.checkpoint()  # the server reads the headers on its next turn


async def body_at_its_deadline(
    monkeypatch: pytest.MonkeyPatch, *, whole: bool
) -> Tuple[int, bytes]:
    """Status and body of the answer to a request whose body's second half (``whole``) or a
    part of it arrives just before its deadline, and is read after it (a paused loop)."""
    data = json.dumps(GENERATE).encode()
    raw = request("/api/generate", data, extra="Connection: close\r\n")
    first, rest = raw[: -len(data) // 2], raw[-len(data) // 2 :]
    async with proxied(SLOW) as (_, host, port), await anyio.connect_tcp(host, port) as s:
        since = anyio.current_time()
        await s.send(first)
        when = await body_deadline(since)
        send_then_jump_clock(monkeypatch, when, s, rest if whole else rest[:-1])
        return answer(await read_until_closed(s))


class TestStalledConnections:
    async def test_half_sent_headers_are_closed(self) -> None:
        """A client that sends half its headers and stops is disconnected after the bound."""
        async with proxied() as (_, host, port), await anyio.connect_tcp(host, port) as s:
            await s.send(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Le")
            assert await read_until_closed(s) == b""

    async def test_a_silent_connection_is_closed(self) -> None:
        """A connection that never sends a byte is closed after the header bound too."""
        async with proxied() as (_, host, port), await anyio.connect_tcp(host, port) as s:
            assert await read_until_closed(s) == b""

    async def test_half_sent_body_gets_408_and_is_closed(self) -> None:
        """A body that stops arriving: 408 in Ollama's shape, then the connection closes."""
        async with proxied() as (orch, host, port), await anyio.connect_tcp(host, port) as s:
            data = json.dumps(GENERATE).encode()
            await s.send(request("/api/generate", data)[: -len(data) // 2])
            status, body = answer(await read_until_closed(s))
            assert orch.state()["h1"].in_flight == 0
        assert status == 408 and json.loads(body)["error"].startswith("request body not received")

    async def test_a_body_in_the_buffer_at_its_deadline_is_served(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The rest of a body, arrived but unread when its deadline runs (the server's loop was
        paused), is read and the request answered (it got a 408)."""
        status, body = await body_at_its_deadline(monkeypatch, whole=True)
        assert status == 200 and json.loads(body)["done"]

    async def test_part_of_a_body_arrived_at_its_deadline_still_gets_408(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The deadline's last read takes what arrived, but a body still incomplete is a 408."""
        status, body = await body_at_its_deadline(monkeypatch, whole=False)
        assert status == 408 and json.loads(body)["error"].startswith("request body not received")

    async def test_an_idle_kept_alive_connection_and_a_half_second_request_are_closed(
        self,
    ) -> None:
        """After an answer, a connection idle past keep_alive_s is closed; one that starts the
        next request's headers and stalls is closed by the header bound."""
        async with proxied() as (_, host, port):
            for tail in (b"", b"GET /api/ta"):
                async with await anyio.connect_tcp(host, port) as s:
                    await s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    raw = b""
                    with anyio.fail_after(5):
                        while not raw.endswith(b"Ollama is running"):
                            raw += await s.receive()
                    if tail:  # after the answer: the keep-alive timer is cancelled by it
                        await s.send(tail)
                    assert await read_until_closed(s) == b""
                assert answer(raw) == (200, b"Ollama is running")


class TestConnectionLimit:
    async def test_past_the_limit_new_connections_get_503_while_open_ones_carry_on(
        self,
    ) -> None:
        """With max_connections open, a new one is answered 503 and closed; the open ones
        still finish their requests and can send more."""
        limits = ProxyLimits(max_connections=2, header_timeout_s=5, keep_alive_s=5)
        async with proxied(limits) as (orch, host, port), httpx.AsyncClient(
            base_url=f"http://{host}:{port}", limits=httpx.Limits(max_connections=2)
        ) as h:
            open_ones: List[httpx.Response] = []
            async with h.stream("POST", "/api/generate", json=dict(GENERATE, stream=True)) as a:
                async with h.stream("POST", "/api/generate", json=dict(GENERATE, stream=True)) as b:
                    async with await anyio.connect_tcp(host, port) as s:
                        await s.send(request("/api/generate", json.dumps(GENERATE).encode()))
                        status, body = answer(await read_until_closed(s))
                    assert status == 503 and "too many open connections" in body.decode()
                    await b.aread()
                    open_ones.append(b)
                await a.aread()
                open_ones.append(a)
            assert [r.status_code for r in open_ones] == [200, 200]
            assert all(json.loads(r.text.splitlines()[-1])["done"] for r in open_ones)
            assert (await h.post("/api/generate", json=GENERATE)).status_code == 200
            assert orch.state()["h1"].in_flight == 0


class TestToken:
    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
    async def test_the_scheme_is_case_insensitive(self, scheme: str) -> None:
        """RFC 7235: the auth scheme is case-insensitive; the token itself is not."""
        async with proxied(token="s3cret") as (_, host, port), httpx.AsyncClient(
            base_url=f"http://{host}:{port}"
        ) as h:
            ok = await h.get("/api/tags", headers={"Authorization": f"{scheme} s3cret"})
            wrong = await h.get("/api/tags", headers={"Authorization": f"{scheme} S3CRET"})
        assert ok.status_code == 200 and wrong.status_code == 401

    async def test_a_blank_token_is_refused(self) -> None:
        """A blank token would let anyone in: refused by serve_proxy and proxy_app."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            with pytest.raises(ConfigError, match="token"):
                await serve_proxy(orch, "127.0.0.1", 0, " ")
            with pytest.raises(ConfigError, match="token"):
                proxy_app(orch, token="")

    @pytest.mark.parametrize(
        "bad",
        [
            {"max_body_bytes": 0},
            {"max_connections": True},
            {"header_timeout_s": float("nan")},
            {"body_timeout_s": -1},
            {"keep_alive_s": "5"},
        ],
    )
    def test_limits_are_checked(self, bad: dict) -> None:  # type: ignore[type-arg]
        """Each limit is checked on construction, naming the field."""
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ProxyLimits(**bad)


class TestTrailingError:
    async def test_it_counts_the_characters_sent_and_says_why_in_words(self) -> None:
        """A stream that breaks after its first chunks ends with an {"error": ...} line giving
        the characters really delivered and the cause, no exception repr."""
        async with fleet([tiny_profile("h1")]) as sim:
            await sim["h1"].set_faults(Faults(stream_error_after_chunks=3))
            async with proxied(sim=sim) as (_, host, port), httpx.AsyncClient() as h:
                body = {"model": TINY, "prompt": "x"}
                r = await h.post(f"http://{host}:{port}/api/generate", json=body)
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        sent = "".join(o.get("response", "") for o in lines[:-1])
        assert len(lines) == 4 and len(sent) > 0
        assert lines[-1] == {
            "error": f"stream from h1 interrupted after {len(sent)} characters: error mid-stream: "
            "an error was encountered while running the model: simulated"
        }


class TestCli:
    def test_a_port_in_use_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`proxy --listen` on a port in use: one line on stderr, exit 2, no traceback."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            code = main(
                ["proxy", "--listen", f"127.0.0.1:{port}", "--server", "a=http://127.0.0.1:1"]
            )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "cannot bind" in err

    @pytest.mark.parametrize("where", ["flag", "env"])
    def test_a_blank_token_is_one_line(
        self, where: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`proxy --token ' '` (or a blank OLLAMA_ORCHESTRA_PROXY_TOKEN): one line, exit 2."""
        argv = ["proxy", "--server", "a=http://127.0.0.1:1"]
        if where == "flag":
            argv += ["--token", " "]
        else:
            monkeypatch.setenv("OLLAMA_ORCHESTRA_PROXY_TOKEN", "  ")
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "blank" in err
        assert ("--token" if where == "flag" else "OLLAMA_ORCHESTRA_PROXY_TOKEN") in err

    def test_bad_limits_are_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad limit flag is a one-line config error."""
        code = main(["proxy", "--max-connections", "0", "--server", "a=http://127.0.0.1:1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "max_connections" in err
