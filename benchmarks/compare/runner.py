"""Running a workload through a contender, and contenders side by side.

Contenders always run alternating, round by round (A B C B C A ...), never all of A then all
of B, so that a drift of the machine affects them alike; figures are ratios within a round.
"""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import anyio

from .contenders import Contender, Host

log = logging.getLogger("benchmarks.compare")

T = TypeVar("T")

_BATCHES = itertools.count(1)  # numbers each batch's prompts (:func:`run_workload`)


@dataclass
class Outcome:
    """What one contender did with one batch of requests."""

    contender: str
    requests: int
    elapsed_s: float
    per_host: Dict[str, int]
    failures: int = 0
    utilization: Dict[str, float] = field(default_factory=dict)  # busy slot-s / slot-s
    window_utilization: Dict[str, float] = field(default_factory=dict)  # metrics' own figure
    imbalance: Optional[float] = None
    timeline: List[Tuple[float, Dict[str, float]]] = field(default_factory=list)
    finished: List[float] = field(default_factory=list)  # completion times since the start

    @property
    def throughput(self) -> float:
        """Answers per second over the whole batch: first send to last answer."""
        return (self.requests - self.failures) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def steady_throughput(self) -> float:
        """Answers per second at saturation: between the 10% and the 90% completion, which
        leaves out the ramp-up and the tail (the last answers of a batch)."""
        done = sorted(self.finished)
        lo, hi = len(done) // 10, (9 * len(done)) // 10
        if hi <= lo or done[hi - 1] <= done[lo]:
            return self.throughput
        return (hi - 1 - lo) / (done[hi - 1] - done[lo])

    def share_imbalance(self, hosts: Sequence[Host]) -> float:
        """Largest gap between a host's share of answers and its share of slots."""
        done = sum(self.per_host.values()) or 1
        slots = sum(h.slots for h in hosts)
        return max(abs(self.per_host.get(h.name, 0) / done - h.slots / slots) for h in hosts)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "contender": self.contender,
            "requests": self.requests,
            "failures": self.failures,
            "elapsed_s": self.elapsed_s,
            "throughput_rps": self.throughput,
            "steady_throughput_rps": self.steady_throughput,
            "per_host": self.per_host,
            "utilization": self.utilization,
            "window_utilization": self.window_utilization,
            "imbalance": self.imbalance,
        }


async def run_workload(
    contender: Contender,
    hosts: Sequence[Host],
    models: Sequence[str],
    *,
    sample_every: Optional[float] = None,
) -> Outcome:
    """Every request of the workload sent at once; elapsed = first send to last answer.

    Each batch's prompts are its own (``batch <n>: request <i>``): a host's prompt caches
    (the simulator's, as llama-server's) keep the prompts of the batches before, and the
    same prompts again would start warm or cold depending on who ran last and where its
    requests went (measured: the batch after LiteLLM's, whose prompts are rendered from chat
    messages, ran 7% slower than the same contender's next one; the one-host baseline ran
    3% slower in the rounds on two hosts, whose contenders spread the same prompts over both,
    than in the rounds on one). With prompts of its own, every batch starts alike.

    With ``sample_every`` (seconds), an orchestra's per-server utilization is sampled that
    often into the outcome's timeline.
    """
    batch = next(_BATCHES)
    per_host: Dict[str, int] = {}
    finished: List[float] = []
    failures = 0
    timeline: List[Tuple[float, Dict[str, float]]] = []
    async with contender.open(hosts) as send:
        # Warm: the connection pool and, for the orchestra, its view of the hosts.
        with anyio.fail_after(120):
            await send(models[0], f"batch {batch}: warm")
        orch = contender.orchestra
        if orch is not None:
            orch.reset_metrics()
        t0 = time.perf_counter()
        last = t0

        async def one(i: int, model: str) -> None:
            nonlocal failures, last
            try:
                name = await send(model, f"batch {batch}: request {i}")
            except Exception as exc:
                failures += 1
                log.warning("%s: request %d failed: %r", contender.name, i, exc)
                return
            per_host[name] = per_host.get(name, 0) + 1
            last = time.perf_counter()
            finished.append(last - t0)

        async def sampler() -> None:
            assert orch is not None and sample_every is not None
            prev = {n: s.busy_slot_s for n, s in orch.metrics().servers.items()}
            before = time.perf_counter()
            while True:
                await anyio.sleep(sample_every)
                snap = orch.metrics().servers
                now = time.perf_counter()
                dt = max(now - before, 1e-6)
                util = {
                    n: min(1.0, (s.busy_slot_s - prev[n]) / (s.slots * dt)) for n, s in snap.items()
                }
                prev = {n: s.busy_slot_s for n, s in snap.items()}
                before = now
                timeline.append((now - t0, util))

        async with anyio.create_task_group() as outer:
            if orch is not None and sample_every:
                outer.start_soon(sampler)
            async with anyio.create_task_group() as tg:
                for i, model in enumerate(models):
                    tg.start_soon(one, i, model)
            elapsed = last - t0
            outer.cancel_scope.cancel()
        out = Outcome(
            contender.name,
            len(models),
            elapsed,
            per_host,
            failures,
            timeline=timeline,
            finished=finished,
        )
        if orch is not None:
            m = orch.metrics()
            # busy_slot_s is integrated exactly since reset_metrics(); the snapshot's own
            # `utilization` comes from 1 s buckets and under-counts windows of a few seconds
            # (the first, partial second after a reset is discounted twice): both reported.
            out.utilization = {
                n: s.busy_slot_s / (s.slots * m.elapsed_s) for n, s in m.servers.items()
            }
            out.window_utilization = {n: s.utilization for n, s in m.servers.items()}
            out.imbalance = m.imbalance
    if out.imbalance is None:
        out.imbalance = out.share_imbalance(hosts)
    return out


async def side_by_side(
    contenders: Sequence[Contender],
    rounds: int,
    run: Callable[[Contender, int], Awaitable[T]],
    *,
    before_round: Optional[Callable[[int], Awaitable[None]]] = None,
) -> Dict[str, List[T]]:
    """``run(contender, round)`` for each contender in turn, ``rounds`` times over: each
    contender's results in round order. ``before_round(round)`` runs first in each round
    (e.g. to measure a baseline in that same round).

    The order turns by one each round (A B C, B C A, C A B, ...): no contender always runs
    first, or always right after the same other one (a contender that leaves garbage or
    open connections behind, LiteLLM's, would otherwise slow the same next one every round).
    """
    runs: Dict[str, List[T]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        if before_round is not None:
            await before_round(r)
        turn = r % len(contenders) if contenders else 0
        for c in [*contenders[turn:], *contenders[:turn]]:
            runs[c.name].append(await run(c, r))
    return runs


def mean_ratio(values: Iterable[float], bases: Iterable[float]) -> float:
    """The mean of each round's value over the same round's base."""
    return statistics.mean(v / b for v, b in zip(values, bases))
