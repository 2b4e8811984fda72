"""The slot store of a coordinated balancer: this process's leases, the other processes'
slots as stand-ins, each slot confirmed in Redis (see ``_coordination`` for how it works).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import uuid
from types import TracebackType
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import anyio
import anyio.abc
import anyio.lowlevel

from ._balancer import Lease
from ._config import Server
from ._coordconfig import Coordination
from ._extras import require_asyncio, require_extra
from ._lease import SlotStore
from ._redis_slots import RedisSlots, down_errors
from ._secrets import redact_url

__all__ = ["LOCAL_FALLBACK", "REDIS", "SharedSlots", "Waiter", "redis_down"]

log = logging.getLogger("ollama_orchestra.coordination")

#: ``state().coordination`` values.
REDIS = "redis"
LOCAL_FALLBACK = "local-fallback"


class Waiter:
    """A request of this process as Redis' queues know it (see :meth:`SharedSlots.queue`)."""

    __slots__ = ("done", "id", "joined", "left", "pending", "priority", "servers")

    def __init__(self, wid: str, priority: int) -> None:
        self.id = wid
        self.priority = priority
        self.servers: Tuple[str, ...] = ()
        self.pending = False  # queued here, on its way to Redis
        self.joined = False  # in Redis' queues
        self.left = False  # out of them again (served, or gone)
        self.done = False  # its request has its slot, or has given up


# A stand-in for a slot kept back while on local limits never frees (in the wait estimates).
_KEPT_BACK_S = 86400.0


class SharedSlots(SlotStore[Lease]):
    """The slot store of a coordinated balancer (see the module docstring).

    Use as an async context manager around the orchestra's life: it opens the Redis
    connection, the pub/sub listener and the periodic read.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        coordination: Coordination,
        *,
        clock: Callable[[], float],
    ) -> None:
        require_extra("redis", "shared slots through Redis (coordination)")
        self._coordination = coordination
        self._clock = clock
        self._servers: Dict[str, Server] = {s.name: s for s in servers}
        self._local: Dict[str, List[Lease]] = {s.name: [] for s in servers}
        self._shown: Dict[str, List[Lease]] = {s.name: [] for s in servers}
        self._others: Dict[str, List[Lease]] = {s.name: [] for s in servers}
        self._fleet: Dict[str, int] = {s.name: 0 for s in servers}
        self._confirmed: Dict[str, int] = {s.name: 0 for s in servers}
        self._limit: Dict[str, int] = {
            s.name: max(1, math.ceil(coordination.fallback_share * s.max_concurrency))
            for s in servers
        }
        self._remote: Dict[Lease, Tuple[str, str]] = {}  # lease -> (server, Redis lease id)
        self._redis: Optional[RedisSlots] = None
        self._tg: Optional[anyio.abc.TaskGroup] = None
        self._joining: List[Waiter] = []  # waiters to queue in Redis (one batch)
        self._me = f"w{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._ids = itertools.count()
        #: ``"redis"``, ``"local-fallback"``, or ``None`` while not running.
        self.mode: Optional[str] = None
        self._wake: Callable[[], None] = lambda: None
        for name in self._servers:
            self._show(name)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={len(ls)}" for n, ls in self._local.items())
        return f"<SharedSlots {redact_url(self._coordination.url)} {self.mode} {counts}>"

    def on_change(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` when slots may have freed (the balancer's dispatch)."""
        self._wake = wake

    # -- the SlotStore seam ---------------------------------------------------------------

    def held(self, server: str) -> Sequence[Lease]:
        return self._shown[server]

    def take(self, server: str, lease: Lease) -> None:
        self._local[server].append(lease)
        self._show(server)

    def give_back(self, server: str, lease: Lease) -> None:
        try:
            self._local[server].remove(lease)
        except ValueError:
            return
        remote = self._remote.pop(lease, None)
        if remote is not None:
            self._confirmed[server] -= 1
            # Optimistic: the slot counts as free here now; the release is on its way.
            self._fleet[server] = max(0, self._fleet[server] - 1)
            if self.mode == REDIS:
                self._release_later(*remote)
            elif self._redis is not None:
                self._redis.forget(*remote)  # not renewed any more: it expires
        self._show(server)

    def local_count(self, server: str) -> int:
        """This process's leases on ``server``."""
        return len(self._local[server])

    # -- confirming with Redis ------------------------------------------------------------

    async def confirm(self, lease: Lease, waiter: Optional[Waiter] = None) -> bool:
        """Hold ``lease``'s slot in Redis too; ``False``: the server is full fleet-wide, or its
        free slots are wanted by waiters of a higher priority than ``waiter``'s in other
        processes (the lease must be given back). On local limits: whether it is within
        them."""
        name = lease.server.name
        redis = self._redis
        if self.mode == REDIS and redis is not None:
            rid = redis.new_lease()
            queued = waiter is not None and waiter.joined and not waiter.left
            try:
                with anyio.fail_after(self._coordination.timeout_s):
                    taken, live = await redis.try_acquire(
                        name,
                        lease.server.max_concurrency,
                        rid,
                        priority=waiter.priority if waiter is not None else 0,
                        waiter=waiter.id if queued and waiter is not None else "",
                        queued=waiter.servers if queued and waiter is not None else (),
                    )
            except redis_down() as exc:
                self._release_later(name, rid)  # it may have been taken before the timeout
                self._fall_back(exc)
            except BaseException:
                self._release_later(name, rid)
                raise
            else:
                if taken:
                    self._remote[lease] = (name, rid)
                    self._confirmed[name] += 1
                    if queued and waiter is not None:
                        waiter.left = True
                self._fleet[name] = live
                self._show(name)
                return taken
        return len(self._local[name]) <= self._limit[name]

    def new_waiter_id(self) -> str:
        """A fresh waiter id (unique across processes)."""
        return f"{self._me}-{next(self._ids)}"

    def queue(self, waiter: Waiter, servers: Sequence[str]) -> None:
        """``waiter`` waits for a slot on one of ``servers``: queue it in Redis (in the
        background, batched with the others queued meanwhile), so that the other processes'
        requests of a lower priority yield to it. Once per waiter; not on local limits."""
        if self.mode != REDIS or waiter.pending or waiter.joined or self._tg is None:
            return
        waiter.servers = tuple(servers)
        waiter.pending = True
        self._joining.append(waiter)
        if len(self._joining) == 1:
            self._tg.start_soon(self._join)

    def done(self, waiter: Waiter) -> None:
        """``waiter``'s request has its slot or gave up: out of Redis' queues."""
        waiter.done = True
        if waiter.joined and not waiter.left:
            waiter.left = True
            self._leave_later(waiter)

    async def _join(self) -> None:
        await anyio.lowlevel.checkpoint()  # the waiters queued in this pass: one batch
        batch, self._joining = self._joining, []
        redis = self._redis
        if redis is None:
            return
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self._coordination.timeout_s):
                await redis.join([(w.id, w.priority, w.servers) for w in batch])
        except redis_down():
            for w in batch:  # not queued; its slot is still confirmed
                w.pending = False
                redis.forget_waiter(w.id, w.servers)
            return
        for w in batch:
            w.pending = False
            w.joined = True
            if w.done and not w.left:
                w.left = True
                self._leave_later(w)

    def _leave_later(self, waiter: Waiter) -> None:
        redis, tg = self._redis, self._tg
        if redis is None:
            return
        if tg is None:
            redis.forget_waiter(waiter.id, waiter.servers)
            return
        tg.start_soon(self._leave_now, redis, waiter)

    async def _leave_now(self, redis: RedisSlots, waiter: Waiter) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._coordination.timeout_s):
            try:
                await redis.leave(waiter.id, waiter.servers)
            except redis_down():
                pass  # not renewed any more: it expires after the TTL

    def _release_later(self, server: str, rid: str) -> None:
        redis, tg = self._redis, self._tg
        if redis is None:
            return
        if tg is None:
            redis.forget(server, rid)
            return
        tg.start_soon(self._release_now, redis, server, rid)

    async def _release_now(self, redis: RedisSlots, server: str, rid: str) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._coordination.timeout_s):
            try:
                live = await redis.release(server, rid)
            except redis_down():
                redis.forget(server, rid)  # not renewed: it expires after the TTL
                return
            self._counted(server, live)

    # -- the fleet's counts ---------------------------------------------------------------

    def _counted(self, server: str, live: int) -> None:
        """A live count read from Redis (a release's message, or the periodic read)."""
        if self.mode != REDIS or server not in self._fleet:
            return
        before = len(self._shown[server])
        self._fleet[server] = live
        self._show(server)
        if len(self._shown[server]) < before:
            self._wake()

    def _show(self, server: str) -> None:
        """Rebuild what the balancer sees of ``server``: its own leases and stand-ins."""
        if self.mode == REDIS:
            others = max(0, self._fleet[server] - self._confirmed[server])
            end_in = 0.0  # unknown: the wait estimate ages it like an overdue lease
        else:
            slots = self._servers[server].max_concurrency
            others = slots - self._limit[server]
            end_in = _KEPT_BACK_S
        stand_ins = self._others[server]
        if len(stand_ins) != others:
            now = self._clock()
            srv = self._servers[server]
            del stand_ins[others:]
            while len(stand_ins) < others:
                stand_ins.append(Lease(srv, "", 0.0, now, None, now + end_in))
        local = self._local[server]
        self._shown[server] = local + stand_ins if stand_ins else local

    def _show_all(self) -> None:
        for name in self._servers:
            self._others[name].clear()
            self._show(name)

    def _fall_back(self, exc: BaseException) -> None:
        if self.mode == LOCAL_FALLBACK:
            return
        self.mode = LOCAL_FALLBACK
        log.warning(
            "Redis at %s unreachable (%s): using local limits (%s of each server's slots) "
            "until it answers again",
            redact_url(self._coordination.url),
            type(exc).__name__,
            self._coordination.fallback_share,
        )
        self._show_all()
        self._wake()

    async def _check(self) -> None:
        """One periodic read: rejoin if Redis answers, fall back if not; refresh counts."""
        redis = self._redis
        assert redis is not None
        names = list(self._servers)
        try:
            with anyio.fail_after(self._coordination.timeout_s):
                if self.mode != REDIS:
                    await self._rejoin(redis)
                live = await redis.counts(names)
        except redis_down() as exc:
            self._fall_back(exc)
            return
        if self.mode != REDIS:
            if self.mode == LOCAL_FALLBACK:
                log.warning(
                    "Redis at %s answers again: slots shared again",
                    redact_url(self._coordination.url),
                )
            self.mode = REDIS
            self._show_all()
        for name, n in zip(names, live):
            self._counted(name, n)
        self._wake()

    async def _rejoin(self, redis: RedisSlots) -> None:
        """Register in Redis every lease held here (those taken on local limits too)."""
        for name, leases in self._local.items():
            ids: List[str] = []
            for lease in leases:
                remote = self._remote.get(lease)
                if remote is None:
                    remote = self._remote[lease] = (name, redis.new_lease())
                    self._confirmed[name] += 1
                ids.append(remote[1])
            if ids:
                await redis.adopt(name, ids)

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self._coordination.ttl_s / 3)
            await self._check()

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SharedSlots:
        require_asyncio("shared slots through Redis (coordination)", "leave coordination unset")
        c = self._coordination
        redis = RedisSlots(
            c.url,
            namespace=c.namespace,
            ttl_s=c.ttl_s,
            poll_s=c.ttl_s / 3,
            timeout_s=c.timeout_s,
            on_count=self._counted,
        )
        await redis.__aenter__()
        self._redis = redis
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self.mode = None  # local limits until the first read answers (then "redis")
        self._show_all()
        await self._check()
        tg.start_soon(self._watch)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        tg, self._tg = self._tg, None
        redis, self._redis = self._redis, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()  # the releases under way are shielded: they finish
                await tg.__aexit__(None, None, None)
        finally:
            self.mode = None
            self._show_all()
            if redis is not None:
                await redis.__aexit__(None, None, None)


def redis_down() -> Tuple[Type[BaseException], ...]:
    """What a Redis call raises when Redis is down, unreachable or too slow."""
    return down_errors()
