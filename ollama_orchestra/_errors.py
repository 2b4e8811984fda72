"""The one exception tree of ollama_orchestra.

::

    OrchestraError
    ├── ConfigError (ValueError)          invalid configuration; names the field and the value
    │   └── SimConfigError                invalid simulator configuration or CLI input (``sim._errors``)
    ├── DagValidationError (ValueError)   a task graph that cannot run (duplicate id, cycle, ...)
    ├── OrchestraClosed (RuntimeError)    the orchestra was used outside ``async with``
    ├── MissingExtra (ImportError)        a feature needs an extra that is not installed
    ├── AsyncioOnly (RuntimeError)        an asyncio-only feature was used on another backend
    └── RequestError                      a request could not be served
        ├── NoCapableServer               every server is known, and none has the model
        ├── NoHealthyServer               no server that has (or may have) the model is up;
        │                                 ``errors`` says why, per server
        ├── OllamaResponseError           Ollama answered with an error the caller must fix (400, ...)
        ├── RequestFailed                 every attempt failed; ``attempts`` lists them
        ├── RequestTimeout (TimeoutError)  the request's ``timeout=`` ran out
        └── StreamInterrupted             a stream broke after text was yielded

No message ever shows a header value or a URL's credentials (see ``_secrets``).

Lower-level errors (httpx, anyio) are mapped to the most specific class with
``raise ... from exc``, so the cause is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ._secrets import REDACTED, redact_text, redact_url

__all__ = [
    "AsyncioOnly",
    "Attempt",
    "ConfigError",
    "DagValidationError",
    "MissingExtra",
    "NoCapableServer",
    "NoHealthyServer",
    "OllamaResponseError",
    "OrchestraClosed",
    "OrchestraError",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "StreamInterrupted",
]


class OrchestraError(Exception):
    """Root of every error raised by ollama_orchestra."""


class ConfigError(OrchestraError, ValueError):
    """A configuration value is invalid.

    A URL's credentials in ``value`` are redacted; with ``secret=True`` (a header value, a
    table that may hold one) the value is not shown at all.

    Attributes:
        field: dotted path of the offending field, e.g. ``servers[1].url``.
        value: the value that was rejected (``"<redacted>"`` when secret).
    """

    def __init__(self, field: str, value: object, reason: str, *, secret: bool = False) -> None:
        self.field = field
        self.value = REDACTED if secret else redact_text(value)
        self.reason = reason
        self.secret = secret
        shown = "" if secret else f"={self.value!r}"
        super().__init__(f"{field}{shown}: {reason}")


class DagValidationError(OrchestraError, ValueError):
    """A task graph cannot run: duplicate ids, unknown dependencies, a cycle, a bad placeholder."""

    def __init__(self, message: str, *, task_id: Optional[str] = None) -> None:
        self.task_id = task_id
        super().__init__(message)


class OrchestraClosed(OrchestraError, RuntimeError):
    """The orchestra is not running: use it inside ``async with Orchestra(...)``."""


class MissingExtra(OrchestraError, ImportError):
    """A feature needs an optional dependency (an *extra*) that is not installed.

    The message is one line naming the command that installs it.

    Attributes:
        feature: what was asked for, e.g. ``ollama-orchestra proxy``.
        extra: the extra that provides it, e.g. ``proxy``.
        name: the missing module (as on every ``ImportError``).
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature = feature
        self.extra = extra
        super().__init__(
            f"{feature} needs {module}, which is not installed: "
            f"pip install 'ollama-orchestra[{extra}]'",
            name=module,
        )


class AsyncioOnly(OrchestraError, RuntimeError):
    """A feature that runs on asyncio only was used under another event loop (trio).

    Attributes:
        feature: what was asked for, e.g. ``SimServer``.
        backend: the event loop library that was running.
    """

    def __init__(self, feature: str, backend: str, hint: str = "") -> None:
        self.feature = feature
        self.backend = backend
        super().__init__(
            f"{feature} runs on asyncio only, not on {backend}" + (f": {hint}" if hint else "")
        )


class RequestError(OrchestraError):
    """A request could not be served."""


class NoCapableServer(RequestError):
    """Every server's models are known, and none of them has the requested model.

    Raised only when the fleet truly lacks the model: while a server whose models are not
    known yet (it never answered a probe, and its config lists no ``models``) is down, the
    request ends in :class:`NoHealthyServer` instead, since that server may have it.

    Attributes:
        model: the model that was asked for.
        available: each server's known models.
    """

    def __init__(self, model: str, available: Mapping[str, Sequence[str]]) -> None:
        self.model = model
        self.available = {k: tuple(v) for k, v in available.items()}
        listing = "; ".join(
            f"{name}: {', '.join(models) if models else '(none)'}"
            for name, models in self.available.items()
        )
        super().__init__(f"no server has model {model!r} (available: {listing})")


class NoHealthyServer(RequestError):
    """No server that has the model (or may have it: its models are unknown, because it
    never answered) is healthy and admitted by its breaker.

    Attributes:
        model: the model that was asked for.
        servers: the servers that have (or may have) the model.
        errors: for each of them, why it cannot serve: its last error (``connection
            refused``, a malformed probe answer, ...), or its breaker state.
        waited_s: how long the request waited for one of them to come back.
    """

    def __init__(
        self,
        model: str,
        servers: Sequence[str],
        waited_s: float,
        *,
        errors: Optional[Mapping[str, str]] = None,
        urls: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.model = model
        self.servers = tuple(servers)
        self.waited_s = waited_s
        self.errors: Dict[str, str] = {name: (errors or {}).get(name, "") for name in servers}
        parts = []
        for name in self.servers:
            url = (urls or {}).get(name)
            where = f"{name} ({redact_url(url)})" if url else name
            why = self.errors[name]
            parts.append(f"{where}: {why}" if why else where)
        super().__init__(
            f"no healthy server for model {model!r} after waiting {waited_s:.2f}s: "
            + "; ".join(parts)
        )


class OllamaResponseError(RequestError):
    """Ollama answered with an error that retrying elsewhere will not fix (e.g. 400).

    Attributes:
        status_code: the HTTP status Ollama returned.
        error: Ollama's own message, from its ``{"error": ...}`` body.
        server: the server that answered.
    """

    def __init__(self, status_code: int, error: str, server: Optional[str] = None) -> None:
        self.status_code = status_code
        self.error = error
        self.server = server
        where = f" from {server}" if server else ""
        super().__init__(f"Ollama error {status_code}{where}: {error}")


@dataclass(frozen=True)
class Attempt:
    """One try of a request: where it went, how it ended, and when."""

    server: str
    error: str
    started_at: float
    duration_s: float


class RequestFailed(RequestError):
    """Every attempt failed.

    Attributes:
        attempts: each attempt, in order: server, error, time.
    """

    def __init__(self, model: str, attempts: Sequence[Attempt]) -> None:
        self.model = model
        self.attempts: Tuple[Attempt, ...] = tuple(attempts)
        tried = "; ".join(f"{a.server}: {a.error}" for a in self.attempts)
        super().__init__(
            f"request for model {model!r} failed after {len(self.attempts)} attempt(s): {tried}"
        )


class RequestTimeout(RequestError, TimeoutError):
    """The request's ``timeout`` (or ``config.timeouts.total_s``) ran out, all attempts included.

    A ``TimeoutError`` too, so ``except TimeoutError`` written for earlier versions still works.

    Attributes:
        model: the model that was asked for.
        timeout_s: the bound that ran out.
    """

    def __init__(self, model: str, timeout_s: float) -> None:
        self.model = model
        self.timeout_s = timeout_s
        super().__init__(f"request for model {model!r} timed out after {timeout_s:g}s")


class StreamInterrupted(RequestError):
    """A stream broke after some text had already been yielded to the caller, and was not
    continued elsewhere (``RetryPolicy(mid_stream="raise")``, no other server serving the
    model, inside ``thinking`` or a tool call, ...; see ``_continuation``): the caller decides.

    Attributes:
        partial: the text yielded before the break.
        server: the server whose stream broke.
        cause: the underlying error.
    """

    def __init__(self, partial: str, server: str, cause: BaseException) -> None:
        self.partial = partial
        self.server = server
        self.cause = cause
        super().__init__(
            f"stream from {server} interrupted after {len(partial)} characters: "
            f"{str(cause) or type(cause).__name__}"
        )
