"""Fleet metrics with a fake clock: utilization, shares, percentiles (the Prometheus text:
test_prometheus.py)."""

from __future__ import annotations

from typing import List

import pytest

from ollama_orchestra import OrchestraConfig
from ollama_orchestra._balancer import LoadBalancer
from ollama_orchestra._config import Server
from ollama_orchestra._metrics import Histogram, Metrics
from ollama_orchestra._state import FleetState


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fleet() -> List[Server]:
    return [
        Server("a", "http://a:11434", max_concurrency=2, weight=1.0),
        Server("b", "http://b:11434", max_concurrency=1, weight=2.0),
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestUtilization:
    def test_one_of_two_slots_busy_half_the_time(self, clock: FakeClock) -> None:
        """Two slots, one busy for half the window: 25% utilization."""
        m = Metrics(fleet(), clock=clock)
        m.slots_held("a", 1)
        clock.now = 5.0
        m.slots_held("a", 0)
        clock.now = 10.0
        s = m.snapshot().servers["a"]
        assert s.utilization == pytest.approx(0.25)
        assert s.busy_slot_s == pytest.approx(5.0)
        assert s.in_flight == 0
        assert s.slots == 2

    def test_in_flight_counts_up_to_now(self, clock: FakeClock) -> None:
        """A slot still busy counts until the snapshot time."""
        m = Metrics(fleet(), clock=clock)
        clock.now = 2.5
        m.slots_held("b", 1)
        clock.now = 10.0
        s = m.snapshot().servers["b"]
        assert s.in_flight == 1
        assert s.utilization == pytest.approx(0.75)

    def test_window_rolls_over(self, clock: FakeClock) -> None:
        """Busy time older than window_s leaves utilization but stays in busy_slot_s."""
        m = Metrics(fleet(), clock=clock, window_s=10.0)
        m.slots_held("a", 1)
        clock.now = 5.0
        m.slots_held("a", 0)
        clock.now = 20.0
        snap = m.snapshot()
        assert snap.window_s == 10.0
        assert snap.servers["a"].utilization == 0.0
        assert snap.servers["a"].busy_slot_s == pytest.approx(5.0)
        m.slots_held("a", 1)
        m.slots_held("a", 2)
        clock.now = 25.0
        assert m.snapshot().servers["a"].utilization == pytest.approx(0.5)

    def test_busy_memory_is_bounded(self, clock: FakeClock) -> None:
        """A long busy stretch keeps only about window_s one-second buckets."""
        m = Metrics(fleet(), clock=clock, window_s=10.0)
        m.slots_held("a", 1)
        clock.now = 1000.0
        assert m.snapshot().servers["a"].utilization == pytest.approx(0.5)
        assert len(m._per["a"].busy.buckets) <= 12

    def test_reset_starts_a_new_window(self, clock: FakeClock) -> None:
        """reset() clears counters but keeps slots that are still busy."""
        m = Metrics(fleet(), clock=clock)
        m.slots_held("a", 1)
        m.request_finished("a", ok=True, latency_s=1.0)
        m.breaker_trip("a")
        m.failover(0.5)
        clock.now = 10.0
        m.reset()
        clock.now = 20.0
        snap = m.snapshot()
        assert (snap.requests, snap.failovers, snap.breaker_trips) == (0, 0, 0)
        assert snap.elapsed_s == pytest.approx(10.0)
        assert snap.servers["a"].in_flight == 1
        assert snap.servers["a"].utilization == pytest.approx(0.5)
        assert snap.servers["a"].busy_slot_s == pytest.approx(10.0)


class TestShares:
    def test_share_fair_share_and_imbalance(self, clock: FakeClock) -> None:
        """Fair share is slots*weight over the total; imbalance is the largest gap."""
        m = Metrics(fleet(), clock=clock)  # capacities: a = 2*1, b = 1*2
        for _ in range(3):
            m.request_finished("a", ok=True, latency_s=0.1)
        m.request_finished("b", ok=True, latency_s=0.1)
        m.request_finished("b", ok=False, latency_s=0.1)
        clock.now = 2.0
        snap = m.snapshot()
        a, b = snap.servers["a"], snap.servers["b"]
        assert (a.fair_share, b.fair_share) == (0.5, 0.5)
        assert (a.share, b.share) == (0.75, 0.25)
        assert snap.imbalance == pytest.approx(0.25)
        assert (snap.requests, snap.successes, snap.failures) == (5, 4, 1)
        assert (b.requests, b.failures) == (2, 1)
        assert snap.throughput_rps == pytest.approx(2.0)

    def test_imbalance_zero_when_nothing_ran(self, clock: FakeClock) -> None:
        """No successes: shares and imbalance are 0."""
        clock.now = 1.0
        snap = Metrics(fleet(), clock=clock).snapshot()
        assert snap.imbalance == 0.0
        assert all(s.share == 0.0 for s in snap.servers.values())

    def test_tokens_per_second(self, clock: FakeClock) -> None:
        """tokens/s is eval tokens over eval seconds; failures and zero durations are ignored."""
        m = Metrics(fleet(), clock=clock)
        m.request_finished("a", ok=True, latency_s=1, eval_count=100, eval_duration_s=2.0)
        m.request_finished("a", ok=True, latency_s=1, eval_count=300, eval_duration_s=2.0)
        m.request_finished("a", ok=True, latency_s=1, eval_count=50, eval_duration_s=0.0)
        m.request_finished("a", ok=False, latency_s=1, eval_count=999, eval_duration_s=1.0)
        assert m.snapshot().servers["a"].tokens_per_s == pytest.approx(100.0)
        assert m.snapshot().servers["b"].tokens_per_s == 0.0


class TestPercentiles:
    def test_uniform_distribution(self) -> None:
        """Percentiles of 1..1000 ms land within the histogram's 10% error."""
        h = Histogram()
        for i in range(1, 1001):
            h.add(i / 1000)
        stats = h.stats()
        assert stats.count == 1000
        assert stats.mean == pytest.approx(0.5005)
        assert stats.p50 == pytest.approx(0.5, rel=0.1)
        assert stats.p95 == pytest.approx(0.95, rel=0.1)
        assert stats.p99 == pytest.approx(0.99, rel=0.1)

    def test_bimodal_distribution(self) -> None:
        """90% fast, 10% slow: p50 is fast, p95 and p99 are slow."""
        h = Histogram()
        for _ in range(900):
            h.add(0.2)
        for _ in range(100):
            h.add(30.0)
        assert h.percentile(0.5) == pytest.approx(0.2, rel=0.1)
        assert h.percentile(0.95) == pytest.approx(30.0, rel=0.1)
        assert h.percentile(0.99) == pytest.approx(30.0, rel=0.1)

    def test_memory_does_not_grow(self) -> None:
        """The bucket list has a fixed length whatever the number of samples."""
        h = Histogram()
        before = len(h.counts)
        for i in range(5000):
            h.add(i * 0.37)
        assert len(h.counts) == before
        assert h.percentile(1.0) > 0

    def test_empty(self) -> None:
        """An empty histogram reports zeros."""
        assert Histogram().stats().p99 == 0.0

    def test_failover_stats(self, clock: FakeClock) -> None:
        """Failover count, p50, p95 and max over the recorded durations."""
        m = Metrics(fleet(), clock=clock)
        for d in (
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            0.1,
            4.0,
        ):
            m.failover(d)
        snap = m.snapshot()
        assert snap.failovers == 20
        assert snap.failover_p50_s == pytest.approx(0.1, rel=0.1)
        assert snap.failover_p95_s == pytest.approx(0.1, rel=0.1)
        assert snap.failover_max_s == 4.0


class TestWindowStart:
    def test_reset_mid_second_is_not_discounted(self) -> None:
        """After a reset in the middle of a second, utilization counts that second in full."""
        now = [100.5]
        m = Metrics(
            [Server("a", "http://h:1", max_concurrency=1)], clock=lambda: now[0], window_s=60
        )
        m.reset()
        m.slots_held("a", 1)
        now[0] = 102.5
        assert m.snapshot().servers["a"].utilization == pytest.approx(1.0)


class TestHeldCounts:
    """Busy time follows the held-slot counts the balancer's slot store reports, whole."""

    def test_a_repeated_report_does_not_double_count(self, clock: FakeClock) -> None:
        """A count is absolute: reporting it twice leaves one slot busy, not two."""
        m = Metrics(fleet(), clock=clock)
        m.slots_held("a", 1)
        m.slots_held("a", 1)
        clock.now = 4.0
        s = m.snapshot().servers["a"]
        assert s.in_flight == 1
        assert s.busy_slot_s == pytest.approx(4.0)

    async def test_busy_time_comes_from_the_balancers_leases(self, clock: FakeClock) -> None:
        """Two leases for 2 s then one for 2 s on a 2-slot server: 6 slot-s, 75% utilization."""
        servers = (fleet()[0],)  # a: 2 slots
        state = FleetState(servers, clock=clock)
        for s in servers:
            state.probe_succeeded(s.name, version="0.12.0", models={"m:latest": 1}, loaded=[])
        m = Metrics(list(servers), clock=clock)
        lb = LoadBalancer(OrchestraConfig(servers=servers), state, metrics=m, clock=clock)
        leases = [await lb.acquire("m:latest") for _ in range(2)]
        assert m.snapshot().servers["a"].in_flight == 2
        clock.now = 2.0
        leases[0].release()
        leases[0].release()  # a second release changes nothing
        clock.now = 4.0
        leases[1].release()
        a = m.snapshot().servers["a"]
        assert (a.in_flight, a.busy_slot_s) == (0, 6.0)
        assert a.utilization == pytest.approx(0.75)
