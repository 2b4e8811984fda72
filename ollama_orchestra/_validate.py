"""Shared field validators: config, DAG files and the simulator check values the same way.

Two kinds of helpers:

* predicates (``is_integer``, ``is_number``, ``is_positive_number``) for callers with their
  own error type and wording (the DAG loader's :class:`DagValidationError`, the OpenAI
  adapter's 400 answers);
* raising checks (``positive``, ``non_negative``, ``positive_int``, ``boolean``,
  ``optional_str``, ``string_list``, ``string_table``, ``header_table``,
  ``reject_unknown_keys``) that raise :class:`ConfigError` (or the subclass given as
  ``error``, e.g. the simulator's) naming ``owner.name`` and the bad value.

One rule everywhere: a ``bool`` is not a number (``True`` is an ``int`` to Python, never a
count or a duration to us), and numbers must be finite.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Tuple, Type

from ._errors import ConfigError

__all__ = [
    "boolean",
    "finite_number",
    "header_table",
    "is_integer",
    "is_number",
    "is_positive_number",
    "non_negative",
    "optional_str",
    "positive",
    "positive_int",
    "reject_unknown_keys",
    "string_list",
    "string_table",
]


def is_integer(value: object) -> bool:
    """``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """``value`` is an ``int`` or ``float`` and not a ``bool`` (finite or not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_positive_number(value: object, *, allow_zero: bool = False) -> bool:
    """``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    if not is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        return False
    return value >= 0 if allow_zero else value > 0  # type: ignore[operator]


def finite_number(
    owner: str, name: str, value: Any, *, error: Type[ConfigError] = ConfigError
) -> None:
    """Raise ``error`` naming ``owner.name`` unless ``value`` is a finite number."""
    if not is_number(value) or not math.isfinite(value):
        raise error(f"{owner}.{name}", value, "must be a finite number")


def positive(
    owner: str,
    name: str,
    value: Any,
    *,
    allow_zero: bool = False,
    error: Type[ConfigError] = ConfigError,
) -> None:
    """Raise ``error`` naming ``owner.name`` unless ``value`` is a finite number > 0 (or >= 0)."""
    if not is_positive_number(value, allow_zero=allow_zero):
        raise error(
            f"{owner}.{name}", value, "must be a finite number " + (">= 0" if allow_zero else "> 0")
        )


def non_negative(
    owner: str, name: str, value: Any, *, error: Type[ConfigError] = ConfigError
) -> None:
    """:func:`positive` with zero allowed."""
    positive(owner, name, value, allow_zero=True, error=error)


def positive_int(
    owner: str, name: str, value: Any, *, minimum: int = 1, error: Type[ConfigError] = ConfigError
) -> None:
    """Raise ``error`` naming ``owner.name`` unless ``value`` is an integer >= ``minimum``."""
    if not is_integer(value) or value < minimum:
        raise error(f"{owner}.{name}", value, f"must be an integer >= {minimum}")


def boolean(owner: str, name: str, value: Any, *, error: Type[ConfigError] = ConfigError) -> None:
    """Raise ``error`` naming ``owner.name`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise error(f"{owner}.{name}", value, "must be true or false")


def optional_str(
    owner: str, name: str, value: Any, *, error: Type[ConfigError] = ConfigError
) -> None:
    """Raise ``error`` unless ``value`` is ``None`` or a non-blank string."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise error(f"{owner}.{name}", value, "must be a non-empty string")


def string_list(
    owner: str, name: str, value: Any, *, error: Type[ConfigError] = ConfigError
) -> Tuple[str, ...]:
    """``value`` as a tuple of non-empty strings (a list or tuple of them), else ``error``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise error(f"{owner}.{name}", value, "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise error(f"{owner}.{name}[{i}]", item, "must be a non-empty string")
    return tuple(value)


def string_table(
    owner: str,
    name: str,
    value: Any,
    *,
    secret: bool = False,
    error: Type[ConfigError] = ConfigError,
) -> Dict[str, str]:
    """``value`` as a dict of strings to strings, else ``error`` (never showing a secret)."""
    if not isinstance(value, Mapping):
        raise error(f"{owner}.{name}", value, "must be a table of strings", secret=secret)
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip():
            raise error(f"{owner}.{name}", key, "keys must be non-empty strings")
        if not isinstance(item, str):
            raise error(f"{owner}.{name}.{key}", item, "must be a string", secret=secret)
    return dict(value)


def header_table(owner: str, value: Any) -> Dict[str, str]:
    """Header names and values that httpx can send as they are; values never shown."""
    headers = string_table(owner, "headers", value, secret=True)
    for key, item in headers.items():
        if any(c in key for c in ":\r\n \t"):
            raise ConfigError(f"{owner}.headers", key, "is not a valid header name")
        if "\r" in item or "\n" in item or not item.isprintable():
            raise ConfigError(
                f"{owner}.headers.{key}", item, "must be printable, on one line", secret=True
            )
    return headers


def reject_unknown_keys(
    data: Mapping[str, Any],
    allowed: Iterable[str],
    prefix: str,
    *,
    error: Type[ConfigError] = ConfigError,
    what: str = "key",
) -> None:
    """Raise ``error`` for the first key of ``data`` not in ``allowed``; its field is
    ``prefix + key``, and the message ("unknown <what>") lists what is allowed. The value is
    not shown: a mistyped ``header`` table would otherwise print its ``Authorization``."""
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise error(
                f"{prefix}{key}",
                data[key],
                f"unknown {what}; expected one of {', '.join(sorted(allowed))}",
                secret=True,
            )
