"""The request path: every request the orchestra sends, as methods of :class:`Orchestra`.

:meth:`RequestPath.send` is the one path (``generate``/``chat``/``embed``, their streamed
forms, the transport and the proxy sit on it): role → model; a balancer lease (a slot on the
best eligible server); one :class:`~._exchange.Exchange` (send, first-byte deadline, read,
close); the outcome recorded (``_outcomes``); on a retryable failure, the next attempt on
another server (``_failover``, tenacity); a stream broken after text was yielded continued
elsewhere (``_continue``). Completions are always streamed from the server, even when the
caller wants one answer: a hung host is caught by the first-byte timeout, never by a
whole-answer timeout (embeddings answer one JSON object). Service time counts from the
start of the successful attempt, streamed or collected alike.

Kept apart from ``_client`` (the facade: construction, lifecycle, state, public calls) as a
base class of ``Orchestra``, whose attributes it uses.

Longer than 500 lines because ``_send``'s collected and streamed readers, the attempt loop
and the continuation of a broken stream share one request's state (its payload, prompt,
policy and partial answer) as closures: split, that state would travel in long argument
lists between modules.
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
    cast,
)

import anyio
import httpx

from ._balancer import Lease, LoadBalancer
from ._config import OrchestraConfig, RetryPolicy, Server
from ._continuation import Continuation, Resume
from ._errors import (
    Attempt,
    OrchestraClosed,
    RequestFailed,
    RequestTimeout,
    StreamInterrupted,
)
from ._exchange import UNSTREAMED_PATHS, Exchange
from ._failover import AttemptError, retry_after
from ._handoff import TakenBack, first_chunk, run_ahead
from ._metrics import Metrics
from ._outcomes import Outcomes
from ._rates import Prompt
from ._state import FleetState
from ._stream import ResponseStream

__all__ = ["Answered", "RequestPath"]

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


class Answered(NamedTuple):
    """Who answered a collected request: the server, the attempts it took, the queue wait."""

    server: str
    attempts: int
    queued_s: float


class _NotElsewhere(Exception):
    """A continuation was offered only the server whose stream broke."""

    def __str__(self) -> str:
        return "only the server whose stream broke is eligible"


class RequestPath:
    """The request path of :class:`~._client.Orchestra` (see the module docstring)."""

    config: OrchestraConfig
    _balancer: LoadBalancer
    _state: FleetState
    _metrics: Metrics
    _outcomes: Outcomes
    _clock: Callable[[], float]
    _sleep: Callable[[float], Awaitable[None]]
    _rng: random.Random
    _closing: bool

    if TYPE_CHECKING:

        def _client(self) -> httpx.AsyncClient: ...

        async def call_host(
            self, server: Server, method: str, path: str, body: Optional[Mapping[str, Any]] = None
        ) -> Tuple[int, Any]: ...

    def _resolve(self, model: str) -> Tuple[str, Optional[str]]:
        return self.config.resolve_model(model)

    def _open(
        self, path: str, payload: Mapping[str, Any], model: str, whole: bool = False
    ) -> Callable[[Lease], Awaitable[Exchange]]:
        """The work of one attempt: open ``path`` on the lease's server (and with ``whole``,
        read the answer to its end: ``Exchange.open``)."""
        t = self.config.timeouts

        async def work(lease: Lease) -> Exchange:
            exchange = await Exchange.open(
                self._client(),
                lease.server,
                path,
                payload,
                model=model,
                first_byte_s=t.first_byte_s,
                read_s=t.read_s,
                connect_s=t.connect_s,
                clock=self._clock,
                whole=whole,
                # A request sent ahead has started when its first chunk is in.
                on_first=None if lease.handoff is None else partial(first_chunk, lease),
            )
            first_chunk(lease)  # (unstreamed answers: when the whole one is in)
            return exchange

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
        attempts: List[Attempt] = []
        tried: Set[str] = set(exclude)
        first_failure: Optional[float] = None
        queued = 0.0

        async def attempt() -> Tuple[T, Lease]:
            nonlocal first_failure, queued
            self._balancer.check_capable(model)
            taken_back = False
            while True:  # again only after a request sent ahead was taken back
                lease = await self._balancer.acquire(
                    model,
                    role=role,
                    priority=priority,
                    exclude=frozenset(tried),
                    prompt=prompt,
                    ahead=True,
                    front=taken_back,
                )
                queued += lease.queued_s
                name = lease.server.name
                fresh = name not in tried
                tried.add(name)
                started = self._clock()
                keep = False
                try:
                    result = await run_ahead(lease, work)
                    keep = keep_lease
                    return result, lease
                except TakenBack:
                    taken_back = True  # not an attempt: no verdict, not "tried"
                    if fresh:
                        tried.discard(name)
                except BaseException as exc:
                    self._outcomes.failed(lease, exc, model, started, attempts)
                    if first_failure is None:
                        first_failure = started
                    raise
                finally:
                    if not keep:
                        self._balancer.release(lease)

        def untried() -> bool:
            # The balancer's own "eligible", affinity included: under a required rule, a
            # retry that can only go back to a tried server waits its backoff first.
            eligible = self._balancer.eligible(model, role, priority, tried)
            return any(st.server.name not in tried for st in eligible)

        since = time.monotonic()  # tenacity's clock, for the policy's deadline
        try:
            try:
                result, lease = await attempt()
            except AttemptError as first:
                # The first attempt runs plainly; tenacity takes over from its failure.
                result, lease = await retry_after(
                    first,
                    attempt,
                    self._policy(retry),
                    since=since,
                    untried=untried,
                    sleep=self._sleep,
                    rng=self._rng,
                )
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
        record = Continuation(
            broken=broken.server,
            server=lease.server.name,
            at_token=resume.tokens,
            at_char=len(partial),
            lost_s=self._clock() - broke_at,
            reason=broken.message,
        )
        resume.continued(record)
        self._metrics.continued(record.broken, record.at_token, record.lost_s)
        log.info(
            "stream from %s continued on %s at token %d",
            broken.server,
            lease.server.name,
            resume.tokens,
        )
        return exchange, lease

    async def _let_go(self, exchange: Exchange, lease: Lease) -> None:
        """Close ``exchange`` and give ``lease``'s slot back (permits not settled yet: no
        verdict), the slot released even if closing fails."""
        lease.settle(None)
        try:
            await exchange.aclose()
        finally:
            self._balancer.release(lease)

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
        if collect:

            async def collected(
                out: ResponseStream[Dict[str, Any]],
            ) -> AsyncGenerator[Dict[str, Any], None]:
                objs, answered = await self._whole(
                    path, payload, model, role, priority, retry, timeout
                )
                out._settled(answered.server, answered.attempts, answered.queued_s)
                for obj in objs:
                    yield obj

            return ResponseStream.of(collected)

        keep_alive = payload.get("keep_alive")
        open_exchange = self._open(path, payload, model)
        # The prompt as the prompt-cache estimates see it (hashed once per request).
        prompt = None if path in UNSTREAMED_PATHS else self._balancer.costs.prompt(model, payload)

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
                        self._outcomes.succeeded(lease, obj, exchange, keep_alive)
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
                    self._outcomes.failed(lease, broken, model, exchange.started, [])
                    broke_at = self._clock()
                    resume.broke(exchange.started, broke_at)
                    old, old_lease = exchange, lease
                    try:
                        exchange, lease = await self._continue(
                            resume, broken, model, role, priority, retry
                        )
                    finally:
                        await self._let_go(old, old_lease)
                    out._settled(lease.server.name, out.attempts + 1, out.queued_s)
                    obj = exchange.first
            finally:
                await self._let_go(exchange, lease)  # closed early by the caller: no verdict

        return ResponseStream.of(streamed)

    async def _whole(
        self,
        path: str,
        payload: Dict[str, Any],
        model: str,
        role: Optional[str],
        priority: int,
        retry: Union[RetryPolicy, bool, None],
        timeout: Optional[float],
    ) -> Tuple[List[Dict[str, Any]], Answered]:
        """Every object of one collected answer (read whole before any is handed on, so a
        failure anywhere in it is retried), and who answered it.

        A coroutine, not a generator: ``generate``/``chat``/``embed`` take the whole list, and
        a generator's layers cost them a few microseconds an object for nothing.
        """
        keep_alive = payload.get("keep_alive")
        read_whole = self._open(path, payload, model, whole=True)
        # The prompt as the prompt-cache estimates see it (hashed once per request).
        prompt = None if path in UNSTREAMED_PATHS else self._balancer.costs.prompt(model, payload)
        policy = self._policy(retry)
        limit = policy.continuations if policy.mid_stream == "continue" else 0
        cut_off = [False]  # set when a continuation failed: retried whole from then on

        async def whole(lease: Lease) -> List[Dict[str, Any]]:
            exchange = await read_whole(lease)
            try:
                if exchange.broken is not None:  # cut after its first object: salvaged below
                    raise exchange.broken
                objs = exchange.received
            except AttemptError as exc:
                resume = Resume(path, payload, limit)
                for obj in exchange.received:
                    resume.seen(obj, exchange.started)
                if cut_off[0] or resume.why_not() is not None:
                    raise
                # Continued below, outside the retry loop: this attempt failed here.
                self._outcomes.failed(lease, exc, model, exchange.started, [])
                resume.broke(exchange.started, self._clock())
                raise _Cut(resume, exc, list(exchange.received)) from exc
            finally:
                await exchange.aclose()
            self._outcomes.succeeded(lease, objs[-1], exchange, keep_alive)
            return objs

        async def rest(cut: _Cut) -> Tuple[List[Dict[str, Any]], Lease]:
            """A collected answer cut mid-answer: its continuations, read whole."""
            got, resume, broken = cut.received, cut.resume, cut.error
            while True:
                exchange, lease = await self._continue(resume, broken, model, role, priority, retry)
                try:
                    part = await exchange.read_all()
                    await exchange.drain()
                    self._outcomes.succeeded(lease, part[-1], exchange, keep_alive)
                    return [*got, *part[:-1], resume.final(part[-1])], lease
                except AttemptError as exc:
                    self._outcomes.failed(lease, exc, model, exchange.started, [])
                    for obj in exchange.received:
                        resume.seen(obj, exchange.started)
                    resume.broke(exchange.started, self._clock())
                    got, broken = got + exchange.received, exc
                finally:
                    await self._let_go(exchange, lease)

        async def attempts() -> Tuple[List[Dict[str, Any]], Answered]:
            try:
                objs, lease, tried = await self._failover(
                    model, role, priority, retry, whole, prompt=prompt
                )
                n = len(tried) + 1
            except _Cut as cut:
                try:
                    objs, lease = await rest(cut)
                    n = len(cut.resume.continuations) + 1
                except StreamInterrupted:
                    # Not continued: retried whole, as without a continuation policy.
                    cut_off[0] = True
                    objs, lease, tried = await self._failover(
                        model, role, priority, retry, whole, prompt=prompt
                    )
                    n = len(tried) + 2
            return objs, Answered(lease.server.name, n, lease.queued_s)

        total = timeout if timeout is not None else self.config.timeouts.total_s
        if total is None:  # no bound: no cancel scope either
            return await attempts()
        with anyio.move_on_after(total):
            return await attempts()
        raise RequestTimeout(model, total)

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
