"""The handoff lookahead: a request sent ahead into a busy host's own queue when a slot is
predicted to free soon, taken back when another host frees first or a higher-priority request
waits (``_handoff``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskGroup

from ollama_orchestra import (
    ConfigError,
    Coordination,
    Orchestra,
    OrchestraClosed,
    OrchestraConfig,
    Server,
)
from ollama_orchestra._balancer import Lease, LoadBalancer
from ollama_orchestra._broken import WINDOW_S, BrokenHosts
from ollama_orchestra._clock import now as clock_now
from ollama_orchestra._coordination import make_balancer
from ollama_orchestra._failover import AttemptError
from ollama_orchestra._rates import Estimate, Prompt, PromptCosts
from ollama_orchestra._state import FleetState
from ollama_orchestra.sim import SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile

M = "qwen2.5:14b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def balancer(
    slots: Tuple[int, ...] = (1,), *, lookahead: int = 1, measured: bool = True
) -> Tuple[LoadBalancer, Clock]:
    """A balancer over ``len(slots)`` servers; ``measured``: each served ``M`` in 1 s."""
    servers = tuple(
        Server(f"s{i}", f"http://127.0.0.1:{11400 + i}", max_concurrency=k, lookahead=lookahead)
        for i, k in enumerate(slots)
    )
    clock = Clock()
    state = FleetState(servers, clock=clock)
    for s in servers:
        state.probe_succeeded(s.name, version="0.12.0", models={M: 1}, loaded=[])
        if measured:
            state.record_success(s.name, M, latency_s=1.0)
    return LoadBalancer(OrchestraConfig(servers=servers), state, clock=clock), clock


async def acquire_in(tg: TaskGroup, lb: LoadBalancer, out: List[Lease], **kw: Any) -> None:
    """Start an ``ahead``-capable acquire in ``tg``; wait until it got a slot or waits."""

    async def go() -> None:
        out.append(await lb.acquire(M, ahead=True, **kw))

    tg.start_soon(go)
    await wait_all_tasks_blocked()


def count_candidates(lb: LoadBalancer, monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Count ``lb``'s candidate evaluations (one per waiter looked at) from now on, in the
    returned list's one item."""
    calls = [0]
    candidates = lb._candidates

    def counting(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return candidates(*args, **kw)

    monkeypatch.setattr(lb, "_candidates", counting)
    return calls


async def one_of_two_breaks(lb: LoadBalancer, clock: Clock) -> Lease:
    """Two requests on ``s0``; 0.1 s later the first one's connection is reset and it is
    released: ``s0`` is left alone. The other, still running there, is returned."""
    failed, other = [await lb.acquire(M) for _ in range(2)]
    clock.now += 0.1
    lb.settle(failed, AttemptError("reset", "s0", "connection reset"))
    lb.release(failed)
    return other


def has_started(lease: Lease) -> bool:
    return lease.handoff is not None and lease.handoff.started


class TestPredictedCondition:
    """A request is sent ahead only when every slot is busy and one is predicted to free soon."""

    async def test_sent_ahead_when_a_slot_frees_within_a_service_time(self) -> None:
        """Measured host, its one slot busy and due to free: the next request is sent ahead."""
        lb, _ = balancer()
        first = await lb.acquire(M)
        ahead = await lb.acquire(M, ahead=True)
        assert ahead.handoff is not None and not ahead.handoff.started
        assert lb.waiting == 0
        assert lb.in_use("s0") == 1  # a request sent ahead holds no slot until it starts
        first.release()
        assert has_started(ahead) and lb.in_use("s0") == 1
        ahead.release()
        assert lb.in_use("s0") == 0

    @pytest.mark.parametrize("case", ["not measured", "overdue", "caller cannot", "option off"])
    async def test_not_sent_otherwise(self, case: str) -> None:
        """No estimate, a slot not due soon, a caller without take-back or ``lookahead=0``:
        the request waits in the orchestra's queue."""
        lb, clock = balancer(measured=case != "not measured", lookahead=int(case != "option off"))
        first = await lb.acquire(M)
        if case == "overdue":
            clock.now += 10.0  # 9 s past its predicted end: expected to need 2.5 s more
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            if case == "caller cannot":
                tg.start_soon(lambda: lb.acquire(M))
                await wait_all_tasks_blocked()
            else:
                await acquire_in(tg, lb, got)
            assert not got and lb.waiting == 1
            first.release()
        if got:
            assert got[0].handoff is None

    def test_off_under_coordination(self) -> None:
        """With shared slots (every request sent counts in every process), nothing is sent
        ahead: the balancer has no lookahead."""
        servers = (Server("s0", "http://127.0.0.1:11400", lookahead=1),)
        cfg = OrchestraConfig(servers=servers, coordination=Coordination("redis://127.0.0.1:1"))
        lb = make_balancer(cfg, FleetState(servers))
        assert lb._lookahead is None
        assert LoadBalancer(cfg.replace(coordination=None), FleetState(servers))._lookahead


class _PerServerPrefill(PromptCosts):
    """A cost model where a request takes 1 s there plus that server's ``prefill`` seconds."""

    def __init__(self, prefill: Dict[str, float]) -> None:
        super().__init__()
        self.prefill = prefill

    def estimate(
        self, server: str, model: str, prompt: Optional[Prompt], fleet: Sequence[str] = ()
    ) -> Estimate:
        return Estimate(0, self.prefill[server], 1.0)


class TestWhereItIsSent:
    """Every slot is busy when a request is sent ahead, so a prompt evaluated again where
    another host holds it cached takes time from the requests waiting behind it: it counts
    twice, as under ``hybrid`` when requests wait."""

    @pytest.mark.parametrize(("extra_prefill", "sent_to"), [(0.4, "s1"), (0.05, "s0")])
    async def test_a_prompt_evaluated_again_counts_twice(
        self, extra_prefill: float, sent_to: str
    ) -> None:
        """``s0`` frees in 0.1 s, ``s1`` in 0.6 s; ``s0`` would evaluate ``extra_prefill``
        seconds of prompt that ``s1`` holds. Finishing there: 1.1 + 0.4 s against 1.6 s
        (sooner, but not once the 0.4 s count twice: ``s1``); with 0.05 s, ``s0``."""
        lb, clock = balancer((1, 1))
        lb.costs = _PerServerPrefill({"s0": extra_prefill, "s1": 0.0})
        running = [await lb.acquire(M), await lb.acquire(M)]
        ends = {"s0": 0.1, "s1": 0.6}
        for lease in running:
            lease.predicted_end = clock.now + ends[lease.name]
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got)
            assert got and got[0].handoff is not None and got[0].name == sent_to
            for lease in running:
                lease.release()
        got[0].release()


class TestPriorityKeepsItsOrder:
    """A lower-priority request sent ahead gives its place to a waiting higher-priority one."""

    async def test_higher_priority_takes_the_place(self) -> None:
        """The low-priority request is taken back, the high one sent ahead in its place, and
        the low one waits at the front of its own priority's queue."""
        lb, _ = balancer()
        first = await lb.acquire(M)
        low = await lb.acquire(M, ahead=True)
        assert low.handoff is not None
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got, priority=5)
            assert low.handoff.taken_back and lb.in_use("s0") == 1
            assert len(got) == 1 and got[0].handoff is not None
            assert got[0].handoff.request.priority == 5
            first.release()  # the host starts the high one
            assert got[0].handoff.started
            got[0].release()
        assert lb.in_use("s0") == 0 and lb.waiting == 0

    async def test_a_retry_takes_the_place_of_newer_work(self) -> None:
        """A waiting retry (a failover) outranks a request of its priority sent ahead: that
        one is taken back and the retry sent ahead instead (it never queues behind newer
        work, in the host's queue either)."""
        lb, _ = balancer()
        first = await lb.acquire(M)
        newer = await lb.acquire(M, ahead=True)
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got, exclude=frozenset({"gone"}))
            assert newer.handoff is not None and newer.handoff.taken_back
            assert len(got) == 1 and got[0].handoff is not None
            first.release()
            got[0].release()
        assert lb.in_use("s0") == 0 and lb.waiting == 0

    async def test_equal_priority_keeps_its_place(self) -> None:
        """A request of the same priority does not displace one sent ahead: it waits."""
        lb, _ = balancer()
        first = await lb.acquire(M)
        low = await lb.acquire(M, ahead=True)
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got)
            assert low.handoff is not None and not low.handoff.taken_back
            assert not got and lb.waiting == 1
            first.release()  # the one sent ahead starts; the waiter is sent ahead now
            assert low.handoff.started
            await wait_all_tasks_blocked()
            assert len(got) == 1 and got[0].handoff is not None
            low.release()
            got[0].release()
        assert lb.in_use("s0") == 0


class TestAHostFails:
    """A request's connection breaking on a host: what was sent ahead and has not started is
    taken back at once, and that host takes no new request while it still runs requests it
    had then (their retries may come, and go first); newer work is not sent ahead meanwhile,
    retries still are."""

    async def test_retries_come_first(self) -> None:
        """Host s0 (two slots) loses one request's connection while running another: the
        requests sent ahead to s0 and s1 are taken back; a retry is sent ahead, newer work
        waits (s0's free slot included) until the request s0 had then is done."""
        lb, clock = balancer((2, 1))
        running = [await lb.acquire(M)]
        clock.now += 0.3  # the first one frees first: the two sent ahead go to both hosts
        running += [await lb.acquire(M) for _ in range(2)]
        running.sort(key=lambda le: le.server.name)
        assert [le.server.name for le in running] == ["s0", "s0", "s1"]
        ahead: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, ahead)
            await acquire_in(tg, lb, ahead)
            assert sorted(le.server.name for le in ahead) == ["s0", "s1"]
            failed, other = running[0], running[1]
            clock.now += 0.1
            lb.settle(failed, AttemptError("reset", "s0", "connection reset"))
            assert all(le.handoff is not None and le.handoff.taken_back for le in ahead)
            lb.release(failed)
            for le in ahead:
                assert le.handoff is not None and not le.handoff.started
            got: List[Lease] = []
            await acquire_in(tg, lb, got, exclude=frozenset({"s0"}))
            assert len(got) == 1 and got[0].handoff is not None  # the retry, sent ahead
            assert got[0].server.name == "s1"
            newer: List[Lease] = []
            await acquire_in(tg, lb, newer)
            await acquire_in(tg, lb, newer)
            assert newer == [] and lb.waiting == 2  # not on s0's free slot, not sent ahead
            lb.release(other)  # s0 no longer runs what it had: its two slots are taken
            await wait_all_tasks_blocked()
            assert [le.server.name for le in newer] == ["s0", "s0"]
            assert all(le.handoff is None for le in newer)
            await acquire_in(tg, lb, newer)  # and newer work is sent ahead again
            assert len(newer) == 3 and newer[2].handoff is not None
            for le in running + got + newer:
                lb.release(le)
        assert lb.waiting == 0

    @pytest.mark.parametrize("lookahead", [0, 1])
    async def test_a_success_ends_it(self, lookahead: int) -> None:
        """A request succeeding on the host where a connection broke: it takes requests
        again (with or without the lookahead)."""
        lb, clock = balancer((2,), lookahead=lookahead)
        other = await one_of_two_breaks(lb, clock)
        newer: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, newer)
            assert newer == [] and lb.waiting == 1
            lb.settle(other, True)
            lb.release(other)  # a dispatch: the waiter gets a slot
            await wait_all_tasks_blocked()
            assert len(newer) == 1
            for le in newer:
                lb.release(le)

    async def test_a_window_ends_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A host left alone for ``WINDOW_S`` (a live host whose other requests run long)
        takes requests again without a release: a waiter's timer is set to look again
        then, and after it the first waiter gets the free slot."""
        lb, clock = balancer((2,))
        other = await one_of_two_breaks(lb, clock)
        timeouts: List[float] = []
        timeout = lb._timeout

        def recorded(waiter: Any) -> float:
            timeouts.append(timeout(waiter))
            return timeouts[-1]

        monkeypatch.setattr(lb, "_timeout", recorded)
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got)
            assert got == [] and timeouts == [pytest.approx(WINDOW_S)]
            clock.now += WINDOW_S
            later: List[Lease] = []
            await acquire_in(tg, lb, later)  # a dispatch
            assert [le.server.name for le in got] == ["s0"]
            tg.cancel_scope.cancel()
        for le in [other, *got, *later]:
            lb.release(le)

    async def test_a_request_waits_for_a_host_left_alone(self) -> None:
        """The only host left alone: a request waits for it, even with
        ``wait_for_healthy_s = 0`` (the host is healthy: no ``NoHealthyServer``)."""
        servers = (Server("s0", "http://127.0.0.1:11400", max_concurrency=2),)
        clock = Clock()
        state = FleetState(servers, clock=clock)
        state.probe_succeeded("s0", version="0.12.0", models={M: 1}, loaded=[])
        cfg = OrchestraConfig(servers=servers, wait_for_healthy_s=0.0)
        lb = LoadBalancer(cfg, state, clock=clock)
        other = await one_of_two_breaks(lb, clock)
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            await acquire_in(tg, lb, got)
            for _ in range(3):  # let its timer fire, were it set to give up now
                await anyio.lowlevel.checkpoint()
                await wait_all_tasks_blocked()
            assert got == [] and lb.waiting == 1
            lb.release(other)
            await wait_all_tasks_blocked()
            assert [le.server.name for le in got] == ["s0"]
        lb.release(got[0])

    def test_a_window_that_ended_sets_no_timer(self) -> None:
        """A window that ended (never looked at since) gives a waiter no zero timeout."""
        broken = BrokenHosts(lambda name: [])
        broken.broke("s0", 10.0)
        assert broken.ends_in(10.25) == pytest.approx(WINDOW_S - 0.25)
        assert broken.ends_in(10.0 + WINDOW_S) == float("inf")

    async def test_other_failures_change_nothing(self) -> None:
        """A request failing otherwise (a 500: the host answered) takes nothing back and
        pauses nothing."""
        lb, clock = balancer((2,))
        failed, other = [await lb.acquire(M) for _ in range(2)]
        ahead = await lb.acquire(M, ahead=True)
        clock.now += 0.1
        lb.settle(failed, AttemptError("server", "s0", "500 boom"))
        assert ahead.handoff is not None and not ahead.handoff.taken_back
        lb.release(failed)
        assert ahead.handoff.started
        assert (await lb.acquire(M, ahead=True)).handoff is not None
        for le in (other, ahead):
            lb.release(le)


class TestWalkStopsEarly:
    """The lookahead's walk stops once no host can take a request sent ahead: each new
    waiter costs the same, however many wait (no quadratic ramp-up on a large batch)."""

    async def test_a_host_without_a_measured_service_does_not_make_the_walk_long(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One host measured, one not (the start of a batch): its queue never takes a
        request sent ahead, yet queuing n requests evaluates about n waiters, not n**2/2."""
        lb, _ = balancer((1, 1), measured=False)
        lb.fleet.record_success("s0", M, latency_s=1.0)  # s1 not measured yet
        calls = count_candidates(lb, monkeypatch)
        running = [await lb.acquire(M), await lb.acquire(M)]
        assert {le.server.name for le in running} == {"s0", "s1"}
        n = 60
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                await acquire_in(tg, lb, got)
            sent = [le for le in got if le.handoff is not None]
            assert [le.server.name for le in sent] == ["s0"]  # only the measured host
            assert lb.waiting == n - 1
            assert calls[0] <= 8 * n
            tg.cancel_scope.cancel()
        for le in running + got:
            lb.release(le)

    async def test_hosts_without_a_measured_service_cost_nothing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Eight hosts, one measured (the start of a batch on a fresh fleet): each request
        queued evaluates one or two waiters, not one more per host not measured yet (those
        were claimed one by one before the walk could stop; the ramp-up lagged)."""
        lb, _ = balancer((1,) * 8, measured=False)
        lb.fleet.record_success("s0", M, latency_s=1.0)
        running = [await lb.acquire(M) for _ in range(8)]
        assert len({le.server.name for le in running}) == 8
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            while not got:  # the first waiters claim the next slots of hosts not measured
                await acquire_in(tg, lb, got)
            assert [le.server.name for le in got if le.handoff is not None] == ["s0"]
            queued = lb.waiting
            calls = count_candidates(lb, monkeypatch)
            n = 40
            for _ in range(n):
                await acquire_in(tg, lb, got)
            assert lb.waiting == queued + n
            assert calls[0] <= 2 * n
            tg.cancel_scope.cancel()
        for le in running + got:
            lb.release(le)


class TestADownHostIsNotFree:
    """A host that is down has its slots free and takes nothing: after a host dies, each
    release on the survivors evaluates a few waiters, not every one (with or without the
    lookahead; the reroute time after a kill was the time these walks took)."""

    @pytest.mark.parametrize("lookahead", [0, 1])
    async def test_releases_stay_cheap_after_a_host_dies(
        self, lookahead: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two one-slot hosts, ``n`` requests waiting; one host dies: ``k`` releases on the
        other evaluate about ``k`` waiters, not ``k * n``."""
        lb, _ = balancer((1, 1), lookahead=lookahead)
        running = [await lb.acquire(M), await lb.acquire(M)]
        assert {le.server.name for le in running} == {"s0", "s1"}
        n, k = 40, 10
        got: List[Lease] = []
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                await acquire_in(tg, lb, got)
            lb.fleet.mark_down("s0", "connection refused")  # its requests fail
            for le in running + got:
                if le.server.name == "s0":
                    lb.release(le)
            await wait_all_tasks_blocked()
            calls = count_candidates(lb, monkeypatch)
            for _ in range(k):
                on_s1 = [le for le in running + got if le.server.name == "s1" and not le._released]
                lb.release(min(on_s1, key=lambda le: le.acquired_at))
                await wait_all_tasks_blocked()
            assert sum(le.server.name == "s1" for le in got) >= k
            assert calls[0] <= 4 * k
            tg.cancel_scope.cancel()
        for le in running + got:
            lb.release(le)


# -- on the simulated fleet ---------------------------------------------------------------


class TestClock:
    """The real clock until :meth:`freeze`, then still until moved (the predictions then do
    not depend on how fast a loaded machine runs the test: a request paused on the host is
    not seen as stuck until the test says so)."""

    __test__ = False

    def __init__(self) -> None:
        self.frozen: Optional[float] = None

    def freeze(self) -> None:
        self.frozen = clock_now()

    def move(self, seconds: float) -> None:
        assert self.frozen is not None
        self.frozen += seconds

    def __call__(self) -> float:
        return clock_now() if self.frozen is None else self.frozen


async def _answer_to(orch: Orchestra, prompt: str, served: List[str]) -> None:
    served.append(str((await orch.generate(TINY, prompt)).server))


async def measured(sim: SimFleet, orch: Orchestra, clock: TestClock, rounds: int = 3) -> None:
    """Freeze ``clock`` and teach the orchestra that every host serves a request in exactly
    1 s of it: each round, one request per host, paused while the clock moves."""
    clock.freeze()
    names = [s.name for s in sim.servers]
    for _ in range(rounds):
        for name in names:
            sim[name].pause()
        served: List[str] = []
        async with anyio.create_task_group() as tg:
            for i in range(len(names)):
                tg.start_soon(_answer_to, orch, f"w{i}", served)
            for name in names:
                await sim[name].wait_until(lambda st: st.in_flight == 1)
            clock.move(1.0)
            for name in names:
                sim[name].resume()
        assert sorted(served) == sorted(names)
    for name in names:
        sim[name].pause()


class Calls:
    """Requests started in a task group; their answers (server) or errors, by label."""

    def __init__(self, orch: Orchestra, tg: TaskGroup) -> None:
        self.orch, self.tg = orch, tg
        self.done: List[str] = []
        self.server: Dict[str, Optional[str]] = {}
        self.errors: Dict[str, BaseException] = {}
        self.ended: Dict[str, anyio.Event] = {}

    def start(self, label: str, priority: int = 0) -> None:
        self.ended[label] = ended = anyio.Event()

        async def run() -> None:
            try:
                r = await self.orch.generate(TINY, label, priority=priority)
            except Exception as exc:
                self.errors[label] = exc
                return
            finally:
                ended.set()
            self.server[label] = r.server
            self.done.append(label)

        self.tg.start_soon(run)


async def first_queued(sim: SimFleet, names: Tuple[str, ...]) -> str:
    """The first of ``names`` whose host queues a request."""
    winner: List[str] = []
    async with anyio.create_task_group() as tg:

        async def watch(name: str) -> None:
            await sim[name].wait_until(lambda st: st.waiting_for_slot == 1)
            winner.append(name)
            tg.cancel_scope.cancel()

        for name in names:
            tg.start_soon(watch, name)
    return winner[0]


def lookahead_config(sim: SimFleet) -> OrchestraConfig:
    """``config_for(sim)`` with one request sent ahead per host (it is off by default)."""
    cfg = config_for(sim, strategy="least_loaded")
    return cfg.replace(servers=tuple(replace(s, lookahead=1) for s in cfg.servers))


def one_slot_hosts(*names: str) -> SimFleet:
    # The tests below use ``least_loaded``: it never waits for a busy host while one is free,
    # so each test knows where its requests run. Sending ahead does not depend on the strategy.
    return fleet([tiny_profile(n, num_parallel=1) for n in names])


class TestOnTheSimulator:
    """End to end over real sockets: sent ahead, taken back, priorities, nothing left over."""

    async def test_sent_into_the_hosts_queue(self) -> None:
        """With the host's one slot busy, the next request waits in the host's own queue, not
        the orchestra's; a request sent ahead is not counted in flight until it starts."""
        clock = TestClock()
        async with one_slot_hosts("h1") as sim, Orchestra(
            lookahead_config(sim), clock=clock
        ) as orch:
            await measured(sim, orch, clock)
            async with anyio.create_task_group() as tg:
                calls = Calls(orch, tg)
                calls.start("a")
                await sim["h1"].wait_until(lambda st: st.in_flight == 1)
                calls.start("b")
                await sim["h1"].wait_until(lambda st: st.waiting_for_slot == 1)
                assert orch.balancer.waiting == 0
                assert orch.state()["h1"].in_flight == 1
                assert orch.metrics().servers["h1"].in_flight == 1
                sim["h1"].resume()
            assert calls.done == ["a", "b"]
        assert orch.balancer.in_use("h1") == 0

    async def test_taken_back_when_another_host_frees_first(self) -> None:
        """A request sent ahead to a host whose slot stays busy moves to the host that frees
        first: its queued request leaves the first host's queue, the other host answers it."""
        clock = TestClock()
        async with one_slot_hosts("h1", "h2") as sim:
            async with Orchestra(lookahead_config(sim), clock=clock) as orch:
                await measured(sim, orch, clock)
                async with anyio.create_task_group() as tg:
                    calls = Calls(orch, tg)
                    calls.start("a")
                    calls.start("b")
                    for name in ("h1", "h2"):
                        await sim[name].wait_until(lambda st: st.in_flight == 1)
                    completed = {n: sim[n].state().completed for n in ("h1", "h2")}
                    calls.start("c")
                    busy = await first_queued(sim, ("h1", "h2"))
                    free = "h2" if busy == "h1" else "h1"
                    clock.move(0.5)  # both running requests are half done
                    sim[free].resume()
                    await sim[busy].wait_until(lambda st: st.waiting_for_slot == 0)
                    await calls.ended["c"].wait()
                    assert calls.server["c"] == free
                    assert sim[free].state().completed == completed[free] + 2
                    sim[busy].resume()
                assert sim[busy].state().completed == completed[busy] + 1
                assert sorted(calls.done) == ["a", "b", "c"] and not calls.errors
            assert orch.balancer.in_use(busy) == 0 and orch.balancer.in_use(free) == 0

    async def test_higher_priority_is_served_first(self) -> None:
        """A higher-priority request arriving while a lower one is held in the host's queue is
        served before it: the lower one is taken back and follows."""
        clock = TestClock()
        async with one_slot_hosts("h1") as sim, Orchestra(
            lookahead_config(sim), clock=clock
        ) as orch:
            await measured(sim, orch, clock)
            received = sim["h1"].state().requests
            async with anyio.create_task_group() as tg:
                calls = Calls(orch, tg)
                calls.start("a")
                await sim["h1"].wait_until(lambda st: st.in_flight == 1)
                calls.start("low")
                await sim["h1"].wait_until(lambda st: st.waiting_for_slot == 1)
                calls.start("high", priority=5)
                # The high one reached the host's queue, the low one left it.
                await sim["h1"].wait_until(
                    lambda st: st.requests == received + 3 and st.waiting_for_slot == 1
                )
                assert orch.balancer.waiting == 1
                sim["h1"].resume()
            assert calls.done == ["a", "high", "low"] and not calls.errors

    async def test_nothing_left_after_exit(self) -> None:
        """Closing the orchestra with a request held in a host's queue ends it (an error in
        its task), frees every slot, and the host's queue empties."""
        async with one_slot_hosts("h1") as sim:
            clock = TestClock()
            orch = Orchestra(lookahead_config(sim), clock=clock)
            async with anyio.create_task_group() as tg, orch:
                await measured(sim, orch, clock)
                sim["h1"].pause()
                calls = Calls(orch, tg)
                calls.start("a")
                await sim["h1"].wait_until(lambda st: st.in_flight == 1)
                calls.start("b")
                await sim["h1"].wait_until(lambda st: st.waiting_for_slot == 1)
            assert set(calls.errors) == {"a", "b"}
            assert all(isinstance(e, OrchestraClosed) for e in calls.errors.values())
            assert orch.balancer.in_use("h1") == 0 and orch.balancer.waiting == 0
            assert not any(orch.balancer._lookahead.pending.values())  # type: ignore[union-attr]
            await sim["h1"].wait_until(lambda st: st.in_flight == 0 and st.waiting_for_slot == 0)
            sim["h1"].resume()


class TestOption:
    """``Server.lookahead``: a non-negative integer, from Python and TOML alike."""

    @pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
    def test_bad_values_are_refused(self, bad: Any) -> None:
        """A bad value raises ConfigError naming the field and the value."""
        with pytest.raises(ConfigError, match=r"Server\('a'\)\.lookahead") as info:
            Server("a", "http://127.0.0.1:1", lookahead=bad)
        assert info.value.value == bad

    def test_toml_shape(self) -> None:
        """``lookahead = 0`` in a ``[[servers]]`` table turns it off for that server; unset,
        it is on under ``hybrid`` (the default strategy)."""
        cfg = OrchestraConfig.from_mapping(
            {"servers": [{"name": "a", "url": "http://127.0.0.1:1", "lookahead": 0}]}
        )
        off = cfg.servers[0]
        assert off.lookahead == 0 and "lookahead=0" in repr(off)
        assert LoadBalancer(OrchestraConfig(servers=(off,)), FleetState((off,)))._lookahead is None
        on = Server("b", "http://127.0.0.1:1")
        assert on.lookahead is None and "lookahead" not in repr(on)
        lb = LoadBalancer(OrchestraConfig(servers=(on,)), FleetState((on,)))
        assert lb._lookahead is not None and lb._lookahead.limits == {"b": 1}

    @pytest.mark.parametrize("strategy", ["least_loaded", "round_robin", "weighted"])
    def test_unset_is_off_under_other_strategies(self, strategy: str) -> None:
        """Unset, the lookahead is off under a strategy other than ``hybrid`` (it places by
        finishing time, which would override that strategy's choice); set, it holds."""
        unset = Server("a", "http://127.0.0.1:1")
        cfg = OrchestraConfig(servers=(unset,), strategy=strategy)
        assert LoadBalancer(cfg, FleetState((unset,)))._lookahead is None
        asked = Server("a", "http://127.0.0.1:1", lookahead=1)
        cfg = OrchestraConfig(servers=(asked,), strategy=strategy)
        lb = LoadBalancer(cfg, FleetState((asked,)))
        assert lb._lookahead is not None and lb._lookahead.limits == {"a": 1}
