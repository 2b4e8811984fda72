"""The ``Orchestra`` facade: one object that owns the fleet's state, monitor and slots.

Every request, from ``generate``/``chat``/``embed``, their streamed forms, the transport or
the proxy, goes through :meth:`Orchestra.send`: role → model; balancer lease (a slot on the
best eligible server); one :class:`~._exchange.Exchange` (send, first-byte deadline, read,
close); outcome fed back into the state, the breaker and the metrics; on a retryable failure,
the next attempt goes to another server (see ``_failover``). Completions are always streamed
from the server, even when the caller wants one answer: that way a hung host is caught by the
first-byte timeout, never by a whole-answer timeout (embeddings answer one JSON object).
Service time counts from the start of the successful attempt, streamed or collected alike.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import AsyncExitStack
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    Generic,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import anyio
import httpx

from ._arguments import (
    bad_type,
    check_call,
    check_embed_input,
    check_fields,
    check_logprobs,
    check_messages,
    check_tools,
)
from ._background import Background
from ._balancer import Lease, LoadBalancer
from ._breaker import BreakerEvent, CircuitBreaker, ModelBreakers
from ._clock import now as clock_now
from ._config import OrchestraConfig, RetryPolicy, Server
from ._continuation import Continuation, Resume
from ._coordination import coordinated, make_balancer
from ._errors import (
    Attempt,
    NoHealthyServer,
    OrchestraClosed,
    RequestError,
    RequestFailed,
    RequestTimeout,
    StreamInterrupted,
)
from ._exchange import UNSTREAMED_PATHS, Exchange
from ._executor import DagResult, Task, TaskEvent, run_dag
from ._failover import AttemptError, build_retrying, classify
from ._metrics import Metrics, MetricsSnapshot
from ._monitor import HealthMonitor
from ._rates import Prompt
from ._state import FleetSnapshot, FleetState
from ._types import (
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
    Message,
    Think,
    logprobs_of,
    merge_logprobs,
    stats_from,
)

__all__ = ["Orchestra", "ResponseStream", "merge_messages"]

log = logging.getLogger("ollama_orchestra")

T = TypeVar("T")
_NO_RETRY = RetryPolicy(attempts=1, mid_stream="raise")


class _Cut(Exception):
    """A collected answer broke mid-answer and may be continued (out of the retry loop)."""

    def __init__(self, resume: Resume, error: AttemptError, received: List[Dict[str, Any]]):
        super().__init__(error.message)
        self.resume = resume
        self.error = error
        self.received = received


class _NotElsewhere(Exception):
    """A continuation was offered only the server whose stream broke."""

    def __str__(self) -> str:
        return "only the server whose stream broke is eligible"


class ResponseStream(Generic[T], AsyncIterator[T]):
    """Chunks of a streamed answer. Iterate it; use ``async with`` to stop early cleanly.

    ``async with orch.chat_stream(...) as stream: async for chunk in stream: ...`` releases
    the server's slot as soon as the block exits, even after a ``break``.
    """

    #: The server answering, once the first item is known (``None`` before).
    server: Optional[str]
    #: Attempts it took to get an answer (1: no failover), once the first item is known.
    attempts: int
    #: Seconds the request waited for a slot, once the first item is known.
    queued_s: float

    def __init__(self, agen: AsyncGenerator[T, None]) -> None:
        self._agen = agen
        self.server = None
        self.attempts = 0
        self.queued_s = 0.0

    @classmethod
    def of(cls, make: Callable[[ResponseStream[T]], AsyncGenerator[T, None]]) -> ResponseStream[T]:
        """A stream over ``make(stream)``: the generator can fill in the stream's details."""
        stream: ResponseStream[T] = cls.__new__(cls)
        cls.__init__(stream, make(stream))
        return stream

    def _settled(self, server: Optional[str], attempts: int, queued_s: float) -> None:
        self.server, self.attempts, self.queued_s = server, attempts, queued_s

    def __aiter__(self) -> ResponseStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        await self._agen.aclose()

    async def __aenter__(self) -> ResponseStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Orchestra:
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
                self._http,
                self.config.health,
                breakers=self._breakers,
                wall_clock=time.time,  # calendar time: /api/ps expires_at is RFC 3339
                rng=self._rng,
            )
            await stack.enter_async_context(coordinated(self._balancer))
            background = Background()
            await background.start(self._monitor.run)
            stack.push_async_callback(background.stop)
        except BaseException:
            await stack.__aexit__(None, None, None)
            self._http = None
            raise
        self._stack = stack
        return self

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
        if self._on_breaker_change is not None:
            try:
                self._on_breaker_change(event)
            except Exception:  # a user hook must not break routing
                log.exception("on_breaker_change hook raised")

    # -- the request path ----------------------------------------------------------------------

    def _resolve(self, model: str) -> Tuple[str, Optional[str]]:
        return self.config.resolve_model(model)

    def _open(
        self, path: str, payload: Mapping[str, Any], model: str
    ) -> Callable[[Lease], Awaitable[Exchange]]:
        """The work of one attempt: open ``path`` on the lease's server."""
        t = self.config.timeouts

        async def work(lease: Lease) -> Exchange:
            return await Exchange.open(
                self._client(),
                lease.server,
                path,
                payload,
                model=model,
                first_byte_s=t.first_byte_s,
                read_s=t.read_s,
                connect_s=t.connect_s,
                clock=self._clock,
            )

        return work

    async def _failover(
        self,
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        work: Callable[[Lease], Awaitable[T]],
        *,
        keep_lease: bool = False,
        exclude: FrozenSet[str] = frozenset(),
        prompt: Optional[Prompt] = None,
    ) -> Tuple[T, Lease, List[Attempt]]:
        """Run ``work`` on a leased server; on a retryable failure, again on another server
        (never on one in ``exclude``). ``prompt`` feeds the prompt-cache estimates."""
        try:
            return await self._failover_inner(
                model, role, priority, retry, work, keep_lease, exclude, prompt
            )
        except Exception as exc:
            if self._closing and not isinstance(exc, OrchestraClosed):
                raise OrchestraClosed("the Orchestra was closed while this request ran") from exc
            raise

    async def _failover_inner(
        self,
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        work: Callable[[Lease], Awaitable[T]],
        keep_lease: bool,
        exclude: FrozenSet[str],
        prompt: Optional[Prompt],
    ) -> Tuple[T, Lease, List[Attempt]]:
        self._client()
        policy = self._policy(retry)
        self._balancer.check_capable(model)
        attempts: List[Attempt] = []
        tried: Set[str] = set(exclude)
        first_failure: Optional[float] = None
        queued = 0.0

        def untried() -> bool:
            # The balancer's own "eligible", affinity included: under a required rule, a
            # retry that can only go back to a tried server waits its backoff first.
            eligible = self._balancer.eligible(model, role, priority, tried)
            return any(st.server.name not in tried for st in eligible)

        retrying = build_retrying(policy, untried=untried, sleep=self._sleep, rng=self._rng)
        try:
            async for attempt in retrying:
                with attempt:
                    self._balancer.check_capable(model)
                    lease = await self._balancer.acquire(
                        model,
                        role=role,
                        priority=priority,
                        exclude=frozenset(tried),
                        prompt=prompt,
                    )
                    queued += lease.queued_s
                    name = lease.server.name
                    tried.add(name)
                    started = self._clock()
                    keep = False
                    try:
                        result = await work(lease)
                        keep = keep_lease
                    except BaseException as exc:
                        self._attempt_failed(lease, exc, model, started, attempts)
                        if first_failure is None:
                            first_failure = started
                        raise
                    finally:
                        if not keep:
                            self._balancer.release(lease)
        except AttemptError as last:
            failed = RequestFailed(model, attempts)
            log.warning("%s", failed)
            raise failed from last
        if first_failure is not None:
            self._metrics.failover(self._clock() - first_failure)
        lease.queued_s = queued
        return result, lease, attempts

    async def _continue(
        self,
        resume: Resume,
        broken: AttemptError,
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
    ) -> Tuple[Exchange, Lease]:
        """Open the continuation of a stream that broke on ``broken.server`` after text was
        yielded, on another server serving the same build of the model (the same digest in
        ``/api/tags``; by name where either server gave none): another build would continue
        someone else's text. :class:`StreamInterrupted` when it cannot be continued."""
        partial = "".join(resume.text)
        digest = self._state[broken.server].model_digests.get(model)
        other_build = frozenset(
            st.server.name
            for st in self._state.servers()
            if digest and st.model_digests.get(model, digest) != digest
        )
        excluded = other_build | {broken.server}
        others = [
            st
            for st in self._balancer.eligible(model, role, priority, excluded)
            if st.server.name not in excluded
        ]
        if others and resume.needs_template():
            await self._fetch_template(resume, others[0].server, model)
        reason = resume.why_not()
        if reason is None and not others:
            reason = "no other server serving the model"
        if reason is not None:
            log.info("stream from %s not continued: %s", broken.server, reason)
            raise StreamInterrupted(partial, broken.server, broken) from broken
        broke_at = self._clock()
        open_exchange = self._open(resume.path, resume.request(), model)

        async def elsewhere(lease: Lease) -> Exchange:
            if lease.server.name in excluded:
                raise _NotElsewhere()
            return await open_exchange(lease)

        try:
            exchange, lease, _ = await self._failover(
                model,
                role,
                priority,
                retry,
                elsewhere,
                keep_lease=True,
                exclude=excluded,
            )
        except (RequestFailed, _NotElsewhere) as exc:
            log.info("stream from %s not continued: %s", broken.server, exc)
            raise StreamInterrupted(partial, broken.server, broken) from exc
        resume.continued(
            Continuation(
                broken=broken.server,
                server=lease.server.name,
                at_token=resume.tokens,
                at_char=len(partial),
                lost_s=self._clock() - broke_at,
                reason=broken.message,
            )
        )
        log.info(
            "stream from %s continued on %s at token %d",
            broken.server,
            lease.server.name,
            resume.tokens,
        )
        return exchange, lease

    async def _fetch_template(self, resume: Resume, server: Server, model: str) -> None:
        """The model's template and system prompt, from ``/api/show`` on ``server``, for a
        generate request continued raw (left unset when the host does not say)."""
        try:
            status, body = await self.call_host(server, "POST", "/api/show", {"model": model})
        except Exception as exc:  # a continuation is a best effort: StreamInterrupted then
            log.info("no template from %s: %s", server.name, type(exc).__name__)
            return
        if status == 200 and isinstance(body, dict) and isinstance(body.get("template"), str):
            resume.template = body["template"]
            system = body.get("system")
            resume.model_system = system if isinstance(system, str) else ""

    def _policy(self, retry: Union[RetryPolicy, bool, None]) -> RetryPolicy:
        if retry is None or retry is True:
            return self.config.retry
        return _NO_RETRY if retry is False else retry

    def _attempt_failed(
        self, lease: Lease, exc: BaseException, model: str, started: float, attempts: List[Attempt]
    ) -> None:
        name = lease.server.name
        err = exc if isinstance(exc, AttemptError) else classify(exc, name)
        if err is None:
            # Cancelled, a caller error (400), or a bug: no verdict on the server.
            lease.settle(None)
            return
        duration = self._clock() - started
        attempts.append(Attempt(name, err.message, started, duration))
        self._metrics.request_finished(name, ok=False, latency_s=duration)
        lease.settle(err)
        if err.kind == "connect":
            self._state.mark_down(name, err.message)
            self._poke(name)
        elif err.kind == "not_found":
            self._state.forget_model(name, model)
            self._poke(name)
        else:
            self._state.record_failure(name, err.message)
        log.info("attempt on %s failed (%s): %s", name, err.kind, err.message)

    def _attempt_succeeded(
        self, lease: Lease, final: Mapping[str, Any], exchange: Exchange, keep_alive: Any
    ) -> None:
        """A success: its verdict to the breakers; what it showed to the state, the prompt
        cost model (rates, time ratio, prefix index) and the metrics."""
        name = lease.server.name
        lease.settle(True)
        now = self._clock()
        latency = now - exchange.started
        first_at = exchange.first_at
        costs = self._balancer.costs
        seen = costs.observe(
            name,
            lease.model,
            lease.prompt,
            final,
            observed_s=latency,
            decode_s=now - first_at if first_at is not None else None,
            slots=lease.server.max_concurrency,
            predicted_cached_chars=lease.predicted_cached_chars,
        )
        eval_count = int(final.get("eval_count") or 0)
        eval_ns = int(final.get("eval_duration") or 0)
        load_ns = int(final.get("load_duration") or 0)
        self._state.record_success(
            name,
            lease.model,
            latency_s=latency,
            eval_count=eval_count,
            eval_duration_ns=eval_ns,
            load_duration_ns=load_ns,
            keep_alive_s=keep_alive
            if isinstance(keep_alive, (int, float)) and keep_alive > 0
            else 300.0,
            time_ratio=costs.time_ratio(name),
        )
        self._metrics.request_finished(
            name,
            ok=True,
            latency_s=latency,
            eval_count=eval_count,
            eval_duration_s=eval_ns / 1e9,
            prompt_tokens=seen.prompt_tokens,
            cached_tokens=seen.cached_tokens,
            prefill_s=seen.prefill_s,
        )
        if load_ns > 1e9:
            # A cold load may have evicted other models there: ask for /api/ps now rather
            # than route on a stale list of loaded models until the next probe.
            self._poke(name)

    def _poke(self, name: str) -> None:
        if self._monitor is not None:
            self._monitor.poke(name)

    def send(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        collect: bool = False,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ResponseStream[Dict[str, Any]]:
        """Ollama's own JSON objects of one request to ``path``, over the fleet.

        The core under :meth:`generate`, :meth:`chat`, :meth:`embed`, their streamed forms,
        :class:`OrchestraTransport` and the proxy (as httpx's ``send`` under ``get``/``post``).
        ``body`` is Ollama's request body; its ``model`` may name a role. ``/api/generate`` and
        ``/api/chat`` are always streamed from the server (a hung host is caught by the
        first-byte timeout); ``/api/embed`` and ``/api/embeddings`` answer one object.

        Args:
            collect: read the whole answer before the first object is yielded, so a failure
                anywhere in it is retried on another server; otherwise objects come as they
                arrive, with failover before the first; a break after text was yielded is
                continued on another server (``RetryPolicy.mid_stream``), else raises
                :class:`StreamInterrupted`.
            priority: higher waits less for a slot.
            timeout: bound on the whole request with ``collect`` (default
                ``config.timeouts.total_s``); ignored without it.
            retry: ``False`` for a single attempt, a :class:`RetryPolicy` to override the config.
        """
        resolved, role = self._resolve(cast(str, body.get("model")))
        payload = dict(body, model=resolved)
        if path not in UNSTREAMED_PATHS:
            payload["stream"] = True
        return self._send(path, payload, resolved, role, priority, retry, timeout, collect)

    def _send(
        self,
        path: str,
        payload: Dict[str, Any],
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        timeout: Optional[float],
        collect: bool,
    ) -> ResponseStream[Dict[str, Any]]:
        """The one request path: attempts (``_failover``) of one exchange each; the service
        time of a success counts from the start of its attempt, streamed or collected."""
        keep_alive = payload.get("keep_alive")
        open_exchange = self._open(path, payload, model)
        # The prompt as the prompt-cache estimates see it (hashed once per request).
        prompt = None if path in UNSTREAMED_PATHS else self._balancer.costs.prompt(model, payload)

        policy = self._policy(retry)
        limit = policy.continuations if policy.mid_stream == "continue" else 0
        cut_off = [False]  # set when a continuation failed: retried whole from then on

        async def whole(lease: Lease) -> List[Dict[str, Any]]:
            exchange = await open_exchange(lease)
            try:
                objs = await exchange.read_all()
                await exchange.drain()
            except AttemptError as exc:
                resume = Resume(path, payload, limit)
                for obj in exchange.received:
                    resume.seen(obj, exchange.started)
                if cut_off[0] or resume.why_not() is not None:
                    raise
                # Continued below, outside the retry loop: this attempt failed here.
                self._attempt_failed(lease, exc, model, exchange.started, [])
                resume.broke(exchange.started, self._clock())
                raise _Cut(resume, exc, list(exchange.received)) from exc
            finally:
                await exchange.aclose()
            self._attempt_succeeded(lease, objs[-1], exchange, keep_alive)
            return objs

        async def rest(cut: _Cut) -> Tuple[List[Dict[str, Any]], Lease]:
            """A collected answer cut mid-answer: its continuations, read whole."""
            got, resume, broken = cut.received, cut.resume, cut.error
            while True:
                exchange, lease = await self._continue(resume, broken, model, role, priority, retry)
                record = resume.continuations[-1]
                self._metrics.continued(record.broken, record.at_token, record.lost_s)
                try:
                    part = await exchange.read_all()
                    await exchange.drain()
                    self._attempt_succeeded(lease, part[-1], exchange, keep_alive)
                    return [*got, *part[:-1], resume.final(part[-1])], lease
                except AttemptError as exc:
                    self._attempt_failed(lease, exc, model, exchange.started, [])
                    for obj in exchange.received:
                        resume.seen(obj, exchange.started)
                    resume.broke(exchange.started, self._clock())
                    got, broken = got + exchange.received, exc
                finally:
                    lease.settle(None)
                    try:
                        await exchange.aclose()
                    finally:
                        self._balancer.release(lease)

        async def collected(
            out: ResponseStream[Dict[str, Any]],
        ) -> AsyncGenerator[Dict[str, Any], None]:
            total = timeout if timeout is not None else self.config.timeouts.total_s
            with anyio.move_on_after(total):
                try:
                    objs, lease, attempts = await self._failover(
                        model, role, priority, retry, whole, prompt=prompt
                    )
                    n = len(attempts) + 1
                except _Cut as cut:
                    try:
                        objs, lease = await rest(cut)
                        n = len(cut.resume.continuations) + 1
                    except StreamInterrupted:
                        # Not continued: retried whole, as without a continuation policy.
                        cut_off[0] = True
                        objs, lease, attempts = await self._failover(
                            model, role, priority, retry, whole, prompt=prompt
                        )
                        n = len(attempts) + 2
                out._settled(lease.server.name, n, lease.queued_s)
                for obj in objs:
                    yield obj
                return
            assert total is not None
            raise RequestTimeout(model, total)

        async def streamed(
            out: ResponseStream[Dict[str, Any]],
        ) -> AsyncGenerator[Dict[str, Any], None]:
            exchange, lease, attempts = await self._failover(
                model, role, priority, retry, open_exchange, keep_lease=True, prompt=prompt
            )
            out._settled(lease.server.name, len(attempts) + 1, lease.queued_s)
            policy = self._policy(retry)
            resume = Resume(
                path, payload, policy.continuations if policy.mid_stream == "continue" else 0
            )
            try:
                obj = exchange.first
                while True:
                    broken: Optional[AttemptError] = None
                    if obj is None:
                        broken = AttemptError("reset", exchange.server, "stream ended before done")
                    elif obj.get("done") or path in UNSTREAMED_PATHS:
                        self._attempt_succeeded(lease, obj, exchange, keep_alive)
                        await exchange.drain()
                        yield resume.final(obj)
                        return
                    else:
                        yield obj
                        resume.seen(obj, self._clock())
                        try:
                            obj = await exchange.next_obj()
                            continue
                        except Exception as exc:
                            if self._closing:  # the orchestra exited under this stream
                                raise OrchestraClosed(
                                    "the Orchestra was closed while this stream ran"
                                ) from exc
                            if not isinstance(exc, AttemptError):
                                raise
                            broken = exc
                    self._attempt_failed(lease, broken, model, exchange.started, [])
                    broke_at = self._clock()
                    resume.broke(exchange.started, broke_at)
                    old, old_lease = exchange, lease
                    try:
                        exchange, lease = await self._continue(
                            resume, broken, model, role, priority, retry
                        )
                    finally:
                        old_lease.settle(None)
                        try:
                            await old.aclose()
                        finally:
                            self._balancer.release(old_lease)
                    record = resume.continuations[-1]
                    self._metrics.continued(record.broken, record.at_token, record.lost_s)
                    out._settled(lease.server.name, out.attempts + 1, out.queued_s)
                    obj = exchange.first
            finally:
                lease.settle(None)  # closed early by the caller: no verdict
                try:
                    await exchange.aclose()
                finally:
                    self._balancer.release(lease)

        return ResponseStream.of(collected if collect else streamed)

    async def _whole(
        self,
        path: str,
        payload: Dict[str, Any],
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        timeout: Optional[float],
    ) -> Tuple[List[Dict[str, Any]], ResponseStream[Dict[str, Any]]]:
        """Every object of one collected answer, and the stream that carried them (its
        ``server``, ``attempts`` and ``queued_s``)."""
        stream = self._send(path, payload, model, role, priority, retry, timeout, True)
        async with stream:
            objs = [obj async for obj in stream]
        return objs, stream

    def _stream(
        self,
        path: str,
        payload: Dict[str, Any],
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        make: Callable[[Dict[str, Any], str, int, float], T],
    ) -> ResponseStream[T]:
        """:meth:`_send`'s objects, streamed, made into the caller's chunks."""
        source = self._send(path, payload, model, role, priority, retry, None, False)

        async def chunks(out: ResponseStream[T]) -> AsyncGenerator[T, None]:
            async with source:
                async for obj in source:
                    out._settled(source.server, source.attempts, source.queued_s)
                    yield make(obj, str(source.server), source.attempts, source.queued_s)

        return ResponseStream.of(chunks)

    # -- the public calls ------------------------------------------------------------------------

    @staticmethod
    def _payload(base: Dict[str, Any], **optional: Any) -> Dict[str, Any]:
        for key, value in optional.items():
            if value is not None:
                base[key] = value
        return base

    def _generate_payload(
        self,
        model: str,
        prompt: str,
        images: Optional[Sequence[str]],
        options: Optional[Mapping[str, Any]],
        **fields: Any,
    ) -> Dict[str, Any]:
        if not isinstance(prompt, str):
            raise bad_type("prompt", prompt, "a str")
        check_fields(
            options=options,
            keep_alive=fields.get("keep_alive"),
            format=fields.get("format"),
            think=fields.get("think"),
            strings={k: fields.get(k) for k in ("system", "suffix", "template")},
            flags={"raw": fields.get("raw")},
            lists={"images": images},
        )
        if images is not None and not all(isinstance(i, str) for i in images):
            raise bad_type("images", images, "a list of base64 strings")
        check_logprobs(fields.get("logprobs"), fields.get("top_logprobs"))
        return self._payload(
            {"model": model, "prompt": prompt, "stream": True},
            images=list(images) if images is not None else None,
            options=dict(options) if options is not None else None,
            **fields,
        )

    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        images: Optional[Sequence[str]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        raw: Optional[bool] = None,
        suffix: Optional[str] = None,
        template: Optional[str] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> GenerateResponse:
        """``/api/generate`` on the best server; one answer.

        Args:
            model: a model name, or a role from ``config.roles``.
            prompt: the prompt; ``system``, ``images``, ``format``, ``options``, ``keep_alive``,
                ``think``, ``raw``, ``suffix``, ``template``: as in Ollama's API, passed through.
            logprobs: ask for each token's log probability (``top_logprobs``: with that many
                likeliest alternatives, 0 to 20); the answer's ``logprobs`` holds every
                token's, gathered across the streamed chunks as Ollama does.
            priority: higher waits less for a slot.
            timeout: bound on the whole request, all attempts included (default:
                ``config.timeouts.total_s``, off).
            retry: ``False`` for a single attempt, a :class:`RetryPolicy` to override the config.

        Raises:
            TypeError, ValueError: an argument of the wrong type or value (named), before
                anything is sent.
            RequestTimeout: ``timeout`` ran out.
        """
        check_call(model, priority, retry, timeout)
        resolved, role = self._resolve(model)
        payload = self._generate_payload(
            resolved,
            prompt,
            images,
            options,
            system=system,
            format=format,
            keep_alive=keep_alive,
            think=think,
            raw=raw,
            suffix=suffix,
            template=template,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        objs, answer = await self._whole(
            "/api/generate", payload, resolved, role, priority, retry, timeout
        )
        final = objs[-1]
        thinking = "".join(str(o.get("thinking") or "") for o in objs) or None
        context = final.get("context")
        return GenerateResponse(
            response="".join(str(o.get("response") or "") for o in objs),
            thinking=thinking,
            context=tuple(context) if isinstance(context, list) else None,
            logprobs=merge_logprobs(objs),
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
            **stats_from(final),
        )

    def generate_stream(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        images: Optional[Sequence[str]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        raw: Optional[bool] = None,
        suffix: Optional[str] = None,
        template: Optional[str] = None,
        priority: int = 0,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ResponseStream[GenerateChunk]:
        """``/api/generate``, streamed: an async iterator of :class:`GenerateChunk`.

        Failover before the first chunk is transparent; once text has been yielded, a broken
        stream is continued on another server with the partial answer as prefill (see
        ``RetryPolicy.mid_stream``), else raises :class:`StreamInterrupted` with it.
        """
        check_call(model, priority, retry)
        resolved, role = self._resolve(model)
        payload = self._generate_payload(
            resolved,
            prompt,
            images,
            options,
            system=system,
            format=format,
            keep_alive=keep_alive,
            think=think,
            raw=raw,
            suffix=suffix,
            template=template,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

        def make(obj: Dict[str, Any], server: str, n: int, queued: float) -> GenerateChunk:
            return GenerateChunk(
                response=str(obj.get("response") or ""),
                thinking=obj.get("thinking"),
                logprobs=logprobs_of(obj),
                server=server,
                attempts=n,
                queued_s=queued,
                **stats_from(obj),
            )

        return self._stream("/api/generate", payload, resolved, role, priority, retry, make)

    async def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ChatResponse:
        """``/api/chat`` on the best server; one answer (see :meth:`generate` for the knobs)."""
        check_call(model, priority, retry, timeout)
        resolved, role = self._resolve(model)
        payload = self._chat_payload(
            resolved, messages, tools, format, options, keep_alive, think, logprobs, top_logprobs
        )
        objs, answer = await self._whole(
            "/api/chat", payload, resolved, role, priority, retry, timeout
        )
        return ChatResponse(
            message=merge_messages(objs),
            logprobs=merge_logprobs(objs),
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
            **stats_from(objs[-1]),
        )

    def chat_stream(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        priority: int = 0,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ResponseStream[ChatChunk]:
        """``/api/chat``, streamed: an async iterator of :class:`ChatChunk`."""
        check_call(model, priority, retry)
        resolved, role = self._resolve(model)
        payload = self._chat_payload(
            resolved, messages, tools, format, options, keep_alive, think, logprobs, top_logprobs
        )

        def make(obj: Dict[str, Any], server: str, n: int, queued: float) -> ChatChunk:
            message = obj.get("message")
            return ChatChunk(
                message=dict(message)
                if isinstance(message, dict)
                else {"role": "assistant", "content": ""},
                logprobs=logprobs_of(obj),
                server=server,
                attempts=n,
                queued_s=queued,
                **stats_from(obj),
            )

        return self._stream("/api/chat", payload, resolved, role, priority, retry, make)

    def _chat_payload(
        self,
        model: str,
        messages: Sequence[Message],
        tools: Optional[Sequence[Mapping[str, Any]]],
        format: Optional[Union[str, Mapping[str, Any]]],
        options: Optional[Mapping[str, Any]],
        keep_alive: Optional[Union[float, str]],
        think: Optional[Think],
        logprobs: Optional[bool],
        top_logprobs: Optional[int],
    ) -> Dict[str, Any]:
        check_messages(messages)
        check_tools(tools)
        check_fields(options=options, keep_alive=keep_alive, format=format, think=think)
        check_logprobs(logprobs, top_logprobs)
        return self._payload(
            {"model": model, "messages": [dict(m) for m in messages], "stream": True},
            tools=[dict(t) for t in tools] if tools is not None else None,
            format=format,
            options=dict(options) if options is not None else None,
            keep_alive=keep_alive,
            think=think,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    async def embed(
        self,
        model: str,
        input: Union[str, Sequence[str]],
        *,
        truncate: Optional[bool] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        dimensions: Optional[int] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> EmbedResponse:
        """``/api/embed`` on the best server."""
        check_call(model, priority, retry, timeout)
        check_embed_input(input, dimensions)
        check_fields(options=options, keep_alive=keep_alive, flags={"truncate": truncate})
        resolved, role = self._resolve(model)
        payload = self._payload(
            {"model": resolved, "input": input if isinstance(input, str) else list(input)},
            truncate=truncate,
            options=dict(options) if options is not None else None,
            keep_alive=keep_alive,
            dimensions=dimensions,
        )

        objs, answer = await self._whole(
            "/api/embed", payload, resolved, role, priority, retry, timeout
        )
        body = objs[0]
        return EmbedResponse(
            model=str(body.get("model") or resolved),
            embeddings=body["embeddings"],
            total_duration=body.get("total_duration"),
            load_duration=body.get("load_duration"),
            prompt_eval_count=body.get("prompt_eval_count"),
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
        )

    async def call_host(
        self, server: Server, method: str, path: str, body: Optional[Mapping[str, Any]] = None
    ) -> Tuple[int, Any]:
        """One plain call to one server, outside balancing: ``(status, JSON or text)``.

        No slot, retry or breaker: for the fleet-wide views (``OrchestraTransport`` and the
        proxy use it for ``/api/tags``, ``/api/ps`` and ``/api/show``). Bounded by the health
        probe timeout; httpx's errors propagate.
        """
        response = await self._client().request(
            method,
            server.url + path,
            json=dict(body) if body is not None else None,
            headers=dict(server.headers),
            timeout=self.config.health.timeout_s,
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
    ) -> DagResult:
        """Run a DAG of tasks over the fleet; results in input order.

        ``schedule`` is ``"eager"`` (a task starts when its dependencies are done),
        ``"waves"`` or ``"sequential"``. A failed task's dependents are skipped; with
        ``fail_fast`` the first failure cancels the rest. See :func:`run_dag`.
        """
        if not isinstance(fail_fast, bool):
            raise bad_type("fail_fast", fail_fast, "a bool")
        if inputs is not None and (
            not isinstance(inputs, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())
        ):
            raise bad_type("inputs", inputs, "a mapping of names to strings")
        return await run_dag(
            self, tasks, schedule=schedule, fail_fast=fail_fast, on_event=on_event, inputs=inputs
        )


def merge_messages(objs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    content: List[str] = []
    thinking: List[str] = []
    tool_calls: List[Any] = []
    role = "assistant"
    for obj in objs:
        msg = obj.get("message")
        if not isinstance(msg, dict):
            continue
        role = str(msg.get("role") or role)
        content.append(str(msg.get("content") or ""))
        if msg.get("thinking"):
            thinking.append(str(msg["thinking"]))
        if msg.get("tool_calls"):
            tool_calls.extend(msg["tool_calls"])
    out: Dict[str, Any] = {"role": role, "content": "".join(content)}
    if thinking:
        out["thinking"] = "".join(thinking)
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out
