"""A simulated host's scheduler, as Ollama's (``server/sched.go``): runners, slots, loading,
eviction and keep-alive, plus the controls a test drives it with.

A runner per loaded model has ``num_parallel`` slots; requests for a loaded model wait on its
slots (FIFO, unbounded); requests that need a load wait for the one load at a time, at most
``max_queue`` of them (then 503); eviction picks an idle runner first, else the one whose
keep-alive ends soonest, and waits for its requests. Every real wait is the simulated time
times ``time_scale``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set

from ._asgi import HTTPError
from ._errors import SimConfigError
from ._kvcache import PromptCache
from ._records import RequestRecord, SimState
from ._spec import Faults, HostProfile, ModelSpec

__all__ = ["Runner", "Scheduler"]


class Runner:
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


class Scheduler:
    """Runners, slots, loads and evictions of one host, and its controls (see the module)."""

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
        #: The request tasks :meth:`aclose` cancelled (the host stopped under them).
        self._stopped: Set[asyncio.Task[Any]] = set()
        self.reset()

    # -- controls ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Fresh scheduler state, like a rebooted host."""
        # Requests of the old "boot" that are still unwinding must not touch the new state.
        self._epoch = getattr(self, "_epoch", 0) + 1
        for r in getattr(self, "_runners", {}).values():
            if r.expiry_handle is not None:
                r.expiry_handle.cancel()
        self._runners: Dict[str, Runner] = {}
        self._load_lock: Optional[asyncio.Lock] = None
        self._loading: Optional[str] = None
        self._waiting_load = 0
        self._in_flight: Dict[str, int] = {}
        self._requests_total = 0
        self._completed = 0
        # Prompt tokens of the requests evaluated, and of those the ones the caches held.
        self._prompt_tokens = 0
        self._cached_tokens = 0
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
            prompt_tokens=self._prompt_tokens,
            cached_tokens=self._cached_tokens,
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
            self._stopped.add(task)
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

    def _vram_used(self) -> float:
        return sum(r.spec.size_gb for r in self._runners.values() if not r.unloading)

    def _needs_eviction(self, spec: ModelSpec) -> bool:
        live = [r for r in self._runners.values() if not r.unloading]
        if len(live) >= self.profile.max_loaded_models:
            return True
        vram = self.profile.vram_gb
        return vram is not None and self._vram_used() + spec.size_gb > vram + 1e-9

    def _pick_victim(self) -> Optional[Runner]:
        live = [r for r in self._runners.values() if not r.unloading]
        if not live:
            return None
        idle = [r for r in live if not r.busy()]
        pool = idle or live

        def remaining(r: Runner) -> float:
            # Real seconds for both: a busy runner's timer stands still at its full keep-alive.
            if r.expires_at is None:
                return r.keep_alive_s * self.time_scale
            return r.expires_at - time.monotonic()

        return min(pool, key=remaining)

    def _unload(self, runner: Runner) -> None:
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

    async def _acquire_runner(self, spec: ModelSpec, num_ctx: int) -> Runner:
        if self._is_warm(spec, num_ctx):
            return self._runners[spec.name]
        if self._waiting_load >= self.profile.max_queue:
            self._rejected += 1
            raise HTTPError(
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
                runner = Runner(spec, self.profile, num_ctx)
                runner.keep_alive_s = self.profile.keep_alive_s
                self._runners[spec.name] = runner
                self._loads += 1
                self._notify()
                return runner
        finally:
            self._waiting_load -= 1
            self._notify()

    async def _take_slot(self, runner: Runner) -> None:
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

    def _enter(self, runner: Runner) -> None:
        runner.active += 1
        runner.idle.clear()
        runner.expires_at = None
        if runner.expiry_handle is not None:
            runner.expiry_handle.cancel()
            runner.expiry_handle = None
        self._notify()

    def _leave(self, runner: Runner) -> None:
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

    def _arm_expiry(self, runner: Runner) -> None:
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

    def _expire(self, runner: Runner) -> None:
        runner.expiry_handle = None
        if not runner.busy() and self._runners.get(runner.spec.name) is runner:
            self._unload(runner)

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
