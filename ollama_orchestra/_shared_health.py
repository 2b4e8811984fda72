"""Health shared through Redis: a host one process finds down is out of every process's
rotation within a second, and one it finds back is probed again by the others at once.

With ``OrchestraConfig(coordination=...)``, each up/down change a process's own health probes
(or requests: a refused connection, a success on a host thought down) find is published on
``<namespace>:health`` (:meth:`FleetState.attach_verdicts` feeds :class:`SharedHealth`).

The others keep a local copy, as their ``FleetState`` (so routing never waits on Redis):

* **down** elsewhere: the server leaves rotation here at once
  (:meth:`FleetState.seen_down_elsewhere`) and is probed here at once (``poke``): if this
  process reaches it after all (a fault between the other process and the host only), its
  own probe brings it back, and that verdict is shared in turn.
* **up** elsewhere: a server down here is probed at once; its success brings it back (a
  probe checks it from here, and refreshes its models).

A change received is not published again: only this process's own verdicts are, so the
messages end. A process that starts, or subscribes again after an outage, probes every
host itself (as without coordination) and needs no catch-up. With Redis down each process
monitors the hosts alone, as without coordination; a failed publish is logged once per
outage, never raised.
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

from ._extras import require_extra
from ._pubsub import listen, stop_listening
from ._redis_slots import down_errors, redis_client
from ._secrets import redact_url
from ._state import FleetState

__all__ = ["SharedHealth"]

log = logging.getLogger("ollama_orchestra.coordination")


class SharedHealth:
    """Publishes this process's up/down verdicts and applies the other processes' ones.

    Args:
        url: the Redis URL (``Coordination.url``).
        state: the orchestra's fleet state (its verdicts are fed here; the others' applied).
        namespace: the prefix of the channel.
        timeout_s: a Redis call slower than this counts as Redis being down.
        retry_s: how soon the listener subscribes again after an outage.

    Use as an async context manager around the orchestra's life; ``poke(server)`` (the
    health monitor's "probe it now") is set with :meth:`on_poke`.
    """

    def __init__(
        self,
        url: str,
        state: FleetState,
        *,
        namespace: str = "ollama-orchestra",
        timeout_s: float = 0.5,
        retry_s: float = 0.5,
    ) -> None:
        require_extra("redis", "shared health through Redis (coordination)")
        self._url = url
        self._state = state
        self._ns = namespace
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._me = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._poke: Callable[[str], None] = lambda name: None
        self._down_logged = False
        self._redis: Any = None
        self._tg: Optional[anyio.abc.TaskGroup] = None
        #: Verdicts received from other processes that changed something here.
        self.applied = 0
        #: Verdicts of this process published to Redis.
        self.published = 0
        state.attach_verdicts(self.changed)

    def __repr__(self) -> str:
        return f"<SharedHealth {redact_url(self._url)} {self._ns!r}>"

    @property
    def channel(self) -> str:
        return f"{self._ns}:health"

    def on_poke(self, poke: Callable[[str], None]) -> None:
        """``poke(server)`` probes ``server`` now (the orchestra's health monitor)."""
        self._poke = poke

    # -- this process's verdicts ----------------------------------------------------------

    def changed(self, server: str, up: bool, cause: str) -> None:
        """This process found ``server`` up or down: publish it (in the background)."""
        if self._tg is not None:
            self._tg.start_soon(self._publish, server, up, cause)

    async def _publish(self, server: str, up: bool, cause: str) -> None:
        # ``cause`` is a probe's or a request's one-line reason: never a URL (see _monitor).
        message = json.dumps({"from": self._me, "server": server, "up": up, "cause": cause})
        try:
            with anyio.fail_after(self._timeout_s):
                await self._redis.publish(self.channel, message)
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
            "Redis at %s unreachable (%s): health not shared until it answers again",
            redact_url(self._url),
            type(exc).__name__,
        )

    # -- the other processes' verdicts ----------------------------------------------------

    def _apply(self, message: Mapping[str, Any]) -> None:
        try:
            data = json.loads(message["data"])
            origin, server, up = data["from"], data["server"], data["up"]
            cause = str(data.get("cause", ""))[:200]
        except (TypeError, ValueError, KeyError):
            return
        if origin == self._me or not isinstance(server, str) or server not in self._state.names:
            return
        st = self._state[server]
        if up is True and not st.healthy:
            self.applied += 1
            self._poke(server)  # back elsewhere: check it from here now
        elif up is False and st.healthy:
            self.applied += 1
            self._state.seen_down_elsewhere(
                server, f"down as another process found it (via Redis): {cause}"
            )
            self._poke(server)

    async def _subscribed(self) -> None:
        self._down_logged = False

    async def _listen(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await listen(
            self._redis,
            channels=[self.channel],
            on_message=self._apply,
            down=self._down,
            retry_s=self._retry_s,
            timeout_s=self._timeout_s,
            on_subscribed=self._subscribed,
            on_down=self._log_down,
            task_status=task_status,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SharedHealth:
        self._down = down_errors()
        self._redis = redis_client(self._url, self._timeout_s, read_timeout=False)
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
