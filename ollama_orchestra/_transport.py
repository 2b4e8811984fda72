"""Drop-in use: an httpx transport that answers Ollama's HTTP API from an :class:`Orchestra`.

``ollama.AsyncClient(host="http://orchestra", transport=OrchestraTransport(orch))`` runs on
the fleet, unchanged: the official client (or any httpx code) speaks Ollama's API, and each
request goes through the orchestra's own request path (balancing, failover before the first
chunk, breakers, metrics). The proxy (``_proxy``) is a thin ASGI front end on this transport,
so both share one routing implementation.

==========================  ==================================================================
route                       answer
==========================  ==================================================================
``GET /``                   ``Ollama is running``
``GET /api/version``        the lowest version among the servers (what the fleet supports)
``GET /api/tags``, ``ps``   the union of the healthy servers' lists (by model name)
``POST /api/show``          forwarded to a healthy server that has the model
``POST /api/generate``,     balanced, with failover; NDJSON stream, or one object with
``/api/chat``               ``"stream": false`` (Ollama's shapes, the server's own objects)
``POST /api/embed``,        balanced, with failover
``/api/embeddings``
``/api/pull``, ``push``,    refused: 405 and ``{"error": ...}`` (see below)
``create``, ``copy``,
``delete``, ``blobs/*``
==========================  ==================================================================

Errors are Ollama's ``{"error": "..."}`` bodies. A body Ollama would refuse (not JSON, a field
of the wrong type, ``top_logprobs`` out of range, an option of the wrong type: see ``_wire``)
is answered 400 here, with Ollama's message, before any server is asked. An Ollama 4xx (a
model that cannot chat) passes through with its status; a model no server has is 404; no
healthy server is 503; every attempt failed is 502 (a gateway whose upstreams failed), with
the orchestra's message listing each attempt. A stream that breaks after its first chunk ends with an
``{"error": ...}`` line, as Ollama's own streams do.

Why 405 for the calls that change one host: they are valid Ollama requests that this front
end deliberately does not serve, not malformed ones. A 400 would read as "fix your request"
and could not be told apart from a 400 that Ollama itself sent; 405 (with an empty ``Allow``
header: no method is allowed on that resource here) says "not here", is never retried by
clients, and ``ollama.ResponseError.status_code`` shows it. Applying pull/delete/... to every
server of the fleet is a later feature; until then, run them against each host directly.

There is no synchronous transport for ``ollama.Client``: the orchestra's slots, breakers and
health monitor live in one event loop. A sync ``handle_request`` called on that loop's thread
would block the very loop that must serve it (a deadlock); called from another thread it
would need a ``BlockingPortal`` into the loop, which is possible but not built yet. Sync code
can use the proxy instead: ``ollama.Client(host="http://127.0.0.1:11435")``.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Tuple

import anyio
import httpx

from ._calls import merge_messages
from ._client import Orchestra
from ._config import Server
from ._errors import (
    ConfigError,
    NoCapableServer,
    NoHealthyServer,
    OllamaResponseError,
    OrchestraClosed,
    RequestFailed,
    StreamInterrupted,
)
from ._serving import BadRequestBody, parse_json
from ._stream import ResponseStream
from ._types import merge_logprobs
from ._wire import RequestRejected, check_request, late_errors

__all__ = ["OrchestraTransport"]

_JSON = b"application/json; charset=utf-8"
_NDJSON = b"application/x-ndjson"
_TEXT = b"text/plain; charset=utf-8"

_ROUTES: Dict[str, Tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/api/version": ("GET", "HEAD"),
    "/api/tags": ("GET", "HEAD"),
    "/api/ps": ("GET",),
    "/api/show": ("POST",),
    "/api/generate": ("POST",),
    "/api/chat": ("POST",),
    "/api/embed": ("POST",),
    "/api/embeddings": ("POST",),
}
_REFUSED = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete")


class _Answer(Exception):
    """Ends routing with an Ollama-shaped error answer."""

    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error
        super().__init__(error)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json(
    status: int, body: Any, *, extra: Optional[List[Tuple[bytes, bytes]]] = None
) -> httpx.Response:
    return httpx.Response(
        status, headers=[(b"content-type", _JSON), *(extra or [])], content=_dumps(body)
    )


def _text(status: int, text: str) -> httpx.Response:
    return httpx.Response(status, headers=[(b"content-type", _TEXT)], content=text.encode())


def _error_of(exc: BaseException) -> Optional[_Answer]:
    """The Ollama-style answer for an orchestra error (``None``: not one we map)."""
    if isinstance(exc, _Answer):
        return exc
    if isinstance(exc, OllamaResponseError):
        return _Answer(exc.status_code, exc.error)
    if isinstance(exc, NoCapableServer):
        return _Answer(404, f"model '{exc.model}' not found: {exc}")
    if isinstance(exc, (NoHealthyServer, OrchestraClosed)):
        return _Answer(503, str(exc))
    if isinstance(exc, (RequestFailed, StreamInterrupted)):
        return _Answer(502, str(exc))
    if isinstance(exc, ConfigError):
        return _Answer(400, "model is required" if exc.field == "model" else str(exc))
    if isinstance(exc, TimeoutError):
        return _Answer(504, "the request timed out (timeouts.total_s)")
    return None


def _version_key(version: str) -> Tuple[int, ...]:
    parts: List[int] = []
    for piece in version.split("-")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class _ObjectStream(httpx.AsyncByteStream):
    """An NDJSON body: the first object (already received), then the rest as they come."""

    def __init__(self, first: Dict[str, Any], rest: ResponseStream[Dict[str, Any]]) -> None:
        self._first: Optional[Dict[str, Any]] = first
        self._rest = rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        first, self._first = self._first, None
        if first is None:
            return
        yield _dumps(first) + b"\n"
        try:
            async for obj in self._rest:
                yield _dumps(obj) + b"\n"
        except StreamInterrupted as exc:
            # Ollama's own way to report a failure once the 200 header went out.
            yield _dumps({"error": str(exc)}) + b"\n"

    async def aclose(self) -> None:
        # Frees the server's slot at once (and closes its connection if the answer is unread).
        with anyio.CancelScope(shield=True):
            await self._rest.aclose()


class OrchestraTransport(httpx.AsyncBaseTransport):
    """An httpx transport that serves Ollama's API from an :class:`Orchestra`.

    ``ollama.AsyncClient(host="http://orchestra", transport=OrchestraTransport(orch))``: the
    host name is ignored, only the path counts. The orchestra must be running (inside its
    ``async with``); closing the transport does not stop it.

    Args:
        orch: the orchestra that serves every request.
        priority: the balancer priority of the requests it sends (higher waits less).
    """

    def __init__(self, orch: Orchestra, *, priority: int = 0) -> None:
        self.orch = orch
        self.priority = priority

    def __repr__(self) -> str:
        return f"<OrchestraTransport {self.orch!r}>"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path.rstrip("/") or "/"
        try:
            return await self._route(method, path, request)
        except Exception as exc:
            answer = _error_of(exc)
            if answer is None:
                raise
            return _json(answer.status, {"error": answer.error})

    async def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if path in _REFUSED or path.startswith("/api/blobs/"):
            return _json(
                405,
                {
                    "error": f"{path} is not supported through ollama-orchestra: it would change "
                    "one server of the fleet only; run it against each server directly"
                },
                extra=[(b"allow", b"")],
            )
        allowed = _ROUTES.get(path)
        if allowed is None:
            return _text(404, "404 page not found")
        if method not in allowed:
            return _text(405, "405 method not allowed")
        if path == "/":
            return _text(200, "Ollama is running")
        if path == "/api/version":
            return await self._version()
        if path in ("/api/tags", "/api/ps"):
            return await self._union(path)
        body = await self._body(path, request)
        if path == "/api/show":
            return await self._show(body)
        if path in ("/api/embed", "/api/embeddings"):
            async with self.orch.send(path, body, collect=True, priority=self.priority) as answer:
                objs = [obj async for obj in answer]
            return _json(200, objs[0])
        return await self._complete(path, body)

    @staticmethod
    async def _body(path: str, request: httpx.Request) -> Dict[str, Any]:
        """The body, refused up front where Ollama would refuse it (see ``_wire``): a request
        that is the client's fault never reaches a server, so it can fail nowhere else."""
        try:
            body = parse_json(await request.aread())
            check_request(path, body)
        except BadRequestBody as exc:
            raise _Answer(400, str(exc)) from exc
        except RequestRejected as exc:
            raise _Answer(exc.status, exc.message) from exc
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _Answer(400, "invalid request body: expected a JSON object")
        model = body.get("model", body.get("name"))
        if not isinstance(model, str) or not model.strip():
            raise _Answer(400, "model is required")
        body["model"] = model
        # Ollama answers these with a 500 once the model is loaded; the fault is the client's.
        late = late_errors(body) if path != "/api/show" else None
        if late is not None:
            raise _Answer(400, late)
        return body

    # -- generate and chat --------------------------------------------------------------------

    async def _complete(self, path: str, body: Dict[str, Any]) -> httpx.Response:
        if body.get("stream") is False:  # checked: a bool or null (null streams, as in Ollama)
            async with self.orch.send(path, body, collect=True, priority=self.priority) as answer:
                objs = [obj async for obj in answer]
            final = dict(objs[-1])
            if path == "/api/chat":
                final["message"] = merge_messages(objs)
            else:
                final["response"] = "".join(str(o.get("response") or "") for o in objs)
                thinking = "".join(str(o.get("thinking") or "") for o in objs)
                if thinking:
                    final["thinking"] = thinking
            logprobs = merge_logprobs(objs)  # the upstream answer was streamed: gather them
            final.pop("logprobs", None)
            if logprobs is not None:
                final["logprobs"] = logprobs
            return _json(200, final)
        stream = self.orch.send(path, body, priority=self.priority)
        try:
            first = await stream.__anext__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return httpx.Response(
            200, headers=[(b"content-type", _NDJSON)], stream=_ObjectStream(first, stream)
        )

    # -- the fleet as one server --------------------------------------------------------------

    def _healthy(self) -> List[Server]:
        snap = self.orch.state()
        return [s for s in self.orch.config.servers if snap[s.name].healthy]

    async def _version(self) -> httpx.Response:
        versions = [s.version for s in self.orch.state().servers.values() if s.version]
        if not versions:
            raise _Answer(503, "no server of the fleet has reported its version yet")
        return _json(200, {"version": min(versions, key=_version_key)})

    async def _union(self, path: str) -> httpx.Response:
        servers = self._healthy()
        answers: Dict[str, List[Any]] = {}

        async def ask(server: Server) -> None:
            try:
                status, body = await self.orch.call_host(server, "GET", path)
            except httpx.HTTPError:
                return
            if status == 200 and isinstance(body, dict) and isinstance(body.get("models"), list):
                answers[server.name] = body["models"]

        async with anyio.create_task_group() as tg:
            for server in servers:
                tg.start_soon(ask, server)
        if not answers:
            raise _Answer(503, "no healthy server answered " + path)
        seen: Dict[str, Any] = {}
        for server in servers:  # config order: the first server's entry wins
            for model in answers.get(server.name, []):
                name = model.get("name") or model.get("model") if isinstance(model, dict) else None
                if isinstance(name, str) and name not in seen:
                    seen[name] = model
        return _json(200, {"models": list(seen.values())})

    async def _show(self, body: Mapping[str, Any]) -> httpx.Response:
        model, _ = self.orch.config.resolve_model(str(body["model"]))
        snap = self.orch.state()
        # The balancer's definition of eligible (health, breakers, affinity), least busy first.
        candidates = sorted(
            (st.server for st in self.orch.balancer.eligible(model)),
            key=lambda s: snap[s.name].in_flight / max(1, snap[s.name].slots),
        )
        if not candidates:
            raise NoCapableServer(model, {n: s.models for n, s in snap.servers.items()})
        failures: List[str] = []
        for server in candidates:
            try:
                status, answer = await self.orch.call_host(
                    server, "POST", "/api/show", dict(body, model=model)
                )
            except httpx.HTTPError as exc:
                failures.append(f"{server.name}: {exc or type(exc).__name__}")
                continue
            if status == 200:
                return _json(200, answer)
            error = answer.get("error") if isinstance(answer, dict) else None
            if 400 <= status < 500 and status != 404:
                return _json(status, {"error": str(error or answer)})
            failures.append(f"{server.name}: {status} {error or answer}")
        raise _Answer(
            404 if all(" 404 " in f" {f} " for f in failures) else 502,
            f"show {model!r} failed on every server: " + "; ".join(failures),
        )
