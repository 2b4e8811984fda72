"""What the fleet did: utilization, share of work, imbalance, latency, failovers.

Collection only: read through frozen snapshots (:meth:`Metrics.snapshot`, and the histograms
behind it, :meth:`Metrics.distributions`); ``_prometheus`` renders them as text. Memory is
bounded: latencies go to a fixed log-spaced histogram, busy time to per-second buckets over
the window.

Busy time has one owner. Who holds a server's slots is kept by the balancer's slot store
(``_lease.SlotStore``), and nowhere else: after every take and give-back the balancer tells
:meth:`Metrics.slots_held` the server's new number of held leases, read from that store.
The metrics integrate busy slot-seconds exactly between those reports, and keep the last
count only to know the level to integrate until the next one. A report is the count itself,
not a +1/-1: a repeated report changes nothing, and there is no running sum that one wrong
report would leave off for good. The in-flight figure of a snapshot is the store's count at
its last change. (Before, acquire and release bumped a second counter here, which agreed
with the leases only as long as every path remembered both calls.) The client feeds request
outcomes, failovers, continuations and breaker trips.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ._clock import now as clock_now
from ._config import Server
from ._prometheus import render_prometheus

__all__ = [
    "Distribution",
    "Distributions",
    "Histogram",
    "LatencyStats",
    "Metrics",
    "MetricsSnapshot",
    "ServerMetrics",
]

#: Histogram bucket upper bounds (seconds): 1 ms .. ~20 min, 10% apart.
_BOUNDS: Tuple[float, ...] = tuple(
    0.001 * (1.1**i) for i in range(int(math.log(1200 / 0.001, 1.1)) + 2)
)


class Histogram:
    """Fixed log-spaced buckets (10% apart): percentiles within ~10%, constant memory."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, value)] += 1
        self.count += 1
        self.sum += value

    def percentile(self, q: float) -> float:
        """The ``q``-quantile (0..1), interpolated inside its bucket; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lo = _BOUNDS[i - 1] if i > 0 else 0.0
                hi = _BOUNDS[i] if i < len(_BOUNDS) else _BOUNDS[-1]
                return lo + (hi - lo) * max(0.0, min(1.0, (rank - seen) / n))
            seen += n
        return _BOUNDS[-1]  # pragma: no cover

    def stats(self) -> LatencyStats:
        return LatencyStats(
            count=self.count,
            mean=self.sum / self.count if self.count else 0.0,
            p50=self.percentile(0.50),
            p95=self.percentile(0.95),
            p99=self.percentile(0.99),
        )

    def cumulative(self) -> List[Tuple[float, int]]:
        """``(upper bound, cumulative count)`` pairs, for Prometheus' ``_bucket`` lines."""
        out, total = [], 0
        for bound, n in zip(_BOUNDS, self.counts):
            total += n
            out.append((bound, total))
        return out

    def frozen(self) -> Distribution:
        return Distribution(buckets=tuple(self.cumulative()), count=self.count, sum=self.sum)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean: float
    p50: float
    p95: float
    p99: float


@dataclass(frozen=True)
class Distribution:
    """A histogram at one moment: what an exposition format needs beyond the percentiles."""

    #: ``(upper bound, cumulative count)``, bounds ascending; observations above the last
    #: bound are only in ``count``.
    buckets: Tuple[Tuple[float, int], ...]
    count: int
    sum: float


@dataclass(frozen=True)
class Distributions:
    """The histograms behind a :class:`MetricsSnapshot`: :meth:`Metrics.distributions`."""

    #: Latency of successful requests, per server in the fleet's order.
    latency: Mapping[str, Distribution]
    #: Time from a request's first failure to its rerouted success.
    failover: Distribution


@dataclass(frozen=True)
class ServerMetrics:
    """One server's figures over the measurement window."""

    name: str
    requests: int
    successes: int
    failures: int
    in_flight: int
    slots: int
    busy_slot_s: float
    utilization: float
    share: float
    fair_share: float
    tokens_per_s: float
    latency: LatencyStats
    breaker_trips: int
    #: prompt tokens of the successful requests (Ollama's ``prompt_eval_count``: all of them).
    prompt_tokens: int = 0
    #: of those, the ones the host's prompt cache held (estimated from the evaluation time).
    cached_tokens: int = 0
    #: seconds spent evaluating prompts (the uncached part), in the orchestra's clock.
    prefill_s: float = 0.0


@dataclass(frozen=True)
class MetricsSnapshot:
    """The fleet's figures: ``orch.metrics()``."""

    elapsed_s: float
    window_s: float
    requests: int
    successes: int
    failures: int
    throughput_rps: float
    imbalance: float
    latency: LatencyStats
    failovers: int
    failover_p50_s: float
    failover_p95_s: float
    failover_max_s: float
    breaker_trips: int
    servers: Mapping[str, ServerMetrics]
    #: streams continued on another host after breaking mid-answer, by the broken server.
    continuations: Mapping[str, int] = field(default_factory=dict)
    #: answer tokens yielded before those breaks (not generated again).
    tokens_salvaged: int = 0
    #: time from a break to the continuation's first chunk.
    continuation_p50_s: float = 0.0
    continuation_p95_s: float = 0.0
    #: how slots are shared with other processes (``coordination``): ``"off"`` (not shared),
    #: ``"redis"`` (shared), or ``"local-fallback"`` (Redis unreachable: local limits).
    coordination: str = "off"


class _Busy:
    """Busy slot-seconds, integrated exactly between held-count reports, in 1 s buckets."""

    __slots__ = ("buckets", "busy", "last", "total")

    def __init__(self, now: float) -> None:
        self.busy = 0  # slots held, as last reported by their owner
        self.last = now
        self.total = 0.0
        self.buckets: Deque[List[float]] = deque()  # [second, busy slot-seconds in it]

    def advance(self, now: float, keep_s: float) -> None:
        t = self.last
        while t < now:
            second = math.floor(t)
            end = min(now, second + 1.0)
            if self.busy:
                amount = self.busy * (end - t)
                self.total += amount
                if self.buckets and self.buckets[-1][0] == second:
                    self.buckets[-1][1] += amount
                else:
                    self.buckets.append([second, amount])
            t = end
            if not self.busy:
                break
        self.last = now
        while self.buckets and self.buckets[0][0] < now - keep_s - 1:
            self.buckets.popleft()

    def within(self, start: float, now: float) -> float:
        total = 0.0
        for second, amount in self.buckets:
            if second + 1 <= start:
                continue
            if second >= start:
                total += amount
            else:  # the bucket straddles the window start: count its share
                total += amount * (second + 1 - start)
        return total


class _ServerCounters:
    __slots__ = (
        "busy",
        "cached_tokens",
        "failures",
        "latency",
        "prefill_s",
        "prompt_tokens",
        "slots",
        "successes",
        "tokens",
        "tokens_s",
        "trips",
    )

    def __init__(self, slots: int, now: float) -> None:
        self.slots = slots
        self.busy = _Busy(now)
        self.successes = 0
        self.failures = 0
        self.latency = Histogram()
        self.tokens = 0
        self.tokens_s = 0.0
        self.trips = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.prefill_s = 0.0


class Metrics:
    """Counters for one orchestra (see the module docstring).

    Args:
        servers: the fleet; a server's capacity for the fair share is ``slots * weight``.
        clock: the time source.
        window_s: utilization is measured over the last ``window_s`` seconds (or since the
            last :meth:`reset`, if sooner).
    """

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        clock: Callable[[], float] = clock_now,
        window_s: float = 60.0,
    ) -> None:
        self._servers = list(servers)
        self._clock = clock
        self.window_s = window_s
        self._coordination: Callable[[], Optional[str]] = lambda: None
        self.reset()

    def attach_coordination(self, mode: Callable[[], Optional[str]]) -> None:
        """Where snapshots read the slot sharing mode from (``None``: off)."""
        self._coordination = mode

    def reset(self) -> None:
        """Start a new measurement window (in-flight slots stay counted)."""
        now = self._clock()
        old = getattr(self, "_per", {})
        self._started = now
        self._per: Dict[str, _ServerCounters] = {}
        for s in self._servers:
            c = _ServerCounters(s.max_concurrency, now)
            if s.name in old:  # the held count last reported stays true
                c.busy.busy = old[s.name].busy.busy
            self._per[s.name] = c
        self._latency = Histogram()
        self._failovers = Histogram()
        self._failover_max = 0.0
        self._continued: Dict[str, int] = {}
        self._salvaged = 0
        self._continuation_lost = Histogram()

    # -- feeding ---------------------------------------------------------------------------

    def slots_held(self, server: str, count: int) -> None:
        """``server`` holds ``count`` slots from now on: the balancer reports its slot store's
        count after every change (see the module docstring)."""
        busy = self._per[server].busy
        busy.advance(self._clock(), self.window_s)
        busy.busy = count

    def request_finished(
        self,
        server: str,
        *,
        ok: bool,
        latency_s: float,
        eval_count: int = 0,
        eval_duration_s: float = 0.0,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        prefill_s: float = 0.0,
    ) -> None:
        c = self._per[server]
        if ok:
            c.successes += 1
            c.prompt_tokens += prompt_tokens
            c.cached_tokens += cached_tokens
            c.prefill_s += prefill_s
            c.latency.add(latency_s)
            self._latency.add(latency_s)
            if eval_count > 0 and eval_duration_s > 0:
                c.tokens += eval_count
                c.tokens_s += eval_duration_s
        else:
            c.failures += 1

    def failover(self, duration_s: float) -> None:
        """A request succeeded after failing over; ``duration_s`` from its first failure."""
        self._failovers.add(duration_s)
        self._failover_max = max(self._failover_max, duration_s)

    def continued(self, broken: str, tokens: int, lost_s: float) -> None:
        """A stream that broke on ``broken`` after ``tokens`` answer tokens was continued
        elsewhere, its next chunk ``lost_s`` after the break."""
        self._continued[broken] = self._continued.get(broken, 0) + 1
        self._salvaged += tokens
        self._continuation_lost.add(lost_s)

    def breaker_trip(self, server: str) -> None:
        self._per[server].trips += 1

    # -- reading ---------------------------------------------------------------------------

    def snapshot(self) -> MetricsSnapshot:
        now = self._clock()
        elapsed = max(now - self._started, 1e-9)
        window = min(elapsed, self.window_s)
        start = now - window
        capacity = {s.name: s.max_concurrency * s.weight for s in self._servers}
        total_capacity = sum(capacity.values())
        total_ok = sum(c.successes for c in self._per.values())
        servers: Dict[str, ServerMetrics] = {}
        imbalance = 0.0
        for s in self._servers:
            c = self._per[s.name]
            c.busy.advance(now, self.window_s)
            # Since the last reset (the window not yet full) every bucket lies inside it: the
            # first one started at the reset, so it must not be pro-rated as if it had not.
            busy_window = c.busy.total if elapsed <= self.window_s else c.busy.within(start, now)
            share = c.successes / total_ok if total_ok else 0.0
            fair = capacity[s.name] / total_capacity
            if total_ok:
                imbalance = max(imbalance, abs(share - fair))
            servers[s.name] = ServerMetrics(
                name=s.name,
                requests=c.successes + c.failures,
                successes=c.successes,
                failures=c.failures,
                in_flight=c.busy.busy,
                slots=c.slots,
                busy_slot_s=c.busy.total,
                utilization=min(1.0, busy_window / (c.slots * window)) if window > 0 else 0.0,
                share=share,
                fair_share=fair,
                tokens_per_s=c.tokens / c.tokens_s if c.tokens_s else 0.0,
                latency=c.latency.stats(),
                breaker_trips=c.trips,
                prompt_tokens=c.prompt_tokens,
                cached_tokens=c.cached_tokens,
                prefill_s=c.prefill_s,
            )
        failures = sum(c.failures for c in self._per.values())
        return MetricsSnapshot(
            elapsed_s=elapsed,
            window_s=window,
            requests=total_ok + failures,
            successes=total_ok,
            failures=failures,
            throughput_rps=total_ok / elapsed,
            imbalance=imbalance,
            latency=self._latency.stats(),
            failovers=self._failovers.count,
            failover_p50_s=self._failovers.percentile(0.5),
            failover_p95_s=self._failovers.percentile(0.95),
            failover_max_s=self._failover_max,
            breaker_trips=sum(c.trips for c in self._per.values()),
            servers=servers,
            continuations=dict(self._continued),
            tokens_salvaged=self._salvaged,
            continuation_p50_s=self._continuation_lost.percentile(0.5),
            continuation_p95_s=self._continuation_lost.percentile(0.95),
            coordination=self._coordination() or "off",
        )

    def distributions(self) -> Distributions:
        """The histograms behind the snapshot's percentiles (for an exposition format)."""
        return Distributions(
            latency={s.name: self._per[s.name].latency.frozen() for s in self._servers},
            failover=self._failovers.frozen(),
        )

    def to_prometheus(self) -> str:
        """The same figures in Prometheus' text exposition format (see ``_prometheus``)."""
        return render_prometheus(self.snapshot(), self.distributions())
