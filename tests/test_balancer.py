"""The balancer: slots as leases, no head-of-line blocking, priorities, strategies, affinity."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from ollama_orchestra import AffinityRule, NoCapableServer, NoHealthyServer, OrchestraConfig, Server
from ollama_orchestra._balancer import (
    Candidate,
    Choice,
    HybridStrategy,
    Lease,
    LeastLoadedStrategy,
    LoadBalancer,
    ModelAwareStrategy,
    RoundRobinStrategy,
    RouteRequest,
    WeightedStrategy,
    _Waiter,
)
from ollama_orchestra._rates import Estimate, Prompt, PromptCosts
from ollama_orchestra._state import FleetState, LoadedModel

M = "qwen2.5:14b"
BIG = "qwen2.5-coder:32b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    slots: Sequence[int] = (1, 1),
    *,
    strategy: str = "least_loaded",
    models: Optional[Dict[str, Sequence[str]]] = None,
    loaded: Optional[Dict[str, Sequence[str]]] = None,
    affinity: Tuple[AffinityRule, ...] = (),
    wait_for_healthy_s: float = 0.0,
    weights: Optional[Sequence[float]] = None,
    labels: Optional[Sequence[Dict[str, str]]] = None,
) -> Tuple[LoadBalancer, FleetState, Clock]:
    names = [f"s{i}" for i in range(len(slots))]
    servers = tuple(
        Server(
            n,
            f"http://127.0.0.1:{11400 + i}",
            max_concurrency=k,
            weight=(weights[i] if weights else 1.0),
            labels=(labels[i] if labels else {}),
        )
        for i, (n, k) in enumerate(zip(names, slots))
    )
    cfg = OrchestraConfig(
        servers=servers, strategy=strategy, affinity=affinity, wait_for_healthy_s=wait_for_healthy_s
    )
    clock = Clock()
    state = FleetState(servers, clock=clock)
    for n in names:
        have = (models or {}).get(n, [M, BIG])
        resident = (loaded or {}).get(n, [])
        state.probe_succeeded(
            n,
            version="0.12.0",
            models=dict.fromkeys(have, 9000000000),
            loaded=[LoadedModel(m, None) for m in resident],
        )
    return LoadBalancer(cfg, state, clock=clock), state, clock


async def served_by(lb: LoadBalancer, model: str, got: List[str]) -> None:
    """Wait for a slot for ``model`` and note which server gave it."""
    got.append((await lb.acquire(model)).name)


class TestLeases:
    async def test_never_more_than_slots(self) -> None:
        """A server never holds more leases than its slots; release frees them."""
        lb, _, _ = make((2, 1))
        leases = [await lb.acquire(M) for _ in range(3)]
        assert sorted(le.name for le in leases) == ["s0", "s0", "s1"]
        assert lb.in_use("s0") == 2 and lb.in_use("s1") == 1
        for le in leases:
            lb.release(le)
        assert lb.in_use("s0") == 0 and lb.in_use("s1") == 0

    async def test_release_is_idempotent(self) -> None:
        """Releasing twice frees one slot, not two."""
        lb, _, _ = make((1,))
        le = await lb.acquire(M)
        lb.release(le)
        lb.release(le)
        assert lb.in_use("s0") == 0

    async def test_waiter_takes_first_slot_freed_anywhere(self) -> None:
        """A waiting request is not pinned: whichever server frees first serves it."""
        lb, _, _ = make((1, 1))
        a, b = await lb.acquire(M), await lb.acquire(M)
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                got.append(await lb.acquire(M))

            tg.start_soon(wait)
            await wait_all_tasks_blocked()
            assert lb.waiting == 1
            lb.release(b if b.name == "s1" else a)
        assert got[0].name == "s1"
        assert got[0].queued_s >= 0

    async def test_priority_then_fifo(self) -> None:
        """Waiters are served by priority, then in arrival order."""
        lb, _, _ = make((1,))
        held = await lb.acquire(M)
        order: List[str] = []

        async def wait(tag: str, prio: int) -> None:
            lease = await lb.acquire(M, priority=prio)
            order.append(tag)
            lb.release(lease)

        async with anyio.create_task_group() as tg:
            for tag, prio in [("low1", 0), ("high", 5), ("low2", 0), ("mid", 2)]:
                tg.start_soon(wait, tag, prio)
                await wait_all_tasks_blocked()
            lb.release(held)
        assert order == ["high", "mid", "low1", "low2"]

    async def test_cancelled_waiter_frees_its_place(self) -> None:
        """Cancelling a waiting request removes it; the slot goes to the next waiter."""
        lb, _, _ = make((1,))
        held = await lb.acquire(M)
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def first() -> None:
                with scope:
                    await lb.acquire(M, priority=9)
                    got.append("first")  # pragma: no cover - cancelled before

            async def second() -> None:
                lease = await lb.acquire(M)
                got.append("second")
                lb.release(lease)

            tg.start_soon(first)
            tg.start_soon(second)
            await wait_all_tasks_blocked()
            scope.cancel()
            await wait_all_tasks_blocked()
            assert lb.waiting == 1
            lb.release(held)
        assert got == ["second"]
        assert lb.in_use("s0") == 0 and lb.waiting == 0

    async def test_lease_context_releases_on_cancel(self) -> None:
        """A lease held in 'async with' is released when the holder is cancelled."""
        lb, _, _ = make((1,))
        async with anyio.create_task_group() as tg:

            async def hold() -> None:
                async with lb.lease(M):
                    await anyio.sleep_forever()

            tg.start_soon(hold)
            await wait_all_tasks_blocked()
            assert lb.in_use("s0") == 1
            tg.cancel_scope.cancel()
        assert lb.in_use("s0") == 0

    async def test_no_wait_while_a_usable_slot_is_free(self) -> None:
        """Under churn, whenever a request waits, every server it could use is full."""
        lb, state, _ = make((2, 3, 1), models={"s2": [BIG]})
        held: List[Lease] = []
        violations = []

        def check() -> None:
            if lb.waiting:
                for st in state.servers():
                    if M in st.models and lb.in_use(st.server.name) < st.server.max_concurrency:
                        violations.append(st.server.name)

        async with anyio.create_task_group() as tg:

            async def worker() -> None:
                held.append(await lb.acquire(M))

            for step in range(40):
                tg.start_soon(worker)
                await wait_all_tasks_blocked()
                check()
                if step % 3 == 2 and held:
                    lb.release(held.pop(0))
                    await wait_all_tasks_blocked()
                    check()
            while held or lb.waiting:
                if held:
                    lb.release(held.pop(0))
                await wait_all_tasks_blocked()
                check()
        assert violations == []
        assert lb.in_use("s2") == 0


class TestEligibility:
    async def test_unknown_model_raises_no_capable_server(self) -> None:
        """A model no server has raises NoCapableServer naming the model and what each has."""
        lb, _, _ = make((1, 1), models={"s0": [M], "s1": [M]})
        with pytest.raises(NoCapableServer) as info:
            await lb.acquire("llama3:70b")
        assert info.value.model == "llama3:70b"
        assert info.value.available == {"s0": (M,), "s1": (M,)}
        assert "llama3:70b" in str(info.value)

    async def test_all_capable_down_raises_no_healthy_server(self) -> None:
        """When every capable server is down, the request raises NoHealthyServer after the wait."""
        lb, state, _ = make((1, 1))
        state.mark_down("s0", "refused")
        state.mark_down("s1", "refused")
        with pytest.raises(NoHealthyServer) as info:
            await lb.acquire(M)
        assert set(info.value.servers) == {"s0", "s1"}

    async def test_waiter_served_when_server_comes_back(self) -> None:
        """A request waiting for a healthy server gets one as soon as a probe brings it back."""
        lb, state, _ = make((1,), wait_for_healthy_s=60)
        state.mark_down("s0", "refused")
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(served_by, lb, M, got)
            await wait_all_tasks_blocked()
            assert got == []
            state.probe_succeeded("s0", version=None, models={M: 1}, loaded=[])
        assert got == ["s0"]

    async def test_unhealthy_server_gets_no_work(self) -> None:
        """A server marked down receives nothing while another can serve."""
        lb, state, _ = make((4, 4))
        state.mark_down("s0", "refused")
        leases = [await lb.acquire(M) for _ in range(4)]
        assert {le.name for le in leases} == {"s1"}

    async def test_exclude_prefers_untried_servers(self) -> None:
        """Servers already tried are avoided while another is eligible, used when none is."""
        lb, _, _ = make((2, 2))
        assert (await lb.acquire(M, exclude=frozenset({"s0"}))).name == "s1"
        assert (await lb.acquire(M, exclude=frozenset({"s0", "s1"}))).name in {"s0", "s1"}

    async def test_affinity_prefers_then_falls_back(self) -> None:
        """A preferred rule routes to its servers while they are eligible, elsewhere when not."""
        rule = AffinityRule(model="*:32b", servers=("s1",))
        lb, state, _ = make((2, 2), affinity=(rule,))
        assert {(await lb.acquire(BIG)).name for _ in range(2)} == {"s1"}
        assert (await lb.acquire(M)).name == "s0"  # the rule does not match 14b
        state.mark_down("s1", "refused")
        assert (await lb.acquire(BIG)).name == "s0"

    async def test_required_affinity_never_falls_back(self) -> None:
        """A required rule never uses other servers: with its server down, nothing serves."""
        rule = AffinityRule(labels={"gpu": "a100"}, required=True)
        lb, state, _ = make((1, 1), affinity=(rule,), labels=[{}, {"gpu": "a100"}])
        assert (await lb.acquire(M)).name == "s1"
        state.mark_down("s1", "refused")
        with pytest.raises(NoHealthyServer):
            await lb.acquire(M)


def cand(
    name: str,
    *,
    slots: int = 1,
    in_use: int = 0,
    weight: float = 1.0,
    loaded: bool = True,
    service: Optional[float] = 1.0,
    cold: float = 0.0,
    busy_for: float = 0.0,
) -> Candidate:
    return Candidate(name, slots, in_use, weight, loaded, service, cold, busy_for)


REQ = RouteRequest(M)


class TestStrategies:
    def test_round_robin_rotates_and_skips_full(self) -> None:
        """Round robin rotates over servers and skips a full one."""
        s = RoundRobinStrategy()
        cs = [cand("a"), cand("b"), cand("c")]
        assert [s.choose(REQ, cs).server for _ in range(4)] == ["a", "b", "c", "a"]
        full_b = [cand("a"), cand("b", in_use=1), cand("c")]
        assert [s.choose(REQ, full_b).server for _ in range(2)] == ["c", "a"]

    def test_least_loaded_uses_share_of_slots(self) -> None:
        """Least loaded compares busy share of slots, not raw counts."""
        s = LeastLoadedStrategy()
        assert (
            s.choose(REQ, [cand("a", slots=4, in_use=2), cand("b", slots=2, in_use=0)]).server
            == "b"
        )
        assert (
            s.choose(REQ, [cand("a", slots=4, in_use=1), cand("b", slots=2, in_use=1)]).server
            == "a"
        )

    def test_weighted_is_smooth(self) -> None:
        """Smooth weighted round robin: weights 5,1,1 give a a b a c a a (nginx's sequence)."""
        s = WeightedStrategy()
        cs = [cand("a", weight=5), cand("b", weight=1), cand("c", weight=1)]
        assert "".join(str(s.choose(REQ, cs).server) for _ in range(7)) == "aabacaa"

    def test_model_aware_waits_for_warm_server(self) -> None:
        """Model aware never picks a cold server while a warm one exists, even if busy."""
        s = ModelAwareStrategy()
        choice = s.choose(REQ, [cand("cold", loaded=False), cand("warm", in_use=1)])
        assert choice.server is None and choice.among == frozenset({"warm"})
        assert s.choose(REQ, [cand("cold", loaded=False), cand("warm")]).server == "warm"
        assert s.choose(REQ, [cand("x", loaded=False)]).server == "x"

    def test_hybrid_takes_free_server_when_equal(self) -> None:
        """Hybrid takes a free server when busy ones are no better."""
        s = HybridStrategy()
        assert s.choose(REQ, [cand("a", in_use=1, busy_for=0.5), cand("b")]).server == "b"

    def test_hybrid_waits_rather_than_cold_load(self) -> None:
        """Hybrid waits for a warm busy server rather than cause a long cold load, bounded."""
        s = HybridStrategy()
        choice = s.choose(
            REQ, [cand("cold", loaded=False, cold=20.0), cand("warm", in_use=1, busy_for=2.0)]
        )
        assert choice.server is None
        assert choice.among == frozenset({"warm"})
        assert choice.widen_after_s == pytest.approx(18.0)

    def test_hybrid_prefers_faster_free_server(self) -> None:
        """Among free servers hybrid picks the one that finishes soonest."""
        s = HybridStrategy()
        assert (
            s.choose(REQ, [cand("slow", service=2.0), cand("fast", service=1.0)]).server == "fast"
        )


class TestRoutingByModel:
    async def test_model_aware_avoids_cold_load(self) -> None:
        """With the model loaded only on a busy server, model_aware waits for it."""
        lb, _, _ = make((1, 1), strategy="model_aware", loaded={"s1": [BIG]})
        first = await lb.acquire(BIG)
        assert first.name == "s1"
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(served_by, lb, BIG, got)
            await wait_all_tasks_blocked()
            assert got == [] and lb.in_use("s0") == 0
            lb.release(first)
        assert got == ["s1"]

    async def test_hybrid_avoids_cold_load(self) -> None:
        """Hybrid waits for the busy server where the model is loaded rather than cold-load it."""
        lb, _, _ = make((1, 1), strategy="hybrid", loaded={"s1": [BIG]})
        first = await lb.acquire(BIG)
        assert first.name == "s1"
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(served_by, lb, BIG, got)
            await wait_all_tasks_blocked()
            assert got == [] and lb.in_use("s0") == 0
            lb.release(first)
        assert got == ["s1"]

    async def test_hybrid_uses_cold_server_for_other_model(self) -> None:
        """A model loaded nowhere goes to any free server at once."""
        lb, _, _ = make((1, 1), strategy="hybrid", loaded={"s1": [BIG]})
        await lb.acquire(BIG)
        assert (await lb.acquire(M)).name == "s0"


class TestRetriesFirst:
    @staticmethod
    async def served(waiters: Sequence[Tuple[str, Tuple[str, ...]]]) -> List[str]:
        """The order in which ``waiters`` (tag, servers excluded: a retry excludes one),
        queued one after another behind a held slot, are served once it is released."""
        lb, _, _ = make((1,))
        held = await lb.acquire(M)
        order: List[str] = []

        async def wait(tag: str, exclude: frozenset) -> None:  # type: ignore[type-arg]
            lease = await lb.acquire(M, exclude=exclude)
            order.append(tag)
            lb.release(lease)

        async with anyio.create_task_group() as tg:
            for tag, exclude in waiters:
                tg.start_soon(wait, tag, frozenset(exclude))
                await wait_all_tasks_blocked()
            lb.release(held)
        return order

    async def test_retry_waits_at_the_front(self) -> None:
        """A request being retried is served before newer waiters of its priority."""
        assert await self.served([("new1", ()), ("retry", ("s9",))]) == ["retry", "new1"]

    async def test_retries_keep_their_order(self) -> None:
        """Retries are served in the order they failed (the first to fail first: after a
        host dies, the last of its requests to fail does not overtake the others)."""
        waiters = [("new", ()), ("retry1", ("s9",)), ("retry2", ("s8",))]
        assert await self.served(waiters) == ["retry1", "retry2", "new"]


def speeds(state: FleetState, latency: Dict[str, float]) -> None:
    """Teach the state how long a request of M takes on each server."""
    for name, seconds in latency.items():
        state.record_success(name, M, latency_s=seconds)


class TestCompletionTime:
    async def test_waiters_claim_the_fast_servers_next_slots(self) -> None:
        """Hybrid: a waiter that waits for the busy fast server claims its next slot, so the
        one behind it takes the free slow server at once instead of queueing there too."""
        lb, state, clock = make((1, 1), strategy="hybrid", loaded={"s0": [M], "s1": [M]})
        speeds(state, {"s0": 2.0, "s1": 1.0})
        fast = await lb.acquire(M)
        assert fast.name == "s1"
        clock.now += 0.8  # the fast server's request ends in 0.2 s; s0 is free
        got: Dict[str, str] = {}

        async def request(tag: str) -> None:
            got[tag] = (await lb.acquire(M)).name

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "first")
            await wait_all_tasks_blocked()
            assert got == {}  # 0.2 + 1.0 s on s1 beats 2.0 s on s0: it waits for s1
            tg.start_soon(request, "second")
            await wait_all_tasks_blocked()
            assert got == {"second": "s0"}  # behind "first", s1 would finish it in 2.2 s
            lb.release(fast)
        assert got == {"first": "s1", "second": "s0"}

    async def test_least_loaded_takes_the_free_slot(self) -> None:
        """The contrast: least_loaded never waits while a slot is free, even a slow one."""
        lb, state, _ = make((1, 1), strategy="least_loaded", loaded={"s0": [M], "s1": [M]})
        speeds(state, {"s0": 2.0, "s1": 1.0})
        a, b = await lb.acquire(M), await lb.acquire(M)
        lb.release(a if a.name == "s0" else b)
        assert (await lb.acquire(M)).name == "s0"

    async def test_an_overdue_server_stops_being_waited_for(self) -> None:
        """A busy server past its predicted end looks busier the longer it overruns: the
        waiter gives up on it and takes the free server."""
        lb, state, clock = make((1, 1), strategy="hybrid", loaded={"s0": [M], "s1": [M]})
        speeds(state, {"s0": 0.05, "s1": 0.005})
        stuck = await lb.acquire(M)
        assert stuck.name == "s1"
        stuck.predicted_end = clock.now + 0.03
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                got: List[str] = []

                tg.start_soon(served_by, lb, M, got)
                await wait_all_tasks_blocked()
                assert got == []  # 30 ms + 5 ms on s1 beats 50 ms on s0: it waits
                clock.now += 1.0  # s1 overruns by a second; the waiter's timer fires
        assert got == ["s0"]
        lb.release(stuck)

    def test_a_measured_cold_load_replaces_the_size_guess(self) -> None:
        """A request that loaded its model reports the load time; that, not a guess from the
        model's size, is what the other servers' cold start is then expected to cost."""
        lb, state, _ = make((1, 1), strategy="hybrid")
        waiter = _Waiter(RouteRequest(M), frozenset(), 0.0)
        guessed = {c.name: c.cold_s for c in lb._candidates(waiter)}
        assert guessed["s0"] > 1.0  # 9 GB: the guess is seconds
        state.record_success("s1", M, latency_s=0.5, load_duration_ns=40_000_000)
        cands = {c.name: c for c in lb._candidates(waiter)}
        assert cands["s1"].loaded and cands["s1"].cold_s == 0.0
        assert cands["s0"].cold_s == pytest.approx(0.04)
        # A warm request's few milliseconds of load time are not a cold load.
        state.record_success("s1", M, latency_s=0.5, load_duration_ns=2_000_000)
        assert {c.name: c.cold_s for c in lb._candidates(waiter)}["s0"] == pytest.approx(0.04)

    async def test_no_cold_load_over_a_model_in_use(self) -> None:
        """Loading a model where another one is in use would evict it (Ollama makes room),
        so hybrid counts that reload too: it waits for the warm server while the other
        model is busy there, and cold-loads only once nothing there needs it."""
        lb, state, clock = make((2, 1), strategy="hybrid", loaded={"s0": [M], "s1": [BIG]})
        state.record_success("s1", BIG, latency_s=1.0, load_duration_ns=2_000_000_000)
        small = await lb.acquire(M)
        big = await lb.acquire(BIG)
        assert (small.name, big.name) == ("s0", "s1")
        big.predicted_end = clock.now + 3.0  # s1: 4 s; s0: a 2 s load + 1 s, had M no users
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(served_by, lb, BIG, got)
            await wait_all_tasks_blocked()
            assert got == []  # loading BIG on s0 would evict M, which is in use
            lb.release(small)
        assert got == ["s0"]

    async def test_a_model_being_loaded_counts_as_loaded(self) -> None:
        """While the first request for a model is loading it on one server, the next one
        waits for that server instead of loading the model on a second one."""
        lb, state, _ = make((1, 1), strategy="model_aware")
        first = await lb.acquire(BIG)
        got: List[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(served_by, lb, BIG, got)
            await wait_all_tasks_blocked()
            assert got == []
            state.record_success(first.name, BIG, latency_s=1.0)  # loaded now
            lb.release(first)
        assert got == [first.name]


class _Named:
    """A custom strategy that always names one server, among the candidates or not."""

    def __init__(self, name: str) -> None:
        self.name = name

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        return Choice(server=self.name)


class TestGrantEstimates:
    """A granted lease carries the predicted end of the server it went to."""

    def _lb(self, name: str) -> Tuple[LoadBalancer, FleetState, Clock]:
        lb, state, clock = make((1, 1))
        lb._strategy = _Named(name)
        state.record_success("s0", M, latency_s=2.0)
        state.record_success("s1", M, latency_s=5.0)
        return lb, state, clock

    @pytest.mark.parametrize(("name", "service"), [("s0", 2.0), ("s1", 5.0)])
    async def test_chosen_candidate(self, name: str, service: float) -> None:
        """A lease on the chosen candidate ends after that server's service time."""
        lb, _, clock = self._lb(name)
        lease = await lb.acquire(M)
        assert lease.name == name
        assert lease.predicted_end == pytest.approx(clock.now + service)

    async def test_server_outside_the_candidates(self) -> None:
        """A strategy may name a server that is not a candidate: the lease there still ends
        after that server's own service time."""
        lb, state, clock = self._lb("s1")
        state.mark_down("s1", "down")
        assert [c.name for c in lb._candidates_for(RouteRequest(M), frozenset())] == ["s0"]
        lease = await lb.acquire(M)
        assert lease.name == "s1"
        assert lease.predicted_end == pytest.approx(clock.now + 5.0)

    async def test_the_answer_budget_scales_the_service_time(self) -> None:
        """A request's budget (``num_predict``) scales the learned rest of a request there:
        a 150-token answer is expected to free its slot sooner than a 300-token one."""
        lb, _, clock = make((2, 2))
        lb._strategy = _Named("s0")
        for budget in (300, 150):
            prompt = lb.costs.prompt(M, {"prompt": "p", "options": {"num_predict": budget}})
            reply = {"done": True, "eval_count": budget, "total_duration": budget * 10**7}
            for _ in range(4):  # 10 ms a token
                lb.costs.observe("s0", M, prompt, reply, observed_s=budget / 100, slots=2)
        leases = []
        for budget in (300, 150):
            prompt = lb.costs.prompt(M, {"prompt": "q", "options": {"num_predict": budget}})
            leases.append(await lb.acquire(M, prompt=prompt))
        long, short = (le.predicted_end - clock.now for le in leases)
        assert long == pytest.approx(3.0, rel=0.1)
        assert short == pytest.approx(1.5, rel=0.1)


class _FixedPrefill(PromptCosts):
    """A cost model whose every prompt takes ``prefill_s`` to evaluate, after ``base_s``."""

    def __init__(self, prefill_s: float, base_s: float = 1.0) -> None:
        super().__init__()
        self.prefill_s = prefill_s
        self.base_s = base_s

    def estimate(
        self, server: str, model: str, prompt: Optional[Prompt], fleet: Sequence[str] = ()
    ) -> Estimate:
        return Estimate(0, self.prefill_s, self.base_s)


class TestPromptQueue:
    """A model's runner evaluates one prompt at a time (llama-server fills each batch from its
    first slot on): a lease's prompt is predicted to be evaluated after those sent before it
    to the same model there, and candidates show that wait."""

    def _lb(self, prefill_s: float) -> Tuple[LoadBalancer, Clock]:
        lb, _, clock = make((3, 3))
        lb.costs = _FixedPrefill(prefill_s)
        lb._strategy = _Named("s0")
        return lb, clock

    async def test_prompts_queue_behind_each_other(self) -> None:
        lb, clock = self._lb(2.0)
        first = await lb.acquire(M)
        second = await lb.acquire(M)
        assert first.prefill_end == pytest.approx(clock.now + 2.0)
        assert second.prefill_end == pytest.approx(clock.now + 4.0)
        assert second.predicted_end == pytest.approx(clock.now + 2.0 + 3.0)
        (s0, s1) = lb._candidates_for(RouteRequest(M), frozenset())
        assert (s0.queued_prefill_s, s1.queued_prefill_s) == pytest.approx((4.0, 0.0))
        clock.now += 3.0
        assert lb._prompts_queued_s("s0", M, clock.now) == pytest.approx(1.0)
        lb.release(second)
        assert lb._prompts_queued_s("s0", M, clock.now) == 0.0

    async def test_other_models_do_not_queue(self) -> None:
        """Another model is another runner: its prompts do not wait for these."""
        lb, clock = self._lb(2.0)
        await lb.acquire(M)
        other = await lb.acquire(BIG)
        assert other.prefill_end == pytest.approx(clock.now + 2.0)

    def test_hybrid_avoids_a_free_server_with_prompts_queued(self) -> None:
        """Two free servers, equal but for the prompts waiting on one: the other is chosen."""
        queued = Candidate("a", 4, 1, 1.0, True, 2.0, 0.0, 0.0, 1.0, 0, 6.0)
        idle = Candidate("b", 4, 1, 1.0, True, 2.0, 0.0, 0.0, 1.0, 0, 0.0)
        for order in ([queued, idle], [idle, queued]):
            assert HybridStrategy().choose(RouteRequest(M), order).server == "b"

    def test_hybrid_counts_a_move_twice_where_requests_run(self) -> None:
        """Not contended, both servers free: evaluating a prompt again where requests are in
        flight delays their next prompts too, so it counts twice; on an idle server once.
        Elsewhere finishes in 2.4 s (0.4 s of it the prompt the cached server holds), within
        the 0.8 margin of the cached server's 2.0 s once (and less loaded, so chosen), not
        twice (2.8 s)."""
        cached = Candidate("cached", 2, 1, 1.0, True, 2.0, 0.0, 0.0, 0.0, 4096)
        running = Candidate("other", 4, 1, 1.0, True, 2.4, 0.0, 0.0, 0.4, 0)
        idle = Candidate("other", 4, 0, 1.0, True, 2.4, 0.0, 0.0, 0.4, 0)
        hybrid = HybridStrategy()
        assert hybrid.choose(RouteRequest(M), [cached, running]).server == "cached"
        assert hybrid.choose(RouteRequest(M), [cached, idle]).server == "other"
