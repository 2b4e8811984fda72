"""The library on virtual time: breaker cooldowns, the monitor and failover timing under trio's
MockClock, so minutes of library time pass without a wall-clock wait."""

from __future__ import annotations

import sys
import time
from typing import Any, Awaitable, Callable, Dict, List

import anyio
import httpx
import pytest
import respx

from ollama_orchestra import (
    BreakerPolicy,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    RequestFailed,
    RequestTimeout,
    RetryPolicy,
    Server,
    Timeouts,
)

from .test_client_http import A, B, M, fleet_router, gen_stream

trio = pytest.importorskip("trio")
trio_testing = pytest.importorskip("trio.testing")

# anyio 4.5.2, the last release for Python 3.8, never lets trio's MockClock jump: even a plain
# `anyio.sleep(100)` under it hangs there (trio alone jumps). The library's clock is the same on
# every Python; its virtual-time tests run where the tools allow.
pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 9), reason="anyio 4.5.2 (Python 3.8) hangs under trio's MockClock"
)


def run_virtual(main: Callable[[], Awaitable[None]]) -> float:
    """Run ``main`` on trio under a MockClock that jumps to the next deadline when idle.

    Returns the wall-clock seconds it took (the virtual time is what ``main`` measures).
    """
    clock = trio_testing.MockClock(autojump_threshold=0)
    t0 = time.perf_counter()
    anyio.run(main, backend="trio", backend_options={"clock": clock})
    return time.perf_counter() - t0


def config(**kw: Any) -> OrchestraConfig:
    base: Dict[str, Any] = {
        "servers": (Server("a", A), Server("b", B)),
        "strategy": "round_robin",
        "health": HealthPolicy(interval_s=3600, startup_timeout_s=5),
        "retry": RetryPolicy(attempts=3, backoff_base_s=0, jitter=False),
    }
    base.update(kw)
    return OrchestraConfig(**base)


def orchestra(router: respx.Router, cfg: OrchestraConfig) -> Orchestra:
    return Orchestra(cfg, transport=httpx.MockTransport(router.async_handler))


class TestBreakerOnVirtualTime:
    """An open breaker keeps a server out for its cooldown, then lets one half-open probe in."""

    def test_cooldown_then_half_open_probe_closes_it(self) -> None:
        """After cooldown_s of virtual time the breaker is half-open; a success closes it."""
        router = fleet_router({A: [M]})
        route = router.post(A + "/api/generate")
        route.side_effect = [httpx.Response(500, json={"error": "boom"})] + [
            httpx.Response(200, content=gen_stream(["ok"])) for _ in range(5)
        ]
        cfg = config(
            servers=(Server("a", A),),
            breaker=BreakerPolicy(failure_threshold=1, cooldown_s=600, cooldown_max_s=600),
            retry=RetryPolicy(attempts=1, backoff_base_s=0, jitter=False),
        )
        seen: List[str] = []

        async def main() -> None:
            async with orchestra(router, cfg) as orch:
                with pytest.raises(RequestFailed):
                    await orch.generate(M, "x")
                seen.append(orch.state()["a"].breaker)
                t0 = anyio.current_time()
                with pytest.raises(RequestTimeout):  # waits for a slot the breaker holds shut
                    await orch.generate(M, "x", timeout=1)
                await anyio.sleep(600 - (anyio.current_time() - t0))
                seen.append(orch.state()["a"].breaker)
                r = await orch.generate(M, "x")
                assert r.server == "a"
                seen.append(orch.state()["a"].breaker)

        wall = run_virtual(main)
        assert seen == ["open", "half_open", "closed"]
        assert wall < 60  # ten virtual minutes, no wall-clock wait


class TestFailoverOnVirtualTime:
    """The first-byte timeout and the retry backoff are waits on the library's clock."""

    def test_hung_host_is_cut_at_first_byte_s(self) -> None:
        """A host that never answers is cut at first_byte_s (virtual) and b serves the request."""
        router = fleet_router({A: [M], B: [M]})

        async def hang(request: httpx.Request) -> httpx.Response:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        router.post(A + "/api/generate").mock(side_effect=hang)
        router.post(B + "/api/generate").respond(content=gen_stream(["ok"]))
        cfg = config(timeouts=Timeouts(first_byte_s=120))
        took: List[float] = []

        async def main() -> None:
            async with orchestra(router, cfg) as orch:
                t0 = anyio.current_time()
                r = await orch.generate(M, "x")
                took.append(anyio.current_time() - t0)
                assert r.server == "b" and r.attempts == 2

        wall = run_virtual(main)
        assert 120 <= took[0] < 121
        assert wall < 60

    def test_backoff_between_rounds_is_slept_on_the_library_clock(self) -> None:
        """With every server failing, the rounds are spaced by the backoff (30 s, then 60 s)."""
        router = fleet_router({A: [M], B: [M]})
        router.post(A + "/api/generate").respond(500, json={"error": "boom"})
        router.post(B + "/api/generate").respond(500, json={"error": "boom"})
        cfg = config(
            servers=(Server("a", A),),
            breaker=BreakerPolicy(failure_threshold=100, cooldown_s=1),
            retry=RetryPolicy(attempts=3, backoff_base_s=30, backoff_max_s=300, jitter=False),
        )
        took: List[float] = []

        async def main() -> None:
            async with orchestra(router, cfg) as orch:
                t0 = anyio.current_time()
                with pytest.raises(RequestFailed):
                    await orch.generate(M, "x")
                took.append(anyio.current_time() - t0)

        wall = run_virtual(main)
        assert 90 <= took[0] < 91  # 30 s + 60 s of backoff, on virtual time
        assert wall < 60


class TestMonitorOnVirtualTime:
    """The health monitor probes at its interval and marks a failing server down."""

    def test_failing_probes_mark_down_then_recovery_marks_up(self) -> None:
        """unhealthy_after failed probes mark a server down; a good probe brings it back."""
        router = fleet_router({A: [M], B: [M]})
        up = {"a": True}

        def version(request: httpx.Request) -> httpx.Response:
            if up["a"]:
                return httpx.Response(200, json={"version": "0.12.0"})
            return httpx.Response(503, json={"error": "down"})

        router.get(A + "/api/version").mock(side_effect=version)
        cfg = config(
            health=HealthPolicy(
                interval_s=60, down_interval_s=10, jitter=0, unhealthy_after=2, startup_timeout_s=5
            )
        )
        seen: List[bool] = []

        async def main() -> None:
            async with orchestra(router, cfg) as orch:
                seen.append(orch.state()["a"].healthy)
                up["a"] = False
                await anyio.sleep(60 * 2 + 1)  # two failing probes, an interval apart
                seen.append(orch.state()["a"].healthy)
                up["a"] = True
                await anyio.sleep(10 + 1)  # a down server is probed every down_interval_s
                seen.append(orch.state()["a"].healthy)

        wall = run_virtual(main)
        assert seen == [True, False, True]
        assert wall < 60

    def test_probes_come_one_interval_apart(self) -> None:
        """A healthy server is probed every interval_s: ten minutes, ten more probes."""
        router = fleet_router({A: [M], B: [M]})
        route = router.get(A + "/api/version").respond(json={"version": "0.12.0"})
        cfg = config(
            health=HealthPolicy(
                interval_s=60, down_interval_s=10, jitter=0, unhealthy_after=2, startup_timeout_s=5
            )
        )
        counts: List[int] = []

        async def main() -> None:
            async with orchestra(router, cfg):
                counts.append(route.call_count)
                await anyio.sleep(600 + 1)
                counts.append(route.call_count)

        wall = run_virtual(main)
        assert counts[1] - counts[0] == 10
        assert wall < 60
