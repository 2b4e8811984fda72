"""The handoff lookahead: no dead time between a slot freeing on a host and its next request.

Without it, a host's slot idles from the moment its request ends there until the next request
reaches it: the last chunk's trip to us, our release and grant, and the new request's trip
back. Ollama's own queue has no such gap, which is why sending everything at once wins at
saturation (and loses rerouting, head-of-line order and priorities).

So while every slot of a host is busy and the balancer predicts one frees soon (within about
one service time, from the learned estimates of the requests running there), the first
waiting request that would finish soonest there is sent *ahead*, into the host's own queue
(at most ``Server.lookahead`` of them per host). The host starts it the moment a slot
frees. Where a request goes is decided by when it would finish, ``hybrid``'s rule, cache and
speed included (a prompt evaluated again, or a model loaded, where another host would not
need it counts twice, as under ``hybrid`` when requests wait: every slot is busy): so by
default the lookahead is on (1) under ``hybrid`` and off under the other strategies, whose
placement it would override (measured: under ``least_loaded`` it lifted the prompt-cache
hits of ``bench_agent``'s conversations from 56% to 85%, no longer the cache-blind strategy
asked for); ``Server.lookahead`` set explicitly holds under any
strategy. Until it starts, it is only a reservation and is **taken back** (its HTTP request
cancelled: Ollama drops a queued request whose client went away) when

- a slot frees on another host that would finish it sooner, and no waiting request takes
  that slot (near the end of a batch: the rerouting the balancer exists for), or
- a request of higher priority, or a retry of the same priority, waits for a slot on that
  host: it gets the place in the host's queue instead (a lower-priority request never sits
  in a host's queue ahead of a waiting higher-priority one, nor newer work ahead of a
  failover). A request taken back waits at the front of its priority's queue, behind the
  retries; or
- a request's connection broke on any host (``AttemptError.connection_lost``): the others
  running there may break too (a host that died fails them one by one), and their retries
  go first. Every request sent ahead that is not a retry is taken back at once (a
  take-back frees a place in a host's queue only when its cancellation reaches the host:
  the earlier, the sooner the retries start; on that host itself it would likely fail
  too), and while that host is left alone (``_broken``: it takes no new request while it
  runs one it had then, for at most a second, or until one succeeds there), only retries
  are sent ahead.

A lookahead request counts as started when a slot frees on its host (a release there with
fewer requests running than slots: Ollama's queue is first in, first out) or when its first
chunk arrives, whichever comes first; from then on it holds a slot like any other request.

Bounded deviation: a higher-priority request that arrives in the instant between the host
freeing a slot and our hearing of it finds the lookahead request already started, and waits
for the next slot, as it would have waited for the request that took the slot without the
lookahead. A take-back that crosses the request's first chunk keeps the request where it is
(it already runs there).

Facts about Ollama (ollama/ollama ``server/sched.go``, commit 000ce020): a request waits for
its runner in ``processPending``; one whose context is done ("pending request cancelled or
timed out, skipping scheduling") is skipped, and a request's context ends when its client
disconnects. The simulator does the same: a client that goes away cancels its request,
which leaves the runner's slot queue (``sim/_asgi.stream_ndjson``,
``sim/_scheduler._take_slot``).

Off under shared slots (``coordination``): there every request sent counts against the
host's slots in every process.

A host that is down takes nothing, though its slots are free: the balancer's walk and this
one skip it (counting its empty queue as room made every release walk every waiter until
the host was back: that walk, not the lookahead, was most of the reroute time after a kill).
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import anyio

from ._config import Server
from ._estimates import wait_s
from ._strategies import Candidate, HybridStrategy, RouteRequest, redone_s

if TYPE_CHECKING:
    from ._balancer import Lease, LoadBalancer

__all__ = ["Handoff", "Lookahead", "TakenBack", "first_chunk", "run_ahead"]

T = TypeVar("T")

#: "A slot frees soon": within this many of the request's own expected service times there
#: (about one; the estimates of different prompts differ by their prefill). Never more than
#: half the first-byte timeout, which a request waiting in a host's queue counts against.
SOON = 1.5


class TakenBack(Exception):
    """A request sent ahead was taken back before it started: ask for a slot again."""


class Handoff:
    """The lookahead side of one lease sent ahead into its host's queue."""

    __slots__ = ("exclude", "owner", "request", "scope", "service", "started", "taken_back")

    def __init__(
        self, owner: Lookahead, request: RouteRequest, exclude: FrozenSet[str], service: float
    ) -> None:
        self.owner = owner
        self.request = request
        self.exclude = exclude
        #: Its expected service time on its host (``predicted_end`` once it starts).
        self.service = service
        self.started = False
        self.taken_back = False
        #: The cancel scope its attempt runs in (set by :func:`run_ahead`).
        self.scope: Optional[anyio.CancelScope] = None


class Lookahead:
    """The leases sent ahead and not started yet, per host, oldest first; the decisions."""

    __slots__ = ("_lb", "limits", "pending")

    def __init__(self, lb: LoadBalancer, servers: Iterable[Server]) -> None:
        self._lb = lb
        # Unset: on under ``hybrid`` only, whose rule (least expected completion) is the one
        # :meth:`walk` places requests by; under another strategy it would override its choice.
        auto = 1 if isinstance(lb.strategy, HybridStrategy) else 0
        self.limits: Dict[str, int] = {
            s.name: auto if s.lookahead is None else s.lookahead for s in servers
        }
        self.pending: Dict[str, List[Lease]] = {name: [] for name in self.limits}

    @classmethod
    def for_servers(cls, lb: LoadBalancer, servers: Iterable[Server]) -> Optional[Lookahead]:
        """A lookahead for ``lb``'s ``servers``; ``None`` when every server has it off."""
        out = cls(lb, servers)
        return out if any(out.limits.values()) else None

    def count(self, name: str) -> int:
        return len(self.pending.get(name, ()))

    def drop(self, lease: Lease) -> None:
        """``lease`` is no longer waiting in its host's queue (started, released, taken back)."""
        try:
            self.pending[lease.server.name].remove(lease)
        except (KeyError, ValueError):
            pass

    # -- the balancer's hooks --------------------------------------------------------------

    def freed(self, name: str, now: float) -> None:
        """A slot was given back on ``name``: the oldest leases sent ahead there start in the
        slots now free (the host's queue is first in, first out)."""
        queue = self.pending.get(name)
        if not queue:
            return
        lb = self._lb
        slots = lb._state[name].server.max_concurrency
        running = len(lb._slots.held(name)) - len(queue)
        while queue and running < slots:
            self.start(queue[0], now)
            running += 1

    def start(self, lease: Lease, now: float) -> None:
        """``lease``'s request started on its host: it holds a slot from now on."""
        h = lease.handoff
        if h is None or h.started or h.taken_back:
            return
        h.started = True
        self.drop(lease)
        lease.acquired_at = now
        lease.predicted_end = now + h.service
        self._lb._held_changed(lease.server.name)

    def first_chunk(self, lease: Lease) -> None:
        # It started when a slot freed there, before its first chunk: when predicted, at most.
        now = self._lb._clock()
        h = lease.handoff
        predicted = lease.predicted_end - (h.service if h is not None else 0.0)
        self.start(lease, min(now, max(lease.acquired_at, predicted)))

    def retaken(self, lease: Lease) -> None:
        """``lease`` was taken back, but its request had started anyway: hold its slot again."""
        h = lease.handoff
        if h is not None:
            h.taken_back = False
        self._lb._retake(lease)
        self.start(lease, self._lb._clock())

    def broke(self) -> None:
        """A request's connection broke on a host. The others running there may break too (a
        host that died fails them one by one), and their retries go first: what was sent
        ahead and has not started, and is not a retry, is taken back now (the retries get
        its place sooner: a request taken back leaves a host's queue only when its
        cancellation reaches it; on that host itself it would likely fail too). Newer work
        is not sent ahead while that host is left alone (``_broken``; :meth:`walk`)."""
        for queue in list(self.pending.values()):
            for lease in list(queue):
                if not _rank(lease)[1]:  # not a retry
                    self._lb._take_back(lease)

    def walk(self, now: float) -> None:
        """After the balancer's queue walk: take back what another host would start sooner,
        then send the first waiting requests ahead (a lower-priority one sent ahead gives
        its place to a waiting higher-priority one)."""
        lb = self._lb
        if lb._free_anywhere() and any(self.pending.values()):
            for queue in list(self.pending.values()):
                for lease in list(queue):
                    if self._sooner_elsewhere(lease, now):
                        lb._take_back(lease)
        if not lb._waiting:
            return
        hold = lb._broken.any(now)
        open_limits = self._open_limits(now)  # one walk: health and pauses stay as they are
        claims: Dict[str, int] = {}
        for prio in sorted(lb._queues, reverse=True):
            waiters = lb._queues[prio]
            retry = bool(waiters) and bool(waiters[0].exclude)  # retries wait at the front
            if not self._room_for((prio, retry), open_limits):
                return  # every host's queue is taken, by work of this rank or higher
            for waiter in list(waiters):
                if waiter.gone or waiter.granted is not None:
                    continue
                rank = (prio, bool(waiter.exclude))
                self._give_way(waiter, rank)
                if hold and not waiter.exclude:
                    break  # newer work waits while retries may come (:meth:`broke`)
                if self._done(rank, claims, open_limits):
                    # Nothing left for this waiter nor those behind it (of this rank or
                    # lower): stop, rather than estimate every waiting request on each walk.
                    return
                if not waiter.ahead:
                    continue
                cands = lb._candidates(waiter, claims)
                if not cands or any(c.free for c in cands):
                    continue  # a free slot it chose not to take (the strategy waits)
                best = min(cands, key=_finish_counting_waste(cands))
                name = best.name
                if (
                    not claims.get(name)
                    and self.count(name) < self.limits.get(name, 0)
                    and best.service_s is not None
                    and best.busy_for_s <= min(SOON * best.service_s, lb._first_byte_s / 2)
                ):
                    lb._grant_ahead(waiter, name, best.service_s, best.busy_for_s)
                    continue
                claims[name] = claims.get(name, 0) + 1

    # -- decisions -------------------------------------------------------------------------

    def _room_for(self, rank: Tuple[int, bool], open_limits: Sequence[Tuple[str, int]]) -> bool:
        """Whether a waiting request of ``rank`` may still be sent ahead somewhere (among
        ``open_limits``: :meth:`_open_limits`), or make one of lower rank sent ahead give way."""
        for name, limit in open_limits:
            queue = self.pending[name]
            if len(queue) < limit or any(_rank(le) < rank for le in queue):
                return True
        return False

    def _done(
        self,
        rank: Tuple[int, bool],
        claims: Mapping[str, int],
        open_limits: Sequence[Tuple[str, int]],
    ) -> bool:
        """Whether the walk can stop at a waiter of ``rank``: no host may take a request
        sent ahead (its queue is full, or a waiter ahead in this walk claimed its next
        slot), and nothing sent ahead ranks below it (so it and the waiters after it, of
        its rank or lower, can make nothing give way)."""
        for name, limit in open_limits:
            queue = self.pending[name]
            if len(queue) < limit and not claims.get(name):
                return False
            if any(_rank(le) < rank for le in queue):
                return False
        return True

    def _open_limits(self, now: float) -> List[Tuple[str, int]]:
        """The hosts that may take a request sent ahead, with their limits: healthy ones,
        not left alone after a broken connection, with a measured service time for a model
        that waits (nothing is sent ahead without one). The others have room in their
        queues and take nothing: counting them, each walk looked at one waiter more per
        such host (at the start of a batch on 8 hosts, one measured: 8 waiters for each
        request arriving, which delayed the batch's first requests by 0.2-0.3 s)."""
        lb = self._lb
        state, broken = lb._state, lb._broken
        models = list(lb._wanted)
        return [
            (name, limit)
            for name, limit in self.limits.items()
            if state[name].healthy
            and not broken.holds(name, now)
            and any(lb._service_known(name, m) for m in models)
        ]

    def _give_way(self, waiter: Any, rank: Tuple[int, bool]) -> None:
        """Take back every request of lower rank than ``waiter`` (a lower priority; or the
        same, not a retry when ``waiter`` is one: a failover never queues behind newer work)
        sent ahead to a host it may go to: the host would start it first."""
        lower = [le for q in self.pending.values() for le in q if _rank(le) < rank]
        if not lower:
            return
        eligible = {st.server.name for st in self._lb._eligible_states(waiter)}
        for lease in lower:
            if lease.server.name in eligible:
                self._lb._take_back(lease)

    def _sooner_elsewhere(self, lease: Lease, now: float) -> bool:
        """A free slot elsewhere would finish ``lease``'s request sooner than its place in
        its host's queue."""
        h = lease.handoff
        if h is None or h.started:
            return False
        lb = self._lb
        here = lease.server.name
        cands = lb._candidates_for(h.request, h.exclude)
        free = [c for c in cands if c.free and c.name != here and c.service_s is not None]
        if not free:
            return False
        queue = self.pending[here]
        held = lb._slots.held(here)
        running = [(le.acquired_at, le.predicted_end) for le in held if le not in queue]
        slots = lb._state[here].server.max_concurrency
        wait = wait_s(running, slots, queue.index(lease), h.service, now)
        finish_here = wait + h.service
        return any(c.service_s is not None and c.service_s + c.cold_s < finish_here for c in free)


def _finish(c: Candidate) -> float:
    """When a request would finish there: the slot's wait, its service and a cold load (its
    service unknown: the wait alone, so the host freeing first gets it)."""
    return c.busy_for_s + (c.service_s or 0.0) + c.cold_s


def _finish_counting_waste(cands: Sequence[Candidate]) -> Callable[[Candidate], float]:
    """:func:`_finish`, plus the prompt evaluated again and the model loaded where another
    host would not: every slot is busy when a request is sent ahead, so that time is taken
    from the requests waiting behind it, and counts twice (as in ``hybrid``)."""
    prefill = min(c.prefill_s for c in cands)
    cold = min(c.cold_s for c in cands)

    def finish(c: Candidate) -> float:
        return _finish(c) + redone_s(c, prefill, cold)

    return finish


def _rank(lease: Lease) -> Tuple[int, bool]:
    """A request sent ahead's rank: its priority, then whether it is a retry."""
    h = lease.handoff
    return (h.request.priority, bool(h.exclude)) if h is not None else (0, False)


async def run_ahead(lease: Lease, work: Callable[[Lease], Awaitable[T]]) -> T:
    """``work(lease)``; for a lease sent ahead, in a scope its take-back cancels
    (:class:`TakenBack` then: the caller asks for a slot again)."""
    h = lease.handoff
    if h is None:
        return await work(lease)
    if h.taken_back:
        raise TakenBack()
    done: List[T] = []
    with anyio.CancelScope() as scope:
        h.scope = scope
        try:
            done.append(await work(lease))
        except Exception:
            if h.taken_back:
                raise TakenBack() from None
            raise
        finally:
            h.scope = None
    if not done:
        raise TakenBack()
    if _was_taken_back(h):
        # Its answer came as it was taken back: it runs there; it holds a slot again.
        h.owner.retaken(lease)
    return done[0]


def _was_taken_back(h: Handoff) -> bool:
    # A function: the type checker keeps its narrowing of ``h.taken_back`` across an await.
    return h.taken_back


def first_chunk(lease: Lease) -> None:
    """The first chunk of ``lease``'s answer arrived: a request sent ahead has started."""
    h = lease.handoff
    if h is not None and not h.started:
        h.owner.first_chunk(lease)
