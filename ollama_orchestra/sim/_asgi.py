"""The few ASGI pieces the simulated host answers with: JSON, text and NDJSON responses,
and running work until the client disconnects.

Request bodies are read and parsed with the shared ``.._serving`` helpers (``read_body``,
``parse_json``, ``ClientGone``), as the proxy does.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator, Awaitable, Callable, List, TypeVar

import anyio

from .._serving import ClientGone, Receive, Scope, Send

__all__ = [
    "HTTPError",
    "Receive",
    "Scope",
    "Send",
    "dumps",
    "send_json",
    "send_text",
    "status_message",
    "stream_ndjson",
    "until_disconnect",
    "wait_disconnect",
]

_T = TypeVar("_T")


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))  # compact, as Ollama's Go encoder writes


class HTTPError(Exception):
    """An error answer: its status and Ollama's message (``{"error": message}``)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def status_message(status: int) -> str:
    if status == 503:
        return "server busy, please try again.  maximum pending requests exceeded"
    if status >= 500:
        return "llama runner process has terminated: exit status 2"
    return "simulated error"


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work``, cancelling it when the client goes away (so its slot frees at once).

    ``work`` runs as a child task and its errors are caught there, so a 404 or 503 comes
    out as itself rather than wrapped in the task group's exception group (which would
    turn it into a 500 with no body).
    """
    results: List[_T] = []
    errors: List[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_disconnect(receive)
            tg.cancel_scope.cancel()

        async def run() -> None:
            try:
                results.append(await work())
            except Exception as exc:
                errors.append(exc)
            finally:
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    if errors:
        raise errors[0]
    if not results:
        raise ClientGone
    return results[0]


async def send_json(send: Send, status: int, body: Any) -> None:
    data = dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def send_text(send: Send, status: int, text: str, *, head: bool = False) -> None:
    data = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else data})


async def stream_ndjson(send: Send, receive: Receive, lines: AsyncGenerator[bytes, None]) -> None:
    """Stream NDJSON; headers go out with the first line, as Ollama's handler does.

    Errors before the first line become a proper status; after it, the stream just ends
    (or carries an ``{"error": ...}`` line). A client that goes away cancels the stream;
    ``lines`` is closed before this returns.
    """
    started = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_disconnect(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            async for line in lines:
                if not started:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-type", b"application/x-ndjson")],
                        }
                    )
                    started = True
                await send({"type": "http.response.body", "body": line, "more_body": True})
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except HTTPError as exc:
            if started:
                data = dumps({"error": exc.message}).encode() + b"\n"
                await send({"type": "http.response.body", "body": data, "more_body": False})
            else:
                await send_json(send, exc.status, {"error": exc.message})
        finally:
            tg.cancel_scope.cancel()
            # Closed now (its generation gives its slot back), not when a GC pass finds it.
            with anyio.CancelScope(shield=True):
                await lines.aclose()
