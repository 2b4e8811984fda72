"""What the simulator and the proxy share to serve HTTP on a socket of their own."""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Mapping, Type

from ._errors import ConfigError

__all__ = [
    "BadRequestBody",
    "ClientGone",
    "bind_socket",
    "embedded_uvicorn",
    "json_object",
    "read_body",
]


class ClientGone(Exception):
    """The client disconnected before its request body was read."""


class BadRequestBody(ValueError):
    """A request body Ollama refuses with 400; the message is Ollama's."""


async def read_body(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> bytes:
    """The whole body of an ASGI request; :class:`ClientGone` if the client left first."""
    chunks: List[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def json_object(raw: bytes) -> Dict[str, Any]:
    """A request body parsed as Ollama does: a JSON object, else :class:`BadRequestBody`."""
    if not raw.strip():
        raise BadRequestBody("missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequestBody(f"invalid JSON: {exc}") from None
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


def embedded_uvicorn(app: Any, *, graceful_shutdown_s: int) -> Any:
    """A ``uvicorn.Server`` for ``app`` that leaves signals to the embedding program.

    Several servers may share a process (a simulated fleet), and the program decides when to
    stop them (the CLI on SIGINT/SIGTERM), so uvicorn must not install its own handlers.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29
            yield

    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=graceful_shutdown_s,
        timeout_keep_alive=30,
    )
    return Server(config)
