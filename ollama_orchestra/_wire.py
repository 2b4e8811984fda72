"""Ollama's request bodies, checked as Ollama's own handlers check them.

Followed from ollama/ollama v0.33.0-rc2: ``api/types.go`` (``GenerateRequest``,
``ChatRequest``, ``EmbedRequest``, ``EmbeddingRequest``, ``Message``, ``ThinkValue``,
``Duration``, ``Options.FromMap``) and ``server/routes.go`` (``GenerateHandler``,
``ChatHandler``, ``EmbedHandler``). Ollama binds the body with gin's ``ShouldBindJSON``, that
is Go's ``encoding/json`` into those structs, and answers any decoding error with 400 and the
error's text; so do we, with the same texts:

- a value of the wrong JSON type for a field: ``json: cannot unmarshal string into Go struct
  field GenerateRequest.stream of type bool`` (Go saves the first such error, decodes on, and
  reports it at the end);
- ``keep_alive`` and ``think`` have decoders of their own, whose errors end decoding at once
  (and so win over a type error seen earlier);
- ``null`` is accepted for every field (Go leaves the field unset); unknown fields are ignored;
- after decoding: ``top_logprobs`` outside 0..20 is a 400 (both handlers), an ``input`` of
  ``/api/embed`` that is not a string or a list of strings is ``invalid input type``.

Two checks Ollama makes only once the model is scheduled, and answers with **500**: an option
of the wrong type (``option "num_predict" must be of type integer``, ``Options.FromMap``) and a
``format`` that is neither ``"json"`` nor a JSON schema object (``invalid format: ...``,
``llm/llama_server.go``). The simulator answers those as Ollama does (500, see
:func:`late_errors`); the orchestra's transport and proxy refuse them up front with 400 and the
same message, since they are the client's fault and sending them on would only fail on every
server.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ._validate import is_number

__all__ = [
    "THINK_LEVELS",
    "RequestRejected",
    "check_request",
    "keep_alive_seconds",
    "late_errors",
]


class RequestRejected(ValueError):
    """A request body Ollama refuses; ``status`` and ``message`` are Ollama's answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Abort(Exception):
    """A custom Go decoder's error: decoding stops here."""


# A Go type, as far as decoding goes: a name for the message, and how to check a value.
_Spec = Union[str, Tuple[str, str, Any]]

_STRING, _BOOL, _INT, _RAW, _ANY = "string", "bool", "int", "raw", "any"
_MAP, _DURATION, _THINK = "map[string]interface {}", "duration", "think"


def _slice(go_name: str, elem: _Spec) -> _Spec:
    return ("slice", go_name, elem)


def _struct(go_name: str, fields: Mapping[str, _Spec]) -> _Spec:
    return ("struct", go_name, dict(fields))


_IMAGES = _slice("[]api.ImageData", ("leaf", "api.ImageData", _STRING))
_TOOL_CALL = _struct(
    "api.ToolCall",
    {
        "id": _STRING,
        "function": _struct(
            "api.ToolCallFunction", {"index": _INT, "name": _STRING, "arguments": _RAW}
        ),
    },
)
_MESSAGE = _struct(
    "api.Message",
    {
        "role": _STRING,
        "content": _STRING,
        "thinking": _STRING,
        "images": _IMAGES,
        "tool_calls": _slice("[]api.ToolCall", _TOOL_CALL),
        "tool_name": _STRING,
        "tool_call_id": _STRING,
    },
)
_COMMON = {
    "model": _STRING,
    "stream": _BOOL,
    "format": _RAW,
    "keep_alive": _DURATION,
    "options": _MAP,
    "think": _THINK,
    "truncate": _BOOL,
    "shift": _BOOL,
    "_debug_render_only": _BOOL,
    "logprobs": _BOOL,
    "top_logprobs": _INT,
}
_REQUESTS: Dict[str, _Spec] = {
    "/api/generate": _struct(
        "api.GenerateRequest",
        {
            **_COMMON,
            "prompt": _STRING,
            "suffix": _STRING,
            "system": _STRING,
            "template": _STRING,
            "context": _slice("[]int", _INT),
            "raw": _BOOL,
            "images": _IMAGES,
        },
    ),
    "/api/chat": _struct(
        "api.ChatRequest",
        {
            **_COMMON,
            "messages": _slice("[]api.Message", _MESSAGE),
            "tools": _slice("api.Tools", ("struct", "api.Tool", {})),
        },
    ),
    "/api/embed": _struct(
        "api.EmbedRequest",
        {
            "model": _STRING,
            "input": _ANY,
            "keep_alive": _DURATION,
            "truncate": _BOOL,
            "dimensions": _INT,
            "options": _MAP,
        },
    ),
    "/api/embeddings": _struct(
        "api.EmbeddingRequest",
        {"model": _STRING, "prompt": _STRING, "keep_alive": _DURATION, "options": _MAP},
    ),
}

# api.Options (with the embedded api.Runner), for Options.FromMap's type checks.
_INT_OPTIONS = [
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "draft_num_predict",
]
_FLOAT_OPTIONS = [
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
]
_OPTION_KINDS: Dict[str, str] = {
    **dict.fromkeys(_INT_OPTIONS, "integer"),
    **dict.fromkeys(_FLOAT_OPTIONS, "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}

_INT64 = 2**63


def _json_kind(value: Any) -> str:
    """The JSON kind as Go's ``UnmarshalTypeError.Value`` names it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


class _Decoder:
    def __init__(self) -> None:
        self.saved: Optional[str] = None

    def save(
        self, value: Any, go_type: str, struct: str, path: List[str], number: str = ""
    ) -> None:
        if self.saved is not None:
            return
        kind = f"number {number}" if number else _json_kind(value)
        where = f"Go struct field {struct}.{'.'.join(path)}" if struct else "Go value"
        self.saved = f"json: cannot unmarshal {kind} into {where} of type {go_type}"

    def value(self, value: Any, spec: _Spec, struct: str, path: List[str]) -> None:
        if value is None:
            return  # null leaves any Go value unset
        if isinstance(spec, tuple):
            kind, go_name, inner = spec
            if kind == "leaf":
                if not isinstance(value, str):
                    self.save(value, go_name, struct, path)
            elif kind == "slice":
                if not isinstance(value, list):
                    self.save(value, go_name, struct, path)
                    return
                for item in value:
                    self.value(item, inner, struct, path)
            else:  # struct
                if not isinstance(value, dict):
                    self.save(value, go_name, struct, path)
                    return
                name = go_name.rsplit(".", 1)[-1]
                for key, item in value.items():
                    field = inner.get(key)
                    if field is not None:
                        self.value(item, field, name, [*path, key])
            return
        if spec in (_RAW, _ANY):
            return
        if spec == _STRING:
            if not isinstance(value, str):
                self.save(value, "string", struct, path)
        elif spec == _BOOL:
            if not isinstance(value, bool):
                self.save(value, "bool", struct, path)
        elif spec == _INT:
            if not is_number(value):
                self.save(value, "int", struct, path)
            elif isinstance(value, float) or not -_INT64 <= value < _INT64:
                self.save(value, "int", struct, path, number=json.dumps(value))
        elif spec == _MAP:
            if not isinstance(value, dict):
                self.save(value, _MAP, struct, path)
        elif spec == _DURATION:
            _check_duration(value)
        elif spec == _THINK:
            _check_think(value)


def _go_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _check_duration(value: Any) -> None:
    """``api.Duration.UnmarshalJSON``: a number of seconds, or a Go duration string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Abort(f"Unsupported type: '{_go_type_name(value)}'")
    if isinstance(value, str):
        _parse_go_duration(value)


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_NUMBER = re.compile(r"\d*(\.\d*)?")
_DURATION_UNIT = re.compile(r"[^\d.]*")


def _parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds, with its error texts."""
    quoted = json.dumps(text, ensure_ascii=False)
    rest = text
    sign = 1.0
    if rest and rest[0] in "+-":
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise _Abort(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = _DURATION_NUMBER.match(rest)
        digits = number.group(0) if number is not None else ""
        if not digits.strip(".") or not any(ch.isdigit() for ch in digits):
            raise _Abort(f"time: invalid duration {quoted}")
        rest = rest[len(digits) :]
        unit_match = _DURATION_UNIT.match(rest)
        unit = unit_match.group(0) if unit_match is not None else ""
        if not unit:
            raise _Abort(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise _Abort(
                f"time: unknown unit {json.dumps(unit, ensure_ascii=False)} in duration {quoted}"
            )
        total += float(digits) * _DURATION_UNITS[unit]
        rest = rest[len(unit) :]
    return sign * total


#: ``think`` levels besides true/false (``api/types.go`` ThinkValue, ollama v0.33.0-rc2).
THINK_LEVELS = ("high", "medium", "low", "max")


def _check_think(value: Any) -> None:
    """``api.ThinkValue.UnmarshalJSON``: a boolean, or one of the levels."""
    if isinstance(value, bool):
        return
    if isinstance(value, str):
        if value not in THINK_LEVELS:
            raise _Abort(
                f"invalid think value: {json.dumps(value)} "
                '(must be "high", "medium", "low", "max", true, or false)'
            )
        return
    raise _Abort(
        'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'
    )


def keep_alive_seconds(value: Any, default: float) -> float:
    """A checked ``keep_alive`` in seconds (``inf`` when negative: kept forever)."""
    if value is None:
        return default
    try:
        _check_duration(value)
        seconds = float(value) if not isinstance(value, str) else _parse_go_duration(value)
    except _Abort as exc:
        raise RequestRejected(str(exc)) from None
    return math.inf if seconds < 0 else seconds


def check_request(path: str, body: Any) -> None:
    """Raise :class:`RequestRejected` (400) where Ollama's handler for ``path`` answers 400.

    ``body`` is the parsed JSON (any JSON value). Paths without a known body pass.
    """
    spec = _REQUESTS.get(path)
    if spec is None:
        return
    decoder = _Decoder()
    if not isinstance(body, dict):
        if body is not None:
            decoder.save(body, spec[1], "", [])
    else:
        try:
            decoder.value(body, spec, "", [])
        except _Abort as exc:
            raise RequestRejected(str(exc)) from None
    if decoder.saved is not None:
        raise RequestRejected(decoder.saved)
    if not isinstance(body, dict):
        return
    if path in ("/api/generate", "/api/chat"):
        top = body.get("top_logprobs")
        if isinstance(top, int) and not 0 <= top <= 20:
            raise RequestRejected("top_logprobs must be between 0 and 20")
    if path == "/api/embed":
        given = body.get("input")
        if given is not None and not (
            isinstance(given, str)
            or (isinstance(given, list) and all(isinstance(t, str) for t in given))
        ):
            raise RequestRejected("invalid input type")


def late_errors(body: Mapping[str, Any]) -> Optional[str]:
    """What Ollama refuses only once the model is scheduled (with 500): bad option types, a
    bad ``format``. ``None`` when there is nothing to refuse. ``body`` passed
    :func:`check_request`."""
    options = body.get("options")
    if isinstance(options, dict):
        for key, value in options.items():
            kind = _OPTION_KINDS.get(key)
            if kind is None or value is None:
                continue  # Ollama ignores unknown options (with a warning)
            if kind == "integer" and not is_number(value):
                return f'option "{key}" must be of type integer'
            if kind == "float32" and not is_number(value):
                return f'option "{key}" must be of type float32'
            if kind == "boolean" and not isinstance(value, bool):
                return f'option "{key}" must be of type boolean'
            if kind == "array":
                if not isinstance(value, list):
                    return f'option "{key}" must be of type array'
                if not all(isinstance(s, str) for s in value):
                    return f'option "{key}" must be of an array of strings'
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        raw = json.dumps(fmt, separators=(",", ":"), ensure_ascii=False)
        return f'invalid format: {json.dumps(raw, ensure_ascii=False)}; expected "json" or a valid JSON Schema object'
    return None
