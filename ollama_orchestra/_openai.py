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
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import struct
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Tuple, Union

from ._serving import BadRequestBody, ClientGone, json_object, read_body

__all__ = ["OpenAIError", "openai_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loosely typed: the simulator and the proxy spell their ASGI types differently.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_JSON = b"application/json; charset=utf-8"
_SSE = b"text/event-stream"
_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_ollama"
_ROUTES: Dict[str, Tuple[str, str]] = {
    "/v1/chat/completions": ("POST", "chat"),
    "/v1/completions": ("POST", "completion"),
    "/v1/embeddings": ("POST", "embedding"),
    "/v1/models": ("GET", "list"),
}
_MODELS = "/v1/models/"


class OpenAIError(Exception):
    """A request refused before any work, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def error_object(status: int, message: str) -> Dict[str, Any]:
    """OpenAI's error body, typed by status as Ollama's ``openai.NewError`` does."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- request fields ------------------------------------------------------------------------------


def _bad_type(field: str, expected: str, value: Any) -> OpenAIError:
    return OpenAIError(400, f"invalid type for '{field}': expected {expected}, got {value!r}")


def _string(body: Dict[str, Any], field: str) -> Optional[str]:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise _bad_type(field, "a string", value)
    return value


def _integer(body: Dict[str, Any], field: str) -> Optional[int]:
    value = body.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _bad_type(field, "an integer", value)
    return value


def _number(body: Dict[str, Any], field: str) -> Optional[float]:
    value = body.get(field)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise _bad_type(field, "a number", value)
    return value


def _boolean(body: Dict[str, Any], field: str) -> bool:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        raise _bad_type(field, "a boolean", value)
    return bool(value)


def _object(body: Dict[str, Any], field: str) -> Optional[Dict[str, Any]]:
    value = body.get(field)
    if value is not None and not isinstance(value, dict):
        raise _bad_type(field, "an object", value)
    return value


def _include_usage(body: Dict[str, Any]) -> bool:
    options = _object(body, "stream_options")
    return options is not None and _boolean(options, "include_usage")


def _stop(body: Dict[str, Any], *, strict: bool) -> Optional[List[str]]:
    """``stop`` as a list; chat drops non-strings from a list, completions refuse them."""
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        kept: List[str] = []
        for s in stop:
            if isinstance(s, str):
                kept.append(s)
            elif strict:
                raise _bad_type("stop", "a string or a list of strings", s)
        return kept
    return None


def _think(body: Dict[str, Any]) -> Any:
    reasoning = _object(body, "reasoning")
    effort = (
        _string(reasoning, "effort") if reasoning is not None else _string(body, "reasoning_effort")
    )
    if not effort:
        return None
    mapped = {
        "none": False,
        "minimal": "low",
        "low": "low",
        "medium": "medium",
        "high": "high",
        "max": "max",
        "xhigh": "max",
        "ultra": "max",
    }
    if effort not in mapped:
        raise OpenAIError(
            400,
            f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
            '"xhigh", "ultra", "max", or "none")',
        )
    return mapped[effort]


def _sampling(body: Dict[str, Any], options: Dict[str, Any], *, completions: bool) -> None:
    """The options both requests share. Their Go types differ: completions' penalties and
    ``top_p`` are plain numbers (absent = 0: penalties sent as 0, ``top_p`` 0 means 1.0), chat's
    are pointers (absent = not sent; ``top_p`` absent means 1.0)."""
    max_tokens = _integer(body, "max_tokens")
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    temperature = _number(body, "temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    seed = _integer(body, "seed")
    if seed is not None:
        options["seed"] = seed
    for name in ("frequency_penalty", "presence_penalty"):
        value = _number(body, name)
        if completions:
            options[name] = 0.0 if value is None else value
        elif value is not None:
            options[name] = value
    top_p = _number(body, "top_p")
    if completions:
        options["top_p"] = top_p if top_p else 1.0
    else:
        options["top_p"] = 1.0 if top_p is None else top_p


_IMAGE_PREFIXES = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))


def _image(url: str) -> str:
    if url.startswith(("http://", "https://")):
        raise OpenAIError(
            400, "image URLs are not currently supported, please use base64 encoded data instead"
        )
    if url.startswith("data:;base64,"):
        data = url[len("data:;base64,") :]
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise OpenAIError(400, "invalid image input")
        data = url[len(prefix) :]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise OpenAIError(400, "invalid image input") from None
    return base64.b64encode(raw).decode()


def _native_tool_calls(calls: Any) -> List[Dict[str, Any]]:
    if not isinstance(calls, list):
        raise _bad_type("tool_calls", "a list", calls)
    out: List[Dict[str, Any]] = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise OpenAIError(400, "invalid tool call arguments")
        try:
            arguments = json.loads(fn.get("arguments") or "")
        except (TypeError, ValueError):
            raise OpenAIError(400, "invalid tool call arguments") from None
        native: Dict[str, Any] = {
            "function": {"name": str(fn.get("name") or ""), "arguments": arguments}
        }
        if call.get("id"):
            native["id"] = call["id"]
        out.append(native)
    return out


def _native_message(role: str, content: str, **extra: Any) -> Dict[str, Any]:
    msg: Dict[str, Any] = {"role": role, "content": content}
    msg.update((k, v) for k, v in extra.items() if v)
    return msg


def _native_messages(messages: List[Any]) -> List[Dict[str, Any]]:
    """``FromChatRequest``'s message conversion."""
    out: List[Dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad_type(f"messages[{i}]", "an object", msg)
        role = _string(msg, "role") or ""
        reasoning = _string(msg, "reasoning") or ""
        call_id = _string(msg, "tool_call_id") or ""
        tool_name = ""
        if role.lower() == "tool":
            tool_name = _string(msg, "name") or ""
            if not tool_name and call_id:
                tool_name = _tool_name(messages, call_id)
        content = msg.get("content")
        calls = msg.get("tool_calls")
        if isinstance(content, str):
            tool_calls = _native_tool_calls(calls) if calls is not None else []
            out.append(
                _native_message(
                    role,
                    content,
                    thinking=reasoning,
                    tool_calls=tool_calls,
                    tool_name=tool_name,
                    tool_call_id=call_id,
                )
            )
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise OpenAIError(400, "invalid message format")
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise OpenAIError(400, "invalid message format")
                    out.append(_native_message(role, text))
                elif kind == "image_url":
                    url = part.get("image_url")
                    if isinstance(url, dict):
                        url = url.get("url")
                    if not isinstance(url, str):
                        raise OpenAIError(400, "invalid message format")
                    out.append(_native_message(role, "", images=[_image(url)]))
                elif kind == "input_audio":
                    audio = part.get("input_audio")
                    data = audio.get("data") if isinstance(audio, dict) else None
                    if not isinstance(data, str):
                        raise OpenAIError(400, "invalid input_audio format: missing data")
                    try:
                        raw = base64.b64decode(data, validate=True)
                    except (binascii.Error, ValueError):
                        raise OpenAIError(400, "invalid input_audio base64 data") from None
                    out.append(_native_message(role, "", images=[base64.b64encode(raw).decode()]))
                else:
                    raise OpenAIError(400, "invalid message format")
            if out and calls:
                out[-1].update(
                    (k, v)
                    for k, v in {
                        "tool_calls": _native_tool_calls(calls),
                        "tool_name": tool_name,
                        "tool_call_id": call_id,
                        "thinking": reasoning,
                    }.items()
                    if v
                )
        else:
            if calls is None:
                kind_name = "null" if content is None else type(content).__name__
                raise OpenAIError(400, f"invalid message content type: {kind_name}")
            out.append(
                _native_message(
                    role,
                    "",
                    thinking=reasoning,
                    tool_calls=_native_tool_calls(calls),
                    tool_call_id=call_id,
                )
            )
    return out


def _tool_name(messages: List[Any], call_id: str) -> str:
    for msg in reversed(messages):  # the last one wins, as in Ollama
        for call in msg.get("tool_calls") or [] if isinstance(msg, dict) else []:
            if isinstance(call, dict) and call.get("id") == call_id:
                fn = call.get("function")
                return str(fn.get("name") or "") if isinstance(fn, dict) else ""
    return ""


def _model(body: Dict[str, Any]) -> str:
    return _string(body, "model") or ""


def chat_request(body: Dict[str, Any]) -> Dict[str, Any]:
    """The native ``/api/chat`` body for an OpenAI chat request (``ChatMiddleware``)."""
    model = _model(body)
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _bad_type("messages", "a list", messages)
    if not messages:
        raise OpenAIError(400, "[] is too short - 'messages'")
    stream = _boolean(body, "stream")
    _include_usage(body)
    native: Dict[str, Any] = {"model": model, "messages": _native_messages(messages)}
    options: Dict[str, Any] = {}
    stop = _stop(body, strict=False)
    if stop is not None:
        options["stop"] = stop
    _sampling(body, options, completions=False)
    native["options"] = options
    native["stream"] = stream
    fmt = _object(body, "response_format")
    if fmt is not None:
        kind = str(fmt.get("type") or "").strip().lower()
        schema = fmt.get("json_schema")
        if kind == "json_object":
            native["format"] = "json"
        elif kind == "json_schema" and isinstance(schema, dict) and "schema" in schema:
            native["format"] = schema["schema"]
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad_type("tools", "a list", tools)
        native["tools"] = tools
    think = _think(body)
    if think is not None:
        native["think"] = think
    if _boolean(body, "logprobs"):
        native["logprobs"] = True
    top_logprobs = _integer(body, "top_logprobs")
    if top_logprobs:
        native["top_logprobs"] = top_logprobs
    return native


def completion_request(body: Dict[str, Any]) -> Dict[str, Any]:
    """The native ``/api/generate`` body for an OpenAI completion (``CompletionsMiddleware``)."""
    model = _model(body)
    prompt = _string(body, "prompt") or ""
    suffix = _string(body, "suffix") or ""
    stream = _boolean(body, "stream")
    _include_usage(body)
    options: Dict[str, Any] = {}
    stop = _stop(body, strict=True)
    if stop is not None:
        options["stop"] = stop
    _sampling(body, options, completions=True)
    native: Dict[str, Any] = {"model": model, "prompt": prompt, "options": options}
    native["stream"] = stream
    if suffix:
        native["suffix"] = suffix
    logprobs = _integer(body, "logprobs")
    if logprobs is not None and logprobs > 0:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    return native


def embed_request(body: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The native ``/api/embed`` body and the encoding format (``EmbeddingsMiddleware``)."""
    model = _model(body)
    encoding = _string(body, "encoding_format") or ""
    if encoding and encoding.lower() not in ("float", "base64"):
        raise OpenAIError(
            400,
            f"Invalid value for 'encoding_format' = {encoding}. "
            "Supported values: ['float', 'base64'].",
        )
    text = body.get("input")
    if text == "":
        text = [""]
    if text is None or text == []:
        raise OpenAIError(400, "invalid input")
    native: Dict[str, Any] = {"model": model, "input": text}
    dimensions = _integer(body, "dimensions")
    if dimensions:
        native["dimensions"] = dimensions
    return native, encoding


# -- answers -------------------------------------------------------------------------------------

_STAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", re.IGNORECASE
)


def unix_time(stamp: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time as Ollama writes it (ns precision, any
    offset); the current time if there is none, as Ollama stamps synthetic answers."""
    match = _STAMP.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        return int(time.time())
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    offset = match.group(7) or "Z"
    delta = timedelta(0)
    if offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        delta = sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
    moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc) - delta
    return int(moment.timestamp())


def _finish(reason: Any) -> Optional[str]:
    return str(reason) if reason else None


def _usage(obj: Dict[str, Any]) -> Dict[str, int]:
    prompt = int(obj.get("prompt_eval_count") or 0)
    completion = int(obj.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _tool_calls(calls: Any) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for call in calls if isinstance(calls, list) else []:
        fn = call.get("function") if isinstance(call, dict) else None
        fn = fn if isinstance(fn, dict) else {}
        out.append(
            {
                "id": str(call.get("id") or "") if isinstance(call, dict) else "",
                "index": int(fn.get("index") or 0),
                "type": "function",
                "function": {
                    "name": str(fn.get("name") or ""),
                    "arguments": json.dumps(fn.get("arguments"), separators=(",", ":")),
                },
            }
        )
    return out


def _logprobs(obj: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    logprobs = obj.get("logprobs")
    return {"content": logprobs} if logprobs else None


def _message_of(obj: Dict[str, Any]) -> Dict[str, Any]:
    msg = obj.get("message")
    return msg if isinstance(msg, dict) else {}


def chat_completion(id_: str, final: Dict[str, Any]) -> Dict[str, Any]:
    """``ToChatCompletion``: a whole native chat answer as a ``chat.completion``."""
    msg = _message_of(final)
    calls = _tool_calls(msg.get("tool_calls"))
    message: Dict[str, Any] = {"role": msg.get("role") or "", "content": msg.get("content") or ""}
    if msg.get("thinking"):
        message["reasoning"] = msg["thinking"]
    if calls:
        message["tool_calls"] = calls
    reason = final.get("done_reason")
    if reason == "stop" and calls:
        reason = "tool_calls"
    choice: Dict[str, Any] = {"index": 0, "message": message, "finish_reason": _finish(reason)}
    logprobs = _logprobs(final)
    if logprobs:
        choice["logprobs"] = logprobs
    return {
        "id": id_,
        "object": "chat.completion",
        "created": unix_time(final.get("created_at")),
        "model": final.get("model") or "",
        "system_fingerprint": _FINGERPRINT,
        "choices": [choice],
        "usage": _usage(final),
    }


def completion(id_: str, final: Dict[str, Any]) -> Dict[str, Any]:
    """``ToCompletion``: a whole native generate answer as a ``text_completion``."""
    return {
        "id": id_,
        "object": "text_completion",
        "created": unix_time(final.get("created_at")),
        "model": final.get("model") or "",
        "system_fingerprint": _FINGERPRINT,
        "choices": [
            {
                "text": final.get("response") or "",
                "index": 0,
                "finish_reason": _finish(final.get("done_reason")),
            }
        ],
        "usage": _usage(final),
    }


def _floats_base64(vector: List[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embedding_list(model: str, answer: Dict[str, Any], encoding: str) -> Dict[str, Any]:
    """``ToEmbeddingList``: the native ``/api/embed`` answer, ``model`` as requested."""
    vectors = answer.get("embeddings")
    if not isinstance(vectors, list):
        return {"object": "", "data": None, "model": "", "usage": _embed_usage(0)}
    b64 = encoding.lower() == "base64"
    data = [
        {"object": "embedding", "embedding": _floats_base64(v) if b64 else v, "index": i}
        for i, v in enumerate(vectors)
    ]
    tokens = int(answer.get("prompt_eval_count") or 0)
    return {"object": "list", "data": data, "model": model, "usage": _embed_usage(tokens)}


def _embed_usage(tokens: int) -> Dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def owned_by(name: str) -> str:
    """The namespace of a model name (``model.ParseName``): ``library`` unless it has one."""
    name = name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    parts = name.split("/")
    return parts[-2] if len(parts) >= 2 else "library"


def model_list(tags: Dict[str, Any]) -> Dict[str, Any]:
    """``ToListCompletion``: ``/api/tags`` as a model list (``data`` is null when empty)."""
    data: List[Dict[str, Any]] = []
    for m in tags.get("models") or []:
        if not isinstance(m, dict):
            continue
        id_ = str(m.get("model") or m.get("name") or "")
        data.append(
            {
                "id": id_,
                "object": "model",
                "created": unix_time(m.get("modified_at")),
                "owned_by": owned_by(id_),
            }
        )
    return {"object": "list", "data": data or None}


def model_object(name: str, show: Dict[str, Any]) -> Dict[str, Any]:
    """``ToModel``: ``/api/show`` as one model."""
    return {
        "id": name,
        "object": "model",
        "created": unix_time(show.get("modified_at")),
        "owned_by": owned_by(name),
    }


def _event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


class _ChatStream:
    """``ChatWriter`` for streams: native chat objects in, SSE events out."""

    def __init__(self, id_: str, include_usage: bool) -> None:
        self.id = id_
        self.include_usage = include_usage
        self.first_sent = False
        self.tool_call_sent = False
        self.created: Optional[int] = None

    def _chunk(self, obj: Dict[str, Any], delta: Dict[str, Any], **choice: Any) -> Dict[str, Any]:
        assert self.created is not None
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": obj.get("model") or "",
            "system_fingerprint": _FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, **choice}],
        }

    def feed(self, obj: Dict[str, Any]) -> bytes:
        if self.created is None:  # one `created` for the whole stream: the first answer's
            self.created = unix_time(obj.get("created_at"))
        msg = _message_of(obj)
        content = str(msg.get("content") or "")
        thinking = str(msg.get("thinking") or "")
        calls = _tool_calls(msg.get("tool_calls"))
        logprobs = _logprobs(obj)
        done = bool(obj.get("done"))
        out: List[bytes] = []
        # The metrics-only trailer of a stream carries nothing to show: no chunk for it.
        if not (done and self.first_sent and not content and not thinking and not calls):
            role = {} if self.first_sent else {"role": "assistant"}
            extra = {"logprobs": logprobs} if logprobs else {}
            if thinking and (content or calls):
                # Reasoning and content in one answer: two chunks, reasoning first.
                out.append(
                    _event(
                        self._chunk(
                            obj, {**role, "reasoning": thinking}, finish_reason=None, **extra
                        )
                    )
                )
                delta: Dict[str, Any] = {"content": content}
            else:
                delta = {**role, "content": content}
                if thinking:
                    delta["reasoning"] = thinking
            if calls:
                delta["tool_calls"] = calls
                self.tool_call_sent = True
            chunk_extra = {} if thinking and (content or calls) else extra
            out.append(_event(self._chunk(obj, delta, finish_reason=None, **chunk_extra)))
            self.first_sent = True
        if done:
            reason = str(obj.get("done_reason") or "stop")
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(obj, {}, finish_reason=reason)
            out.append(_event(finish))
            if self.include_usage:
                finish["choices"] = []
                finish["usage"] = _usage(obj)
                out.append(_event(finish))
            out.append(_DONE)
        return b"".join(out)


class _CompletionStream:
    """``CompleteWriter`` for streams: native generate objects in, SSE events out."""

    def __init__(self, id_: str, include_usage: bool) -> None:
        self.id = id_
        self.include_usage = include_usage

    def feed(self, obj: Dict[str, Any]) -> bytes:
        chunk: Dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),
            "choices": [
                {
                    "text": str(obj.get("response") or ""),
                    "index": 0,
                    "finish_reason": _finish(obj.get("done_reason")),
                }
            ],
            "model": obj.get("model") or "",
            "system_fingerprint": _FINGERPRINT,
        }
        if self.include_usage:  # Ollama puts zero usage on every chunk, then the real one
            chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        out = [_event(chunk)]
        if obj.get("done"):
            if self.include_usage:
                chunk["usage"] = _usage(obj)
                chunk["choices"] = []
                out.append(_event(chunk))
            out.append(_DONE)
        return b"".join(out)


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
    data = _dumps(body)
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
        stream: Optional[Union[_ChatStream, _CompletionStream]] = None,
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
                out.append(_event(error_object(500, str(obj["error"]))))
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
                stream = _ChatStream(id_, _include_usage(body)) if native_body["stream"] else None
                writer = _Writer(send, whole=lambda a: chat_completion(id_, a), stream=stream)
            elif kind == "completion":
                native_path, native_body = "/api/generate", completion_request(body)
                cid = _new_id("cmpl")
                cstream = (
                    _CompletionStream(cid, _include_usage(body)) if native_body["stream"] else None
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
        data = b"" if get else _dumps(native_body)
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
