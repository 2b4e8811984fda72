"""Failover: what is retried, where, and how soon. Errors are classified here, once.

Every outcome of an attempt is one *kind*; :data:`OUTCOMES` says, per kind, whether the
request is retried on another server and which circuit breaker (if any) counts it:

==============================  =========  ====================  ================================
outcome of an attempt           kind       retried elsewhere?    counts against
==============================  =========  ====================  ================================
connect error / refused         connect    yes (server marked    the server's breaker
                                           down at once)
timeout before the first byte   timeout    yes                   the server's breaker
connection reset, broken        reset      yes (once text was    the server's breaker
stream, malformed answer                   yielded: continued
                                           elsewhere, see
                                           ``_continuation``, or
                                           ``StreamInterrupted``)
HTTP 5xx (other than below)     server     yes                   the server's breaker
HTTP 500: the model failed to   model      yes                   that model's breaker on that
load or its runner died                                          server only
HTTP 503 (queue full), 429,     busy       yes                   nothing (busy, not broken)
408
HTTP 404 model not found        not_found  yes, on a server      nothing (that server's model
                                           that has the model    list is corrected)
HTTP 400, other 4xx, and a 500  client     no:                   nothing: the caller's fault
saying the request is                      ``OllamaResponseError``
malformed                                  at once
==============================  =========  ====================  ================================

A failed attempt goes at once to a server not yet tried for this request; the exponential,
jittered backoff applies only once every eligible server has failed it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, List, Mapping, Optional, TypeVar, cast

import httpx
import tenacity

from ._config import RetryPolicy
from ._errors import OllamaResponseError

__all__ = [
    "OUTCOMES",
    "AttemptError",
    "Kind",
    "Outcome",
    "build_retrying",
    "classify",
    "classify_error_text",
    "from_status",
    "mid_stream_error",
    "retry_after",
    "status_kind",
]

T = TypeVar("T")

#: What kind of failure an attempt ended with (see the module docstring).
Kind = str  # "connect" | "timeout" | "reset" | "server" | "model" | "busy" | "not_found" | "client"


@dataclass(frozen=True)
class Outcome:
    """What one kind of failure means: retried elsewhere or not, and which breaker counts it
    (``"server"``: the host's; ``"model"``: the (host, model) one; ``None``: none)."""

    retry: bool
    breaker: Optional[str]


#: The classification table: one row per kind.
OUTCOMES: Mapping[Kind, Outcome] = {
    "connect": Outcome(retry=True, breaker="server"),
    "timeout": Outcome(retry=True, breaker="server"),
    "reset": Outcome(retry=True, breaker="server"),
    "server": Outcome(retry=True, breaker="server"),
    "model": Outcome(retry=True, breaker="model"),
    "busy": Outcome(retry=True, breaker=None),
    "not_found": Outcome(retry=True, breaker=None),
    "client": Outcome(retry=False, breaker=None),
}

# Ollama's own error texts (ollama/ollama v0.33.0-rc2, and the wording of earlier releases
# still in the field), matched case-insensitively in a 500's ``{"error": ...}``.
#
# The request is malformed: the same request fails the same way on every host.
# api/types.go Options.FromMap: 'option "num_ctx" must be of type integer' (and boolean,
# float32, string, array; a 500 from the scheduler's modelOptions via handleScheduleError);
# llm/llama_server.go Completion: 'invalid format: ...; expected "json" or a valid JSON
# Schema object' (an error line of the stream, or a 500 unstreamed). Go's JSON decoding
# errors are not here on purpose: the request's own are 400s (ShouldBindJSON), and in a
# 500 they come from decoding the runner's answer, which is the host's failure.
_CLIENT_500 = (
    "must be of type",
    "must be of an array of strings",
    "invalid format:",
)
# The model failed on that host (it does not load, or its runner died): another model there
# is fine. server/sched.go and llm/llama_server.go: 'llama runner process has terminated'
# (before v0.13: 'llama runner'; since: 'llama-server process has terminated'), 'error
# loading model' (llm/status.go), 'this model may be incompatible with your version of
# Ollama', 'model requires more system memory', 'model runner has unexpectedly stopped',
# 'timed out waiting for llama runner to start', out-of-memory reports.
_MODEL_500 = (
    "runner process has terminated",
    "llama-server process has terminated",
    "llama-server process no longer running",
    "error loading model",
    "failed to load model",
    "unable to load model",
    "model may be incompatible",
    "model requires more system memory",
    "model runner has unexpectedly stopped",
    "timed out waiting for llama runner",
    "timed out waiting for llama-server",
    "reported out-of-memory",
    "out of memory",
)


@dataclass
class AttemptError(Exception):
    """One attempt failed on ``server``; ``kind`` says how (see the module docstring)."""

    kind: Kind
    server: str
    message: str
    cause: Optional[BaseException] = None
    status_code: Optional[int] = None

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return OUTCOMES[self.kind].retry

    @property
    def breaker_failure(self) -> bool:
        """Counts against the server's breaker (the host failed)."""
        return OUTCOMES[self.kind].breaker == "server"

    @property
    def connection_lost(self) -> bool:
        """The connection broke, or could not be made: the host may have died."""
        return self.kind in ("connect", "reset")

    @property
    def model_failure(self) -> bool:
        """Counts against the (server, model) breaker only (the model failed there)."""
        return OUTCOMES[self.kind].breaker == "model"


def classify(exc: BaseException, server: str) -> Optional[AttemptError]:
    """Map a transport-level exception to an :class:`AttemptError` (``None``: not ours)."""
    if isinstance(exc, AttemptError):
        return exc
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return AttemptError("connect", server, f"cannot connect: {exc or type(exc).__name__}", exc)
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, TimeoutError)):
        return AttemptError("timeout", server, f"timed out: {exc or type(exc).__name__}", exc)
    if isinstance(
        exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.NetworkError)
    ):
        return AttemptError("reset", server, f"connection broken: {exc or type(exc).__name__}", exc)
    return None


def classify_error_text(text: str) -> Kind:
    """The kind of a 500's (or a mid-stream) error text: ``client``, ``model`` or ``server``."""
    low = text.lower()
    if any(marker in low for marker in _CLIENT_500):
        return "client"
    if any(marker in low for marker in _MODEL_500):
        return "model"
    return "server"


def _error_text(body: Any) -> str:
    message = body.get("error") if isinstance(body, dict) else None
    return str(message) if message else str(body)[:200]


def from_status(status: int, body: Any, server: str, model: str) -> Exception:
    """Classify an Ollama error answer (``{"error": "..."}``) by its status and text:
    an :class:`AttemptError`, or :class:`OllamaResponseError` for the caller's errors."""
    text = _error_text(body)
    kind = status_kind(status, text)
    if kind == "client":
        return OllamaResponseError(status, text, server)
    return AttemptError(kind, server, f"{status} {text}", status_code=status)


def status_kind(status: int, text: str) -> Kind:
    """The row of :data:`OUTCOMES` for an HTTP error status and Ollama's error text."""
    if status == 404 and "not found" in text:
        return "not_found"
    if status in (503, 429, 408):
        return "busy"
    if status == 500:
        return classify_error_text(text)
    if status >= 500:
        return "server"
    return "client"


def mid_stream_error(text: str, server: str) -> Exception:
    """An ``{"error": ...}`` line in a stream (Ollama streams a failure that happens after its
    200, e.g. a bad ``format``, this way): the caller's, the model's or the host's."""
    kind = classify_error_text(text)
    if kind == "client":
        # What Ollama answers for the same request unstreamed: a 500 with this text.
        return OllamaResponseError(500, text, server)
    return AttemptError(kind, server, f"error mid-stream: {text}")


class _FailoverWait:
    """No wait while an untried server remains; jittered exponential backoff after."""

    def __init__(
        self, policy: RetryPolicy, untried: Callable[[], bool], rng: random.Random
    ) -> None:
        self._policy = policy
        self._untried = untried
        self._rng = rng
        self._rounds = 0

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if self._untried():
            return 0.0
        delay = min(self._policy.backoff_max_s, self._policy.backoff_base_s * (2**self._rounds))
        self._rounds += 1
        return self._rng.uniform(0, delay) if self._policy.jitter else delay


class _DeadlineSince(tenacity.stop.stop_base):
    """Stop once ``deadline_s`` has passed since ``since`` (``time.monotonic()``, tenacity's
    clock): the deadline of a request whose first attempt began before tenacity's loop."""

    def __init__(self, deadline_s: float, since: float) -> None:
        self._deadline_s = deadline_s
        self._since = since

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        at = retry_state.outcome_timestamp
        return (at if at is not None else time.monotonic()) - self._since >= self._deadline_s


def build_retrying(
    policy: RetryPolicy,
    *,
    untried: Callable[[], bool],
    sleep: Callable[[float], Awaitable[None]],
    rng: Optional[random.Random] = None,
    since: Optional[float] = None,
) -> tenacity.AsyncRetrying:
    """The tenacity policy for one request.

    Args:
        policy: attempts, deadline and backoff.
        untried: returns True while an eligible server has not been tried for this request.
        sleep: the sleep to use (anyio's; tests pass a fake).
        since: when the request's first attempt started (``time.monotonic()``), if before
            the loop's start: ``policy.deadline_s`` counts from it.
    """
    stop: Any = tenacity.stop_after_attempt(policy.attempts)
    if policy.deadline_s is not None:
        if since is None:
            stop = stop | tenacity.stop_after_delay(policy.deadline_s)
        else:
            stop = stop | _DeadlineSince(policy.deadline_s, since)
    return tenacity.AsyncRetrying(
        stop=stop,
        wait=_FailoverWait(policy, untried, rng or random.Random()),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, AttemptError) and e.retryable),
        sleep=sleep,
        reraise=True,
    )


async def retry_after(
    first: AttemptError,
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    since: float,
    untried: Callable[[], bool],
    sleep: Callable[[float], Awaitable[None]],
    rng: Optional[random.Random] = None,
) -> T:
    """The retries of a request whose first attempt, run without the retry machinery, failed
    with ``first``: tenacity's loop (:func:`build_retrying`), with that failure replayed as
    its first attempt, so the attempt count, the deadline (from ``since``, the first
    attempt's start on ``time.monotonic()``), the waits and the error re-raised at the end
    are those of the whole request. ``attempt`` runs each further attempt.

    Why not tenacity from the first attempt: building and entering its loop cost about 44 us
    a request, a tenth of the orchestra's own time on a fast host, for the few requests
    that fail.
    """
    replay: List[AttemptError] = [first]

    async def again() -> T:
        if replay:
            raise replay.pop()
        return await attempt()

    retrying = build_retrying(policy, untried=untried, sleep=sleep, rng=rng, since=since)
    return cast(T, await retrying(again))
