"""Breaker trips shared through Redis: a host one process finds failing is avoided by all.

With ``OrchestraConfig(coordination=...)``, each time a server's breaker opens in one
orchestra, :class:`SharedBreakers` publishes it: a key ``<namespace>:<server>:breaker``
holding the trip for the breaker's cooldown (Redis' own TTL, so client clocks do not matter),
and a message on ``<namespace>:breakers``. Every other orchestra on that Redis opens its
breaker for that server for the same remaining time (:meth:`CircuitBreaker.force_open`, which
emits the usual :class:`BreakerEvent`). A process that subscribes later (or again, after an
outage) reads the keys and catches up. A close after a successful half-open probe is shared
the same way (the key is deleted). Only host breakers are shared, not (server, model) ones.

Half-open, one prober fleet-wide: a process whose breaker admits a probe request claims the
server's ``<namespace>:<server>:prober`` key first (:meth:`SharedBreakers.claim_probe`); a
process that finds it claimed by another opens its breaker until the claim expires, and the
prober's verdict (a trip again, or a close) reaches it as above and ends the claim.

A change received from Redis is applied with publishing suspended, so it is never published
again (no echo between processes). With Redis down the breakers work locally as without
coordination: a failed publish is logged once per outage, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from types import TracebackType
from typing import Any, Callable, Mapping, Optional, Type

import anyio
import anyio.abc

from ._breaker import BreakerEvent, CircuitBreaker
from ._extras import require_extra
from ._pubsub import listen, stop_listening
from ._redis_slots import down_errors, redis_client
from ._secrets import redact_url

__all__ = ["SharedBreakers"]

log = logging.getLogger("ollama_orchestra.coordination")

# KEYS: the breaker key, the channel, the prober key. ARGV: the message, its time to live in
# ms. A verdict (open again, or closed) ends the half-open probe: the prober key goes too.
_OPEN = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: the breaker key, the channel, the prober key. ARGV: the message.
_CLOSE = """
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: the prober key. ARGV: this process's id, the claim's time to live in ms.
# Returns -1 when this process is the prober, else how long the other's claim still holds (ms).
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -1
end
return redis.call('PTTL', KEYS[1])
"""

# KEYS: breaker keys. Returns {message or '', remaining ms} for each.
_READ = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  out[i] = {v or '', redis.call('PTTL', KEYS[i])}
end
return out
"""

OPEN = "open"
CLOSED = "closed"


class SharedBreakers:
    """Publishes this process's host breaker trips and applies the other processes' ones.

    Args:
        url: the Redis URL (``Coordination.url``).
        breakers: the orchestra's host breakers, by server name.
        namespace: the prefix of the keys and the channel.
        timeout_s: a Redis call slower than this counts as Redis being down.
        retry_s: how soon the listener subscribes again after an outage.
        probe_ttl_s: how long a half-open probe claim holds without a verdict (a prober
            that dies, or whose probe runs longer, lets another process probe after it).

    Use as an async context manager around the orchestra's life; :meth:`changed` is the
    breakers' ``on_change`` feed.
    """

    def __init__(
        self,
        url: str,
        breakers: Mapping[str, CircuitBreaker],
        *,
        namespace: str = "ollama-orchestra",
        timeout_s: float = 0.5,
        retry_s: float = 0.5,
        probe_ttl_s: float = 10.0,
    ) -> None:
        require_extra("redis", "shared breakers through Redis (coordination)")
        self._url = url
        self._breakers = breakers
        self._ns = namespace
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._probe_ttl_s = probe_ttl_s
        self._me = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._applying = False
        self._down_logged = False
        self._on_applied: Callable[[], None] = lambda: None
        self._redis: Any = None
        self._tg: Optional[anyio.abc.TaskGroup] = None
        #: Changes received from other processes and applied here (for tests and metrics).
        self.applied = 0
        #: Changes of this process published to Redis.
        self.published = 0

    def __repr__(self) -> str:
        return f"<SharedBreakers {redact_url(self._url)} {self._ns!r}>"

    def on_applied(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after a change from another process was applied (a closed breaker
        may let waiting requests run: the balancer's dispatch)."""
        self._on_applied = wake

    @property
    def channel(self) -> str:
        return f"{self._ns}:breakers"

    def key(self, server: str) -> str:
        return f"{self._ns}:{server}:breaker"

    def prober_key(self, server: str) -> str:
        return f"{self._ns}:{server}:prober"

    # -- one half-open prober fleet-wide ----------------------------------------------------

    async def claim_probe(self, server: str) -> bool:
        """May this process send the half-open probe request to ``server``?

        ``True`` when it holds the fleet's probe claim (or Redis is down: probing is local
        then). ``False`` when another process probes: this breaker is opened until that
        claim expires (``probe_ttl_s``), and the prober's verdict, shared like a trip or a
        close, decides sooner.
        """
        breaker = self._breakers.get(server)
        if breaker is None or self._tg is None:
            return True
        try:
            with anyio.fail_after(self._timeout_s):
                left = int(
                    await self._claim(
                        keys=[self.prober_key(server)],
                        args=[self._me, max(1, int(self._probe_ttl_s * 1000))],
                    )
                )
        except self._down as exc:
            self._log_down(exc)
            return True
        if left < 0:
            return True
        self._applying = True
        try:
            breaker.force_open(max(left, 1) / 1000, "another process probes it (via Redis)")
        finally:
            self._applying = False
        return False

    # -- this process's changes -----------------------------------------------------------

    def changed(self, event: BreakerEvent) -> None:
        """A breaker changed here: publish a host breaker's trip or close (not one received
        from Redis, which is being applied)."""
        if self._applying or event.model is not None or self._tg is None:
            return
        breaker = self._breakers.get(event.name)
        if breaker is None:
            return
        if event.new == OPEN:
            until = breaker.reopens_at()
            if until is None:
                return
            remaining_ms = int((until - event.at) * 1000)
            if remaining_ms <= 0:
                return
            self._tg.start_soon(self._publish, event.name, OPEN, remaining_ms)
        elif event.new == CLOSED:
            self._tg.start_soon(self._publish, event.name, CLOSED, 0)

    async def _publish(self, server: str, state: str, remaining_ms: int) -> None:
        message = json.dumps(
            {"from": self._me, "server": server, "state": state, "ms": remaining_ms}
        )
        keys = [self.key(server), self.channel, self.prober_key(server)]
        try:
            with anyio.fail_after(self._timeout_s):
                if state == OPEN:
                    await self._open(keys=keys, args=[message, remaining_ms])
                else:
                    await self._close(keys=keys, args=[message])
        except self._down as exc:
            self._log_down(exc)
            return
        self._down_logged = False
        self.published += 1

    def _log_down(self, exc: BaseException) -> None:
        if self._down_logged:
            return
        self._down_logged = True
        log.warning(
            "Redis at %s unreachable (%s): breaker trips not shared until it answers again",
            redact_url(self._url),
            type(exc).__name__,
        )

    # -- the other processes' changes -----------------------------------------------------

    def _apply(self, raw: Any, remaining_ms: Optional[int] = None) -> None:
        """Apply one message (from the channel, or a key read at subscription)."""
        try:
            data = json.loads(raw)
            origin, server, state = data["from"], data["server"], data["state"]
            ms = int(data["ms"]) if remaining_ms is None else remaining_ms
        except (TypeError, ValueError, KeyError):
            return
        breaker = self._breakers.get(server) if isinstance(server, str) else None
        if origin == self._me or breaker is None:
            return
        self._applying = True
        try:
            if state == OPEN and ms > 0:
                done = breaker.force_open(ms / 1000, "tripped in another process (via Redis)")
            elif state == CLOSED:
                done = breaker.force_close("closed in another process (via Redis)")
            else:
                return
        finally:
            self._applying = False
        if done:
            self.applied += 1
            self._on_applied()

    async def _catch_up(self) -> None:
        """Apply the trips still in force (published before this process subscribed)."""
        names = list(self._breakers)
        if not names:
            return
        rows = await self._read(keys=[self.key(n) for n in names])
        for raw, ms in rows:
            if raw and int(ms) > 0:
                self._apply(raw, int(ms))

    async def _subscribed(self) -> None:
        await self._catch_up()
        self._down_logged = False

    async def _listen(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await listen(
            self._redis,
            channels=[self.channel],
            on_message=lambda message: self._apply(message["data"]),
            down=self._down,
            retry_s=self._retry_s,
            timeout_s=self._timeout_s,
            on_subscribed=self._subscribed,
            on_down=self._log_down,
            task_status=task_status,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SharedBreakers:
        self._down = down_errors()
        # Fail fast: a breaker that cannot be shared still works locally.
        self._redis = redis_client(self._url, self._timeout_s, read_timeout=False)
        self._open = self._redis.register_script(_OPEN)
        self._close = self._redis.register_script(_CLOSE)
        self._read = self._redis.register_script(_READ)
        self._claim = self._redis.register_script(_CLAIM)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        await tg.start(self._listen)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        tg, self._tg = self._tg, None
        await stop_listening(tg, self._redis)
