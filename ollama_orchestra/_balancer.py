"""The load balancer: per-server slots, handed out as leases, to the best eligible server.

How a request gets a slot:

1. *Eligible* servers are those that have the model, are healthy, are admitted by their
   circuit breaker (and by that model's breaker there) and pass the affinity rules.
2. If one of them has a free slot, the strategy picks among them, and the slot is taken at
   once. A strategy may also decide that waiting for a busy but better server (one with the
   model loaded, or much faster) beats a free but worse one.
3. Otherwise the request waits in one queue, ordered by priority then arrival. It is not
   pinned to a server chosen early: whenever a slot frees, the queue is walked in order and
   each waiter is offered the servers again, free and busy alike. A waiter that would rather
   wait for a busy server (a faster one, or one with its model loaded) *claims* that
   server's next slot, so the waiters behind it see that server as busy for longer: near
   the end of a batch the last requests go to whichever server will finish them first,
   not to whichever is free first.

Every slot is released on every path, cancellation included. A waiter whose routing raises
(a bug, a strategy's error) gets that error in its own task: it never breaks another
request's release, and never stops the queue.

Longer than 500 lines because the queue walk, the candidates' estimates, grants, releases
and the breaker permits share the waiters' and leases' state: they are one algorithm with
one invariant (a slot is held by exactly one lease), kept in one place. The strategies are in
``_strategies``, the estimates' arithmetic in ``_estimates`` and ``_rates``.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import (
    AbstractSet,
    Any,
    AsyncIterator,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
    cast,
)

import anyio

from ._breaker import CircuitBreaker, ModelBreakers, Permit
from ._broken import BrokenHosts
from ._clock import now as clock_now
from ._config import OrchestraConfig, Server
from ._errors import NoCapableServer, NoHealthyServer, RequestError
from ._estimates import cold_load_s, displaced_s, expected_service_s, wait_s
from ._handoff import Handoff, Lookahead
from ._lease import LocalSlots, SlotStore
from ._metrics import Metrics
from ._rates import Estimate, Prompt, PromptCosts
from ._state import FleetState, ServerState
from ._strategies import (
    STRATEGY_CLASSES,
    Candidate,
    Choice,
    HybridStrategy,
    LeastLoadedStrategy,
    ModelAwareStrategy,
    RoundRobinStrategy,
    RouteRequest,
    Strategy,
    WeightedStrategy,
    make_strategy,
)

__all__ = [
    "STRATEGY_CLASSES",
    "Candidate",
    "Choice",
    "HybridStrategy",
    "Lease",
    "LeastLoadedStrategy",
    "LoadBalancer",
    "ModelAwareStrategy",
    "RoundRobinStrategy",
    "RouteRequest",
    "Strategy",
    "WeightedStrategy",
    "make_strategy",
]

log = logging.getLogger("ollama_orchestra.balancer")


# -- leases and waiters ----------------------------------------------------------------------


class Failure(Protocol):
    """What a failed attempt tells the breakers (``_failover.AttemptError`` is one)."""

    @property
    def breaker_failure(self) -> bool: ...

    @property
    def model_failure(self) -> bool: ...


#: An attempt's outcome for the breakers: ``True`` a success, a :class:`Failure`, or
#: ``None`` for no verdict.
Outcome = Union[bool, Failure, None]


class Lease:
    """A slot on one server, held for one attempt of one request."""

    __slots__ = (
        "_balancer",
        "_released",
        "acquired_at",
        "handoff",
        "model",
        "model_permit",
        "permit",
        "predicted_cached_chars",
        "predicted_end",
        "prefill_end",
        "prompt",
        "queued_s",
        "server",
    )

    def __init__(
        self,
        server: Server,
        model: str,
        queued_s: float,
        acquired_at: float,
        permit: Optional[Permit],
        predicted_end: float,
    ) -> None:
        self.server = server
        self.model = model
        self.queued_s = queued_s
        self.acquired_at = acquired_at
        self.permit = permit
        #: The permit of the (server, model) breaker, if the balancer has those.
        self.model_permit: Optional[Permit] = None
        self.predicted_end = predicted_end
        #: When its prompt is predicted to be evaluated: after the prompts of the same model
        #: sent there before it (one runner evaluates one prompt at a time).
        self.prefill_end = acquired_at
        #: The request's prompt, and how much of it the index said the server holds.
        self.prompt: Optional[Prompt] = None
        self.predicted_cached_chars = 0
        self._released = False
        self._balancer: Optional[LoadBalancer] = None
        #: Set when the lease was sent ahead into its host's queue (``_handoff``).
        self.handoff: Optional[Handoff] = None

    def settle(self, outcome: Outcome) -> None:
        """Give this lease's breaker permits their verdict (once; later calls do nothing).

        ``True``: a success. A failure (an ``AttemptError``) counts against the server's
        breaker where its ``breaker_failure`` says so, against the model's breaker there
        where its ``model_failure`` does. ``None`` (cancelled, the caller's error): no
        verdict, the permits are handed back.
        """
        if self._balancer is not None:
            self._balancer.settle(self, outcome)

    def release(self) -> None:
        """Give the slot back (the permits not settled yet are handed back unjudged)."""
        if self._balancer is not None:
            self._balancer.release(self)

    @property
    def name(self) -> str:
        return self.server.name

    def __repr__(self) -> str:
        return f"<Lease {self.server.name} model={self.model!r} queued_s={self.queued_s:.3f}>"


class _Waiter:
    __slots__ = (
        "ahead",
        "error",
        "event",
        "exclude",
        "front",
        "gone",
        "granted",
        "no_eligible_since",
        "rearm",
        "request",
        "since",
        "wake_at",
    )

    #: Set when it joins the queue (``_enqueue``): a request granted at once never waits.
    event: anyio.Event

    def __init__(self, request: RouteRequest, exclude: FrozenSet[str], since: float) -> None:
        self.request = request
        self.since = since
        self.exclude = exclude
        self.wake_at: Optional[float] = None
        self.rearm = False
        self.granted: Optional[Lease] = None
        self.error: Optional[BaseException] = None
        self.gone = False
        self.no_eligible_since: Optional[float] = None
        #: Its caller runs a lease sent ahead (``_handoff.run_ahead``); waits at the front.
        self.ahead = False
        self.front = False


class LoadBalancer:
    """Hands out per-server slots as :class:`Lease` objects (see the module docstring).

    Args:
        config: the fleet config (servers, strategy, affinity, ``wait_for_healthy_s``).
        state: the shared fleet state; the balancer reads it and listens for changes.
        breakers: one circuit breaker per server name (optional).
        metrics: told each server's held-slot count after every change (optional).
        strategy: overrides ``config.strategy``.
        model_breakers: the (server, model) breakers (optional).
        slots: where the slots given out are kept (default: in this process); see
            ``_lease.SlotStore``.
        costs: the prompt-cache cost model (prefix index and learned rates) the estimates
            read; the orchestra feeds it with what responses show.
    """

    def __init__(
        self,
        config: OrchestraConfig,
        state: FleetState,
        *,
        breakers: Optional[Mapping[str, CircuitBreaker]] = None,
        metrics: Optional[Metrics] = None,
        strategy: Optional[Strategy] = None,
        clock: Callable[[], float] = clock_now,
        model_breakers: Optional[ModelBreakers] = None,
        slots: Optional[SlotStore[Lease]] = None,
        costs: Optional[PromptCosts] = None,
    ) -> None:
        self._config = config
        self.costs = costs if costs is not None else PromptCosts()
        self._model_breakers = model_breakers
        self._closed: Optional[Callable[[], BaseException]] = None
        self._state = state
        self._breakers: Mapping[str, CircuitBreaker] = breakers or {}
        self._metrics = metrics
        self._strategy = strategy or make_strategy(config.strategy)
        self._clock = clock
        # The one owner of in-flight counts: a server's open leases. The state's snapshots
        # read them from here; the metrics are told the new count after each grant and release.
        self._slots: SlotStore[Lease] = (
            slots if slots is not None else LocalSlots(s.name for s in config.servers)
        )
        state.attach_in_flight(self.in_use)
        # Hosts whose connection broke under a request: left alone for a moment (``_broken``).
        self._broken = BrokenHosts(self._slots.held)
        # Requests sent ahead into a host's own queue: only with slots kept in this process
        # (shared slots count every request sent, in every process).
        self._lookahead = Lookahead.for_servers(self, config.servers) if slots is None else None
        self._first_byte_s = config.timeouts.first_byte_s
        self._queues: Dict[int, Deque[_Waiter]] = {}
        self._waiting = 0
        self._wanted: Dict[str, int] = {}  # waiting requests per model
        self._dispatching = False
        self._again = False
        state.subscribe(self._on_state_change)

    # -- public ----------------------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return self._waiting

    def in_use(self, name: str) -> int:
        """Slots held on ``name`` (a request sent ahead counts once it has started there)."""
        held = len(self._slots.held(name))
        return held if self._lookahead is None else held - self._lookahead.count(name)

    @property
    def fleet(self) -> FleetState:
        """The fleet's state as routing reads it (the DAG executor's estimates read it too)."""
        return self._state

    def now(self) -> float:
        """The balancer's clock (the one the fleet's state is kept in)."""
        return self._clock()

    def waiting_for(self, model: str) -> int:
        """Requests for ``model`` waiting for a slot."""
        return self._wanted.get(model, 0)

    @asynccontextmanager
    async def lease(
        self,
        model: str,
        *,
        role: Optional[str] = None,
        priority: int = 0,
        exclude: FrozenSet[str] = frozenset(),
        prompt: Optional[Prompt] = None,
    ) -> AsyncIterator[Lease]:
        """Wait for a slot on an eligible server and hold it for the block."""
        lease = await self.acquire(
            model, role=role, priority=priority, exclude=exclude, prompt=prompt
        )
        try:
            yield lease
        finally:
            self.release(lease)

    async def acquire(
        self,
        model: str,
        *,
        role: Optional[str] = None,
        priority: int = 0,
        exclude: FrozenSet[str] = frozenset(),
        prompt: Optional[Prompt] = None,
        ahead: bool = False,
        front: bool = False,
    ) -> Lease:
        """Take a slot; pair with :meth:`release` (or use :meth:`lease`).

        ``exclude`` names servers to avoid (already tried for this request); they are used
        only when no other server is eligible. A request that has already been tried
        (``exclude`` not empty) arrived before everything now waiting, so it waits at the
        front of its priority's queue: a failover never queues behind newer work.
        ``prompt`` (from ``costs.prompt``) lets the estimates count the uncached prefill.
        ``ahead``: the caller runs the lease with ``_handoff.run_ahead``, so it may be sent
        ahead into a busy host's queue (see ``_handoff``); ``front``: it was taken back from
        there, and waits at the front of its priority's queue, as a retry does.

        Raises:
            TypeError: ``priority`` is not an integer (checked before queueing: the queue
                orders by it).
        """
        priority = _check_priority(priority)
        if self._closed is not None:
            raise self._closed()
        request = RouteRequest(model, role, priority, prompt)
        t0 = self._clock()
        waiter = _Waiter(request, exclude, t0)
        waiter.ahead = ahead and self._lookahead is not None
        waiter.front = front
        cands = self._candidates(waiter)
        if not cands:
            if not self._left_alone_for(waiter):
                waiter.no_eligible_since = t0
            self._enqueue(waiter)
        elif self._waiting:
            # Others are waiting: join the queue and let the walk place this request in
            # order, seeing the slots the waiters ahead of it have claimed.
            self._enqueue(waiter)
            self._dispatch()
            granted = _granted(waiter)
            if granted is not None:
                return granted
            if waiter.error is not None:
                raise waiter.error
        else:
            choice = self._strategy.choose(request, cands)
            if choice.server is not None and self._has_free_slot(choice.server):
                return self._grant(waiter, choice.server, _named(cands, choice.server))
            self._wake_later(waiter, choice, t0)
            self._enqueue(waiter)
            if waiter.ahead:
                self._dispatch()  # it may be sent ahead to a host about to free a slot
                granted = _granted(waiter)
                if granted is not None:
                    return granted
        try:
            while True:
                timeout = self._timeout(waiter)
                with anyio.move_on_after(timeout):
                    await waiter.event.wait()
                if waiter.granted is not None:
                    return waiter.granted
                if waiter.error is not None:
                    raise waiter.error
                waiter.event = anyio.Event()
                if waiter.rearm:  # a walk set an earlier wake-up time: wait again with it
                    waiter.rearm = False
                    continue
                now = self._clock()
                if waiter.wake_at is not None and now >= waiter.wake_at:
                    waiter.wake_at = None
                if self._candidates(waiter) or self._left_alone_for(waiter):
                    waiter.no_eligible_since = None
                elif waiter.no_eligible_since is None:
                    waiter.no_eligible_since = now
                elif now - waiter.no_eligible_since >= self._config.wait_for_healthy_s:
                    raise self._no_server(request, now - t0)
                self._dispatch()
                granted = _granted(waiter)
                if granted is not None:
                    return granted
                if waiter.error is not None:
                    raise waiter.error
        except BaseException:
            # Cancelled (or failed) while waiting: leave the queue; a slot granted at the
            # same moment goes straight back to the pool.
            if not waiter.gone:
                self._dequeued(waiter)
            if waiter.granted is not None:
                self.release(waiter.granted)
            raise

    def release(self, lease: Lease) -> None:
        """Give the slot back; the first waiter that can use it gets it at once."""
        if lease._released:
            return
        lease._released = True
        name = lease.server.name
        self._slots.give_back(name, lease)
        if self._lookahead is not None:
            self._lookahead.drop(lease)
            self._lookahead.freed(name, self._clock())
        if self._metrics is not None:
            self._metrics.slots_held(name, self.in_use(name))
        if lease.permit is not None or lease.model_permit is not None:
            self.settle(lease, None)  # permits not settled yet: handed back, no verdict
        self._dispatch()

    def settle(self, lease: Lease, outcome: Outcome) -> None:
        """See :meth:`Lease.settle`: the balancer took the permits, it settles them."""
        name = lease.server.name
        permit, lease.permit = lease.permit, None
        mpermit, lease.model_permit = lease.model_permit, None
        host = self._breakers.get(name)
        model = (
            self._model_breakers.breaker(name, lease.model)
            if self._model_breakers is not None
            else None
        )
        failure = outcome if outcome is not None and not isinstance(outcome, bool) else None
        # (``connection_lost``: ``_failover.AttemptError``'s; a failure without it is not one.)
        if failure is not None and getattr(failure, "connection_lost", False):
            self._broken.broke(name, self._clock())
            if self._lookahead is not None:
                self._lookahead.broke()
        elif outcome is True:
            self._broken.served(name)
        for br, p, failed in (
            (host, permit, failure is not None and failure.breaker_failure),
            (model, mpermit, failure is not None and failure.model_failure),
        ):
            if br is None or p is None:
                continue
            if outcome is True:
                br.record_success(p)
            elif failed:
                br.record_failure(p)
            else:
                br.release(p)

    def close(self, error: Callable[[], BaseException]) -> None:
        """Refuse new requests, and end every waiting one, with a new ``error()`` each."""
        self._closed = error
        for queue in list(self._queues.values()):
            for waiter in list(queue):
                if not waiter.gone and waiter.granted is None:
                    self._fail(waiter, error())
        self._queues.clear()

    def reopen(self) -> None:
        """Accept requests again (the orchestra was entered again)."""
        self._closed = None

    def eligible(
        self,
        model: str,
        role: Optional[str] = None,
        priority: int = 0,
        tried: AbstractSet[str] = frozenset(),
    ) -> List[ServerState]:
        """The servers a request for ``model`` may go to now: the one definition of
        "eligible", used by the balancer, the retry loop and the transport.

        A server is eligible when it has the model, is healthy, its breaker and the model's
        breaker there admit, and the ``required`` affinity rules that match the request
        allow it. Among those, servers not in ``tried`` come first: a retry goes back to a
        tried server only when no other is eligible. Then preferred (not required) rules
        narrow the choice to their servers where any is left.
        """
        up = []
        for st in self._state.servers():
            if model not in st.models or not st.healthy:
                continue
            br = self._breakers.get(st.server.name)
            if br is not None and not br.can_admit():
                continue
            mb = self._model_breakers
            if mb is not None and not mb.can_admit(st.server.name, model):
                continue
            up.append(st)
        rules = [r for r in self._config.affinity if r.matches_request(model, role, priority)]
        for rule in rules:
            if rule.required:
                up = [st for st in up if rule.matches_server(st.server)]
        if tried:
            fresh = [st for st in up if st.server.name not in tried]
            if fresh:
                up = fresh
        for rule in rules:
            if not rule.required:
                preferred = [st for st in up if rule.matches_server(st.server)]
                if preferred:
                    up = preferred
        return up

    def check_capable(self, model: str) -> None:
        """Raise :class:`NoCapableServer` now if no server can ever serve ``model``."""
        states = self._state.servers()
        if all(st.models_known for st in states) and not any(model in st.models for st in states):
            raise NoCapableServer(model, {st.server.name: sorted(st.models) for st in states})

    # -- internals -------------------------------------------------------------------------

    def _eligible_states(self, waiter: _Waiter) -> List[ServerState]:
        req = waiter.request
        return self.eligible(req.model, req.role, req.priority, waiter.exclude)

    def _left_alone_for(self, waiter: _Waiter) -> bool:
        """Whether a server ``waiter`` may go to is only left alone for a moment after a
        broken connection (``_broken``): the request waits for it, it is not stranded."""
        now = self._clock()
        if not self._broken.any(now):
            return False
        return any(self._broken.holds(st.server.name, now) for st in self._eligible_states(waiter))

    def _candidates(
        self, waiter: _Waiter, claims: Optional[Mapping[str, int]] = None
    ) -> List[Candidate]:
        """The eligible servers as the strategy sees them. ``claims`` counts, per server,
        the slots already claimed by waiters ahead of this one in the current walk."""
        now = self._clock()
        model = waiter.request.model
        states = self._eligible_states(waiter)
        out = []
        fleet = [st.server.name for st in self._state.servers()]
        broken = self._broken
        for st in states:
            name = st.server.name
            if broken.holds(name, now):
                continue  # a connection broke there: left alone for a moment
            in_use = len(self._slots.held(name))
            slots = st.server.max_concurrency
            # Loaded, or being loaded by a request in flight there.
            loaded = st.is_loaded(model, now) or any(
                lease.model == model for lease in self._slots.held(name)
            )
            cold = (
                0.0 if loaded else self._cold_load_s(st, model) + self._displaced_s(st, model, now)
            )
            est = self.costs.estimate(name, model, waiter.request.prompt, fleet)
            service = _service(st, model, est)
            claimed = claims.get(name, 0) if claims else 0
            busy_for = 0.0
            if in_use + claimed >= slots:
                busy_for = self._busy_for(name, model, slots, claimed, service, now)
            queued = self._prompts_queued_s(name, model, now)
            out.append(
                Candidate(
                    name,
                    slots,
                    min(slots, in_use + claimed),
                    st.server.weight,
                    loaded,
                    service,
                    cold,
                    busy_for,
                    est.prefill_s,
                    est.cached_chars,
                    queued,
                )
            )
        return out

    def _prompts_queued_s(self, name: str, model: str, now: float) -> float:
        """Predicted time until the prompts of ``model`` already sent to ``name`` are
        evaluated (:attr:`Lease.prefill_end`)."""
        end = now
        for lease in self._slots.held(name):
            if lease.model == model and lease.prefill_end > end:
                end = lease.prefill_end
        return end - now

    def _busy_for(
        self, name: str, model: str, slots: int, claimed: int, service: Optional[float], now: float
    ) -> float:
        """Predicted time until a slot on ``name`` is free for the next claimant."""
        hold = service if service is not None else self._expected_service(self._state[name], model)
        held = self._slots.held(name)
        if self._lookahead is not None and self._lookahead.count(name):
            # Requests sent ahead there take the next slots: they count as claims.
            ahead = self._lookahead.pending[name]
            claimed += len(ahead)
            held = [le for le in held if le not in ahead]
        leases = [(le.acquired_at, le.predicted_end) for le in held]
        return wait_s(leases, slots, claimed, hold, now)

    def _cold_load_s(self, st: ServerState, model: str) -> float:
        return cold_load_s(st, model, self._state.servers())

    def _displaced_s(self, st: ServerState, model: str, now: float) -> float:
        wanted = {lease.model for lease in self._slots.held(st.server.name)} | self._wanted.keys()
        return displaced_s(st, model, now, wanted, self._state.servers())

    def _service_known(self, name: str, model: str) -> bool:
        """Whether a request of ``model`` on ``name`` has an expected service time
        (:func:`_service`'s, whatever its prompt): something was measured there."""
        est = self.costs.estimate(name, model, None)  # no prompt: the learned rest alone
        return _service(self._state[name], model, est) is not None

    def _expected_service(self, st: ServerState, model: str) -> float:
        return expected_service_s(st, model, self._state.servers())

    def _has_free_slot(self, name: str) -> bool:
        try:
            st = self._state[name]
        except KeyError:
            return False
        return len(self._slots.held(name)) < st.server.max_concurrency

    @staticmethod
    def _wake_later(waiter: _Waiter, choice: Choice, now: float) -> bool:
        """Have a waiting request look again after the strategy's ``widen_after_s``; True if
        that is sooner than the wake-up time it had."""
        if choice.widen_after_s is None:
            return False
        wake = now + max(0.0, choice.widen_after_s)
        if waiter.wake_at is not None and wake >= waiter.wake_at:
            return False
        waiter.wake_at = wake
        return True

    def _grant(self, waiter: _Waiter, name: str, cand: Optional[Candidate] = None) -> Lease:
        """Give ``name``'s slot to ``waiter``; ``cand``: ``name`` as :meth:`_candidates` saw it
        just now (no await since), whose estimates are taken instead of made again."""
        st = self._state[name]
        now = self._clock()
        permit: Optional[Permit] = None
        breaker = self._breakers.get(name)
        if breaker is not None:
            permit = breaker.admit()
        model = waiter.request.model
        prompt = waiter.request.prompt
        if cand is not None:
            queued = cand.queued_prefill_s
            service = cand.service_s
            cached_chars = cand.cached_chars
            prefill = cand.prefill_s
        else:
            queued = self._prompts_queued_s(name, model, now)
            fleet = [s.server.name for s in self._state.servers()]
            est = self.costs.estimate(name, model, prompt, fleet)
            service = _service(st, model, est)
            cached_chars = est.cached_chars
            prefill = est.prefill_s
        if service is None:
            service = self._expected_service(st, model)
        lease = Lease(st.server, model, now - waiter.since, now, permit, now + queued + service)
        lease.prefill_end = now + queued + prefill
        lease.prompt = prompt
        lease.predicted_cached_chars = cached_chars
        lease._balancer = self
        if self._model_breakers is not None:
            lease.model_permit = self._model_breakers.breaker(name, model).admit()
        self._slots.take(name, lease)
        if self._metrics is not None:
            self._metrics.slots_held(name, self.in_use(name))
        waiter.granted = lease
        return lease

    def _enqueue(self, waiter: _Waiter) -> None:
        waiter.event = anyio.Event()
        prio = waiter.request.priority
        queue = self._queues.get(prio)
        if queue is None:
            queue = self._queues[prio] = deque()
        if waiter.exclude or waiter.front:
            # A retry: older than everything waiting, first after the retries before it (in
            # the order they failed: the last to fail last). Taken back from a host's queue
            # (``front``): first after the retries.
            i = 0
            while i < len(queue) and queue[i].exclude:
                i += 1
            queue.insert(i, waiter)
        else:
            queue.append(waiter)
        self._waiting += 1
        model = waiter.request.model
        self._wanted[model] = self._wanted.get(model, 0) + 1

    def _dequeued(self, waiter: _Waiter) -> None:
        waiter.gone = True
        self._waiting -= 1
        model = waiter.request.model
        left = self._wanted[model] - 1
        if left:
            self._wanted[model] = left
        else:
            del self._wanted[model]

    def _free_anywhere(self) -> bool:
        """A free slot on a healthy server. (A server that is down, or left alone after a
        broken connection, has its slots free and takes nothing: counting them would walk
        every waiter on every release until it is back; its health change, or the release
        or success that ends its pause, dispatches again.)"""
        now = self._clock()
        return any(
            st.healthy
            and len(self._slots.held(st.server.name)) < st.server.max_concurrency
            and not self._broken.holds(st.server.name, now)
            for st in self._state.servers()
        )

    def _dispatch(self) -> None:
        """Hand free slots to waiters: priority first, then arrival order."""
        if self._dispatching:
            # Re-entered (a breaker or state hook fired while granting): finish the outer
            # pass, then run once more.
            self._again = True
            return
        self._dispatching = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._dispatch_once()
                if self._lookahead is not None:
                    self._lookahead.walk(self._clock())
        finally:
            self._dispatching = False

    def _dispatch_once(self) -> None:
        if not self._waiting or not self._free_anywhere():
            return
        claims: Dict[str, int] = {}
        now = self._clock()
        for prio in sorted(self._queues, reverse=True):
            queue = self._queues[prio]
            i = 0
            while i < len(queue):
                waiter = queue[i]
                if waiter.gone:
                    del queue[i]
                    continue
                try:
                    placed, target = self._place(waiter, claims, now)
                except Exception as exc:
                    # Whatever went wrong routing this waiter is its own error: it must not
                    # escape into the release() of another request, nor stop the walk.
                    log.exception("routing a waiting request for %s failed", waiter.request.model)
                    del queue[i]
                    self._fail(waiter, exc)
                    continue
                if placed:
                    del queue[i]
                    if not self._free_anywhere():
                        return
                    continue
                if target is not None:
                    claims[target] = claims.get(target, 0) + 1
                i += 1
            if not queue:
                del self._queues[prio]

    def _place(
        self, waiter: _Waiter, claims: Dict[str, int], now: float
    ) -> Tuple[bool, Optional[str]]:
        """Offer the servers to one waiter: ``(True, _)`` if it got a slot (it is dequeued and
        woken), else ``(False, the server whose next slot it claims)``."""
        cands = self._candidates(waiter, claims)
        if cands and any(c.free for c in cands):
            request = replace(waiter.request, waiting=self._waiting - 1)
            choice = self._strategy.choose(request, cands)
            if choice.server is not None and self._has_free_slot(choice.server):
                self._dequeued(waiter)
                self._grant(waiter, choice.server, _named(cands, choice.server))
                waiter.event.set()
                return True, None
            # It would rather wait for a busy server: claim that server's next slot, and
            # look again once waiting has stopped paying off.
            if self._wake_later(waiter, choice, now):
                waiter.rearm = True  # its timer was set for later: restart it
                waiter.event.set()
            return False, _claim_target(cands, choice)
        if cands:
            return False, min(cands, key=lambda c: c.busy_for_s).name
        return False, None

    # -- the handoff lookahead's hooks (the decisions are in ``_handoff``) -----------------

    def _grant_ahead(self, waiter: _Waiter, name: str, service: float, busy_for: float) -> None:
        """Send ``waiter`` ahead into ``name``'s queue (every slot there busy)."""
        assert self._lookahead is not None
        self._dequeued(waiter)
        self._queues[waiter.request.priority].remove(waiter)
        lease = self._grant(waiter, name)
        lease.handoff = Handoff(self._lookahead, waiter.request, waiter.exclude, service)
        lease.predicted_end = lease.acquired_at + busy_for + service
        self._lookahead.pending[name].append(lease)
        self._held_changed(name)
        waiter.event.set()

    def _take_back(self, lease: Lease) -> None:
        """Take back a lease sent ahead that has not started: its attempt is cancelled (the
        host drops a queued request whose client went away) and its slot given back."""
        h = lease.handoff
        if h is None or h.started or h.taken_back or self._lookahead is None:
            return
        h.taken_back = True
        self._lookahead.drop(lease)
        if h.scope is not None:
            h.scope.cancel()
        log.debug("request sent ahead to %s taken back", lease.server.name)
        self.release(lease)

    def _retake(self, lease: Lease) -> None:
        """A lease taken back whose request started anyway holds its slot again."""
        if lease._released:
            lease._released = False
            self._slots.take(lease.server.name, lease)

    def _held_changed(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.slots_held(name, self.in_use(name))

    def _candidates_for(self, request: RouteRequest, exclude: FrozenSet[str]) -> List[Candidate]:
        return self._candidates(_Waiter(request, exclude, self._clock()))

    def _fail(self, waiter: _Waiter, error: BaseException) -> None:
        """End one waiter with ``error`` (raised in its own task)."""
        if not waiter.gone:
            self._dequeued(waiter)
        waiter.error = error
        waiter.event.set()

    def _timeout(self, waiter: _Waiter) -> float:
        now = self._clock()
        limits = [math.inf]
        if waiter.wake_at is not None:
            limits.append(waiter.wake_at - now)
        limits.append(self._broken.ends_in(now))  # a host left alone may take it then
        if waiter.no_eligible_since is not None:
            limits.append(waiter.no_eligible_since + self._config.wait_for_healthy_s - now)
            model = waiter.request.model
            for name, br in self._breakers.items():
                if model not in self._state[name].models:
                    continue
                at = br.reopens_at()
                if at is not None:
                    limits.append(at - now)
                if self._model_breakers is not None:
                    at = self._model_breakers.reopens_at(name, model)
                    if at is not None:
                        limits.append(at - now)
        return max(0.0, min(limits))

    def _on_state_change(self) -> None:
        # Servers came or went: grant what can be granted, and let waiters that have no
        # eligible server re-check (so they can time out with NoHealthyServer). A model that
        # left a server's memory (``/api/ps``, or the server went down) took its prompt
        # caches with it.
        for st in self._state.servers():
            self.costs.loaded_models(st.server.name, list(st.loaded))
        self._dispatch()
        if self._dispatching:
            return
        for queue in list(self._queues.values()):
            for waiter in list(queue):
                if waiter.gone or waiter.granted is not None:
                    continue
                try:
                    stranded = not self._candidates(waiter)
                except Exception as exc:  # its own error, in its own task (see _dispatch_once)
                    log.exception("routing a waiting request for %s failed", waiter.request.model)
                    queue.remove(waiter)
                    self._fail(waiter, exc)
                    continue
                if stranded:
                    waiter.event.set()

    def _no_server(self, request: RouteRequest, waited: float) -> RequestError:
        return self.no_server_error(request.model, waited)

    def no_server_error(self, model: str, waited: float = 0.0) -> RequestError:
        """Why no server can take ``model`` now: :class:`NoCapableServer` if every server's
        models are known and none has it, else :class:`NoHealthyServer` naming the servers
        that have it (or may have it: never reached, models unknown) and why each is out."""
        states = self._state.servers()
        suspects = [st for st in states if model in st.models]
        if not suspects:
            suspects = [st for st in states if not st.models_known]
            if not suspects:
                return NoCapableServer(model, {st.server.name: sorted(st.models) for st in states})
        return NoHealthyServer(
            model,
            [st.server.name for st in suspects],
            waited,
            errors={st.server.name: self._why_out(st) for st in suspects},
            urls={st.server.name: st.server.url for st in suspects},
        )

    def _why_out(self, st: ServerState) -> str:
        if not st.healthy:
            return st.last_error or st.probe_error or "not answering yet"
        br = self._breakers.get(st.server.name)
        if br is not None and not br.can_admit():
            return f"circuit breaker {br.state}"
        return "excluded by an affinity rule"


def _service(st: ServerState, model: str, est: Estimate) -> Optional[float]:
    """Expected service time of a request there: the learned rest of a request plus this
    request's uncached prefill once both are known; else the measured mean latency."""
    if est.base_s is not None:
        return est.base_s + est.prefill_s
    return st.latency_s.get(model)


def _named(cands: Sequence[Candidate], name: str) -> Optional[Candidate]:
    """The candidate called ``name``; None if the strategy chose a server outside them."""
    for cand in cands:
        if cand.name == name:
            return cand
    return None


def _claim_target(cands: Sequence[Candidate], choice: Choice) -> Optional[str]:
    """The busy server a waiting request is waiting for: the one to free up first among
    those the strategy named (any, if it named none)."""
    busy = [c for c in cands if not c.free and (choice.among is None or c.name in choice.among)]
    if choice.server is not None:
        busy = [c for c in busy if c.name == choice.server] or busy
    if not busy:
        return None
    return min(busy, key=lambda c: c.busy_for_s).name


def _check_priority(priority: object) -> int:
    """A request's priority as an int; ``TypeError`` naming it otherwise (bools refused)."""
    if isinstance(priority, bool):
        raise TypeError(f"priority must be an integer, got {priority!r}")
    try:
        return operator.index(cast(Any, priority))
    except TypeError:
        raise TypeError(f"priority must be an integer, got {priority!r}") from None


def _granted(waiter: _Waiter) -> Optional[Lease]:
    # A function, so the type checker does not keep its earlier narrowing to None.
    return waiter.granted
