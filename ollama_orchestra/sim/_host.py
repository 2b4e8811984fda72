"""One simulated Ollama host, as an ASGI app: what serves which path.

The host is built in layers, one concern per module:

- ``_scheduler``: runners, slots, loading, eviction, keep-alive, and the test controls;
- ``_decode``: prompt evaluation and decode timing, event-driven (no polling tick);
- ``_routes``: Ollama's native API (``/api/*``), its checks and answers;
- ``_admin``: the simulator's ``/_sim/*`` API; ``_words``: the generated text;
- ``_asgi``: the responses' plumbing; Ollama's ``/v1`` routes are the library's OpenAI
  middleware (``.._openai``) in front of the native handlers.

Every real wait is the simulated time times ``time_scale``; every reported duration is in
simulated time.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from .._openai import openai_app
from .._serving import ClientGone
from ._admin import admin
from ._asgi import (
    HTTPError,
    Receive,
    Scope,
    Send,
    send_json,
    send_text,
    status_message,
    wait_disconnect,
)
from ._records import RequestRecord, SimState, SimulatedReset
from ._routes import OllamaRoutes
from ._spec import Faults, HostProfile

__all__ = ["RequestRecord", "SimHost", "SimState", "SimulatedReset"]


class SimHost(OllamaRoutes):
    """A simulated Ollama host: scheduler, timing, faults, and the ASGI app serving them.

    Args:
        profile: the host's models, speed and scheduler limits.
        time_scale: real seconds per simulated second (0.01 runs 100x faster).
        seed: seeds the answers' text and the random faults.
        faults: faults to start with.
    """

    def __init__(
        self,
        profile: HostProfile,
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        faults: Optional[Faults] = None,
    ) -> None:
        super().__init__(profile, time_scale=time_scale, seed=seed, faults=faults)
        # Ollama's /v1 routes: its OpenAI middleware in front of the native handlers below.
        self._openai = openai_app(self._handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if len(self._clients) < 100_000:
            self._clients.add(scope.get("client"))
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handle(scope, receive, send)
        except asyncio.CancelledError:
            # The host stopped under this request (killed): its connection is already cut,
            # as a dead Ollama's would be. Ending quietly keeps uvicorn from logging the
            # cancellation as "Exception in ASGI application" with a traceback.
            if task is None or task not in self._stopped:
                raise
        finally:
            if task is not None:
                self._tasks.discard(task)
                self._stopped.discard(task)

    @property
    def app(self) -> SimHost:
        return self

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path.startswith("/_sim/"):
            await admin(self, method, path, receive, send)
            return
        if path.startswith("/v1/"):
            await self._openai(scope, receive, send)
            return
        faults = self.faults
        if faults.hang:
            await wait_disconnect(receive)
            return
        if path == "/" and method in ("GET", "HEAD"):
            await send_text(send, 200, "Ollama is running", head=method == "HEAD")
            return
        if faults.status is not None:
            await send_json(send, faults.status, {"error": status_message(faults.status)})
            return
        routes = {
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/generate"): self._generate_route,
            ("POST", "/api/chat"): self._chat_route,
            ("POST", "/api/embed"): self._embed_route,
            ("POST", "/api/embeddings"): self._embeddings_route,
        }
        handler = routes.get((method, path))
        if handler is None:
            if any(p == path for (_, p) in routes):
                await send_text(send, 405, "405 method not allowed")
            else:
                await send_text(send, 404, "404 page not found")
            return
        try:
            await handler(receive, send)
        except HTTPError as exc:
            await send_json(send, exc.status, {"error": exc.message})
        except ClientGone:
            return
