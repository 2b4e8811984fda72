"""Server slots shared by several processes through Redis (the shared-slots issue, step one).

A :class:`RedisSlots` keeps, per server, the leases that hold its slots in a Redis sorted set
(member: lease id, score: expiry in Redis' own milliseconds, from ``TIME``, so client clocks do
not matter). A Lua script takes a slot atomically, at most ``slots`` per server, and only for a
waiter among the first ones of that server's queue (a sorted set keyed by priority, then arrival):
waiters are served across processes highest priority first, then first come first served. A
heartbeat task renews this process's leases; a holder that dies stops renewing and its slots
expire after ``ttl_s``. A release is immediate and is published on the server's channel, which
wakes the waiters of every process (a slow poll is the safety net for a lost message).

Two ways to take a slot: :meth:`RedisSlots.acquire` waits in Redis' fair queue (priority, then
arrival, across processes); :meth:`RedisSlots.try_acquire` takes a free slot at once or says
how many are held (the orchestra's balancer decides locally and confirms with it: see
``_coordination``). A caller of the second kind queues its waiting requests with
:meth:`RedisSlots.join` (for every server they may use; the heartbeat renews them) and
:meth:`RedisSlots.leave`: ``try_acquire`` yields the free slots to the waiters of a higher
priority queued there, and a waiter that leaves publishes the server's count where it may
have held others back. The pub/sub message of a release carries the server's live lease
count, passed to ``on_count``. The listener and the heartbeat outlive a Redis outage (they
retry every ``poll_s``). Needs the ``redis`` extra (its asyncio client).
"""

from __future__ import annotations

import itertools
import os
import uuid
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type

import anyio
import anyio.abc

from ._errors import ConfigError
from ._extras import require_extra
from ._pubsub import listen
from ._secrets import redact_url

__all__ = ["RedisSlots"]

# KEYS: leases zset, waiters zset (score: -priority, arrival), waiter expiry zset.
# ARGV: lease id, slots, ttl ms, waiter id. Returns 1 when the slot was taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, w in ipairs(dead) do redis.call('ZREM', KEYS[2], w) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return 0 end
local ahead = redis.call('ZRANGE', KEYS[2], 0, free - 1)
local mine = false
for _, w in ipairs(ahead) do if w == ARGV[4] then mine = true end end
if not mine then return 0 end
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: waiters zset, waiter expiry zset. ARGV: waiter id, priority, ttl ms.
# Joins the queue (once; later calls only renew the expiry). Score: priority first (1e13 ms is
# ~300 years of arrivals), then arrival; exact in a double for priorities within +-500.
_ENQUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local score = -tonumber(ARGV[2]) * 1e13 + now
  redis.call('ZADD', KEYS[1], score, ARGV[1])
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: leases zset. ARGV: ttl ms, lease ids... Extends the ones still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  end
end
return 1
"""


# Lua (needs ``now``): waiter {waiter} leaves the queues at KEYS[{first}], KEYS[{first} + 4], ...
# (each followed by its queue expiry, leases and freed channel); where it may have held back
# waiters of a lower priority, the server's live count is published (it wakes them).
_LEAVE_QUEUES = """
for i = {first}, #KEYS, 4 do
  local score = redis.call('ZSCORE', KEYS[i], {waiter})
  if score then
    redis.call('ZREM', KEYS[i], {waiter})
    redis.call('ZREM', KEYS[i + 1], {waiter})
    local lower = math.floor(tonumber(score) / 1e13) * 1e13 + 1e13
    if redis.call('ZCOUNT', KEYS[i], lower, '+inf') > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', now)
      redis.call('PUBLISH', KEYS[i + 3], redis.call('ZCARD', KEYS[i + 2]))
    end
  end
end
"""


# A waiter's score in a server's queue: priority first (1e13 ms is ~300 years of arrivals), then
# arrival (Redis' TIME, ms); exact in a double for priorities within +-500. A waiter of a
# higher priority than ``p`` scores below ``-p * 1e13``.

# KEYS: leases zset, queue zset, queue expiry zset of the server; then, for each other server
# the waiter is queued for: its queue, queue expiry, leases and freed channel.
# ARGV: lease id, slots, ttl ms, waiter id ('' if not queued), priority.
# Takes a free slot unless the waiters of a higher priority queued for this server (in any
# process) need every free slot. Returns {1 if taken, live leases after}; refused:
# {0, the leases plus the higher-priority waiters, at most slots}. Taken: the waiter leaves
# every queue (see _LEAVE for the message it may send).
_TRY = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n >= slots then return {0, n} end
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, w in ipairs(dead) do redis.call('ZREM', KEYS[2], w) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local bound = -tonumber(ARGV[5]) * 1e13
local ahead = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. bound)
if ahead >= slots - n then return {0, math.min(slots, n + ahead)} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[4])
"""
    + _LEAVE_QUEUES.format(first=4, waiter="ARGV[4]")
    + "end\nreturn {1, n + 1}\n"
)

# KEYS: as _LEAVE_QUEUES, for each server the waiter is queued for. ARGV: waiter id.
_LEAVE = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
    + _LEAVE_QUEUES.format(first=1, waiter="ARGV[1]")
    + "return 1\n"
)

# KEYS: queue and queue expiry zsets of each server. ARGV: ttl ms, then per waiter: its id,
# priority, how many servers, and their (1-based) positions among the KEYS pairs. Queues each
# waiter (once: a later call only renews its expiry).
_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local i = 2
while i <= #ARGV do
  local w, score, k = ARGV[i], -tonumber(ARGV[i + 1]) * 1e13 + now, tonumber(ARGV[i + 2])
  for j = 1, k do
    local at = tonumber(ARGV[i + 2 + j]) * 2 - 1
    if not redis.call('ZSCORE', KEYS[at], w) then redis.call('ZADD', KEYS[at], score, w) end
    redis.call('ZADD', KEYS[at + 1], now + ttl, w)
  end
  i = i + 3 + k
end
return 1
"""

# KEYS: a queue expiry zset. ARGV: ttl ms, waiter ids... Renews the ones still queued.
_RENEW_WAITERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return 1
"""

# KEYS: leases zset. ARGV: ttl ms, lease ids... Holds them whatever the count (a process that
# ran on local limits while Redis was away makes its leases known). Returns the live count.
_ADOPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: leases zset, freed channel. ARGV: lease id. Publishes and returns the live count.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
redis.call('PUBLISH', KEYS[2], n)
return n
"""

# KEYS: leases zsets. Returns their live counts (expired leases dropped).
_COUNTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  out[i] = redis.call('ZCARD', KEYS[i])
end
return out
"""


def down_errors() -> Tuple[Type[BaseException], ...]:
    """What a Redis call raises when Redis is down, unreachable or too slow."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, TimeoutError)


def redis_client(url: str, timeout_s: Optional[float], *, read_timeout: bool = True) -> Any:
    """An asyncio Redis client for ``url``. With ``timeout_s``, calls fail fast (connecting, and
    reading unless ``read_timeout`` is off): a caller with a deadline falls back to local
    behaviour instead. One retry on a connection error: after Redis restarts, the pool's old
    connections fail once each, and that must not count as Redis being down again (a process
    would fall back and log a second outage)."""
    import redis.asyncio as aioredis

    if timeout_s is None:
        return aioredis.Redis.from_url(url)
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: Dict[str, Any] = {"socket_connect_timeout": timeout_s, "retry": Retry(NoBackoff(), 1)}
    if read_timeout:
        options["socket_timeout"] = timeout_s
    return aioredis.Redis.from_url(url, **options)


class RedisSlots:
    """Per-server slots held in Redis, shared by every process using the same URL and namespace.

    Use as ``async with RedisSlots(url) as slots:``; :meth:`acquire` waits for a slot and returns
    a lease id, :meth:`release` gives it back. ``ttl_s`` bounds how long a dead holder's slot
    stays taken; the heartbeat renews live leases every ``ttl_s / 3``. ``timeout_s`` bounds
    each socket operation (``None``: the client's default); ``on_count(server, live)`` is
    called with the count each release publishes.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "ollama-orchestra",
        ttl_s: float = 5.0,
        poll_s: float = 0.5,
        timeout_s: Optional[float] = None,
        on_count: Optional[Callable[[str, int], None]] = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("coordination", url, "expected a redis://, rediss:// or unix:// URL")
        for name, value in (("ttl_s", ttl_s), ("poll_s", poll_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"coordination.{name}", value, "expected a positive number")
        require_extra("redis", "shared slots through Redis")
        self._url = url
        self._ns = namespace
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._poll_s = float(poll_s)
        self._timeout_s = timeout_s
        self._on_count = on_count
        self._me = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._seq = itertools.count()
        self._held: Dict[str, Set[str]] = {}
        self._waiting: Dict[str, Set[str]] = {}  # server -> waiters queued there (see join)
        self._changed: Dict[str, anyio.Event] = {}
        self._redis: Any = None
        self._tg: Optional[anyio.abc.TaskGroup] = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={len(ls)}" for n, ls in self._held.items())
        return f"<RedisSlots {redact_url(self._url)} {counts}>"

    def _keys(self, server: str) -> Tuple[str, str, str, str]:
        base = f"{self._ns}:{server}"
        return f"{base}:leases", f"{base}:queue", f"{base}:queue-expiry", f"{base}:freed"

    async def __aenter__(self) -> RedisSlots:
        self._down = down_errors()
        self._redis = redis_client(self._url, self._timeout_s)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._renew = self._redis.register_script(_RENEW)
        self._try = self._redis.register_script(_TRY)
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._renew_waiters = self._redis.register_script(_RENEW_WAITERS)
        self._adopt = self._redis.register_script(_ADOPT)
        self._release = self._redis.register_script(_RELEASE)
        self._counts = self._redis.register_script(_COUNTS)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._heartbeat)
        await self._tg.start(self._listen)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            # Shielded: leaving under cancellation (a proxy stopped) still closes every
            # connection instead of leaving them to the garbage collector.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._redis.aclose()

    async def in_flight(self, server: str) -> int:
        """Live leases on ``server`` across every process (expired ones not counted)."""
        leases = self._keys(server)[0]
        now_s, now_us = await self._redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        return int(await self._redis.zcount(leases, f"({now_ms}", "+inf"))

    async def waiting(self, server: str) -> int:
        """Waiters queued for ``server`` across every process."""
        return int(await self._redis.zcard(self._keys(server)[1]))

    async def acquire(self, server: str, slots: int, priority: int = 0) -> str:
        """Wait for one of ``server``'s ``slots`` and return the lease id holding it."""
        leases, queue, expiry, _ = self._keys(server)
        lease = self.new_lease()
        try:
            while True:
                # One event per server, shared by its waiters: the first to wake after a
                # release replaces it, the others wait on that new one (not on yet another).
                changed = self._changed.get(server)
                if changed is None or changed.is_set():
                    changed = self._changed[server] = anyio.Event()
                await self._enqueue(keys=[queue, expiry], args=[lease, priority, self._ttl_ms])
                if await self._acquire(
                    keys=[leases, queue, expiry], args=[lease, slots, self._ttl_ms, lease]
                ):
                    self._held.setdefault(server, set()).add(lease)
                    return lease
                with anyio.move_on_after(self._poll_s):
                    await changed.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._redis.zrem(queue, lease)
                await self._redis.zrem(expiry, lease)
            raise

    def new_lease(self) -> str:
        """A fresh lease id (unique across processes)."""
        return f"{self._me}-{next(self._seq)}"

    async def try_acquire(
        self,
        server: str,
        slots: int,
        lease: str,
        *,
        priority: int = 0,
        waiter: str = "",
        queued: Sequence[str] = (),
    ) -> Tuple[bool, int]:
        """Take one of ``server``'s ``slots`` for ``lease`` if one is free and no waiter of a
        higher priority than ``priority`` (in any process, see :meth:`join`) needs it, without
        waiting: ``(taken, live leases on server after)``; refused, the count includes the
        waiters it yields to. Taken, ``waiter`` (if given) leaves the queues of ``queued``."""
        keys = list(self._keys(server)[:3])
        if waiter:
            for other in queued:
                if other != server:
                    q, e = self._queued_keys(other)
                    keys += [q, e, *self._keys(other)[0::3]]
        taken, live = await self._try(
            keys=keys, args=[lease, slots, self._ttl_ms, waiter, int(priority)]
        )
        if taken:
            self._held.setdefault(server, set()).add(lease)
            if waiter:
                self.forget_waiter(waiter, queued)
        return bool(taken), int(live)

    def _queued_keys(self, server: str) -> Tuple[str, str]:
        keys = self._keys(server)
        return keys[1], keys[2]

    async def join(self, waiters: Sequence[Tuple[str, int, Sequence[str]]]) -> None:
        """Queue each ``(waiter id, priority, servers)`` for those servers, across processes
        (one round trip): a process's :meth:`try_acquire` of a lower priority yields to them.
        Renewed by the heartbeat until :meth:`leave` (or a :meth:`try_acquire` that takes a
        slot); a process that dies stops renewing and its waiters expire after ``ttl_s``."""
        names = sorted({s for _, _, servers in waiters for s in servers})
        if not names:
            return
        at = {name: i + 1 for i, name in enumerate(names)}
        keys: List[str] = []
        for name in names:
            keys += self._queued_keys(name)
        args: List[Any] = [self._ttl_ms]
        for waiter, priority, servers in waiters:
            args += [waiter, int(priority), len(servers), *(at[s] for s in servers)]
            for server in servers:
                self._waiting.setdefault(server, set()).add(waiter)
        await self._join(keys=keys, args=args)

    async def leave(self, waiter: str, servers: Sequence[str]) -> None:
        """``waiter`` stops waiting: it leaves the queues of ``servers`` (the waiters it held
        back, if any, are woken)."""
        self.forget_waiter(waiter, servers)
        keys: List[str] = []
        for server in servers:
            q, e = self._queued_keys(server)
            keys += [q, e, *self._keys(server)[0::3]]
        if keys:
            await self._leave(keys=keys, args=[waiter])

    def forget_waiter(self, waiter: str, servers: Sequence[str]) -> None:
        """Stop renewing ``waiter`` in the queues of ``servers`` (it expires after the TTL)."""
        for server in servers:
            self._waiting.get(server, set()).discard(waiter)

    async def adopt(self, server: str, leases: Sequence[str]) -> int:
        """Hold ``leases`` on ``server`` whatever its count (slots taken while Redis was
        away); returns the live count."""
        self._held.setdefault(server, set()).update(leases)
        live = await self._adopt(keys=[self._keys(server)[0]], args=[self._ttl_ms, *leases])
        return int(live)

    async def counts(self, servers: Sequence[str]) -> List[int]:
        """The live lease count of each of ``servers`` (one round trip)."""
        if not servers:
            return []
        live = await self._counts(keys=[self._keys(s)[0] for s in servers])
        return [int(n) for n in live]

    def forget(self, server: str, lease: str) -> None:
        """Stop renewing ``lease`` (it expires after the TTL), without calling Redis."""
        self._held.get(server, set()).discard(lease)

    async def release(self, server: str, lease: str) -> int:
        """Give ``lease``'s slot back now and wake the waiters of every process; returns the
        server's live count."""
        leases, _, _, freed = self._keys(server)
        self._held.get(server, set()).discard(lease)
        live = 0
        with anyio.CancelScope(shield=True):
            live = int(await self._release(keys=[leases, freed], args=[lease]))
        return live

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self._ttl_ms / 3000)
            try:
                for server, held in list(self._held.items()):
                    if held:
                        await self._renew(keys=[self._keys(server)[0]], args=[self._ttl_ms, *held])
                for server, waiting in list(self._waiting.items()):
                    if waiting:
                        await self._renew_waiters(
                            keys=[self._keys(server)[2]], args=[self._ttl_ms, *waiting]
                        )
            except self._down:
                pass  # Redis away: the next beat tries again

    async def _listen(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await listen(
            self._redis,
            patterns=[f"{self._ns}:*:freed"],
            on_message=self._freed,
            down=self._down,
            retry_s=self._poll_s,
            task_status=task_status,
        )

    def _freed(self, message: Mapping[str, Any]) -> None:
        """A release's message: wake this server's waiters, pass its live count on."""
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        server = name[len(self._ns) + 1 : -len(":freed")]
        event = self._changed.get(server)
        if event is not None:
            event.set()
        if self._on_count is not None:
            try:
                live = int(message["data"])
            except (TypeError, ValueError):
                return
            self._on_count(server, live)
