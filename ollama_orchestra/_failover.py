"""Failover: what is retried, where, and how soon. Errors are classified here, once.

=================================  ==========================================================
outcome of an attempt              what happens
=================================  ==========================================================
connect error / refused            server marked down at once; retried on another server now
timeout before the first byte      breaker failure; retried on another server now
connection reset, broken stream    breaker failure; retried elsewhere (unless text was
                                   already yielded to the caller: ``StreamInterrupted``)
HTTP 5xx                           breaker failure; retried elsewhere
HTTP 503 (Ollama's queue is full)  retried elsewhere; not a breaker failure (busy, not broken)
HTTP 404 model not found           that server's model list is corrected; retried on a
                                   server that has the model (``NoCapableServer`` if none)
HTTP 400 and other 4xx             the caller's fault: ``OllamaResponseError`` at once
=================================  ==========================================================

A failed attempt goes at once to a server not yet tried for this request; the exponential,
jittered backoff applies only once every eligible server has failed it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import httpx
import tenacity

from ._config import RetryPolicy
from ._errors import OllamaResponseError

__all__ = ["AttemptError", "Kind", "build_retrying", "classify"]

#: What kind of failure an attempt ended with.
Kind = str  # "connect" | "timeout" | "reset" | "server" | "busy" | "not_found" | "client"

RETRYABLE = frozenset({"connect", "timeout", "reset", "server", "busy", "not_found"})
#: Kinds that count against a server's circuit breaker.
BREAKER_FAILURES = frozenset({"connect", "timeout", "reset", "server"})


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
        return self.kind in RETRYABLE

    @property
    def breaker_failure(self) -> bool:
        return self.kind in BREAKER_FAILURES


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


def from_status(status: int, body: Any, server: str, model: str) -> Exception:
    """Classify an Ollama error answer (``{"error": "..."}``) by its status."""
    message = body.get("error") if isinstance(body, dict) else None
    text = str(message) if message else str(body)[:200]
    if status == 404 and "not found" in text:
        return AttemptError("not_found", server, f"404 {text}", status_code=status)
    if status == 503:
        return AttemptError("busy", server, f"503 {text}", status_code=status)
    if status >= 500:
        return AttemptError("server", server, f"{status} {text}", status_code=status)
    if status == 429 or status == 408:
        return AttemptError("busy", server, f"{status} {text}", status_code=status)
    return OllamaResponseError(status, text, server)


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


def build_retrying(
    policy: RetryPolicy,
    *,
    untried: Callable[[], bool],
    sleep: Callable[[float], Awaitable[None]],
    rng: Optional[random.Random] = None,
) -> tenacity.AsyncRetrying:
    """The tenacity policy for one request.

    Args:
        policy: attempts, deadline and backoff.
        untried: returns True while an eligible server has not been tried for this request.
        sleep: the sleep to use (anyio's; tests pass a fake).
    """
    stop: Any = tenacity.stop_after_attempt(policy.attempts)
    if policy.deadline_s is not None:
        stop = stop | tenacity.stop_after_delay(policy.deadline_s)
    return tenacity.AsyncRetrying(
        stop=stop,
        wait=_FailoverWait(policy, untried, rng or random.Random()),
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, AttemptError) and e.retryable),
        sleep=sleep,
        reraise=True,
    )
