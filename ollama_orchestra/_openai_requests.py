"""OpenAI request bodies translated into native Ollama requests (``/v1`` → ``/api``).

Followed: ollama/ollama v0.33.0-rc2, ``openai/openai.go`` (``FromChatRequest``,
``FromCompleteRequest``, the request types) and ``middleware/openai.go``
(``EmbeddingsMiddleware``). The fields honoured are listed in :mod:`._openai`'s docstring.
A bad field raises :class:`OpenAIError` (a 400), before any work.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, List, Optional, Tuple

from ._validate import is_integer, is_number

__all__ = [
    "OpenAIError",
    "chat_request",
    "completion_request",
    "embed_request",
    "include_usage",
]


class OpenAIError(Exception):
    """A request refused before any work, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


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
    if value is not None and not is_integer(value):
        raise _bad_type(field, "an integer", value)
    return value


def _number(body: Dict[str, Any], field: str) -> Optional[float]:
    value = body.get(field)
    if value is not None and not is_number(value):
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


def include_usage(body: Dict[str, Any]) -> bool:
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
    include_usage(body)
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
    include_usage(body)
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
