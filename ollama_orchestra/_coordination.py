"""Shared slots in the orchestra: several processes never hold more than a server's slots.

With ``OrchestraConfig(coordination=...)`` the orchestra's balancer is a
:class:`CoordinatedBalancer` over a :class:`SharedSlots` store, and each slot it hands out is
also a lease in Redis (``_redis_slots.RedisSlots``).

How it works (the strategies are untouched):

* **Decide locally, on the fleet's counts.** The store's ``held(server)`` is this process's
  leases plus stand-ins for the slots other processes hold (the server's live Redis count, as
  last known, minus this process's confirmed leases). The balancer, its queue and every
  strategy see a server as busy as it is fleet-wide. The count is refreshed by the count each
  release publishes (pub/sub) and by a periodic read every ``ttl_s / 3`` (leases of dead
  processes expire without a message).
* **Confirm atomically.** After the local decision, the request's own task takes the Redis
  slot with one Lua round trip (:meth:`RedisSlots.try_acquire`). If Redis refuses (another
  process took it meanwhile), the local grant is undone, the refusal's count makes the server
  look full, and the request queues again until a slot frees. Only a confirmed slot is used,
  so the fleet never holds more than ``max_concurrency`` per server.
* **Release at once.** Giving a lease back removes it locally and releases it in Redis from
  a background task in a shielded scope (bounded by ``timeout_s``): cancellation cannot leak
  it, and a slot that could not be released expires after ``ttl_s``.
* **Redis down or slow** (a connection error, or a call slower than ``timeout_s``): the
  process falls back to local limits, ``ceil(fallback_share * max_concurrency)`` per server
  (the rest shows as held by others), logs it once, and ``state().coordination`` reads
  ``"local-fallback"``. No request fails because of it. The periodic read rejoins when Redis
  answers again: the leases taken meanwhile are registered in Redis, then the fleet counts
  apply again (``"redis"``).

* **Breakers and health too.** A host breaker's trip (and its close after a successful
  probe) in one process opens (closes) that server's breaker in the others:
  ``_shared_breakers``. A host one process finds down leaves the others' rotation, one it
  finds back is probed by them at once: ``_shared_health``.

Cross-process fairness: a request that waits is queued in Redis too, for the servers with its
model (``RedisSlots.join``), and a slot is confirmed only if no waiter of a higher priority in
any process needs the free ones (it yields; the waiter leaving wakes it). Within a priority,
the first to ask Redis after a release gets the slot (each process's own queue is in
arrival order; a refused request queues again at the front of its priority's queue).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import (
    Any,
    AsyncContextManager,
    AsyncIterator,
    Callable,
    Optional,
)

from ._balancer import Lease, LoadBalancer
from ._breaker import BreakerEvent
from ._config import OrchestraConfig
from ._coordconfig import Coordination
from ._shared_breakers import SharedBreakers
from ._shared_health import SharedHealth
from ._shared_slots import LOCAL_FALLBACK, REDIS, SharedSlots, Waiter
from ._state import FleetState

__all__ = [
    "LOCAL_FALLBACK",
    "REDIS",
    "CoordinatedBalancer",
    "SharedSlots",
    "Waiter",
    "breaker_changed",
    "coordinated",
    "make_balancer",
]

# Set in a request's task once Redis refused its slot: it queues again at the front.
_REFUSED: ContextVar[bool] = ContextVar("refused", default=False)

# The request's waiter in its own task (set by CoordinatedBalancer.acquire).
_WAITER: ContextVar[Optional[Waiter]] = ContextVar("waiter", default=None)


class CoordinatedBalancer(LoadBalancer):
    """A :class:`LoadBalancer` whose slots are shared with other processes through Redis
    (see the module docstring). Same arguments, plus ``coordination``."""

    def __init__(
        self,
        config: OrchestraConfig,
        state: FleetState,
        *,
        coordination: Coordination,
        **kwargs: Any,
    ) -> None:
        clock = kwargs.get("clock")
        self._shared = SharedSlots(
            config.servers, coordination, clock=clock if clock is not None else state.now
        )
        super().__init__(config, state, slots=self._shared, **kwargs)
        self._shared.on_change(self._dispatch)
        state.attach_coordination(lambda: self._shared.mode)
        metrics = kwargs.get("metrics")
        if metrics is not None:
            metrics.attach_coordination(lambda: self._shared.mode)
        self._shared_breakers = SharedBreakers(
            coordination.url,
            dict(self._breakers),
            namespace=coordination.namespace,
            timeout_s=coordination.timeout_s,
            retry_s=coordination.ttl_s / 3,
            probe_ttl_s=2 * coordination.ttl_s,
        )
        self._shared_breakers.on_applied(self._dispatch)
        self._shared_health = SharedHealth(
            coordination.url,
            state,
            namespace=coordination.namespace,
            timeout_s=coordination.timeout_s,
            retry_s=coordination.ttl_s / 3,
        )

    @property
    def shared(self) -> SharedSlots:
        return self._shared

    @property
    def shared_breakers(self) -> SharedBreakers:
        """The host breakers' trips, shared through the same Redis."""
        return self._shared_breakers

    @property
    def shared_health(self) -> SharedHealth:
        """The hosts' up/down verdicts, shared through the same Redis."""
        return self._shared_health

    def in_use(self, name: str) -> int:
        """This process's leases on ``name`` (the fleet's are in Redis)."""
        return self._shared.local_count(name)

    async def acquire(self, model: str, **kwargs: Any) -> Lease:
        """:meth:`LoadBalancer.acquire`, then the slot confirmed in Redis (again if refused)."""
        t0 = self._clock()
        refused = _REFUSED.set(False)
        waiter = Waiter(self._shared.new_waiter_id(), kwargs.get("priority", 0))
        token = _WAITER.set(waiter)
        try:
            while True:
                lease = await super().acquire(model, **kwargs)
                try:
                    ok = await self._shared.confirm(lease, waiter)
                    if ok and lease.permit is not None and lease.permit.probe:
                        ok = await self._shared_breakers.claim_probe(lease.server.name)
                except BaseException:
                    self.release(lease)
                    raise
                if ok:
                    lease.queued_s = max(lease.queued_s, lease.acquired_at - t0)
                    return lease
                # Refused: full fleet-wide (the server now looks so), or a half-open probe
                # another process sends (the breaker is open here until its verdict).
                # Queue again, at the front.
                _REFUSED.set(True)
                self.release(lease)
        finally:
            _WAITER.reset(token)
            _REFUSED.reset(refused)
            self._shared.done(waiter)

    def _enqueue(self, waiter: Any) -> None:
        super()._enqueue(waiter)
        mine = _WAITER.get()
        if mine is not None:  # it waits: queued in Redis too, for the servers with its model
            model = waiter.request.model
            states = self._state.servers()
            servers = [st.server.name for st in states if model in st.models]
            self._shared.queue(mine, servers or [st.server.name for st in states])
        if _REFUSED.get():  # it was first in line when refused: it stays first
            queue = self._queues[waiter.request.priority]
            if queue and queue[-1] is waiter:
                queue.pop()
                queue.appendleft(waiter)


def make_balancer(config: OrchestraConfig, state: FleetState, **kwargs: Any) -> LoadBalancer:
    """The orchestra's balancer: a :class:`CoordinatedBalancer` when ``config.coordination``
    is set, else a plain :class:`LoadBalancer`."""
    coordination = config.coordination
    if isinstance(coordination, Coordination):
        return CoordinatedBalancer(config, state, coordination=coordination, **kwargs)
    return LoadBalancer(config, state, **kwargs)


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _shared_state(
    balancer: CoordinatedBalancer, poke: Callable[[str], None]
) -> AsyncIterator[None]:
    balancer.shared_health.on_poke(poke)
    async with balancer.shared, balancer.shared_breakers, balancer.shared_health:
        yield


def coordinated(
    balancer: LoadBalancer, poke: Callable[[str], None] = lambda name: None
) -> AsyncContextManager[Any]:
    """The context the orchestra keeps open while it runs: the Redis connections of a
    coordinated balancer (slots, breakers, health; ``poke(server)`` probes a server now),
    nothing for a plain one."""
    if isinstance(balancer, CoordinatedBalancer):
        return _shared_state(balancer, poke)
    return _nothing()


def breaker_changed(balancer: LoadBalancer, event: BreakerEvent) -> None:
    """A breaker of the orchestra changed: a coordinated balancer shares a host breaker's
    trip or close with the other processes (see ``_shared_breakers``)."""
    if isinstance(balancer, CoordinatedBalancer):
        balancer.shared_breakers.changed(event)
