"""An Ollama-compatible HTTP proxy in front of the fleet: a thin ASGI layer on the transport.

Any Ollama client (other languages, ``curl``, sync ``ollama.Client``) talks to the proxy as if
it were one Ollama server. Routing lives in :class:`OrchestraTransport` only: the app turns
the ASGI request into an ``httpx.Request``, hands it to the transport and streams the answer
back, chunk by chunk. The proxy adds three things of its own: ``GET /metrics`` (Prometheus
text), ``GET /status`` (the fleet state as JSON) and an optional bearer token.

A client that goes away cancels its request: the upstream answer is closed at once, so the
server's slot (in the orchestra and on the Ollama host) is freed, not held until the model
finishes a reply nobody reads.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
from typing import Any, Awaitable, Callable, MutableMapping, Optional, Union

import anyio
import anyio.abc
import anyio.lowlevel
import httpx

from ._client import Orchestra
from ._config import OrchestraConfig
from ._errors import ConfigError
from ._extras import require_asyncio, require_extra
from ._serving import ClientGone, bind_socket, embedded_uvicorn, read_body
from ._transport import OrchestraTransport

__all__ = ["proxy_app", "serve_proxy"]

log = logging.getLogger("ollama_orchestra.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


async def _send_body(send: Send, status: int, ctype: bytes, data: bytes, **extra: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode(), v) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def proxy_app(orch: Orchestra, *, token: Optional[str] = None) -> ASGIApp:
    """The proxy as an ASGI app serving Ollama's API from ``orch`` (which must be running).

    Args:
        orch: the orchestra behind the proxy.
        token: when set, every request needs ``Authorization: Bearer <token>`` (else 401).
    """
    transport = OrchestraTransport(orch)
    expected = f"Bearer {token}".encode() if token is not None else None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if expected is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await _send_body(
                    send,
                    401,
                    b"application/json; charset=utf-8",
                    b'{"error":"unauthorized: this proxy needs Authorization: Bearer <token>"}',
                    **{"www-authenticate": b"Bearer"},
                )
                return
        method, path = scope["method"], scope["path"]
        if path == "/metrics" and method == "GET":
            await _send_body(send, 200, PROMETHEUS_TYPE, orch.prometheus().encode())
            return
        if path == "/status" and method == "GET":
            data = json.dumps(orch.state().to_dict(), separators=(",", ":")).encode()
            await _send_body(send, 200, b"application/json; charset=utf-8", data)
            return
        try:
            body = await read_body(receive)
        except ClientGone:
            return
        await _forward(transport, scope, body, receive, send)

    return app


async def _forward(
    transport: OrchestraTransport, scope: Scope, body: bytes, receive: Receive, send: Send
) -> None:
    query = scope.get("query_string", b"")
    url = httpx.URL(scope["path"]).copy_with(query=query or None)
    request = httpx.Request(
        scope["method"],
        url.copy_with(scheme="http", host="orchestra"),
        headers=[(k, v) for k, v in scope["headers"] if k.lower() != b"host"],
        content=body,
    )
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            # The body was read: the next message is the client going away (or the end).
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        response: Optional[httpx.Response] = None
        try:
            response = await transport.handle_async_request(request)
            headers = [(k.lower(), v) for k, v in response.headers.raw]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            if scope["method"] == "HEAD":
                await send({"type": "http.response.body", "body": b""})
            elif response.is_stream_consumed:  # a whole answer, built in memory
                await send({"type": "http.response.body", "body": response.content})
            else:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # Neither call may suspend when chunks come fast: yield, so the watcher
                    # sees a disconnect now, not after the whole answer was produced.
                    await anyio.lowlevel.checkpoint()
                await send({"type": "http.response.body", "body": b""})
        finally:
            if response is not None:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            tg.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_proxy(
    orch_config: Union[OrchestraConfig, Orchestra],
    host: str = "127.0.0.1",
    port: int = 11435,
    token: Optional[str] = None,
    *,
    allow_non_loopback: bool = False,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the proxy until cancelled. ``await tg.start(serve_proxy, ...)`` returns its URL.

    Args:
        orch_config: the fleet; or a running :class:`Orchestra` to serve (left running).
        host: the address to bind; a non-loopback one needs ``allow_non_loopback=True``.
        port: the port; 0 picks a free one (the URL reported to ``task_status`` has it).
        token: require ``Authorization: Bearer <token>`` on every request.

    Raises:
        MissingExtra: uvicorn is not installed (``pip install 'ollama-orchestra[proxy]'``).
        AsyncioOnly: called under trio (uvicorn serves on asyncio only).
    """
    require_extra("proxy", "serve_proxy")
    require_asyncio("serve_proxy", "run it under asyncio (anyio's default backend)")
    if not _is_loopback(host) and not allow_non_loopback:
        raise ConfigError(
            "listen", host, "not a loopback address; pass allow_non_loopback=True to expose it"
        )
    if token is not None and not token.strip():
        raise ConfigError("token", "(empty)", "must not be empty")

    async with contextlib.AsyncExitStack() as stack:
        if isinstance(orch_config, Orchestra):
            orch = orch_config
        else:
            orch = await stack.enter_async_context(Orchestra(orch_config))
        sock = bind_socket(host, port, field="listen")
        bound = sock.getsockname()[1]
        server = embedded_uvicorn(proxy_app(orch, token=token), graceful_shutdown_s=2)
        stopped = anyio.Event()

        async def run() -> None:
            # Shielded: on cancellation uvicorn is asked to exit (below) and shuts down
            # cleanly, closing its connections, instead of being torn down mid-flight.
            with anyio.CancelScope(shield=True):
                try:
                    await server.serve(sockets=[sock])
                finally:
                    sock.close()
                    stopped.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                # Uvicorn flags `started` once it listens; it offers no event to wait on.
                while not server.started and not stopped.is_set():  # noqa: ASYNC110
                    await anyio.sleep(0.002)
                if stopped.is_set():
                    raise ConfigError("listen", f"{host}:{port}", "the server stopped at start")
                shown = f"[{host}]" if ":" in host else host
                task_status.started(f"http://{shown}:{bound}")
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
