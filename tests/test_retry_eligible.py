"""A retry goes to a server the request has not tried while one is eligible, under every
affinity mode; only when none is left does it go back, and then after its backoff."""

from __future__ import annotations

from typing import List, Tuple

import httpx
import pytest

from ollama_orchestra import (
    AffinityRule,
    GenerateResponse,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    RequestFailed,
    RetryPolicy,
    Server,
)

from .test_client_http import A, B, M, fleet_router, gen_stream

MODES = {
    "none": (),
    "preferred": (AffinityRule(model=M, servers=("a",)),),
    "required": (AffinityRule(model=M, servers=("a",), required=True),),
}


async def _run(mode: str) -> Tuple[int, int, List[float], object]:
    """Host a always fails with a retryable 500: (a's calls, b's calls, sleeps, outcome)."""
    router = fleet_router({A: [M], B: [M]})
    ra = router.post(A + "/api/generate").respond(500, json={"error": "something broke"})
    rb = router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
    sleeps: List[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    cfg = OrchestraConfig(
        servers=(Server("a", A), Server("b", B)),
        strategy="round_robin",
        affinity=MODES[mode],
        health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
        retry=RetryPolicy(attempts=3, backoff_base_s=0.5, jitter=False),
    )
    outcome: object
    async with Orchestra(
        cfg, transport=httpx.MockTransport(router.async_handler), sleep=sleep
    ) as orch:
        try:
            outcome = await orch.generate(M, "x")
        except RequestFailed as exc:
            outcome = exc
    return ra.call_count, rb.call_count, [s for s in sleeps if s > 0], outcome


class TestRetryGoesToAnUntriedServer:
    @pytest.mark.parametrize("mode", ["none", "preferred"])
    async def test_retry_goes_to_the_other_eligible_server(self, mode: str) -> None:
        """With another eligible server, a retry never returns to the failed one, no backoff."""
        a_calls, b_calls, sleeps, outcome = await _run(mode)
        assert isinstance(outcome, GenerateResponse) and outcome.server == "b"
        assert a_calls <= 1 and b_calls == 1
        assert sleeps == []

    async def test_required_rule_retries_its_server_after_backoff(self) -> None:
        """Under a required rule the only eligible server is retried, each time after a backoff."""
        a_calls, b_calls, sleeps, outcome = await _run("required")
        assert isinstance(outcome, RequestFailed)
        assert (a_calls, b_calls) == (3, 0)
        assert sleeps == [0.5, 1.0]
