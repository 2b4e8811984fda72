"""Metric arithmetic with a fake clock: utilization, share, imbalance, percentiles, exposition."""

from __future__ import annotations

import random
import re
from typing import Dict, Tuple

import pytest

from ollama_orchestra import Server
from ollama_orchestra._metrics import Histogram, Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(*servers: Server, window_s: float = 60.0) -> Tuple[Metrics, Clock]:
    clock = Clock()
    return Metrics(servers, clock=clock, window_s=window_s), clock


A = Server("a", "http://h:1", max_concurrency=2)
B = Server("b", "http://h:2", max_concurrency=2)


class TestUtilization:
    def test_one_of_two_slots_busy_half_the_time(self) -> None:
        """Two slots, one busy half the time: 25% utilization."""
        m, clock = make(A)
        m.lease_acquired("a")
        clock.now += 5
        m.lease_released("a")
        clock.now += 5
        s = m.snapshot().servers["a"]
        assert s.utilization == pytest.approx(0.25)
        assert s.busy_slot_s == pytest.approx(5.0)

    def test_in_flight_counts_up_to_now(self) -> None:
        """A slot still busy counts up to the snapshot's time."""
        m, clock = make(A)
        m.lease_acquired("a")
        m.lease_acquired("a")
        clock.now += 3
        s = m.snapshot().servers["a"]
        assert s.utilization == pytest.approx(1.0) and s.in_flight == 2

    def test_window_rolls_over(self) -> None:
        """Utilization covers the last window only; old busy time drops out."""
        m, clock = make(A, window_s=10)
        m.lease_acquired("a")
        clock.now += 10
        m.lease_released("a")
        clock.now += 10  # 10 s busy, then 10 s idle: the window sees only idle time
        assert m.snapshot().servers["a"].utilization == pytest.approx(0.0, abs=0.06)
        assert m.snapshot().servers["a"].busy_slot_s == pytest.approx(10.0)

    def test_reset_starts_a_new_window(self) -> None:
        """reset() zeroes counters but keeps slots that are still busy."""
        m, clock = make(A)
        m.lease_acquired("a")
        m.request_finished("a", ok=True, latency_s=1.0)
        clock.now += 4
        m.reset()
        clock.now += 4
        s = m.snapshot().servers["a"]
        assert s.requests == 0 and s.utilization == pytest.approx(0.5)


class TestShares:
    def test_share_fair_share_and_imbalance(self) -> None:
        """Share of successes vs capacity-weighted fair share; imbalance is the largest gap."""
        fast = Server("fast", "http://h:1", max_concurrency=2, weight=2.0)
        slow = Server("slow", "http://h:2", max_concurrency=2, weight=1.0)
        m, _ = make(fast, slow)
        for _ in range(6):
            m.request_finished("fast", ok=True, latency_s=1.0)
        for _ in range(4):
            m.request_finished("slow", ok=True, latency_s=1.0)
        m.request_finished("slow", ok=False, latency_s=1.0)
        snap = m.snapshot()
        assert snap.servers["fast"].share == pytest.approx(0.6)
        assert snap.servers["fast"].fair_share == pytest.approx(2 / 3)
        assert snap.imbalance == pytest.approx(abs(0.6 - 2 / 3))
        assert snap.successes == 10 and snap.failures == 1 and snap.requests == 11

    def test_no_work_no_imbalance(self) -> None:
        """Nothing ran: imbalance 0, shares 0."""
        m, _ = make(A, B)
        assert m.snapshot().imbalance == 0.0

    def test_throughput_and_tokens(self) -> None:
        """Throughput is successes per second; tokens/s from eval counts and durations."""
        m, clock = make(A)
        clock.now += 10
        for _ in range(5):
            m.request_finished("a", ok=True, latency_s=1.0, eval_count=100, eval_duration_s=2.0)
        snap = m.snapshot()
        assert snap.throughput_rps == pytest.approx(0.5)
        assert snap.servers["a"].tokens_per_s == pytest.approx(50.0)


class TestPercentiles:
    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_within_histogram_error(self, seed: int) -> None:
        """p50/p95/p99 are within the histogram's ~10% of the exact values."""
        rng = random.Random(seed)
        values = [rng.lognormvariate(0, 1) for _ in range(5000)]
        h = Histogram()
        for v in values:
            h.add(v)
        values.sort()
        for q in (0.5, 0.95, 0.99):
            exact = values[int(q * len(values)) - 1]
            assert h.percentile(q) == pytest.approx(exact, rel=0.12)

    def test_memory_is_bounded(self) -> None:
        """The histogram's size does not grow with the number of samples."""
        h = Histogram()
        size = len(h.counts)
        for i in range(10000):
            h.add(i * 0.01)
        assert len(h.counts) == size and h.count == 10000

    def test_failover_stats(self) -> None:
        """Failovers are counted with their durations."""
        m, _ = make(A)
        for d in (0.01, 0.02, 0.03, 0.5):
            m.failover(d)
        snap = m.snapshot()
        assert snap.failovers == 4 and snap.failover_max_s == 0.5
        assert 0.01 <= snap.failover_p50_s <= 0.035


def parse(text: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(\{[^}]*\})? (\S+)", line)
        assert m, line
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class TestPrometheus:
    def test_exposition(self) -> None:
        """The text format has HELP/TYPE, labels, a histogram and the same values."""
        odd = Server('we"ird\\name', "http://h:3")
        m, clock = make(A, odd)
        m.lease_acquired("a")
        clock.now += 2
        m.request_finished("a", ok=True, latency_s=0.5)
        m.request_finished('we"ird\\name', ok=False, latency_s=0.1)
        text = m.to_prometheus()
        assert "# TYPE ollama_orchestra_requests_total counter" in text
        values = parse(text)
        assert values['ollama_orchestra_requests_total{server="a",outcome="success"}'] == 1
        assert (
            values['ollama_orchestra_requests_total{server="we\\"ird\\\\name",outcome="failure"}']
            == 1
        )
        assert values['ollama_orchestra_in_flight{server="a"}'] == 1
        assert values['ollama_orchestra_latency_seconds_count{server="a"}'] == 1
        assert values['ollama_orchestra_latency_seconds_bucket{server="a",le="+Inf"}'] == 1
        assert values["ollama_orchestra_imbalance"] == pytest.approx(m.snapshot().imbalance)
