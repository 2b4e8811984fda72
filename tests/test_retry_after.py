"""The retries after a first attempt that ran without tenacity: the same attempts, deadline,
waits and last error as one tenacity loop over the whole request."""

from __future__ import annotations

import time
from typing import List

import pytest

from ollama_orchestra import RetryPolicy
from ollama_orchestra._failover import AttemptError, retry_after


def _failure(n: int) -> AttemptError:
    return AttemptError("server", f"h{n}", f"500 boom {n}")


class _Attempts:
    """Further attempts: each fails, except the ones listed in ``succeed_on`` (1-based)."""

    def __init__(self, succeed_on: int = 0) -> None:
        self.calls = 0
        self.succeed_on = succeed_on
        self.slept: List[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls == self.succeed_on:
            return "ok"
        raise _failure(self.calls + 1)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def _retry(
    attempts: _Attempts, policy: RetryPolicy, *, since: float, untried: bool = True
) -> str:
    return await retry_after(
        _failure(1),
        attempts,
        policy,
        since=since,
        untried=lambda: untried,
        sleep=attempts.sleep,
    )


class TestRetryAfter:
    async def test_the_first_failure_counts_as_an_attempt(self) -> None:
        """With three attempts, two more run after the first failure; the last error is raised."""
        attempts = _Attempts()
        with pytest.raises(AttemptError, match="boom 3"):
            await _retry(attempts, RetryPolicy(attempts=3), since=time.monotonic())
        assert attempts.calls == 2

    async def test_one_attempt_means_no_retry(self) -> None:
        """With one attempt, the first failure is raised and nothing else runs."""
        attempts = _Attempts()
        with pytest.raises(AttemptError, match="boom 1"):
            await _retry(attempts, RetryPolicy(attempts=1), since=time.monotonic())
        assert attempts.calls == 0

    async def test_a_retry_that_succeeds_returns_its_result(self) -> None:
        """A retry's success is the request's result."""
        attempts = _Attempts(succeed_on=1)
        assert await _retry(attempts, RetryPolicy(attempts=3), since=time.monotonic()) == "ok"
        assert attempts.calls == 1

    async def test_the_deadline_counts_from_the_first_attempt(self) -> None:
        """A first attempt that used up the deadline leaves no time for a retry."""
        attempts = _Attempts()
        policy = RetryPolicy(attempts=5, deadline_s=5.0)
        with pytest.raises(AttemptError, match="boom 1"):
            await _retry(attempts, policy, since=time.monotonic() - 10.0)
        assert attempts.calls == 0
        attempts = _Attempts()
        with pytest.raises(AttemptError, match="boom 5"):
            await _retry(attempts, policy, since=time.monotonic())
        assert attempts.calls == 4

    async def test_backoff_only_once_every_server_was_tried(self) -> None:
        """No wait while an untried server is eligible; exponential backoff after."""
        policy = RetryPolicy(attempts=3, backoff_base_s=0.5, jitter=False)
        attempts = _Attempts()
        with pytest.raises(AttemptError):
            await _retry(attempts, policy, since=time.monotonic(), untried=True)
        assert attempts.slept == [0.0, 0.0]
        attempts = _Attempts()
        with pytest.raises(AttemptError):
            await _retry(attempts, policy, since=time.monotonic(), untried=False)
        assert attempts.slept == [0.5, 1.0]

    async def test_an_error_that_is_not_retried_ends_the_request(self) -> None:
        """An error other than a retryable attempt failure is raised at once."""
        calls = 0

        async def bug() -> str:
            nonlocal calls
            calls += 1
            raise ValueError("not an attempt failure")

        with pytest.raises(ValueError, match="not an attempt failure"):
            await retry_after(
                _failure(1),
                bug,
                RetryPolicy(attempts=3),
                since=time.monotonic(),
                untried=lambda: True,
                sleep=_Attempts().sleep,
            )
        assert calls == 1
