"""Ollama's OpenAI-compatible API (``/v1``), as a translation layer in front of its native API.

Followed: ollama/ollama v0.33.0-rc2 (commit ``fb30760``): ``openai/openai.go`` (the request
and response types, ``FromChatRequest``, ``FromCompleteRequest``, ``ToChatCompletion``,
``ToStreamChunks``, ``FinishChunk``, ``ToCompletion``, ``ToCompleteChunk``,
``ToEmbeddingList``, ``ToListCompletion``, ``ToModel``, ``NewError``),
``middleware/openai.go`` (``ChatWriter``, ``CompleteWriter``, ``EmbedWriter``, ``ListWriter``,
``RetrieveWriter`` and the ``*Middleware`` functions), ``server/routes.go`` (which native
handler serves each route) and ``docs/api/openai-compatibility.mdx``.

Ollama serves ``/v1`` with a middleware in front of its native handlers: the OpenAI request
is translated into a native one (``/v1/chat/completions`` → ``/api/chat``,
``/v1/completions`` → ``/api/generate``, ``/v1/embeddings`` → ``/api/embed``,
``/v1/models`` → ``/api/tags``, ``/v1/models/{model}`` → ``/api/show``) and the native
answer, as it streams out, is rewritten into OpenAI's shapes. :func:`openai_app` is that
middleware as ASGI, and both servers here use it unchanged:

- the simulator puts it in front of its own native handlers, so a simulated host answers
  ``/v1`` exactly as its native API dictates (scheduler, faults and timing included);
- the proxy puts it in front of its native path (``OrchestraTransport``), so an OpenAI
  request takes the orchestra's request path: a slot on the best server for its ``model``,
  failover to another server before the first chunk, breakers, metrics.

Why the proxy translates instead of forwarding ``/v1`` to a host as is: the orchestra's
request path speaks the native API (it reads NDJSON objects to detect a stream's first
chunk, its end and in-band errors, and takes token counts and load times from the final
object for routing); forwarding SSE would need a second parser and stream-state machine,
and would lose those signals. Translating with the very code a simulated host uses makes
the shapes through the proxy those of a host by construction; and since the translation
is Ollama's own, a real Ollama host receives the same native request its middleware would
have built.

Request fields honoured (as Ollama v0.33.0-rc2): chat: ``model``, ``messages`` (string
content, content parts ``text``/``image_url`` (base64 data URLs)/``input_audio``,
``tool_calls``, ``tool_call_id``, ``name``, ``reasoning``), ``stream``,
``stream_options.include_usage``, ``max_tokens`` (→ ``num_predict``), ``temperature``
(default 1.0), ``top_p`` (default 1.0), ``seed``, ``stop``, ``frequency_penalty``,
``presence_penalty``, ``response_format`` (``json_object`` → ``"json"``, ``json_schema`` →
its schema), ``tools``, ``reasoning_effort``/``reasoning.effort`` (→ ``think``),
``logprobs``/``top_logprobs``; completions: ``model``, ``prompt`` (a string only),
``suffix``, ``stream``, ``stream_options``, ``max_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop``, penalties, ``logprobs``; embeddings: ``model``, ``input`` (string or
list), ``dimensions``, ``encoding_format`` (``float``/``base64``). Ignored, as Ollama ignores
them: ``max_completion_tokens``, ``n``, ``tool_choice``, ``logit_bias``, ``user``,
``best_of``, ``echo`` and any other field.

Answers: ids ``chatcmpl-NNN`` / ``cmpl-NNN`` (NNN < 999), ``system_fingerprint:
"fp_ollama"``, ``usage`` always in whole answers and, in streams, only with
``include_usage`` (a last chunk with ``"choices": []``); streams are server-sent events
``data: {...}\\n\\n`` ending with ``data: [DONE]\\n\\n``. Chat streams open with the role in
the first delta and close with a finish chunk whose delta is ``{}``. Errors are
``{"error": {"message", "type", "param": null, "code": null}}`` with the native status (404
``not_found_error`` for a missing model, 400 ``invalid_request_error``, else ``api_error``).

One deliberate difference: when a native stream fails after its first chunk (an
``{"error": ...}`` line), Ollama's writer turns the line into an empty chunk and the stream
ends without ``[DONE]``; here the line becomes ``data: {"error": {...}}``, the event the
``openai`` SDK raises as ``APIError``, so a cut answer is never taken for a whole one.

Layout: this module is the middleware (routing, the native sub-request, :class:`_Writer`);
:mod:`._openai_requests` translates requests, :mod:`._openai_answers` whole answers and
streams. The translation functions are re-exported here.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._openai_answers import (
    ChatStream,
    CompletionStream,
    chat_completion,
    completion,
    dumps,
    embedding_list,
    error_object,
    event,
    model_list,
    model_object,
    owned_by,
    unix_time,
)
from ._openai_requests import (
    OpenAIError,
    chat_request,
    completion_request,
    embed_request,
    include_usage,
)
from ._serving import (
    ASGIApp,
    BadRequestBody,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    json_object,
    read_body,
)

__all__ = [
    "OpenAIError",
    "chat_completion",
    "chat_request",
    "completion",
    "completion_request",
    "embed_request",
    "embedding_list",
    "error_object",
    "model_list",
    "model_object",
    "openai_app",
    "owned_by",
    "unix_time",
]


_JSON = b"application/json; charset=utf-8"
_SSE = b"text/event-stream"
_ROUTES: Dict[str, Tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "completion"),
    "/v1/embeddings": ("POST", "embedding"),
    "/v1/models": ("GET", "list"),
}
_MODELS = "/v1/models/"


# -- the middleware ------------------------------------------------------------------------------


def _native_error(status: int, raw: bytes) -> str:
    """The message of a native error body (``{"error": ...}``), else the body itself."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = raw.decode("utf-8", "replace").strip()
    return text or f"HTTP {status}"


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = dumps(body)
    headers = [(b"content-type", _JSON), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _send_text(send: Send, status: int, text: str) -> None:
    data = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _Writer:
    """The ``send`` given to the native handler: rewrites its answer into OpenAI's shapes.

    Errors (any status but 200) and whole answers are collected, then converted; a stream's
    NDJSON lines are converted as they come, so its first event leaves with its first line.
    """

    def __init__(
        self,
        send: Send,
        *,
        whole: Callable[[Dict[str, Any]], Dict[str, Any]],
        stream: Optional[Union[ChatStream, CompletionStream]] = None,
    ) -> None:
        self.send = send
        self.whole = whole
        self.stream = stream
        self.status = 0
        self.buffer = b""
        self.broken = False

    def _streaming(self) -> bool:
        return self.status == 200 and self.stream is not None

    def _lines(self, data: bytes, final: bool) -> bytes:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        if final:
            complete.append(self.buffer)
            self.buffer = b""
        out: List[bytes] = []
        for line in complete:
            if self.broken or not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"error": line.decode("utf-8", "replace")}
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                out.append(event(error_object(500, str(obj["error"]))))
                self.broken = True
                continue
            assert self.stream is not None
            out.append(self.stream.feed(obj))
        return b"".join(out)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            if self._streaming():
                headers = [(b"content-type", _SSE), (b"cache-control", b"no-cache")]
                await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            return
        if message["type"] != "http.response.body":
            return
        more = bool(message.get("more_body", False))
        data = message.get("body", b"")
        if self._streaming():
            out = self._lines(data, final=not more)
            if out or not more:
                await self.send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.buffer += data
        if more:
            return
        raw, self.buffer = self.buffer, b""
        if self.status != 200:
            message_text = _native_error(self.status, raw)
            await _send_json(self.send, self.status, error_object(self.status, message_text))
            return
        try:
            answer = json.loads(raw.splitlines()[-1] if raw.strip() else b"")
        except (ValueError, IndexError):
            answer = None
        if not isinstance(answer, dict):
            await _send_json(self.send, 500, error_object(500, "invalid answer from the server"))
            return
        await _send_json(self.send, 200, self.whole(answer))


def _new_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"  # rand.Intn(999), as Ollama does


def openai_app(native: ASGIApp) -> ASGIApp:
    """Serve Ollama's ``/v1`` routes in front of ``native``, an ASGI app of the native API.

    Call it for paths under ``/v1/`` only; everything else is the native app's.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        route = _ROUTES.get(path)
        name = ""
        if route is None and path.startswith(_MODELS) and "/" not in path[len(_MODELS) :]:
            name = path[len(_MODELS) :]
            route = ("GET", "retrieve") if name else None
        if route is None:
            await _send_text(send, 404, "404 page not found")
            return
        if method != route[0]:
            await _send_text(send, 405, "405 method not allowed")
            return
        try:
            raw = await read_body(receive)
        except ClientGone:
            return
        kind = route[1]
        writer: _Writer
        try:
            if kind in ("chat", "completion", "embedding"):
                try:
                    body = json_object(raw)
                except BadRequestBody as exc:
                    raise OpenAIError(400, str(exc)) from None
            if kind == "chat":
                native_path, native_body = "/api/chat", chat_request(body)
                id_ = _new_id("chatcmpl")
                stream = ChatStream(id_, include_usage(body)) if native_body["stream"] else None
                writer = _Writer(send, whole=lambda a: chat_completion(id_, a), stream=stream)
            elif kind == "completion":
                native_path, native_body = "/api/generate", completion_request(body)
                cid = _new_id("cmpl")
                cstream = (
                    CompletionStream(cid, include_usage(body)) if native_body["stream"] else None
                )
                writer = _Writer(send, whole=lambda a: completion(cid, a), stream=cstream)
            elif kind == "embedding":
                native_body, encoding = embed_request(body)
                native_path, model = "/api/embed", str(native_body["model"])
                writer = _Writer(send, whole=lambda a: embedding_list(model, a, encoding))
            elif kind == "list":
                native_path, native_body = "/api/tags", {}
                writer = _Writer(send, whole=model_list)
            else:
                native_path, native_body = "/api/show", {"model": name}
                writer = _Writer(send, whole=lambda a: model_object(name, a))
        except OpenAIError as exc:
            await _send_json(send, exc.status, error_object(exc.status, exc.message))
            return
        get = kind == "list"
        data = b"" if get else dumps(native_body)
        headers = [
            (k, v)
            for k, v in scope.get("headers", [])
            if k.lower() not in (b"content-length", b"content-type", b"transfer-encoding")
        ]
        if not get:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ]
        inner = dict(scope)
        inner.update(
            method="GET" if get else "POST",
            path=native_path,
            raw_path=native_path.encode(),
            query_string=b"",
            headers=headers,
        )
        pending = [{"type": "http.request", "body": data, "more_body": False}]

        async def inner_receive() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        await native(inner, inner_receive, writer)

    return app
