"""What the simulator and the proxy share to serve HTTP on a socket of their own."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import selectors
import socket
from itertools import accumulate
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Type,
)

from ._errors import ConfigError

__all__ = [
    "ASGIApp",
    "BadRequestBody",
    "BodyTooLarge",
    "ClientGone",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "bind_socket",
    "embedded_uvicorn",
    "is_loopback",
    "json_object",
    "parse_json",
    "read_body",
]


# ASGI's callables, as the proxy, the OpenAI layer and the simulator use them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """``host`` (a name or an IP address) is ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BadRequestBody(ValueError):
    """A request body Ollama refuses with 400; the message is Ollama's."""


class BodyTooLarge(Exception):
    """The request body is larger than the limit (its bytes were not all read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit} bytes")
        self.limit = limit


async def read_body(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], *, limit: Optional[int] = None
) -> bytes:
    """The whole body of an ASGI request; :class:`ClientGone` if the client left first.

    With ``limit``, :class:`BodyTooLarge` as soon as more than ``limit`` bytes arrived: what
    is held never exceeds the limit plus one received chunk (the server's read buffer).
    """
    chunks: List[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _no_constant(name: str) -> Any:
    # Python reads NaN and Infinity; JSON (and Go's decoder) has no such values.
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e999: Go's float64 cannot hold it either
        raise ValueError(f"number {text} out of range")
    return value


#: Deepest nesting a request body may have. Checked before parsing: Python's parser recurses,
#: and in a process whose recursion limit was raised, a deep enough body overflows the C stack
#: and aborts the interpreter instead of raising RecursionError (seen on Python 3.8).
MAX_JSON_DEPTH = 512
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _too_deep(raw: bytes) -> bool:
    """``raw`` nests deeper than :data:`MAX_JSON_DEPTH` (brackets inside strings not counted)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_JSON_DEPTH


def parse_json(raw: bytes) -> Any:
    """A request body parsed as JSON (any value); :class:`BadRequestBody` with the reason.

    Hostile input is a 400 like any other bad JSON: nesting deeper than
    :data:`MAX_JSON_DEPTH` (Go's decoder stops at 10,000 levels, ``exceeded max depth``; ours
    is checked before parsing, whatever the recursion limit), bytes that are not
    UTF-8, and what Python reads but JSON has not (``NaN``, ``Infinity``, ``1e999``).
    """
    if not raw.strip():
        raise BadRequestBody("missing request body")
    if _too_deep(raw):
        raise BadRequestBody("invalid JSON: exceeded max depth")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequestBody("invalid JSON: exceeded max depth") from None
    except UnicodeDecodeError:
        raise BadRequestBody("invalid JSON: the body is not UTF-8") from None
    except ValueError as exc:
        raise BadRequestBody(f"invalid JSON: {exc}") from None


def json_object(raw: bytes) -> Dict[str, Any]:
    """A request body parsed as Ollama does: a JSON object, else :class:`BadRequestBody`."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequestBody("invalid request body: expected a JSON object")
    return body


def bind_socket(
    host: str, port: int, *, field: str, error: Type[ConfigError] = ConfigError
) -> socket.socket:
    """A listening, non-blocking TCP socket; a failure to bind raises ``error`` naming ``field``.

    ``IPPROTO_TCP`` is given explicitly: asyncio sets ``TCP_NODELAY`` only on sockets whose
    protocol says TCP, and without it Nagle's algorithm adds ~40 ms to every request on a
    kept-alive connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise error(field, f"{host}:{port}", f"cannot bind: {exc.strerror or exc}") from exc
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _unread_bytes(transport: Any) -> bool:
    """Bytes (or the peer's close) wait in ``transport``'s socket, not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return False
    with selectors.DefaultSelector() as selector:  # any descriptor number (select() has a cap)
        selector.register(sock.fileno(), selectors.EVENT_READ)
        return bool(selector.select(0))


def _guarded_h11(header_timeout_s: float, max_connections: Optional[int], busy_app: Any) -> Any:
    """Uvicorn's h11 protocol, plus what uvicorn does not bound itself.

    Checked with raw sockets (``tests/test_proxy_limits.py``): uvicorn (0.27 to 0.54) arms
    no timer while it waits for a request's headers, so a client that sends half a header
    and stops holds its connection forever; its keep-alive timer only runs between complete
    requests, and any byte cancels it. Here a connection whose request headers are not
    complete ``header_timeout_s`` after the connection (or after the first byte of a later
    request) is closed. And past ``max_connections`` open connections, a new connection's
    requests are answered by ``busy_app`` (a 503) and it is closed, while the connections
    already open carry on (uvicorn's own ``limit_concurrency`` would refuse their requests
    too, and with a plain-text body).

    Neither timer closes a connection whose next bytes have already arrived, unread: it is
    re-armed instead, and the read (due on the loop's next turn) cancels it. asyncio runs the
    timers that fell due since its last poll before it polls again, so after a pause of the
    server's loop (its process descheduled or stopped), uvicorn's keep-alive timer closed
    connections with a whole request in their buffer; the kernel then resets them, and the
    client loses a request it sent in time, unanswered (``ECONNRESET``, seen in
    ``benchmarks/bench_soak.py``). The check also narrows the race with a client that reuses
    a connection just as its keep-alive time ends, to the instant between check and close.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        _header_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                self.app = busy_app
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before and not self._waiting_for_headers():
                self._cancel_header_timer()  # a new request's headers are complete
            elif self._waiting_for_headers():
                self._arm_header_timer()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(
                    header_timeout_s, self._header_timeout, self.cycle
                )

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self, cycle: Any) -> None:
            self._header_timer = None
            waiting = self.cycle is cycle and self._waiting_for_headers()
            if not waiting or self.transport.is_closing():
                return
            if _unread_bytes(self.transport):  # arrived in time: read them first
                self._arm_header_timer()
            else:
                self.transport.close()

        def timeout_keep_alive_handler(self) -> None:
            if _unread_bytes(self.transport):  # the next request is here: it cancels this
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler
                )
            else:
                super().timeout_keep_alive_handler()

    return GuardedH11


def embedded_uvicorn(
    app: Any,
    *,
    graceful_shutdown_s: int,
    keep_alive_s: float = 30,
    header_timeout_s: Optional[float] = None,
    max_connections: Optional[int] = None,
    busy_app: Any = None,
) -> Any:
    """A ``uvicorn.Server`` for ``app`` that leaves signals to the embedding program.

    Several servers may share a process (a simulated fleet), and the program decides when to
    stop them (the CLI on SIGINT/SIGTERM), so uvicorn must not install its own handlers.
    With ``header_timeout_s``, connections are guarded as :func:`_guarded_h11` says (h11 is
    then used even where httptools is installed, so the same limits hold everywhere).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
            yield

        # Uvicorn checks ``should_exit`` once per 0.1 s tick of its main loop; setting it here
        # also wakes that loop, so a stop takes effect at once instead of up to a tick later
        # (a simulated fleet stops and restarts hosts many times). Ticks still run every 0.1 s.
        _wake: Optional[asyncio.Event] = None
        _exit = False

        @property
        def should_exit(self) -> bool:
            return self._exit

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._exit = value
            if value and self._wake is not None:
                self._wake.set()

        async def main_loop(self) -> None:
            wake = self._wake = asyncio.Event()  # made here: on Python 3.8 an Event binds its loop
            loop = asyncio.get_running_loop()
            counter = 0
            should_exit = await self.on_tick(counter)
            while not should_exit:
                counter = (counter + 1) % 864000
                # A timer, not ``asyncio.wait_for``: that would create a task every tick.
                tick = loop.call_later(0.1, wake.set)
                try:
                    await wake.wait()
                finally:
                    tick.cancel()
                wake.clear()
                should_exit = await self.on_tick(counter)

        async def shutdown(self, sockets: Optional[List[socket.socket]] = None) -> None:
            if not self.force_exit:
                await super().shutdown(sockets=sockets)
                return
            # A forced exit (a simulated host killed): uvicorn would still sleep 0.1 s to let
            # connections finish, though it then waits for none of them. Close the listeners and
            # the connections as it does (uvicorn 0.27 to 0.54), without that pause.
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
            for connection in list(self.server_state.connections):
                connection.shutdown()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(server.wait_closed() for server in self.servers)),
                    self.config.timeout_graceful_shutdown,
                )

    http: Any = "auto"
    if header_timeout_s is not None:
        http = _guarded_h11(header_timeout_s, max_connections, busy_app)
    options: Dict[str, Any] = {"timeout_keep_alive": keep_alive_s, "http": http}  # a float works
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=graceful_shutdown_s,
        **options,
    )
    return Server(config)
