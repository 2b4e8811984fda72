"""The arguments of ``generate``/``chat``/``embed``, checked before any work starts.

Each error names the argument and shows the bad value (shortened). Apart from ``_client``
so the request path reads on its own.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence, cast

from ._config import RetryPolicy
from ._wire import THINK_LEVELS

__all__ = [
    "bad_type",
    "check_call",
    "check_embed_input",
    "check_fields",
    "check_logprobs",
    "check_messages",
    "check_tools",
]


def check_logprobs(logprobs: object, top_logprobs: object) -> None:
    """``logprobs`` and ``top_logprobs`` as Ollama types them (``api/types.go``, v0.33)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise TypeError(f"logprobs must be a bool, got {logprobs!r}")
    if top_logprobs is not None and (
        isinstance(top_logprobs, bool)
        or not isinstance(top_logprobs, int)
        or not 0 <= top_logprobs <= 20
    ):
        raise ValueError(f"top_logprobs must be an int from 0 to 20, got {top_logprobs!r}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def bad_type(name: str, value: object, expected: str) -> TypeError:
    return TypeError(f"{name} must be {expected}, got {_show(value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_call(model: object, priority: object, retry: object, timeout: object = None) -> None:
    """The arguments every request takes: ``model``, ``priority``, ``retry``, ``timeout``."""
    if not isinstance(model, str):
        raise bad_type("model", model, "a model or role name (a str)")
    if not model.strip():
        raise ValueError(f"model must name a model or a role, got {model!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise bad_type("priority", priority, "an int")
    if retry is not None and not isinstance(retry, (bool, RetryPolicy)):
        raise bad_type("retry", retry, "a RetryPolicy, True, False or None")
    if timeout is not None:
        if not _is_number(timeout):
            raise bad_type("timeout", timeout, "a number of seconds or None")
        if not (math.isfinite(cast(float, timeout)) and cast(float, timeout) > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")


def _check_json(name: str, value: object) -> None:
    """``value`` must go into a JSON body as it is (no NaN: Ollama would refuse it)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{name} must be JSON data: {exc}") from None


#: Exact types json.dumps always encodes (floats: when finite).
_SCALARS = frozenset({str, int, bool, type(None)})


def _plain_json(values: Mapping[str, object]) -> bool:
    """True when every value is a str, int, bool, None or finite float (exact types), which
    json.dumps(allow_nan=False) always encodes: the usual options skip encoding them twice
    (here, then in the request body). Anything else is for :func:`_check_json` to judge."""
    for value in values.values():
        kind = type(value)
        if kind not in _SCALARS and not (kind is float and math.isfinite(cast(float, value))):
            return False
    return True


def check_fields(
    *,
    options: object = None,
    keep_alive: object = None,
    format: object = None,
    think: object = None,
    strings: Mapping[str, object] = {},
    flags: Mapping[str, object] = {},
    lists: Mapping[str, object] = {},
) -> None:
    """The optional Ollama fields shared by generate, chat and embed."""
    if options is not None:
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise bad_type("options", options, "a mapping of option names to values")
        if not _plain_json(options):
            _check_json("options", dict(options))
    if keep_alive is not None:
        if isinstance(keep_alive, str):
            pass  # a duration ("5m", "1h"): Ollama parses it
        elif not _is_number(keep_alive):
            raise bad_type("keep_alive", keep_alive, "seconds (a number) or a duration string")
        elif not math.isfinite(cast(float, keep_alive)):
            raise ValueError(f"keep_alive must be finite, got {keep_alive!r}")
    if format is not None:
        if not isinstance(format, (str, Mapping)):
            raise bad_type("format", format, '"json" or a JSON schema (a mapping)')
        _check_json("format", format if isinstance(format, str) else dict(format))
    if think is not None and not isinstance(think, bool):
        if not isinstance(think, str):
            raise bad_type("think", think, f"a bool or one of {', '.join(THINK_LEVELS)}")
        if think not in THINK_LEVELS:
            raise ValueError(
                f"think must be a bool or one of {', '.join(THINK_LEVELS)}, got {think!r}"
            )
    for name, value in strings.items():
        if value is not None and not isinstance(value, str):
            raise bad_type(name, value, "a str")
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise bad_type(name, value, "a bool or None")
    for name, value in lists.items():
        if value is None:
            continue
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise bad_type(name, value, "a list")
        _check_json(name, list(value))


def check_messages(messages: object) -> None:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise bad_type("messages", messages, "a list of {'role': ..., 'content': ...} mappings")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise bad_type(f"messages[{i}]", m, "a {'role': ..., 'content': ...} mapping")
        if not isinstance(m.get("role"), str):
            raise bad_type(f"messages[{i}]['role']", m.get("role"), "a str")
        if m.get("content") is not None and not isinstance(m.get("content"), str):
            raise bad_type(f"messages[{i}]['content']", m.get("content"), "a str")
    _check_json("messages", [dict(m) for m in messages])


def check_tools(tools: object) -> None:
    if tools is None:
        return
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise bad_type("tools", tools, "a list of tool mappings")
    for i, t in enumerate(tools):
        if not isinstance(t, Mapping):
            raise bad_type(f"tools[{i}]", t, "a tool mapping")
    _check_json("tools", [dict(t) for t in tools])


def check_embed_input(value: object, dimensions: object) -> None:
    if not isinstance(value, str):
        if isinstance(value, (bytes, Mapping)) or not isinstance(value, Sequence):
            raise bad_type("input", value, "a str or a list of str")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise bad_type(f"input[{i}]", item, "a str")
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise bad_type("dimensions", dimensions, "an int")
        if dimensions <= 0:
            raise ValueError(f"dimensions must be > 0, got {dimensions!r}")
