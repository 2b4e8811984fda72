"""The proxy's server timers (keep-alive, request headers) never drop a request that arrived in
time, checked with raw sockets on 127.0.0.1 and the event loop's clock moved forward."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, AsyncIterator, Callable, Tuple

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from anyio.abc import SocketAttribute

from ollama_orchestra._serving import Receive, Scope, Send, bind_socket, embedded_uvicorn

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
LONG_S = 30.0  # no timer falls due on its own during a test


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Tuple[Any, int]]:
    """The guarded server (long keep-alive and header timeouts) on 127.0.0.1: (server, port)."""
    sock = bind_socket("127.0.0.1", 0, field="listen")  # listening: connections queue at once
    server = embedded_uvicorn(
        hello, graceful_shutdown_s=1, keep_alive_s=LONG_S, header_timeout_s=LONG_S
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        yield server, sock.getsockname()[1]
        server.should_exit = True


async def answer(stream: anyio.abc.SocketStream) -> bytes:
    """One whole response (this app's are 5-byte bodies); what came before a close or reset."""
    data = b""
    while not data.endswith(b"hello"):
        try:
            data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return data
    return data


def send_then_jump_clock(
    monkeypatch: pytest.MonkeyPatch, when: float, stream: anyio.abc.SocketStream, data: bytes
) -> None:
    """Send ``data`` from a callback due just before a server timer due at ``when``, then move
    the loop's clock past both: the loop runs them in one turn, with no poll between the
    send and the timer (as after a pause of the server's process)."""
    loop = asyncio.get_running_loop()
    fd = stream.extra(SocketAttribute.raw_socket).fileno()

    def send() -> None:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as raw:  # a second handle
            raw.sendall(data)

    loop.call_at(when - 0.001, send)
    real: Callable[[], float] = loop.time
    monkeypatch.setattr(loop, "time", lambda: real() + LONG_S + 1)


class TestTimersAndArrivedRequests:
    async def test_the_keep_alive_timer_does_not_drop_a_request_already_received(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A kept-alive connection's next request, in the server's buffer when the keep-alive
        timer runs, is answered (it was reset, unanswered)."""
        async with serving() as (server, port), await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(REQUEST)
            assert (await answer(s)).startswith(b"HTTP/1.1 200")
            (protocol,) = server.server_state.connections
            timer = protocol.timeout_keep_alive_task
            send_then_jump_clock(monkeypatch, timer.when(), s, REQUEST)
            second = await answer(s)
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"hello")

    async def test_the_header_timer_does_not_drop_headers_already_received(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The rest of a request's headers, in the server's buffer when the header timer runs,
        is read and the request answered (the connection was reset, unanswered)."""
        async with serving() as (server, port), await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(REQUEST)
            assert (await answer(s)).startswith(b"HTTP/1.1 200")
            (protocol,) = server.server_state.connections
            await s.send(REQUEST[:5])  # the next request starts: its header timer is armed
            with anyio.fail_after(5):
                while protocol._header_timer is None:  # the server reads them on its next turn
                    await anyio.lowlevel.checkpoint()
            send_then_jump_clock(monkeypatch, protocol._header_timer.when(), s, REQUEST[5:])
            second = await answer(s)
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"hello")
