"""One owner of in-flight counts: random acquire/release/cancel/fail sequences keep the
balancer's leases, the state's and the metrics' in-flight figures, the metrics' busy time and
the breakers' permits in agreement (hypothesis)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List, Tuple

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_orchestra import BreakerPolicy, NoHealthyServer, OrchestraConfig, Server
from ollama_orchestra._balancer import Lease, LoadBalancer
from ollama_orchestra._breaker import CircuitBreaker, ModelBreakers
from ollama_orchestra._lease import LocalSlots
from ollama_orchestra._metrics import Metrics
from ollama_orchestra._state import FleetState

M = "m:latest"
NAMES = ("s0", "s1")


@dataclass(frozen=True)
class _Failed:
    breaker_failure: bool
    model_failure: bool


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 0)),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("succeed"), st.integers(0, 7)),
        st.tuples(st.just("fail"), st.integers(0, 7)),
        st.tuples(st.just("fail_model"), st.integers(0, 7)),
        st.tuples(st.just("cancel"), st.integers(0, 0)),
        st.tuples(st.just("tick"), st.integers(0, 0)),
    ),
    max_size=40,
)


async def _drive(steps: List[Tuple[str, int]]) -> None:
    clock = _Clock()
    servers = tuple(
        Server(n, f"http://127.0.0.1:{11400 + i}", max_concurrency=2) for i, n in enumerate(NAMES)
    )
    policy = BreakerPolicy(failure_threshold=2, cooldown_s=1.0, half_open_probes=1)
    cfg = OrchestraConfig(servers=servers, breaker=policy, wait_for_healthy_s=0.0)
    state = FleetState(servers, clock=clock)
    for n in NAMES:
        state.probe_succeeded(n, version="0.12.0", models={M: 1}, loaded=[])
    metrics = Metrics(list(servers), clock=clock)
    breakers: Dict[str, CircuitBreaker] = {n: CircuitBreaker(n, policy, clock=clock) for n in NAMES}
    model_breakers = ModelBreakers(policy, clock=clock)
    lb = LoadBalancer(
        cfg, state, breakers=breakers, metrics=metrics, clock=clock, model_breakers=model_breakers
    )
    live: List[Lease] = []
    # Busy slot-seconds as the leases say: the clock only moves on "tick".
    busy_s = dict.fromkeys(NAMES, 0.0)

    def check() -> None:
        snap, msnap = state.snapshot(), metrics.snapshot()
        for n in NAMES:
            mine = [le for le in live if le.name == n]
            assert lb.in_use(n) == len(mine) == snap[n].in_flight == msnap.servers[n].in_flight
            assert msnap.servers[n].busy_slot_s == pytest.approx(busy_s[n], abs=1e-9)
            assert len(mine) <= 2
            for br, permits in (
                (breakers[n], [le.permit for le in mine]),
                (model_breakers.breaker(n, M), [le.model_permit for le in mine]),
            ):
                probes = sum(1 for p in permits if p is not None and p.probe)
                assert br.snapshot().probes_out >= probes or str(br.state) != "half_open"
                assert br.snapshot().probes_out <= policy.half_open_probes
                if not mine:
                    assert br.snapshot().probes_out == 0 or str(br.state) != "half_open"
        assert lb.waiting == 0

    for op, i in steps:
        if op == "acquire":
            # No slot free: gives up after a while; every breaker open: refused.
            with anyio.move_on_after(0.01), contextlib.suppress(NoHealthyServer):
                live.append(await lb.acquire(M))
        elif op == "cancel":
            with anyio.CancelScope() as scope, contextlib.suppress(NoHealthyServer):
                scope.cancel()
                live.append(await lb.acquire(M))
        elif op == "tick":
            for n in NAMES:
                busy_s[n] += 5.0 * sum(1 for le in live if le.name == n)
            clock.now += 5.0
        elif live:
            lease = live.pop(i % len(live))
            if op == "succeed":
                lease.settle(True)
            elif op == "fail":
                lease.settle(_Failed(breaker_failure=True, model_failure=False))
            elif op == "fail_model":
                lease.settle(_Failed(breaker_failure=False, model_failure=True))
            lease.release()
            lease.release()  # twice: the second does nothing
        check()
    clock.now += 5.0
    for n in NAMES:
        busy_s[n] += 5.0 * sum(1 for le in live if le.name == n)
    for lease in live:
        lease.release()
    live.clear()
    check()


class TestFleetInvariants:
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops)
    def test_counts_leases_and_permits_agree(self, steps: List[Tuple[str, int]]) -> None:
        """In-flight counts, busy time, leases and breaker permits agree after any sequence."""
        anyio.run(_drive, steps)


class _RecordingSlots(LocalSlots[Lease]):
    """An in-process store that notes every call: a stand-in for a shared backend."""

    def __init__(self, servers: List[str]) -> None:
        super().__init__(servers)
        self.calls: List[Tuple[str, str]] = []

    def take(self, server: str, lease: Lease) -> None:
        self.calls.append(("take", server))
        super().take(server, lease)

    def give_back(self, server: str, lease: Lease) -> None:
        self.calls.append(("give_back", server))
        super().give_back(server, lease)


class TestSlotStoreSeam:
    async def test_slots_are_kept_by_the_store_given(self) -> None:
        """The balancer takes and gives back every slot through the SlotStore it is given."""
        servers = (Server("s0", "http://127.0.0.1:11400", max_concurrency=1),)
        state = FleetState(servers)
        state.probe_succeeded("s0", version="0.12.0", models={M: 1}, loaded=[])
        store = _RecordingSlots(["s0"])
        lb = LoadBalancer(OrchestraConfig(servers=servers), state, slots=store)
        lease = await lb.acquire(M)
        assert store.held("s0") == [lease] and lb.in_use("s0") == 1
        lease.release()
        assert store.calls == [("take", "s0"), ("give_back", "s0")]
        assert lb.in_use("s0") == 0 and state.snapshot()["s0"].in_flight == 0
