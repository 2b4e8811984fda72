"""The health monitor: one probe loop per server, all in one task group.

Each probe asks ``/api/version``, ``/api/tags`` and ``/api/ps`` at once and writes the
answers into the shared :class:`FleetState`. ``N`` consecutive failures mark a server
unhealthy; one success brings it back. A server that is down is probed more often, and a
request that fails to connect asks for a probe at once (:meth:`HealthMonitor.poke`).
"""

from __future__ import annotations

import logging
import random
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional

import anyio
import httpx
from anyio.abc import TaskStatus

from ._breaker import CircuitBreaker
from ._config import HealthPolicy, Server
from ._state import FleetState, LoadedModel

__all__ = ["HealthMonitor"]

log = logging.getLogger("ollama_orchestra.monitor")


def _parse_expiry(value: Any, wall_now: float, mono_now: float) -> Optional[float]:
    """Turn /api/ps ``expires_at`` (RFC 3339 wall time) into the state's clock."""
    if not isinstance(value, str) or not value:
        return None
    try:
        text = value.replace("Z", "+00:00")
        # Python < 3.11 cannot parse more than 6 fractional digits: trim Go's nanoseconds.
        if "." in text:
            head, _, tail = text.partition(".")
            digits = "".join(ch for ch in tail if ch.isdigit())
            rest = tail[len(digits) :]
            text = f"{head}.{digits[:6]}{rest}"
        when = datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
    if when - wall_now > 10 * 365 * 86400:  # "forever" (keep_alive < 0)
        return None
    return mono_now + (when - wall_now)


class HealthMonitor:
    """Probes every server in the background and keeps :class:`FleetState` current.

    Start it with ``await task_group.start(monitor.run)``: that returns once every server
    has answered (or failed) its first probe, bounded by ``policy.startup_timeout_s``.
    """

    def __init__(
        self,
        servers: List[Server],
        state: FleetState,
        client: httpx.AsyncClient,
        policy: HealthPolicy,
        *,
        breakers: Optional[Mapping[str, CircuitBreaker]] = None,
        wall_clock: Callable[[], float],
        rng: Optional[random.Random] = None,
    ) -> None:
        self._servers = servers
        self._state = state
        self._client = client
        self._policy = policy
        self._breakers = breakers or {}
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._wake: Dict[str, anyio.Event] = {s.name: anyio.Event() for s in servers}

    def poke(self, name: str) -> None:
        """Probe ``name`` now instead of at its next interval."""
        self._wake[name].set()

    async def probe_all(self) -> None:
        """One probe round over every server, concurrently."""
        async with anyio.create_task_group() as tg:
            for server in self._servers:
                tg.start_soon(self.probe, server)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe forever; report started after the first round (or the startup timeout)."""
        first_round = {s.name: anyio.Event() for s in self._servers}
        async with anyio.create_task_group() as tg:
            for server in self._servers:
                tg.start_soon(self._loop, server, first_round[server.name])
            with anyio.move_on_after(self._policy.startup_timeout_s):
                for event in first_round.values():
                    await event.wait()
            task_status.started()

    async def _loop(self, server: Server, first: anyio.Event) -> None:
        while True:
            await self.probe(server)
            first.set()
            st = self._state[server.name]
            interval = self._policy.interval_s if st.healthy else self._policy.down_interval_s
            jitter = self._policy.jitter
            interval *= 1.0 + self._rng.uniform(-jitter, jitter)
            self._wake[server.name] = event = anyio.Event()
            with anyio.move_on_after(interval):
                await event.wait()

    async def probe(self, server: Server) -> None:
        """Probe one server and write the outcome into the state (never raises)."""
        results: Dict[str, Any] = {}
        error: Optional[str] = None
        try:
            with anyio.fail_after(self._policy.timeout_s):
                async with anyio.create_task_group() as tg:
                    for path in ("/api/version", "/api/tags", "/api/ps"):
                        tg.start_soon(self._get, server, path, results)
        except TimeoutError:
            error = f"probe timed out after {self._policy.timeout_s}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except ValueError as exc:  # bad JSON
            error = f"bad answer: {exc}"
        except BaseException as exc:  # an ExceptionGroup from the task group
            inner = getattr(exc, "exceptions", None)
            if not inner:
                raise
            first = inner[0]
            if not isinstance(first, (httpx.HTTPError, ValueError, TimeoutError)):
                raise
            error = f"{type(first).__name__}: {first}"
        breaker = self._breakers.get(server.name)
        if error is not None:
            was = self._state[server.name].healthy
            self._state.probe_failed(
                server.name, error, unhealthy_after=self._policy.unhealthy_after
            )
            if breaker is not None:
                breaker.record_probe_failure()
            if was and not self._state[server.name].healthy:
                log.warning("server %s is unhealthy: %s", server.name, error)
            return
        was = self._state[server.name].healthy
        tags = results.get("/api/tags") or {}
        models = {
            str(m.get("name") or m.get("model")): int(m.get("size") or 0)
            for m in tags.get("models") or []
            if isinstance(m, dict)
        }
        mono_now, wall_now = self._state.now(), self._wall()
        ps = results.get("/api/ps") or {}
        loaded = [
            LoadedModel(
                str(m.get("name") or m.get("model")),
                _parse_expiry(m.get("expires_at"), wall_now, mono_now),
                int(m.get("size_vram") or 0),
            )
            for m in ps.get("models") or []
            if isinstance(m, dict)
        ]
        version = (results.get("/api/version") or {}).get("version")
        self._state.probe_succeeded(server.name, version=version, models=models, loaded=loaded)
        if breaker is not None:
            breaker.record_probe_success()
        if not was:
            log.info(
                "server %s is healthy (version %s, %d models)", server.name, version, len(models)
            )

    async def _get(self, server: Server, path: str, out: Dict[str, Any]) -> None:
        response = await self._client.get(server.url + path, headers=dict(server.headers))
        response.raise_for_status()
        out[path] = response.json()
