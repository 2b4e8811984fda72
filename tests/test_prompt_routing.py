"""Routing counts the prompt cache: a conversation's next turn goes where its prefix is cached,
unless load says otherwise; the figures show in ``orch.metrics()`` (issue 14)."""

from __future__ import annotations

from typing import Any, Dict, List

from ollama_orchestra import AffinityRule, Orchestra
from ollama_orchestra._balancer import Candidate, HybridStrategy, RouteRequest
from ollama_orchestra.sim import HostProfile, ModelSpec

from .conftest import config_for, fleet

M = "m:latest"
# Prompt evaluation dominates: 2,000 tokens take 2 s, an 8-token answer 0.02 s.
SPEC = ModelSpec(M, size_gb=1, decode_tps=400.0, prompt_tps=1000.0, load_s=0.1)


def conversation(tag: str) -> List[Dict[str, Any]]:
    context = " ".join(f"{tag}{i} repository line" for i in range(500))
    return [{"role": "system", "content": context}, {"role": "user", "content": "start"}]


class TestFollowUpTurns:
    """A conversation's next turn goes where its prefix is cached, not to the emptier host."""

    async def test_next_turn_follows_the_cache_and_metrics_show_it(self) -> None:
        profiles = [HostProfile(n, (SPEC,), num_parallel=2) for n in ("a", "b")]
        async with fleet(profiles, time_scale=0.01) as sim:
            # A "busy" role pinned to each host, to hold one of its slots with a long answer.
            config = config_for(
                sim,
                roles={"busy-a": M, "busy-b": M},
                affinity=(
                    AffinityRule(role="busy-a", servers=("a",), required=True),
                    AffinityRule(role="busy-b", servers=("b",), required=True),
                ),
            )
            async with Orchestra(config) as orch:
                for role in ("busy-a", "busy-b"):  # the model loaded and measured on both
                    hello = [{"role": "user", "content": "hello"}]
                    await orch.chat(role, hello, options={"num_predict": 8})
                messages = conversation("x")
                first = await orch.chat(M, messages, options={"num_predict": 8})
                home = str(first.server)
                messages.append({"role": "assistant", "content": first.message["content"]})
                messages.append({"role": "user", "content": "tool output"})
                long = orch.chat_stream(
                    f"busy-{home}",
                    [{"role": "user", "content": "write a lot"}],
                    options={"num_predict": 100_000},
                )
                async with long:
                    await long.__anext__()  # its slot on ``home`` is held from now on
                    # The other host is idle, ``home`` half busy: a new conversation (cached
                    # nowhere) goes to the idle host, the next turn of this one goes home.
                    fresh = await orch.chat(M, conversation("y"), options={"num_predict": 8})
                    second = await orch.chat(M, messages, options={"num_predict": 8})
                assert fresh.server != home
                assert second.server == home
                snap = orch.metrics().servers[home]
                # The second turn found the first's ~2,000 prompt tokens cached.
                assert snap.prompt_tokens > 4000
                assert snap.cached_tokens > 1500
                assert snap.prefill_s > 0


def cand(name: str, *, free: bool, prefill_s: float, busy_for_s: float = 0.0) -> Candidate:
    return Candidate(
        name,
        slots=1,
        in_use=0 if free else 1,
        weight=1.0,
        loaded=True,
        service_s=1.0 + prefill_s,
        cold_s=0.0,
        busy_for_s=busy_for_s,
        prefill_s=prefill_s,
    )


class TestSoftAffinity:
    """Hybrid weighs the uncached prefill against the wait: affinity is soft."""

    def test_waits_briefly_for_the_busy_host_holding_the_prefix(self) -> None:
        cached = cand("a", free=False, prefill_s=0.1, busy_for_s=1.0)
        cold = cand("b", free=True, prefill_s=8.0)
        choice = HybridStrategy().choose(RouteRequest(M), [cached, cold])
        assert choice.server is None and choice.among == frozenset({"a"})

    def test_load_overrides_the_cache(self) -> None:
        cached = cand("a", free=False, prefill_s=0.1, busy_for_s=30.0)
        cold = cand("b", free=True, prefill_s=8.0)
        assert HybridStrategy().choose(RouteRequest(M), [cached, cold]).server == "b"

    def test_free_host_holding_the_prefix_wins(self) -> None:
        cached = cand("a", free=True, prefill_s=0.1)
        cold = cand("b", free=True, prefill_s=8.0)
        for _ in range(4):  # not a tie broken by rotation
            assert HybridStrategy().choose(RouteRequest(M), [cold, cached]).server == "a"
