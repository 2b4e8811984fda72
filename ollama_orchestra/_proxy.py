"""An Ollama-compatible HTTP proxy in front of the fleet: a thin ASGI layer on the transport.

Any Ollama client (other languages, ``curl``, sync ``ollama.Client``) talks to the proxy as if
it were one Ollama server. Routing lives in :class:`OrchestraTransport` only: the app turns
the ASGI request into an ``httpx.Request``, hands it to the transport and streams the answer
back, chunk by chunk. The proxy adds three things of its own: ``GET /metrics`` (Prometheus
text), ``GET /status`` (the fleet state as JSON) and an optional bearer token. OpenAI's
``/v1`` routes go through ``_openai``'s translation layer, in front of the same native path.

It also bounds what one client can hold (:class:`ProxyLimits`): a request body's size (413
beyond, decided from ``Content-Length`` before reading, or while reading, never holding more
than the limit), the time to send the headers and the body (a stalled connection is closed;
408 for a body), an idle kept-alive connection's life, and the number of open connections
(503 past it). Malformed or hostile JSON (deep nesting, not UTF-8, wrong field types) is a 400
in Ollama's ``{"error": ...}`` shape, refused before any server is asked.

A client that goes away cancels its request: the upstream answer is closed at once, so the
server's slot (in the orchestra and on the Ollama host) is freed, not held until the model
finishes a reply nobody reads.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple, Union

import anyio
import anyio.abc
import anyio.lowlevel
import httpx

from ._client import Orchestra
from ._config import OrchestraConfig
from ._errors import ConfigError
from ._extras import require_asyncio, require_extra
from ._openai import openai_app
from ._serving import (
    ASGIApp,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    bind_socket,
    embedded_uvicorn,
    is_loopback,
    read_body,
)
from ._transport import OrchestraTransport

__all__ = ["ProxyLimits", "proxy_app", "serve_proxy"]

log = logging.getLogger("ollama_orchestra.proxy")


PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_JSON = b"application/json; charset=utf-8"


@dataclass(frozen=True)
class ProxyLimits:
    """What one client may hold of the proxy; the defaults suit a LAN front end.

    Args:
        max_body_bytes: the largest request body (413 beyond). 8 MiB takes a long chat
            history or a few images; raise it for big multimodal requests.
        header_timeout_s: a connection must send its request headers within this time (from
            the connection, or from the first byte of a later request); else it is closed.
        body_timeout_s: the whole request body must arrive within this time (else 408).
        keep_alive_s: an idle kept-alive connection is closed after this time.
        max_connections: open connections beyond this get 503 and are closed; those already
            open carry on.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 30.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "must be an integer >= 1")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (value > 0 and math.isfinite(value))
            ):
                raise ConfigError(name, value, "must be a finite number of seconds > 0")


async def _send_error(send: Send, status: int, error: str, *, close: bool = False) -> None:
    """An Ollama-style ``{"error": ...}`` answer; ``close`` ends the connection after it
    (a body left unread must not be parsed as the next request)."""
    extra = {"connection": b"close"} if close else {}
    data = json.dumps({"error": error}, separators=(",", ":")).encode()
    await _send_body(send, status, _JSON, data, **extra)


async def _busy(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a connection past ``max_connections``."""
    if scope["type"] == "http":
        await _send_error(send, 503, "server busy: too many open connections", close=True)


def _bearer(header: bytes) -> bytes:
    """The credentials of ``Authorization: Bearer <token>``; the scheme is case-insensitive
    (RFC 7235, section 2.1). ``b""`` for any other header."""
    scheme, _, credentials = header.strip().partition(b" ")
    return credentials.strip() if scheme.lower() == b"bearer" else b""


async def _send_body(send: Send, status: int, ctype: bytes, data: bytes, **extra: bytes) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode(), v) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def proxy_app(
    orch: Orchestra, *, token: Optional[str] = None, limits: Optional[ProxyLimits] = None
) -> ASGIApp:
    """The proxy as an ASGI app serving Ollama's API from ``orch`` (which must be running).

    Args:
        orch: the orchestra behind the proxy.
        token: when set, every request needs ``Authorization: Bearer <token>`` (else 401).
        limits: the body size and body read time limits (the connection limits need the
            server: :func:`serve_proxy`).
    """
    if token is not None and not token.strip():
        raise ConfigError("token", "(blank)", "must not be blank")
    transport = OrchestraTransport(orch)
    expected = token.encode() if token is not None else None
    limits = limits or ProxyLimits()

    # The proxy's own routes; every other request goes to the transport (Ollama's API).
    local: Dict[Tuple[str, str], Callable[[], Tuple[bytes, bytes]]] = {
        ("GET", "/metrics"): lambda: (PROMETHEUS_TYPE, orch.prometheus().encode()),
        ("GET", "/status"): lambda: (
            _JSON,
            json.dumps(orch.state().to_dict(), separators=(",", ":")).encode(),
        ),
    }

    async def native(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive)
        except ClientGone:
            return
        await _forward(transport, scope, body, receive, send)

    # OpenAI's /v1 routes, translated into the native ones as Ollama does (see ``_openai``).
    openai = openai_app(native)

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
        headers = dict(scope["headers"])
        if expected is not None:
            given = _bearer(headers.get(b"authorization", b""))
            if not hmac.compare_digest(given, expected):
                await _send_body(
                    send,
                    401,
                    _JSON,
                    b'{"error":"unauthorized: this proxy needs Authorization: Bearer <token>"}',
                    **{"www-authenticate": b"Bearer"},
                )
                return
        own = local.get((scope["method"], scope["path"]))
        if own is not None:
            ctype, data = own()
            await _send_body(send, 200, ctype, data)
            return
        body = await _bounded_body(headers, receive, send, limits)
        if body is None:  # answered already (413, 408) or the client left
            return
        if scope["path"].startswith("/v1/"):
            # OpenAI's routes read the body themselves: give them the one read within limits.
            await openai(scope, _replay(body, receive), send)
            return
        await _forward(transport, scope, body, receive, send)

    return app


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` with ``body`` as its first message: a body read once, handed on."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _bounded_body(
    headers: Mapping[bytes, bytes], receive: Receive, send: Send, limits: ProxyLimits
) -> Optional[bytes]:
    """The request body within ``limits``; ``None`` when it was refused (413 or 408, then the
    connection closes) or the client went away."""
    max_body = limits.max_body_bytes
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > max_body:  # refused before reading any of it
        await _send_error(
            send, 413, f"request body too large: the limit is {max_body} bytes", close=True
        )
        return None
    try:
        return await read_body(_within(receive, limits.body_timeout_s), limit=max_body)
    except ClientGone:
        return None
    except BodyTooLarge as exc:
        await _send_error(send, 413, str(exc), close=True)
        return None
    except TimeoutError:
        error = f"request body not received within {limits.body_timeout_s:g} s"
        await _send_error(send, 408, error, close=True)
        return None


#: After the body deadline, how long (loop time) one last read may wait for what arrived in time.
_BODY_GRACE_S = 0.05


def _within(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` with a deadline ``timeout_s`` from now for all its calls (TimeoutError past it).

    The deadline is final only once what arrived before it has been read: when it falls due,
    one more ``receive()`` is given :data:`_BODY_GRACE_S` (loop time, from then), and its
    message (the rest of the body, or a chunk of it) is returned; any later call raises.
    asyncio runs the timers that fell due in a turn after that turn's poll, so bytes that
    arrive between the two (a window a pause of the server's loop widens: its process
    descheduled, a long callback) were still in the socket when the deadline's cancel reached
    ``receive()``, and a body sent in time got a 408. (Bytes the poll saw are safe: their read
    runs first, and anyio does not cancel a task whose wake-up is already due.) A cancelled
    ``receive()`` loses nothing (uvicorn keeps the bytes in its request cycle until a
    ``receive()`` returns them; read in 0.54's h11 and httptools protocols), so it can be
    called again. A client that really stalls gets its 408 one grace later; one that sent only
    part of its body in time still gets it.
    """
    deadline = anyio.current_time() + timeout_s
    expired = False

    async def bounded() -> Message:
        nonlocal expired
        if not expired and anyio.current_time() < deadline:
            with anyio.CancelScope(deadline=deadline):
                return await receive()
        if expired:
            raise TimeoutError
        expired = True
        with anyio.move_on_after(_BODY_GRACE_S):
            return await receive()
        raise TimeoutError

    return bounded


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


async def serve_proxy(
    orch_config: Union[OrchestraConfig, Orchestra],
    host: str = "127.0.0.1",
    port: int = 11435,
    token: Optional[str] = None,
    *,
    allow_non_loopback: bool = False,
    limits: Optional[ProxyLimits] = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the proxy until cancelled. ``await tg.start(serve_proxy, ...)`` returns its URL.

    Args:
        orch_config: the fleet; or a running :class:`Orchestra` to serve (left running).
        host: the address to bind; a non-loopback one needs ``allow_non_loopback=True``.
        port: the port; 0 picks a free one (the URL reported to ``task_status`` has it).
        token: require ``Authorization: Bearer <token>`` on every request.
        limits: body size, read timeouts and connection limits (:class:`ProxyLimits`).

    Raises:
        ConfigError: a non-loopback ``host`` without the flag, a blank token, a port that
            cannot be bound (all before anything starts).
        MissingExtra: uvicorn is not installed (``pip install 'ollama-orchestra[proxy]'``).
        AsyncioOnly: called under trio (uvicorn serves on asyncio only).
    """
    require_extra("proxy", "serve_proxy")
    require_asyncio("serve_proxy", "run it under asyncio (anyio's default backend)")
    if not is_loopback(host) and not allow_non_loopback:
        raise ConfigError(
            "listen", host, "not a loopback address; pass allow_non_loopback=True to expose it"
        )
    if token is not None and not token.strip():
        raise ConfigError("token", "(empty)", "must not be empty")

    limits = limits or ProxyLimits()
    # Bound first: a port in use is reported at once, before the fleet is probed.
    sock = bind_socket(host, port, field="listen")
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(sock.close)
        if isinstance(orch_config, Orchestra):
            orch = orch_config
        else:
            orch = await stack.enter_async_context(Orchestra(orch_config))
        bound = sock.getsockname()[1]
        server = embedded_uvicorn(
            proxy_app(orch, token=token, limits=limits),
            graceful_shutdown_s=2,
            keep_alive_s=limits.keep_alive_s,
            header_timeout_s=limits.header_timeout_s,
            max_connections=limits.max_connections,
            busy_app=_busy,
        )
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
