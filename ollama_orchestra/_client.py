"""The ``Orchestra`` facade: one object that owns the fleet's state, monitor and slots.

Construction, lifecycle (the monitor and the HTTP client), what the fleet knows (state,
metrics, breakers) and the public calls (``generate``/``chat``/``embed``, their streamed
forms, ``call_host``, ``run``). Every request goes through :meth:`Orchestra.send`, the one
request path, in ``_sending`` (a base class); finished attempts are recorded by ``_outcomes``.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import AsyncExitStack
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import anyio
import httpx

from ._arguments import (
    bad_type,
)
from ._background import Background
from ._balancer import LoadBalancer
from ._breaker import BreakerEvent, CircuitBreaker, ModelBreakers
from ._calls import Calls
from ._clock import now as clock_now
from ._config import OrchestraConfig, RetryPolicy, Server
from ._coordination import breaker_changed, coordinated, make_balancer
from ._errors import (
    NoHealthyServer,
    OrchestraClosed,
    RequestError,
)
from ._executor import DagResult, Task, TaskEvent, run_dag
from ._metrics import Metrics, MetricsSnapshot
from ._monitor import PROBE_PATHS, HealthMonitor
from ._outcomes import Outcomes
from ._state import FleetSnapshot, FleetState

__all__ = ["Orchestra"]

log = logging.getLogger("ollama_orchestra")

T = TypeVar("T")
_NO_RETRY = RetryPolicy(attempts=1, mid_stream="raise")


class Orchestra(Calls):
    """Spread Ollama requests over a fleet: balancing, failover, health, DAGs, metrics.

    Use it as an async context manager::

        async with Orchestra(config) as orch:
            r = await orch.generate("qwen2.5:14b", "Plan the feature")

    Entering starts the health monitor and returns once every server has been probed once
    (bounded by ``config.health.startup_timeout_s``); leaving stops it and closes every
    connection.

    Args:
        config: the fleet; ``None`` reads ``OLLAMA_ORCHESTRA_*`` from the environment.
        transport: an httpx transport for every HTTP call (tests, proxies, mocks).
        on_breaker_change: called with each breaker state change.
        sleep: the sleep used between retry rounds (tests pass a fake).
    """

    def __init__(
        self,
        config: Optional[OrchestraConfig] = None,
        *,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        on_breaker_change: Optional[Callable[[BreakerEvent], None]] = None,
        sleep: Optional[Callable[[float], Awaitable[None]]] = None,
        clock: Callable[[], float] = clock_now,
        rng: Optional[random.Random] = None,
    ) -> None:
        if config is not None and not isinstance(config, OrchestraConfig):
            raise bad_type("config", config, "an OrchestraConfig or None")
        self.config = config if config is not None else OrchestraConfig.from_env()
        self._transport = transport
        self._sleep = sleep or anyio.sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_breaker_change = on_breaker_change
        servers = list(self.config.servers)
        self._state = FleetState(servers, clock=clock)
        self._metrics = Metrics(servers, clock=clock)
        self._breakers: Dict[str, CircuitBreaker] = {
            s.name: CircuitBreaker(
                s.name, self.config.breaker, clock=clock, on_change=self._breaker_changed
            )
            for s in servers
        }
        self._model_breakers = ModelBreakers(
            self.config.breaker, clock=clock, on_change=self._breaker_changed
        )
        self._state.attach_breakers(lambda name: str(self._breakers[name].state))
        self._balancer = make_balancer(
            self.config,
            self._state,
            breakers=self._breakers,
            metrics=self._metrics,
            clock=clock,
            model_breakers=self._model_breakers,
        )
        self._outcomes = Outcomes(
            self._state, self._metrics, self._balancer.costs, clock, self._poke
        )
        self._closing = False
        self._http: Optional[httpx.AsyncClient] = None
        self._monitor: Optional[HealthMonitor] = None
        self._stack: Optional[AsyncExitStack] = None

    # -- construction shortcuts --------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Union[str, Any], **kwargs: Any) -> Orchestra:
        """An orchestra configured from a TOML file (see the README)."""
        return cls(OrchestraConfig.from_file(path), **kwargs)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> Orchestra:
        """An orchestra configured from ``OLLAMA_ORCHESTRA_*`` environment variables."""
        return cls(OrchestraConfig.from_env(environ), **kwargs)

    @classmethod
    def from_urls(cls, *urls: str, max_concurrency: int = 1, **kwargs: Any) -> Orchestra:
        """Quick start: servers named after their position (``server0``, ...)."""
        servers = tuple(
            Server(f"server{i}", u, max_concurrency=max_concurrency) for i, u in enumerate(urls)
        )
        return cls(OrchestraConfig(servers=servers), **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.config.servers)
        status = "running" if self._http is not None else "stopped"
        strategy = self.config.strategy
        shown = strategy if isinstance(strategy, str) else type(strategy).__name__
        return f"<Orchestra [{names}] strategy={shown!r} {status}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Orchestra:
        if self._stack is not None:
            raise OrchestraClosed(
                "this Orchestra is already running; use one 'async with' at a time"
            )
        t = self.config.timeouts
        slots = sum(s.max_concurrency for s in self.config.servers)
        self._closing = False
        self._balancer.reopen()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            self._http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=self._transport,
                    timeout=httpx.Timeout(
                        connect=t.connect_s, read=t.first_byte_s, write=t.read_s, pool=None
                    ),
                    limits=httpx.Limits(
                        max_connections=slots + 4 * len(self.config.servers) + 16,
                        max_keepalive_connections=slots + 4 * len(self.config.servers),
                    ),
                )
            )
            self._monitor = HealthMonitor(
                list(self.config.servers),
                self._state,
                await self._probe_client(stack),
                self.config.health,
                breakers=self._breakers,
                wall_clock=time.time,  # calendar time: /api/ps expires_at is RFC 3339
                rng=self._rng,
            )
            await stack.enter_async_context(coordinated(self._balancer, self._poke))
            background = Background()
            await background.start(self._monitor.run)
            stack.push_async_callback(background.stop)
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._http = None
            raise
        self._stack = stack
        return self

    async def _probe_client(self, stack: AsyncExitStack) -> httpx.AsyncClient:
        """The health probes' HTTP client: their own, unless a transport was given (tests,
        mocks: it then serves every call).

        Each probe round leaves three idle connections per host (its three paths are asked at
        once); in the requests' pool, httpcore checks every idle connection on every request,
        which cost about 30 us a request on an instant host.
        """
        assert self._http is not None
        if self._transport is not None:
            return self._http
        t = self.config.timeouts
        per_round = len(PROBE_PATHS) * len(self.config.servers)
        return await stack.enter_async_context(
            httpx.AsyncClient(
                timeout=httpx.Timeout(
                    connect=t.connect_s, read=t.first_byte_s, write=t.read_s, pool=None
                ),
                limits=httpx.Limits(
                    max_connections=per_round + 16, max_keepalive_connections=per_round
                ),
            )
        )

    async def __aexit__(self, *exc_info: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        # Requests still waiting for a slot, or still running, end with OrchestraClosed
        # (not with whatever the closed HTTP client would raise at them).
        self._closing = True
        self._balancer.close(
            lambda: OrchestraClosed("the Orchestra was closed before this request ran")
        )
        try:
            await stack.__aexit__(None, None, None)
        finally:
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._closing:
            raise OrchestraClosed("the Orchestra was closed")
        if self._http is None:
            raise OrchestraClosed("use the Orchestra inside 'async with Orchestra(...) as orch:'")
        return self._http

    # -- what it knows -----------------------------------------------------------------------

    def state(self) -> FleetSnapshot:
        """A frozen snapshot of the fleet: health, models, loaded, in-flight, breakers."""
        return self._state.snapshot()

    def metrics(self) -> MetricsSnapshot:
        """A frozen snapshot of the metrics: utilization, share, imbalance, latency, failovers."""
        return self._metrics.snapshot()

    def prometheus(self) -> str:
        """The metrics in Prometheus' text exposition format."""
        return self._metrics.to_prometheus()

    def reset_metrics(self) -> None:
        """Start a new measurement window."""
        self._metrics.reset()

    async def wait_for_state(self, predicate: Callable[[FleetSnapshot], bool]) -> FleetSnapshot:
        """Wait until ``predicate(orch.state())`` holds (checked on every state change).

        Bound it with ``anyio.fail_after`` if needed. Handy in tests and scripts: "wait until
        ollama01 is marked down" without polling.
        """
        snap = self.state()
        if predicate(snap):
            return snap
        changed = anyio.Event()

        def listener() -> None:
            changed.set()

        self._state.subscribe(listener)
        try:
            while True:
                await changed.wait()
                changed = anyio.Event()
                snap = self.state()
                if predicate(snap):
                    return snap
        finally:
            self._state.unsubscribe(listener)

    async def refresh(self) -> FleetSnapshot:
        """Probe every server now and return the new state."""
        self._client()
        assert self._monitor is not None
        await self._monitor.probe_all()
        return self.state()

    async def check_models(self, names: Iterable[str]) -> Dict[str, RequestError]:
        """Pre-flight: which of ``names`` (models or roles) the fleet cannot serve at all.

        Returns each such name with the error a request for it would raise:
        :class:`NoCapableServer` when every server's models are known and none has it, or
        :class:`NoHealthyServer` when no known server has it and the servers whose models
        are unknown (never reached since the start) stay unreachable; for those, this waits
        up to ``wait_for_healthy_s`` first. A name some server has passes, up or down:
        health is the request's business. ``orch.run`` calls this before any task starts.
        """
        self._client()
        pending = list(dict.fromkeys(names))
        t0 = self._clock()

        def verdict(waited: float = 0.0) -> Dict[str, RequestError]:
            states = self._state.servers()
            out: Dict[str, RequestError] = {}
            for name in pending:
                model, _ = self._resolve(name)
                if not any(model in st.models for st in states):
                    out[name] = self._balancer.no_server_error(model, waited)
            return out

        bad = verdict()
        if any(isinstance(err, NoHealthyServer) for err in bad.values()):
            # Only unreachable hosts can tell: give them the wait a request would.
            with anyio.move_on_after(self.config.wait_for_healthy_s):
                await self.wait_for_state(
                    lambda _: not any(isinstance(e, NoHealthyServer) for e in verdict().values())
                )
            bad = verdict(self._clock() - t0)
        return bad

    @property
    def balancer(self) -> LoadBalancer:
        return self._balancer

    def breaker(self, server: str) -> CircuitBreaker:
        """The circuit breaker of ``server``: it counts the host's failures."""
        return self._breakers[server]

    def model_breaker(self, server: str, model: str) -> CircuitBreaker:
        """The circuit breaker of ``model`` (or a role) on ``server``: it counts failures that
        are the model's there (it does not load, its runner dies), not the host's."""
        if server not in self._breakers:
            raise KeyError(server)
        return self._model_breakers.breaker(server, self._resolve(model)[0])

    def _breaker_changed(self, event: BreakerEvent) -> None:
        if str(event.new) == "open" and event.model is None:
            self._metrics.breaker_trip(event.name)
        breaker_changed(self._balancer, event)
        if self._on_breaker_change is not None:
            try:
                self._on_breaker_change(event)
            except Exception:  # a user hook must not break routing
                log.exception("on_breaker_change hook raised")

    def _poke(self, name: str) -> None:
        if self._monitor is not None:
            self._monitor.poke(name)

    # -- outside the request path -----------------------------------------------------------

    async def call_host(
        self,
        server: Server,
        method: str,
        path: str,
        body: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Tuple[int, Any]:
        """One plain call to one server, outside balancing: ``(status, JSON or text)``.

        No slot, retry or breaker: for the fleet-wide views (``OrchestraTransport`` and the
        proxy use it for ``/api/tags``, ``/api/ps`` and ``/api/show``) and the DAG executor's
        model preloads. Bounded by ``timeout`` seconds (default: the health probe timeout);
        httpx's errors propagate.
        """
        response = await self._client().request(
            method,
            server.url + path,
            json=dict(body) if body is not None else None,
            headers=dict(server.headers),
            timeout=self.config.health.timeout_s if timeout is None else timeout,
        )
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def run(
        self,
        tasks: Sequence[Task],
        *,
        schedule: str = "eager",
        fail_fast: bool = False,
        on_event: Optional[Callable[[TaskEvent], None]] = None,
        inputs: Optional[Mapping[str, str]] = None,
        lookahead: bool = True,
    ) -> DagResult:
        """Run a DAG of tasks over the fleet; results in input order.

        ``schedule`` is ``"eager"`` (a task starts when its dependencies are done),
        ``"waves"`` or ``"sequential"``. A failed task's dependents are skipped; with
        ``fail_fast`` the first failure cancels the rest; ``lookahead=False`` turns the model
        preloads off. See :func:`run_dag`.
        """
        if not isinstance(fail_fast, bool):
            raise bad_type("fail_fast", fail_fast, "a bool")
        if inputs is not None and (
            not isinstance(inputs, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())
        ):
            raise bad_type("inputs", inputs, "a mapping of names to strings")
        return await run_dag(
            self,
            tasks,
            schedule=schedule,
            fail_fast=fail_fast,
            on_event=on_event,
            inputs=inputs,
            lookahead=lookahead,
        )
