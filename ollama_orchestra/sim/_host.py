"""One simulated Ollama host: its scheduler and its HTTP API, as an ASGI app.

The scheduler follows Ollama's: a runner per loaded model with ``num_parallel`` slots;
requests for a loaded model wait on its slots (FIFO, unbounded); requests that need a load
wait for the one load at a time, at most ``max_queue`` of them (then 503); eviction picks an
idle runner first, else the one whose keep-alive ends soonest, and waits for its requests.

Timing: a request's decode speed is the model's single-request speed times the host's
``speed``, times ``aggregate_speedup(n) / n`` with ``n`` requests decoding at once on the
host. Every real wait is the simulated time times ``time_scale``; every reported duration is
in simulated time.

Prompts: a request's prompt is rendered and tokenised (``_prompt``); the loaded model's
slots and RAM cache (``_kvcache``) decide how much of it is already evaluated, and only the
rest is charged, at the model's ``prompt_tps`` times the host's ``speed``. As in
llama-server's batches (``update_slots``: each decoding slot adds its one token, then prompt
tokens fill the batch up to ``num_batch``, 512 as Ollama sets it), a prompt being evaluated
stretches every decode step of the same model by a 512-token chunk's time, and decoding
slots slow the prompt a little in turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
)

import anyio

from .._config import normalize_model
from .._openai import openai_app
from .._serving import BadRequestBody, ClientGone, parse_json, read_body
from .._wire import RequestRejected, check_request, keep_alive_seconds, late_errors
from ._kvcache import PromptCache
from ._prompt import (
    CONTEXT_EXCEEDED,
    RenderedPrompt,
    Token,
    fit_chat,
    render_generate,
    shift_truncate,
    tokenize,
)
from ._spec import Faults, HostProfile, ModelSpec, aggregate_speedup

__all__ = ["RequestRecord", "SimHost", "SimState", "SimulatedReset"]

log = logging.getLogger("ollama_orchestra.sim")

_T = TypeVar("_T")

Scope = Dict[str, Any]
Message = Dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_WORDS = [
    "the",
    "model",
    "plan",
    "code",
    "test",
    "async",
    "await",
    "server",
    "fleet",
    "slot",
    "queue",
    "load",
    "token",
    "stream",
    "answer",
    "function",
    "class",
    "module",
    "return",
    "value",
    "error",
    "retry",
    "balance",
    "task",
    "graph",
    "wave",
    "result",
    "python",
    "request",
    "response",
    "health",
    "check",
    "state",
    "metric",
    "latency",
    "throughput",
    "share",
    "worker",
    "batch",
    "cache",
    "memory",
    "device",
    "kernel",
    "tensor",
    "layer",
    "weight",
    "bias",
    "input",
    "output",
    "prompt",
    "context",
    "window",
    "first",
    "then",
    "next",
    "finally",
    "because",
    "therefore",
    "however",
    "also",
    "only",
    "each",
    "every",
    "some",
    "many",
    "few",
]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))  # compact, as Ollama's Go encoder writes


class SimulatedReset(Exception):
    """Raised inside the app to make the server drop a connection mid-stream."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the host received it."""

    route: str
    model: str
    prompt: Optional[str]
    messages: Optional[Tuple[Dict[str, Any], ...]]
    options: Dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class SimState:
    """A snapshot of the host's scheduler."""

    loaded: Tuple[str, ...]
    in_flight: int
    in_flight_by_model: Dict[str, int]
    waiting_for_slot: int
    waiting_for_load: int
    loading: Optional[str]
    requests: int
    completed: int
    loads: int
    evictions: int
    rejected_busy: int
    paused: bool
    #: distinct client connections seen (host, port) since the host (re)started.
    connections: int = 0
    #: per loaded model: the tokens each slot's KV cache holds, by slot.
    slot_cached_tokens: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    #: per loaded model: the tokens of each entry of llama-server's RAM prompt cache.
    ram_cached_tokens: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    #: per loaded model: the context (``num_ctx``) it was loaded with.
    num_ctx: Dict[str, int] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return self.waiting_for_slot + self.waiting_for_load


#: ``num_batch``: Ollama's default, passed to llama-server as ``-b``/``-ub``.
_NUM_BATCH = 512
#: ``num_keep``: Ollama's default (``api.DefaultOptions``).
_NUM_KEEP = 4


class _Runner:
    """A loaded model: its slots, prompt cache and keep-alive."""

    def __init__(self, spec: ModelSpec, profile: HostProfile, num_ctx: int) -> None:
        self.spec = spec
        self.slots = slots = profile.num_parallel
        self.num_ctx = num_ctx
        # llama-server -c num_ctx*np -np np: each slot holds num_ctx tokens.
        self.cache = PromptCache(
            slots,
            kv_bytes_per_token=spec.kv_bytes,
            ram_bytes=profile.cache_ram_mib * 1024 * 1024,
            limit_tokens=num_ctx * slots,
        )
        self.decoding = 0
        self.prefilling = 0
        self.active = 0
        self.waiters: Deque[asyncio.Future[None]] = deque()
        self.keep_alive_s: float = 300.0  # simulated seconds, from the latest request
        self.expires_at: Optional[float] = None  # real monotonic time; None while busy or forever
        self.expiry_handle: Optional[asyncio.TimerHandle] = None
        self.idle = asyncio.Event()
        self.idle.set()
        self.unloading = False

    def busy(self) -> bool:
        return self.active > 0 or bool(self.waiters)


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class SimHost:
    """A simulated Ollama host: scheduler, timing, faults, and the ASGI app serving them.

    Args:
        profile: the host's models, speed and scheduler limits.
        time_scale: real seconds per simulated second (0.01 runs 100x faster).
        seed: seeds the answers' text and the random faults.
        faults: faults to start with.
    """

    def __init__(
        self,
        profile: HostProfile,
        *,
        time_scale: float = 1.0,
        seed: int = 0,
        faults: Optional[Faults] = None,
    ) -> None:
        if not isinstance(time_scale, (int, float)) or not (
            time_scale > 0 and math.isfinite(time_scale)
        ):
            from .._errors import SimConfigError

            raise SimConfigError("time_scale", time_scale, "must be a finite number > 0")
        self.profile = profile
        self.name = profile.name
        self.time_scale = float(time_scale)
        self.seed = seed
        self.faults = faults or Faults()
        self.on_faults_changed: List[Callable[[Faults], None]] = []
        self._rng = random.Random(seed)
        self._requests: Deque[RequestRecord] = deque(maxlen=10_000)
        self._changed: Optional[asyncio.Event] = None
        self._running: Optional[asyncio.Event] = None  # created lazily, on the serving loop
        self._paused = False
        self._tasks: Set[asyncio.Task[Any]] = set()
        # Ollama's /v1 routes: its OpenAI middleware in front of the native handlers below.
        self._openai = openai_app(self._handle)
        self.reset()

    # -- controls ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Fresh scheduler state, like a rebooted host."""
        # Requests of the old "boot" that are still unwinding must not touch the new state.
        self._epoch = getattr(self, "_epoch", 0) + 1
        for r in getattr(self, "_runners", {}).values():
            if r.expiry_handle is not None:
                r.expiry_handle.cancel()
        self._runners: Dict[str, _Runner] = {}
        self._load_lock: Optional[asyncio.Lock] = None
        self._loading: Optional[str] = None
        self._waiting_load = 0
        self._decoding = 0
        self._in_flight: Dict[str, int] = {}
        self._requests_total = 0
        self._completed = 0
        self._loads = 0
        self._evictions = 0
        self._rejected = 0
        self._clients: Set[Any] = set()
        self._notify()

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        for cb in list(self.on_faults_changed):
            cb(faults)
        self._notify()

    def pause(self) -> None:
        """Freeze every decode in progress (and new ones) until :meth:`resume`."""
        self._paused = True
        self._resume_event().clear()
        self._notify()

    def resume(self) -> None:
        self._paused = False
        self._resume_event().set()
        self._notify()

    @property
    def requests(self) -> Sequence[RequestRecord]:
        return tuple(self._requests)

    def state(self) -> SimState:
        return SimState(
            loaded=tuple(sorted(n for n, r in self._runners.items() if not r.unloading)),
            in_flight=sum(self._in_flight.values()),
            in_flight_by_model={k: v for k, v in self._in_flight.items() if v},
            waiting_for_slot=sum(len(r.waiters) for r in self._runners.values()),
            waiting_for_load=self._waiting_load,
            loading=self._loading,
            requests=self._requests_total,
            completed=self._completed,
            loads=self._loads,
            evictions=self._evictions,
            rejected_busy=self._rejected,
            paused=self._paused,
            connections=len(self._clients),
            slot_cached_tokens={
                n: tuple(v.cached_tokens for v in r.cache.slots())
                for n, r in self._runners.items()
                if not r.unloading
            },
            ram_cached_tokens={
                n: r.cache.ram_entries() for n, r in self._runners.items() if not r.unloading
            },
            num_ctx={n: r.num_ctx for n, r in self._runners.items() if not r.unloading},
        )

    async def wait_until(self, predicate: Callable[[SimState], bool]) -> SimState:
        """Wait until ``predicate(state())`` holds; re-checked on every scheduler change."""
        while True:
            st = self.state()
            if predicate(st):
                return st
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    async def aclose(self) -> None:
        """Cancel every in-flight generation."""
        for task in list(self._tasks):
            task.cancel()
        self.reset()

    def _notify(self) -> None:
        ev = self._changed
        if ev is not None:
            self._changed = None
            ev.set()

    def _resume_event(self) -> asyncio.Event:
        if self._running is None:
            self._running = asyncio.Event()
            if not self._paused:
                self._running.set()
        return self._running

    def _sim(self, real_s: float) -> float:
        return real_s / self.time_scale

    async def _sleep_sim(self, sim_s: float) -> None:
        if sim_s > 0:
            await asyncio.sleep(sim_s * self.time_scale)

    # -- scheduler ---------------------------------------------------------------------------

    def _vram_used(self) -> float:
        return sum(r.spec.size_gb for r in self._runners.values() if not r.unloading)

    def _needs_eviction(self, spec: ModelSpec) -> bool:
        live = [r for r in self._runners.values() if not r.unloading]
        if len(live) >= self.profile.max_loaded_models:
            return True
        vram = self.profile.vram_gb
        return vram is not None and self._vram_used() + spec.size_gb > vram + 1e-9

    def _pick_victim(self) -> Optional[_Runner]:
        live = [r for r in self._runners.values() if not r.unloading]
        if not live:
            return None
        idle = [r for r in live if not r.busy()]
        pool = idle or live

        def remaining(r: _Runner) -> float:
            # Real seconds for both: a busy runner's timer stands still at its full keep-alive.
            if r.expires_at is None:
                return r.keep_alive_s * self.time_scale
            return r.expires_at - time.monotonic()

        return min(pool, key=remaining)

    def _unload(self, runner: _Runner) -> None:
        if self._runners.get(runner.spec.name) is runner:
            del self._runners[runner.spec.name]
        if runner.expiry_handle is not None:
            runner.expiry_handle.cancel()
            runner.expiry_handle = None
        self._notify()

    def _is_warm(self, spec: ModelSpec, num_ctx: Optional[int] = None) -> bool:
        runner = self._runners.get(spec.name)
        return (
            runner is not None
            and not runner.unloading
            and (num_ctx is None or runner.num_ctx == num_ctx)
        )

    def _load_ns(self, started: float, warm: bool) -> int:
        """``load_duration``: simulated time spent waiting for and loading the model. For a
        model already loaded it is only this process's own overhead, which is real time and
        is reported as such (scaling it up by ``1/time_scale`` would invent GPU time)."""
        elapsed = time.monotonic() - started
        return int((elapsed if warm else self._sim(elapsed)) * 1e9)

    async def _acquire_runner(self, spec: ModelSpec, num_ctx: int) -> _Runner:
        if self._is_warm(spec, num_ctx):
            return self._runners[spec.name]
        if self._waiting_load >= self.profile.max_queue:
            self._rejected += 1
            raise _HTTPError(
                503, "server busy, please try again.  maximum pending requests exceeded"
            )
        self._waiting_load += 1
        self._notify()
        try:
            if self._load_lock is None:
                self._load_lock = asyncio.Lock()
            async with self._load_lock:
                if self._is_warm(spec, num_ctx):
                    return self._runners[spec.name]
                old = self._runners.get(spec.name)
                if old is not None and not old.unloading:
                    # Another num_ctx: Ollama's needsReload sees changed options and reloads
                    # the model once its requests are done (server/sched.go).
                    old.unloading = True
                    self._notify()
                    await old.idle.wait()
                    self._unload(old)
                while self._needs_eviction(spec):
                    victim = self._pick_victim()
                    if victim is None:
                        break
                    victim.unloading = True
                    self._evictions += 1
                    self._notify()
                    await victim.idle.wait()
                    self._unload(victim)
                self._loading = spec.name
                self._notify()
                try:
                    await self._sleep_sim(spec.cold_load_s / self.faults.slow)
                finally:
                    self._loading = None
                runner = _Runner(spec, self.profile, num_ctx)
                runner.keep_alive_s = self.profile.keep_alive_s
                self._runners[spec.name] = runner
                self._loads += 1
                self._notify()
                return runner
        finally:
            self._waiting_load -= 1
            self._notify()

    async def _take_slot(self, runner: _Runner) -> None:
        if runner.active < runner.slots and not runner.waiters:
            self._enter(runner)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        runner.waiters.append(fut)
        self._notify()
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._leave(runner)  # granted just as we were cancelled: hand it on
            else:
                try:
                    runner.waiters.remove(fut)
                except ValueError:
                    pass
            self._notify()
            raise

    def _enter(self, runner: _Runner) -> None:
        runner.active += 1
        runner.idle.clear()
        runner.expires_at = None
        if runner.expiry_handle is not None:
            runner.expiry_handle.cancel()
            runner.expiry_handle = None
        self._notify()

    def _leave(self, runner: _Runner) -> None:
        runner.active -= 1
        while runner.waiters and runner.active < runner.slots:
            fut = runner.waiters.popleft()
            if not fut.done():
                runner.active += 1
                fut.set_result(None)
        if runner.active == 0 and not runner.waiters:
            runner.idle.set()
            self._arm_expiry(runner)
        self._notify()

    def _arm_expiry(self, runner: _Runner) -> None:
        ka = runner.keep_alive_s
        if runner.unloading:
            return
        if ka == math.inf:
            runner.expires_at = None
            return
        delay = ka * self.time_scale
        runner.expires_at = time.monotonic() + delay
        if delay <= 0:
            self._unload(runner)
            return
        loop = asyncio.get_running_loop()
        runner.expiry_handle = loop.call_later(delay, self._expire, runner)

    def _expire(self, runner: _Runner) -> None:
        runner.expiry_handle = None
        if not runner.busy() and self._runners.get(runner.spec.name) is runner:
            self._unload(runner)

    def _decode_rate(self, spec: ModelSpec) -> float:
        n = max(1, self._decoding)
        return spec.decode_tps * self.profile.speed / self.faults.slow * aggregate_speedup(n) / n

    def _prompt_rate(self, spec: ModelSpec) -> float:
        return spec.prompt_rate * self.profile.speed / self.faults.slow

    def _rate(self, runner: _Runner) -> float:
        """Tokens/s of one decoding request of ``runner``."""
        rate = self._decode_rate(runner.spec)
        if runner.prefilling:
            # Each batch carries a num_batch chunk of prompt next to the decode step.
            rate = 1.0 / (1.0 / rate + _NUM_BATCH / self._prompt_rate(runner.spec))
        return rate

    def _prefill_rate(self, runner: _Runner) -> float:
        """Prompt tokens/s of one request of ``runner`` evaluating its prompt."""
        rate = self._prompt_rate(runner.spec)
        if runner.decoding:
            step = 1.0 / self._decode_rate(runner.spec)
            rate = _NUM_BATCH / (_NUM_BATCH / rate + step)
        return rate / max(1, runner.prefilling)

    async def _prefill(self, runner: _Runner, n: int, credit_s: float = 0.0) -> float:
        """Evaluate ``n`` prompt tokens; return the simulated seconds they took.

        ``credit_s`` real seconds already spent on this prompt (rendering, tokenising) count
        as evaluation time.
        """
        if n <= 0:
            return 0.0
        runner.prefilling += 1
        done = 0.0
        spent = 0.0
        try:
            last = time.monotonic() - credit_s
            while n - done > 1e-9:
                if self._paused:
                    await self._wait_running()
                    last = time.monotonic()
                rate = self._prefill_rate(runner)
                await asyncio.sleep(min(0.02, (n - done) / rate * self.time_scale))
                now = time.monotonic()
                rate = self._prefill_rate(runner)
                step = min(n - done, self._sim(now - last) * rate)
                last = now
                spent += step / rate
                done += step
        finally:
            runner.prefilling -= 1
        return spent

    # -- a generation ----------------------------------------------------------------------

    def _text_rng(self, model: str, prompt: str) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}|{model}|{prompt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    async def _generate(
        self,
        spec: ModelSpec,
        prompt: RenderedPrompt,
        num_predict: Optional[int],
        keep_alive: float,
        started: float,
        stats: Dict[str, Any],
    ) -> AsyncIterator[List[str]]:
        """Yield the tokens due at each tick; fill ``stats`` with Ollama's durations (ns) at the end."""
        warm = self._is_warm(spec, prompt.num_ctx)
        runner = await self._acquire_runner(spec, prompt.num_ctx)
        stats["load_duration"] = self._load_ns(started, warm)
        await self._take_slot(runner)
        epoch = self._epoch
        runner.keep_alive_s = keep_alive
        self._in_flight[spec.name] = self._in_flight.get(spec.name, 0) + 1
        # -- prompt cache (see _kvcache): the slot, and how much of the prompt it holds ----
        admission = runner.cache.admit(prompt.tokens)
        kept: List[Token] = prompt.tokens[: admission.cached]
        generated: List[str] = []
        # ------------------------------------------------------------------------------------
        self._notify()
        decoding = False
        try:
            await self._wait_running()
            # Saving/restoring KV state between RAM and VRAM, before the prompt timer starts.
            await self._sleep_sim(
                admission.copied_bytes / (self.profile.host_to_device_gbps * 1e9) * self.faults.slow
            )
            prompt_s = await self._prefill(runner, admission.evaluate, prompt.overhead_s)
            kept = prompt.tokens
            # Ollama: prompt_eval_count = cache_n + prompt_n; the duration is prompt_ms only.
            stats["prompt_eval_count"] = len(prompt.tokens)
            stats["prompt_eval_duration"] = int(prompt_s * 1e9)
            target = (
                num_predict
                if num_predict is not None and num_predict >= 0
                else spec.default_num_predict
            )
            stats["done_reason"] = (
                "length" if num_predict is not None and num_predict >= 0 else "stop"
            )
            rng = self._text_rng(spec.name, prompt.text)
            self._decoding += 1
            runner.decoding += 1
            decoding = True
            produced = 0
            progress = 0.0
            eval_s = 0.0
            last = time.monotonic()
            tick = max(0.002, min(0.02, 1.0 / max(1.0, self._rate(runner)) * self.time_scale))
            while produced < target:
                if self._paused:
                    await self._wait_running()
                    last = time.monotonic()
                await asyncio.sleep(tick)
                now = time.monotonic()
                rate = self._rate(runner)
                sim_elapsed = self._sim(now - last)
                last = now
                progress += sim_elapsed * rate
                due = min(target, int(progress))
                if due > produced:
                    eval_s += (due - produced) / rate
                    # Every token due this tick, together: one write per tick, not per token.
                    batch = [" " + rng.choice(_WORDS) for _ in range(due - produced)]
                    generated.extend(batch)
                    yield batch
                    produced = due
            stats["eval_count"] = produced
            stats["eval_duration"] = int(eval_s * 1e9)
            self._completed += 1
        finally:
            if epoch == self._epoch:
                if decoding:
                    self._decoding -= 1
                    runner.decoding -= 1
                self._in_flight[spec.name] -= 1
                if keep_alive == 0:
                    runner.keep_alive_s = 0.0
                # The slot keeps prompt + generated tokens; the last sampled token was never
                # evaluated unless generation ended on its own (the end token is not kept).
                answer = tokenize("".join(generated))
                if answer and not (stats.get("done_reason") == "stop" and "eval_count" in stats):
                    answer.pop()
                runner.cache.release(admission.slot, (kept + answer)[: runner.num_ctx])
                self._leave(runner)

    async def _wait_running(self) -> None:
        ev = self._resume_event()
        if not ev.is_set():
            await ev.wait()

    async def _load_only(
        self, spec: ModelSpec, keep_alive: float, started: float, num_ctx: int
    ) -> Dict[str, Any]:
        """Empty prompt: load (or, with keep_alive 0, unload) the model."""
        if keep_alive == 0:
            runner = self._runners.get(spec.name)
            if runner is not None:
                runner.unloading = True
                await runner.idle.wait()
                self._unload(runner)
            return {
                "done_reason": "unload",
                "total_duration": int(self._sim(time.monotonic() - started) * 1e9),
            }
        warm = self._is_warm(spec, num_ctx)
        runner = await self._acquire_runner(spec, num_ctx)
        load_ns = self._load_ns(started, warm)
        runner.keep_alive_s = keep_alive
        if not runner.busy():
            if runner.expiry_handle is not None:
                runner.expiry_handle.cancel()
            self._arm_expiry(runner)
        return {"done_reason": "load", "load_duration": load_ns, "total_duration": load_ns}

    # -- the HTTP API ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if len(self._clients) < 100_000:
            self._clients.add(scope.get("client"))
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handle(scope, receive, send)
        finally:
            if task is not None:
                self._tasks.discard(task)

    @property
    def app(self) -> SimHost:
        return self

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if path.startswith("/_sim/"):
            await self._admin(method, path, receive, send)
            return
        if path.startswith("/v1/"):
            await self._openai(scope, receive, send)
            return
        faults = self.faults
        if faults.hang:
            await _wait_disconnect(receive)
            return
        if path == "/" and method in ("GET", "HEAD"):
            await _send_text(send, 200, "Ollama is running", head=method == "HEAD")
            return
        if faults.status is not None:
            await _send_json(send, faults.status, {"error": _status_message(faults.status)})
            return
        routes = {
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/generate"): self._generate_route,
            ("POST", "/api/chat"): self._chat_route,
            ("POST", "/api/embed"): self._embed_route,
            ("POST", "/api/embeddings"): self._embeddings_route,
        }
        handler = routes.get((method, path))
        if handler is None:
            if any(p == path for (_, p) in routes):
                await _send_text(send, 405, "405 method not allowed")
            else:
                await _send_text(send, 404, "404 page not found")
            return
        try:
            await handler(receive, send)
        except _HTTPError as exc:
            await _send_json(send, exc.status, {"error": exc.message})
        except ClientGone:
            return

    async def _admin(self, method: str, path: str, receive: Receive, send: Send) -> None:
        if path == "/_sim/faults" and method == "POST":
            try:
                raw = await read_body(receive)
                body = parse_json(raw) if raw.strip() else {}
                faults = Faults.from_mapping(body)
            except (BadRequestBody, ValueError, TypeError) as exc:
                await _send_json(send, 400, {"error": str(exc)})
                return
            self.set_faults(faults)
            await _send_json(send, 200, faults.to_dict())
        elif path == "/_sim/faults" and method == "GET":
            await _send_json(send, 200, self.faults.to_dict())
        elif path == "/_sim/state" and method == "GET":
            st = self.state()
            body = {k: getattr(st, k) for k in st.__dataclass_fields__}
            body["queued"] = st.queued
            await _send_json(send, 200, body)
        elif path == "/_sim/requests" and method == "GET":
            await _send_json(
                send,
                200,
                {
                    "requests": [
                        {
                            "route": r.route,
                            "model": r.model,
                            "prompt": r.prompt,
                            "messages": list(r.messages) if r.messages is not None else None,
                            "options": r.options,
                            "received_at": r.received_at,
                        }
                        for r in self._requests
                    ]
                },
            )
        elif path == "/_sim/pause" and method == "POST":
            self.pause()
            await _send_json(send, 200, {"paused": True})
        elif path == "/_sim/resume" and method == "POST":
            self.resume()
            await _send_json(send, 200, {"paused": False})
        elif path == "/_sim/reset" and method == "POST":
            await self.aclose()
            await _send_json(send, 200, {"reset": True})
        else:
            await _send_text(send, 404, "404 page not found")

    async def _version(self, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"version": self.profile.version})

    def _details(self, spec: ModelSpec) -> Dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": spec.family,
            "families": [spec.family],
            "parameter_size": spec.parameter_size,
            "quantization_level": spec.quantization_level,
        }

    async def _tags(self, receive: Receive, send: Send) -> None:
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": m.size_bytes,
                "digest": m.digest,
                "details": self._details(m),
            }
            for m in self.profile.models
        ]
        await _send_json(send, 200, {"models": models})

    async def _ps(self, receive: Receive, send: Send) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        rows = []
        for runner in self._runners.values():
            if runner.unloading:
                continue
            if runner.expires_at is None:
                # Busy (the timer stops while requests run) or kept forever.
                remaining = (
                    runner.keep_alive_s * self.time_scale
                    if runner.keep_alive_s != math.inf
                    else 10 * 365 * 86400 * 100
                )
            else:
                remaining = runner.expires_at - now_mono
            rows.append((remaining, runner))
        rows.sort(key=lambda x: -x[0])
        models = []
        for remaining, runner in rows:
            spec = runner.spec
            expires = datetime.fromtimestamp(
                now_wall + min(remaining, 10 * 365 * 86400 * 100), timezone.utc
            )
            models.append(
                {
                    "name": spec.name,
                    "model": spec.name,
                    "size": spec.size_bytes,
                    "digest": spec.digest,
                    "details": self._details(spec),
                    "expires_at": expires.isoformat().replace("+00:00", "Z"),
                    "size_vram": spec.size_bytes,
                    "context_length": runner.num_ctx,
                }
            )
        await _send_json(send, 200, {"models": models})

    async def _json_body(self, receive: Receive, path: str = "") -> Dict[str, Any]:
        """The body as Ollama's handler for ``path`` decodes it: its 400s (see ``_wire``)."""
        try:
            body = parse_json(await read_body(receive))
            check_request(path, body)
        except BadRequestBody as exc:
            raise _HTTPError(400, str(exc)) from None
        except RequestRejected as exc:
            raise _HTTPError(exc.status, exc.message) from None
        if body is None:  # Go decodes `null` into an empty request
            return {}
        if not isinstance(body, dict):
            raise _HTTPError(400, "invalid request body: expected a JSON object")
        return body

    @staticmethod
    def _check_think(body: Dict[str, Any], spec: ModelSpec) -> None:
        """Thinking asked of a model without the capability: Ollama's 400 (routes.go, v0.33)."""
        think = body.get("think")
        if think not in (None, False) and "thinking" not in spec.capabilities:
            raise _HTTPError(400, f"{json.dumps(body.get('model'))} does not support thinking")

    def _late_errors(self, body: Dict[str, Any]) -> None:
        """What Ollama refuses once the model is scheduled, with a 500 (``_wire.late_errors``)."""
        error = late_errors(body)
        if error is not None:
            raise _HTTPError(500, error)

    def _model_for(self, body: Dict[str, Any], capability: str, verb: str) -> ModelSpec:
        name = body.get("model")
        if not name or not isinstance(name, str):
            raise _HTTPError(400, "model is required")
        spec = self.profile.model(name)
        if spec is None:
            raise _HTTPError(404, f"model '{name}' not found")
        if capability not in spec.capabilities:
            raise _HTTPError(400, f'"{name}" does not support {verb}')
        return spec

    async def _show(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive)
        name = body.get("model") or body.get("name")
        if not name:
            raise _HTTPError(400, "model is required")
        spec = self.profile.model(str(name))
        if spec is None:
            raise _HTTPError(404, f"model '{name}' not found")
        await _send_json(
            send,
            200,
            {
                "license": "",
                "modelfile": f"FROM {spec.name}\n",
                "parameters": 'stop "<|im_end|>"',
                "template": "{{ .Prompt }}",
                "details": self._details(spec),
                "model_info": {
                    "general.architecture": spec.family,
                    "general.parameter_count": 0,
                    f"{spec.family}.context_length": spec.context_length,
                    f"{spec.family}.embedding_length": spec.embedding_length,
                },
                "capabilities": list(spec.capabilities),
                "modified_at": "2026-01-01T00:00:00Z",
            },
        )

    def _record(self, route: str, body: Dict[str, Any]) -> None:
        msgs = body.get("messages")
        self._requests.append(
            RequestRecord(
                route=route,
                model=normalize_model(str(body.get("model", ""))),
                prompt=body.get("prompt") if isinstance(body.get("prompt"), str) else None,
                messages=tuple(dict(m) for m in msgs if isinstance(m, dict))
                if isinstance(msgs, list)
                else None,
                options=dict(body.get("options") or {}),
                received_at=time.time(),
            )
        )
        self._requests_total += 1
        self._notify()

    def _keep_alive(self, body: Dict[str, Any]) -> float:
        try:
            return keep_alive_seconds(body.get("keep_alive"), self.profile.keep_alive_s)
        except RequestRejected as exc:  # checked with the body already; kept for safety
            raise _HTTPError(400, exc.message) from None

    def _random_failure(self) -> None:
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            raise _HTTPError(500, "llama runner process has terminated: simulated failure")

    async def _generate_route(self, receive: Receive, send: Send) -> None:
        t0 = time.monotonic()  # reading, rendering, tokenising: absorbed by the prefill
        body = await self._json_body(receive, "/api/generate")
        spec = self._model_for(body, "completion", "generate")
        self._check_think(body, spec)
        self._record("/api/generate", body)
        self._late_errors(body)
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        num_ctx = self._num_ctx(body, spec)
        text = render_generate(prompt, str(system), raw=body.get("raw") is True)
        rendered = self._fit(body, text, tokenize(text), num_ctx, t0)
        await self._complete(receive, send, body, spec, prompt, rendered, chat=False)

    async def _chat_route(self, receive: Receive, send: Send) -> None:
        t0 = time.monotonic()  # reading, rendering, tokenising: absorbed by the prefill
        body = await self._json_body(receive, "/api/chat")
        spec = self._model_for(body, "completion", "chat")
        self._check_think(body, spec)
        self._record("/api/chat", body)
        self._late_errors(body)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise _HTTPError(400, "messages must be a list of objects")
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        num_ctx = self._num_ctx(body, spec)
        tokens = fit_chat(messages, tools, num_ctx, truncate=body.get("truncate") is not False)
        rendered = self._fit(body, "".join(tokens), tokens, num_ctx, t0)
        await self._complete(
            receive, send, body, spec, "" if not messages else rendered.text, rendered, chat=True
        )

    # -- num_ctx, as Ollama applies it per request -------------------------------------------

    def _num_ctx(self, body: Dict[str, Any], spec: ModelSpec) -> int:
        """The request's context: ``options.num_ctx`` or the host's default; at least 4 and
        at most the model's context length (``server/sched.go`` ``getRunner``,
        ``effectiveContext``)."""
        options = body.get("options")
        value = options.get("num_ctx") if isinstance(options, dict) else None
        if value is None:
            return self.profile.default_num_ctx(spec)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise _HTTPError(400, f"invalid num_ctx {value!r}")
        return min(max(int(value), 4), spec.context_length)

    def _fit(
        self, body: Dict[str, Any], text: str, tokens: List[Token], num_ctx: int, t0: float
    ) -> RenderedPrompt:
        """Cut a prompt longer than its context as Ollama does (``truncate``, the default),
        or refuse it as llama-server does when ``truncate`` is false."""
        options = body.get("options")
        num_keep = options.get("num_keep", _NUM_KEEP) if isinstance(options, dict) else _NUM_KEEP
        if isinstance(num_keep, bool) or not isinstance(num_keep, int):
            raise _HTTPError(400, f"invalid num_keep {num_keep!r}")
        if body.get("truncate") is not False:
            tokens = shift_truncate(tokens, num_ctx, num_keep)
        elif len(tokens) >= num_ctx:
            raise _HTTPError(400, CONTEXT_EXCEEDED)
        return RenderedPrompt(text, tokens, num_ctx, time.monotonic() - t0)

    async def _complete(
        self,
        receive: Receive,
        send: Send,
        body: Dict[str, Any],
        spec: ModelSpec,
        prompt: str,
        rendered: RenderedPrompt,
        *,
        chat: bool,
    ) -> None:
        started = time.monotonic()
        keep_alive = self._keep_alive(body)
        stream = body.get("stream") is not False
        options = body.get("options") or {}
        given = options.get("num_predict")
        num_predict = int(given) if isinstance(given, (int, float)) else None  # checked: a number
        logprobs = body.get("logprobs") is True
        top_logprobs = int(body.get("top_logprobs") or 0)
        model_name = str(body.get("model"))

        def chunk(text: str, done: bool, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
            out: Dict[str, Any] = {"model": model_name, "created_at": _now_rfc3339()}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            if extra:
                out.update(extra)
            return out

        if not prompt:
            await _send_json(
                send,
                200,
                chunk("", True, await self._load_only(spec, keep_alive, started, rendered.num_ctx)),
            )
            return

        self._random_failure()
        stats: Dict[str, Any] = {}
        gen = self._generate(spec, rendered, num_predict, keep_alive, started, stats)

        def token_logprobs(token: str, n: int) -> Dict[str, Any]:
            return {"logprobs": [self._logprob(spec, prompt, n, token, top_logprobs)]}

        if not stream:
            parts: List[str] = []

            async def collect() -> None:
                async for batch in gen:
                    parts.extend(batch)

            await _until_disconnect(receive, collect)
            final = chunk("".join(parts), True, self._final_stats(stats, started))
            if logprobs:  # every token's, as Ollama's handler gathers them
                final["logprobs"] = [
                    self._logprob(spec, prompt, n, token, top_logprobs)
                    for n, token in enumerate(parts)
                ]
            await _send_json(send, 200, final)
            return

        async def lines() -> AsyncIterator[bytes]:
            # One NDJSON line per token, as Ollama sends them; a tick's lines go out in one write.
            n = 0
            async for batch in gen:
                buf: List[bytes] = []
                for token in batch:
                    faults = self.faults
                    if faults.reset_after_chunks is not None and n >= faults.reset_after_chunks:
                        if buf:
                            yield b"".join(buf)
                        raise SimulatedReset(f"{self.name}: connection reset after {n} chunks")
                    if (
                        faults.stream_error_after_chunks is not None
                        and n >= faults.stream_error_after_chunks
                    ):
                        error = "an error was encountered while running the model: simulated"
                        buf.append(_dumps({"error": error}).encode() + b"\n")
                        yield b"".join(buf)
                        return
                    extra = token_logprobs(token, n) if logprobs else None
                    buf.append(_dumps(chunk(token, False, extra)).encode() + b"\n")
                    n += 1
                if buf:
                    yield b"".join(buf)
            yield _dumps(chunk("", True, self._final_stats(stats, started))).encode() + b"\n"

        await _stream_ndjson(send, receive, lines())

    def _logprob(
        self, spec: ModelSpec, prompt: str, n: int, token: str, top: int
    ) -> Dict[str, Any]:
        """The ``n``-th token's entry of ``logprobs``, in Ollama's shape (``api.Logprob``,
        built by ``server/logprob.go``): the token, its log probability and UTF-8 bytes, and
        with ``top_logprobs`` that many likeliest tokens, the chosen one first. Derived from
        the seed, the model, the prompt and the position only, so every run gives the same."""
        rng = self._text_rng(spec.name, f"{prompt}|logprob|{n}")
        chosen = -round(rng.uniform(0.001, 1.5), 6)
        entry: Dict[str, Any] = {
            "token": token,
            "logprob": chosen,
            "bytes": list(token.encode()),
        }
        if top > 0:
            others = [
                " " + w for w in rng.sample(_WORDS, min(top, len(_WORDS))) if " " + w != token
            ]
            alternatives = [(token, chosen)]
            level = chosen
            for word in others[: top - 1]:
                level = round(level - rng.uniform(0.05, 2.0), 6)
                alternatives.append((word, level))
            entry["top_logprobs"] = [
                {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives
            ]
        return entry

    def _final_stats(self, stats: Dict[str, Any], started: float) -> Dict[str, Any]:
        return {
            "done_reason": stats.get("done_reason", "stop"),
            "total_duration": int(self._sim(time.monotonic() - started) * 1e9),
            "load_duration": stats.get("load_duration", 0),
            "prompt_eval_count": stats.get("prompt_eval_count", 0),
            "prompt_eval_duration": stats.get("prompt_eval_duration", 0),
            "eval_count": stats.get("eval_count", 0),
            "eval_duration": stats.get("eval_duration", 0),
        }

    def _vector(self, spec: ModelSpec, text: str) -> List[float]:
        rng = self._text_rng(spec.name, text)
        v = [rng.gauss(0.0, 1.0) for _ in range(spec.embedding_length)]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    async def _embed_common(
        self, body: Dict[str, Any], texts: List[str], route: str
    ) -> Tuple[List[List[float]], Dict[str, Any]]:
        spec = self._model_for(body, "embedding", "embeddings")
        self._record(route, body)
        self._late_errors({"options": body.get("options")})
        self._random_failure()
        started = time.monotonic()
        keep_alive = self._keep_alive(body)
        num_ctx = self._num_ctx(body, spec)
        warm = self._is_warm(spec, num_ctx)
        runner = await self._acquire_runner(spec, num_ctx)
        load_ns = self._load_ns(started, warm)
        await self._take_slot(runner)
        epoch = self._epoch
        runner.keep_alive_s = keep_alive
        self._in_flight[spec.name] = self._in_flight.get(spec.name, 0) + 1
        self._notify()
        try:
            tokens = sum(max(1, len(tokenize(t))) for t in texts)
            await self._wait_running()
            await self._sleep_sim(
                tokens / (spec.prompt_rate * self.profile.speed / self.faults.slow)
            )
            vectors = [self._vector(spec, t) for t in texts]
            self._completed += 1
        finally:
            if epoch == self._epoch:
                self._in_flight[spec.name] -= 1
                self._leave(runner)
        return vectors, {
            "total_duration": int(self._sim(time.monotonic() - started) * 1e9),
            "load_duration": load_ns,
            "prompt_eval_count": tokens,
        }

    async def _embed_route(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive, "/api/embed")
        raw = body.get("input")
        # Checked by _json_body: a string or a list of strings, or absent.
        texts = ([raw] if raw else []) if isinstance(raw, str) else list(raw or [])
        if not texts:  # Ollama answers an empty input with no embeddings (EmbedHandler)
            self._model_for(body, "embedding", "embeddings")
            await _send_json(send, 200, {"model": body.get("model"), "embeddings": []})
            return
        vectors, stats = await _until_disconnect(
            receive, lambda: self._embed_common(body, texts, "/api/embed")
        )
        await _send_json(send, 200, {"model": body.get("model"), "embeddings": vectors, **stats})

    async def _embeddings_route(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive, "/api/embeddings")
        prompt = str(body.get("prompt") or "")
        vectors, _ = await _until_disconnect(
            receive, lambda: self._embed_common(body, [prompt], "/api/embeddings")
        )
        await _send_json(send, 200, {"embedding": vectors[0]})


def _status_message(status: int) -> str:
    if status == 503:
        return "server busy, please try again.  maximum pending requests exceeded"
    if status >= 500:
        return "llama runner process has terminated: exit status 2"
    return "simulated error"


# -- tiny ASGI helpers ---------------------------------------------------------------------------


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _until_disconnect(receive: Receive, work: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``work``, cancelling it when the client goes away (so its slot frees at once).

    ``work`` runs as a child task and its errors are caught there, so a 404 or 503 comes
    out as itself rather than wrapped in the task group's exception group (which would
    turn it into a 500 with no body).
    """
    results: List[_T] = []
    errors: List[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await _wait_disconnect(receive)
            tg.cancel_scope.cancel()

        async def run() -> None:
            try:
                results.append(await work())
            except Exception as exc:
                errors.append(exc)
            finally:
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(run)
    if errors:
        raise errors[0]
    if not results:
        raise ClientGone
    return results[0]


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = _dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _send_text(send: Send, status: int, text: str, *, head: bool = False) -> None:
    data = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else data})


async def _stream_ndjson(send: Send, receive: Receive, lines: AsyncIterator[bytes]) -> None:
    """Stream NDJSON; headers go out with the first line, as Ollama's handler does.

    Errors before the first line become a proper status; after it, the stream just ends
    (or carries an ``{"error": ...}`` line). A client that goes away cancels the stream.
    """
    started = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await _wait_disconnect(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            async for line in lines:
                if not started:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [(b"content-type", b"application/x-ndjson")],
                        }
                    )
                    started = True
                await send({"type": "http.response.body", "body": line, "more_body": True})
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except _HTTPError as exc:
            if started:
                data = _dumps({"error": exc.message}).encode() + b"\n"
                await send({"type": "http.response.body", "body": data, "more_body": False})
            else:
                await _send_json(send, exc.status, {"error": exc.message})
        finally:
            tg.cancel_scope.cancel()
