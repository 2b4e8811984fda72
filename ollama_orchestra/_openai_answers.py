"""Native Ollama answers translated into OpenAI's shapes: whole answers and SSE streams.

Followed: ollama/ollama v0.33.0-rc2, ``openai/openai.go`` (``ToChatCompletion``,
``ToStreamChunks``, ``FinishChunk``, ``ToCompletion``, ``ToCompleteChunk``,
``ToEmbeddingList``, ``ToListCompletion``, ``ToModel``, ``NewError``) and
``middleware/openai.go`` (``ChatWriter``, ``CompleteWriter``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

__all__ = [
    "DONE",
    "ChatStream",
    "CompletionStream",
    "chat_completion",
    "completion",
    "dumps",
    "embedding_list",
    "error_object",
    "event",
    "model_list",
    "model_object",
    "owned_by",
    "unix_time",
]

DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_ollama"


def error_object(status: int, message: str) -> Dict[str, Any]:
    """OpenAI's error body, typed by status as Ollama's ``openai.NewError`` does."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# -- answers -------------------------------------------------------------------------------------

_STAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$", re.IGNORECASE
)


def unix_time(stamp: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time as Ollama writes it (ns precision, any
    offset); the current time if there is none, as Ollama stamps synthetic answers."""
    match = _STAMP.match(stamp) if isinstance(stamp, str) else None
    if match is None:
        return int(time.time())  # calendar time (OpenAI "created"), not the library clock
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


def event(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


class ChatStream:
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
                    event(
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
            out.append(event(self._chunk(obj, delta, finish_reason=None, **chunk_extra)))
            self.first_sent = True
        if done:
            reason = str(obj.get("done_reason") or "stop")
            if reason == "stop" and self.tool_call_sent:
                reason = "tool_calls"
            finish = self._chunk(obj, {}, finish_reason=reason)
            out.append(event(finish))
            if self.include_usage:
                finish["choices"] = []
                finish["usage"] = _usage(obj)
                out.append(event(finish))
            out.append(DONE)
        return b"".join(out)


class CompletionStream:
    """``CompleteWriter`` for streams: native generate objects in, SSE events out."""

    def __init__(self, id_: str, include_usage: bool) -> None:
        self.id = id_
        self.include_usage = include_usage

    def feed(self, obj: Dict[str, Any]) -> bytes:
        chunk: Dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": int(time.time()),  # calendar time, not the library clock
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
        out = [event(chunk)]
        if obj.get("done"):
            if self.include_usage:
                chunk["usage"] = _usage(obj)
                chunk["choices"] = []
                out.append(event(chunk))
            out.append(DONE)
        return b"".join(out)
