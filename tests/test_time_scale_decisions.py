"""Routing decisions do not depend on the unit the hosts report durations in (issue 14).

The simulator reports durations in simulated time; at ``time_scale`` 0.1 the orchestra sees
everything 10x faster than reported. Every estimate the balancer compares is in its own
clock (reported durations converted by the learned time ratio), so the same workload makes
the same decisions at ``time_scale`` 1.0 (as a real host) and 0.1.
"""

from __future__ import annotations

from typing import Any, Dict, List

import anyio
import httpx

from ollama_orchestra import HealthPolicy, Orchestra, OrchestraConfig
from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet

M = "m:latest"
# ``slow`` decodes 40 tokens in 0.4 s, ``fast`` (speed 4) in 0.1 s; a load takes 0.1 s.
# (Short, as the run at time_scale 1.0 takes them in real time; the ratios decide.)
SPEC = ModelSpec(M, size_gb=1, decode_tps=100.0, prompt_tps=16000.0, load_s=0.1)


def context(tag: str) -> str:
    return " ".join(f"{tag}{i} repository line" for i in range(400))


async def decisions(scale: float) -> List[str]:
    """Where each request of a mixed sequence went, on a slow and a 4x faster host."""
    profiles = [
        HostProfile("slow", (SPEC,), speed=1.0, num_parallel=1),
        HostProfile("fast", (SPEC,), speed=4.0, num_parallel=1),
    ]
    served: List[str] = []
    async with SimFleet(profiles, time_scale=scale) as fleet:
        config = OrchestraConfig(
            servers=fleet.server_configs(),
            health=HealthPolicy(interval_s=600.0, down_interval_s=600.0),
        )
        async with Orchestra(config) as orch:

            async def ask(messages: List[Dict[str, Any]]) -> None:
                r = await orch.chat(M, messages, options={"num_predict": 40})
                served.append(str(r.server))
                messages.append({"role": "assistant", "content": r.message["content"]})

            one = [{"role": "system", "content": context("a")}, {"role": "user", "content": "go"}]
            two = [{"role": "system", "content": context("b")}, {"role": "user", "content": "go"}]
            # Two at once: both hosts are measured (cold loads included).
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, one)
                tg.start_soon(ask, two)
            served.sort()  # which of the two came back first is a race, not a decision
            # Conversation turns, one at a time.
            for conv in (one, two, one, two):
                conv.append({"role": "user", "content": "next"})
                await ask(conv)
            # The fast host drops the model (Ollama: keep_alive 0 unloads it) and the next
            # request chooses between a cold load there and the warm slow host.
            async with httpx.AsyncClient(base_url=fleet["fast"].url) as http:
                r = await http.post("/api/generate", json={"model": M, "keep_alive": 0})
                r.raise_for_status()
            snap = await orch.refresh()
            assert not [m for m in snap["fast"].loaded if m.name == M]
            await ask([{"role": "user", "content": "a short stateless question"}])
    return served


class TestTimeScale:
    """The same routing decisions at time_scale 1.0 and 0.1."""

    async def test_same_decisions_at_both_scales(self) -> None:
        real = await decisions(1.0)
        scaled = await decisions(0.1)
        assert real == scaled
        # And the decisions are the cost model's: conversations on the fast host; after the
        # unload, a 0.1 s cold load there beats the warm host that is 4x slower.
        assert real == ["fast", "slow", "fast", "fast", "fast", "fast", "fast"]
