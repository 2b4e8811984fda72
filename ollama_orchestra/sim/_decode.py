"""A simulated host's timing: prompt evaluation and decoding, driven by events, not a tick.

A request's decode speed is the model's single-request speed times the host's ``speed``,
times ``aggregate_speedup(n) / n`` with ``n`` requests decoding at once on the host. As in
llama-server's batches (``update_slots``: each decoding slot adds its one token, then prompt
tokens fill the batch up to ``num_batch``, 512 as Ollama sets it), a prompt being evaluated
stretches every decode step of the same model by a 512-token chunk's time, and decoding
slots slow the prompt a little in turn.

Prompts waiting at once are evaluated one at a time, in slot order: ``update_slots`` walks
the slots from the first and adds each one's pending prompt tokens until the batch is full
(``for (auto & slot : slots)`` ... ``if (batch.n_tokens >= n_batch) break;``, llama.cpp
``tools/server/server-context.cpp`` as stored at commit fb40266; the same walk as in the
``update_slots`` of older ``server.cpp`` versions). So
the pending prompt in the lowest slot takes the whole chunk and the others wait (a new
prompt in a lower slot takes over). A prompt's timer starts when the walk first reaches its
slot (``t_start_process_prompt``), so ``prompt_eval_duration`` leaves out the wait before
its first chunk; the simulator also leaves out a wait after it (a lower slot's new prompt
took over), which llama-server counts: the requests' real arrival order, which decides
it, is not the simulated one at fine grain. The few tokens a finishing prompt
leaves of its last chunk, which go to the next slot's prompt, are not modelled apart: the
runner's prompt throughput is the same.

Each prompt evaluation or decode is a :class:`Job` with its progress (tokens), the moment it
was last brought up to date, and its current rate. Rates change only when the set of jobs
does (a request starts or stops decoding, a prompt starts or finishes), or on pause, resume
or a new ``slow`` fault; then :meth:`Decoder._settle` brings every job's progress up to now
at the old rates, the change is made, and :meth:`Decoder._rerate` gives every job its new
rate and wakes them all. Between changes a job sleeps until its next event is due: its next
token (no sooner than ``MIN_WRITE_GAP_S`` after its last write, so fast streams go out a few
tokens per write), or the end of its prompt. No timer polls.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, AsyncGenerator, Dict, List, Optional, Set

from ._kvcache import Admission
from ._prompt import RenderedPrompt, Token, tokenize
from ._scheduler import Runner, Scheduler
from ._spec import Faults, ModelSpec, aggregate_speedup
from ._words import WORDS, text_rng

__all__ = ["MIN_WRITE_GAP_S", "NUM_BATCH", "Decoder", "Job"]

#: ``num_batch``: Ollama's default, passed to llama-server as ``-b``/``-ub``.
NUM_BATCH = 512
#: Real seconds a decoding request waits at least after one write of tokens before the next:
#: the tokens due meanwhile go out together (one write, not one per token). 4 ms gives as many
#: writes as the 2 ms polling tick this replaced did (measured), and no more CPU.
MIN_WRITE_GAP_S = 0.004


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


class Job:
    """One prompt evaluation or decode: ``goal`` tokens, ``done`` so far at ``rate`` tokens
    per simulated second since ``last`` (real monotonic time); ``spent`` simulated seconds;
    ``slot`` the runner's slot it runs in (prompts are evaluated in slot order)."""

    __slots__ = ("decode", "done", "goal", "last", "rate", "runner", "slot", "spent")

    def __init__(
        self, runner: Runner, goal: float, *, decode: bool, last: float, slot: int = 0
    ) -> None:
        self.runner = runner
        self.goal = goal
        self.decode = decode
        self.slot = slot
        self.done = 0.0
        self.spent = 0.0
        self.last = last
        self.rate = 0.0

    def advance(self, now: float, time_scale: float) -> None:
        """Bring ``done`` up to ``now`` at the current rate (capped at the goal)."""
        if now > self.last and self.rate > 0:
            step = min(self.goal - self.done, (now - self.last) / time_scale * self.rate)
            if step > 0:
                self.done += step
                self.spent += step / self.rate
        self.last = max(self.last, now)

    def delay(self, target: float, time_scale: float) -> float:
        """Real seconds from ``last`` until ``done`` reaches ``target`` at the current rate."""
        if self.rate <= 0:
            return math.inf
        return max(0.0, (target - self.done) / self.rate * time_scale)


class Decoder(Scheduler):
    """Prompt evaluation and decoding of a host's requests (see the module)."""

    def reset(self) -> None:
        self._jobs: Set[Job] = set()
        self._decoding = 0
        self._sleepers: Set[asyncio.Future[None]] = getattr(self, "_sleepers", set())
        super().reset()
        self._rerate()

    def set_faults(self, faults: Faults) -> None:
        self._settle()
        super().set_faults(faults)
        self._rerate()

    def pause(self) -> None:
        self._settle()
        super().pause()
        self._rerate()

    def resume(self) -> None:
        self._settle()
        super().resume()
        self._rerate()

    # -- rates ---------------------------------------------------------------------------

    def _decode_rate(self, spec: ModelSpec) -> float:
        n = max(1, self._decoding)
        return spec.decode_tps * self.profile.speed / self.faults.slow * aggregate_speedup(n) / n

    def _prompt_rate(self, spec: ModelSpec) -> float:
        return spec.prompt_rate * self.profile.speed / self.faults.slow

    def _rate(self, runner: Runner) -> float:
        """Tokens/s of one decoding request of ``runner``."""
        rate = self._decode_rate(runner.spec)
        if runner.prefilling:
            # Each batch carries a num_batch chunk of prompt next to the decode step.
            rate = 1.0 / (1.0 / rate + NUM_BATCH / self._prompt_rate(runner.spec))
        return rate

    def _prefill_rate(self, runner: Runner) -> float:
        """Prompt tokens/s of the request of ``runner`` whose prompt is being evaluated."""
        rate = self._prompt_rate(runner.spec)
        if runner.decoding:
            step = 1.0 / self._decode_rate(runner.spec)
            rate = NUM_BATCH / (NUM_BATCH / rate + step)
        return rate

    # -- events --------------------------------------------------------------------------

    def _settle(self) -> None:
        """Bring every job up to now at the rates in force until now (before a change)."""
        now = time.monotonic()
        for job in self._jobs:
            job.advance(now, self.time_scale)

    def _rerate(self) -> None:
        """Give every job its rate after a change, and wake them to recompute their waits."""
        paused = self._paused
        # Each runner's prompt in its lowest slot is the one evaluated (see the module).
        first: Dict[Runner, Job] = {}
        for job in self._jobs:
            if not job.decode:
                held = first.get(job.runner)
                if held is None or job.slot < held.slot:
                    first[job.runner] = job
        for job in self._jobs:
            if paused:
                job.rate = 0.0
            elif job.decode:
                job.rate = self._rate(job.runner)
            elif first[job.runner] is job:
                job.rate = self._prefill_rate(job.runner)
            else:
                job.rate = 0.0
        sleepers, self._sleepers = self._sleepers, set()
        for woken in sleepers:
            _wake(woken)

    def _start(self, job: Job) -> None:
        self._settle()
        if job.decode:
            self._decoding += 1
            job.runner.decoding += 1
        else:
            job.runner.prefilling += 1
        self._jobs.add(job)
        self._rerate()

    def _stop(self, job: Job) -> None:
        if job not in self._jobs:
            return  # the host was reset meanwhile: its counts started afresh
        self._settle()
        self._jobs.discard(job)
        if job.decode:
            self._decoding -= 1
            job.runner.decoding -= 1
        else:
            job.runner.prefilling -= 1
        self._rerate()

    async def _until(self, job: Job, delay: float) -> None:
        """Sleep ``delay`` real seconds, or less if the jobs' rates change; then bring
        ``job`` up to now. (A future and a timer, as ``asyncio.sleep`` is made: a cancel
        scope per token would cost more CPU than the tick this replaces.)"""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        self._sleepers.add(woken)
        timer = None if delay == math.inf else loop.call_later(delay, _wake, woken)
        try:
            await woken
        finally:
            self._sleepers.discard(woken)
            if timer is not None:
                timer.cancel()
        job.advance(time.monotonic(), self.time_scale)

    async def _prefill(self, runner: Runner, n: int, slot: int, credit_s: float = 0.0) -> float:
        """Evaluate ``n`` prompt tokens in ``slot``; return the simulated seconds they took
        (only while it was evaluated, not while lower slots' prompts went first).

        ``credit_s`` real seconds already spent on this prompt (rendering, tokenising) count
        as evaluation time.
        """
        if n <= 0:
            return 0.0
        job = Job(runner, float(n), decode=False, last=time.monotonic() - credit_s, slot=slot)
        self._start(job)
        try:
            job.advance(time.monotonic(), self.time_scale)
            while n - job.done > 1e-9:
                await self._until(job, job.delay(n, self.time_scale))
        finally:
            self._stop(job)
        return job.spent

    # -- a generation ----------------------------------------------------------------------

    async def _generate(
        self,
        spec: ModelSpec,
        prompt: RenderedPrompt,
        num_predict: Optional[int],
        keep_alive: float,
        started: float,
        stats: Dict[str, Any],
    ) -> AsyncGenerator[List[str], None]:
        """Yield the tokens due at each write; fill ``stats`` with Ollama's durations (ns)."""
        warm = self._is_warm(spec, prompt.num_ctx)
        runner = await self._acquire_runner(spec, prompt.num_ctx)
        stats["load_duration"] = self._load_ns(started, warm)
        await self._take_slot(runner)
        epoch = self._epoch
        runner.keep_alive_s = keep_alive
        self._in_flight[spec.name] = self._in_flight.get(spec.name, 0) + 1
        # -- prompt cache (see _kvcache): the slot, and how much of the prompt it holds ----
        admission: Admission = runner.cache.admit(prompt.tokens)
        kept: List[Token] = prompt.tokens[: admission.cached]
        generated: List[str] = []
        # ------------------------------------------------------------------------------------
        self._notify()
        job: Optional[Job] = None
        try:
            await self._wait_running()
            # Saving/restoring KV state between RAM and VRAM, before the prompt timer starts.
            await self._sleep_sim(
                admission.copied_bytes / (self.profile.host_to_device_gbps * 1e9) * self.faults.slow
            )
            prompt_s = await self._prefill(
                runner, admission.evaluate, admission.slot, prompt.overhead_s
            )
            kept = prompt.tokens
            # Ollama: prompt_eval_count = cache_n + prompt_n; the duration is prompt_ms only.
            stats["prompt_eval_count"] = len(prompt.tokens)
            self._prompt_tokens += len(prompt.tokens)
            self._cached_tokens += admission.cached
            stats["prompt_eval_duration"] = int(prompt_s * 1e9)
            target = (
                num_predict
                if num_predict is not None and num_predict >= 0
                else spec.default_num_predict
            )
            stats["done_reason"] = (
                "length" if num_predict is not None and num_predict >= 0 else "stop"
            )
            rng = text_rng(self.seed, spec.name, prompt.text)
            produced = 0
            job = Job(runner, float(target), decode=True, last=time.monotonic())
            self._start(job)
            written = -math.inf  # the first token goes out as soon as it is due
            while produced < target:
                # The next token's deadline (from now: the last write may have taken a
                # while), batched with those due within the write gap.
                now = time.monotonic()
                job.advance(now, self.time_scale)
                delay = max(
                    job.delay(produced + 1, self.time_scale), written + MIN_WRITE_GAP_S - now
                )
                if delay > 0:
                    await self._until(job, delay)
                due = min(target, int(job.done + 1e-6))
                if due > produced:
                    # Every token due now, together: one write, not one per token.
                    batch = [" " + rng.choice(WORDS) for _ in range(due - produced)]
                    generated.extend(batch)
                    yield batch
                    produced = due
                    written = time.monotonic()  # the gap runs from the write's end
            stats["eval_count"] = produced
            stats["eval_duration"] = int(job.spent * 1e9)
            self._completed += 1
        finally:
            if job is not None:
                self._stop(job)
            if epoch == self._epoch:
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
