"""Failover figures: a host killed mid-run, and a fleet where every host errs at random.

Run from the repo root: ``python -m benchmarks.bench_failover [--quick]``.

1. Kill: two simulated hosts (subprocesses), 200 requests in flight or queued; one host is
   killed (SIGKILL) mid-run. Reports tasks lost (goal 0), answers duplicated (goal 0), and the
   time from the kill to each rerouted request's success (p50/p95/max; goal: p95 < 100 ms),
   measured in real time on short answers so that the figure is the failover, not the work.
2. Chaos: every host fails 10% of requests at random; 1,000 requests with 3 attempts each.
   Reports the success rate (goal >= 99.9%).
3. Mid-answer: 50 long streams (20 with ``--quick``) on two hosts; one host is killed once
   every stream has yielded a few chunks. For the streams cut mid-answer, side by side for
   ``RetryPolicy(mid_stream="continue")`` (the default), ``"raise"`` and, when installed,
   LiteLLM's ``Router`` (retries and a fallback group; as it comes, which raises the stream's
   error, as its trackers' issues #41127 and #27967 say, and with its opt-in
   ``enable_mid_stream_fallback_continuation`` where its version has it): the share that
   completed (a final chunk, no exception reaching the caller; goal 100% with continue), the
   time from the last chunk before the break to the next one (p50/p95; goal p95 < 1 s plus
   the new host's prefill), and the answer tokens salvaged (not generated again).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import sys
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import anyio

from ollama_orchestra import (
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    RequestError,
    RetryPolicy,
    Server,
)
from ollama_orchestra.sim import Faults, HostProfile, ModelSpec, SimFleet

from .common import write_json
from .compare.contenders import hosts_of, litellm_deployments, litellm_router

MODEL = "fast:latest"


def profiles(n: int, *, slots: int = 4, decode_tps: float = 2000.0) -> List[HostProfile]:
    model = ModelSpec(MODEL, size_gb=1, decode_tps=decode_tps, load_s=0.01, default_num_predict=4)
    return [HostProfile(f"h{i + 1}", (model,), num_parallel=slots) for i in range(n)]


#: Attempts the retry policy of :func:`config` gives a request (the chaos run's budget).
ATTEMPTS = 3


def config(fleet: SimFleet, **kw: Any) -> OrchestraConfig:
    servers = tuple(
        Server(s.name, s.url, max_concurrency=s.profile.num_parallel) for s in fleet.servers
    )
    return OrchestraConfig(
        servers=servers,
        strategy="least_loaded",
        health=HealthPolicy(interval_s=1.0, down_interval_s=0.1),
        retry=RetryPolicy(attempts=ATTEMPTS, backoff_base_s=0.01, backoff_max_s=0.1),
        **kw,
    )


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def kill_run(requests: int) -> Dict[str, Any]:
    async with SimFleet(profiles(2), time_scale=0.05, mode="subprocess") as fleet, Orchestra(
        config(fleet)
    ) as orch:
        for _ in range(4):  # warm both hosts and the connection pools
            await orch.generate(MODEL, "warm")
        done: Dict[int, Tuple[str, int, float]] = {}
        lost: List[str] = []
        killed_at: List[float] = []
        victim = fleet.servers[0]
        quarter = anyio.Event()

        async def one(i: int) -> None:
            try:
                r = await orch.generate(MODEL, f"req {i}", options={"num_predict": 8})
            except RequestError as exc:
                lost.append(f"{i}: {exc}")
                return
            if i in done:
                lost.append(f"{i}: answered twice")
            done[i] = (r.server, r.attempts, time.perf_counter())
            if len(done) >= requests // 4:
                quarter.set()

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(one, i)
            await quarter.wait()
            killed_at.append(time.perf_counter())
            await victim.kill()
        kill = killed_at[0]
        rerouted = [
            t - kill for (server, attempts, t) in done.values() if attempts > 1 and t >= kill
        ]
        after_kill = [t - kill for (server, attempts, t) in done.values() if t >= kill]
        m = orch.metrics()
    return {
        "requests": requests,
        "completed": len(done),
        "lost": len(lost),
        "lost_detail": lost[:5],
        "rerouted": len(rerouted),
        "reroute_p50_ms": 1000 * pct(rerouted, 0.5),
        "reroute_p95_ms": 1000 * pct(rerouted, 0.95),
        "reroute_max_ms": 1000 * max(rerouted, default=0.0),
        "orchestra_failover_p95_ms": 1000 * m.failover_p95_s,
        "completed_after_kill": len(after_kill),
        "success_rate": len(done) / requests,
    }


async def refused_run(requests: int) -> Dict[str, Any]:
    """A host dies between probes: requests routed to it are refused and go elsewhere.

    Failover time of a request = its latency minus the median latency of requests that went
    straight to the surviving host: what the refused attempt and the reroute cost it.
    """
    async with SimFleet(profiles(2), time_scale=0.05, mode="subprocess") as fleet:
        servers = tuple(
            Server(s.name, s.url, max_concurrency=s.profile.num_parallel) for s in fleet.servers
        )
        cfg = OrchestraConfig(
            servers=servers,
            strategy="round_robin",
            retry=RetryPolicy(attempts=3, backoff_base_s=0.01),
            health=HealthPolicy(interval_s=3600, down_interval_s=3600),  # no probe will help
        )
        costs: List[float] = []
        direct: List[float] = []
        for _ in range(requests // 4):
            # Each round: a fresh orchestra that still believes h1 is up, then h1 dies.
            async with Orchestra(cfg) as orch:
                await fleet.servers[0].restart()
                await orch.refresh()
                await fleet.servers[0].kill()
                for i in range(4):
                    t0 = time.perf_counter()
                    r = await orch.generate(MODEL, f"refused {i}", options={"num_predict": 4})
                    (costs if r.attempts > 1 else direct).append(time.perf_counter() - t0)
        base = sorted(direct)[len(direct) // 2] if direct else 0.0
        extra = [max(0.0, c - base) for c in costs]
    return {
        "rerouted": len(costs),
        "direct": len(direct),
        "failover_p50_ms": 1000 * pct(extra, 0.5),
        "failover_p95_ms": 1000 * pct(extra, 0.95),
        "failover_max_ms": 1000 * max(extra, default=0.0),
    }


def allowed_failures(
    requests: int, error_rate: float, attempts: int, quantile: float = 0.99
) -> int:
    """The most requests that may fail when each of ``attempts`` independent attempts fails with
    ``error_rate``: the ``quantile`` of Binomial(requests, error_rate ** attempts).

    The retry budget itself loses ``requests * error_rate ** attempts`` on average (1 in 1,000
    at 10% and 3 attempts): a goal of exactly that rate would fail half of all correct runs. A
    failover that wastes attempts (a retry to the host that just failed it is no worse here: the
    errors are random) or gives up early loses more, beyond this bound.
    """
    p = error_rate**attempts
    k, term = 0, (1.0 - p) ** requests
    cdf = term
    while cdf < quantile and k < requests:
        term *= (requests - k) / (k + 1) * p / (1.0 - p)
        k += 1
        cdf += term
    return k


async def chaos_run(requests: int, error_rate: float) -> Dict[str, Any]:
    async with SimFleet(profiles(2), time_scale=0.05, mode="subprocess", faults=None) as fleet:
        for s in fleet.servers:
            await s.set_faults(Faults(error_rate=error_rate))
        # The breaker is for broken hosts; at a 10% random error rate no host is broken.
        async with Orchestra(config(fleet)) as orch:
            ok = 0
            failed: List[str] = []
            limiter = anyio.CapacityLimiter(32)

            async def one(i: int) -> None:
                nonlocal ok
                async with limiter:
                    try:
                        await orch.generate(MODEL, f"chaos {i}", options={"num_predict": 2})
                        ok += 1
                    except RequestError as exc:
                        failed.append(str(exc)[:120])

            async with anyio.create_task_group() as tg:
                for i in range(requests):
                    tg.start_soon(one, i)
            m = orch.metrics()
    return {
        "requests": requests,
        "error_rate": error_rate,
        "succeeded": ok,
        "success_rate": ok / requests,
        "attempts": ATTEMPTS,
        "expected_rate": 1.0 - error_rate**ATTEMPTS,
        "allowed_failures": allowed_failures(requests, error_rate, ATTEMPTS),
        "failed_examples": failed[:3],
        "failovers": m.failovers,
        "breaker_trips": m.breaker_trips,
    }


#: One contender's stream ``i`` of the mid-answer scenario: per chunk, the name of the host that
#: sent it and whether it ends a complete answer. An exception is what reached the caller.
StreamFn = Callable[[int], AsyncIterator[Tuple[str, bool]]]

#: The answer length of every stream of the mid-answer scenario.
LONG_TOKENS = 200
#: How much slower the killed host decodes (2,000 tok/s / 4,000 at time scale 0.05: 10 tok/s
#: in real time, an answer in 20 s).
VICTIM_SLOW = 4000.0


def _prompt(i: int) -> List[Dict[str, str]]:
    return [{"role": "user", "content": f"long {i}"}]


class CutContender:
    """One way of running the mid-answer scenario's streams: ``async with c.open(fleet) as
    stream``; :attr:`extra` holds what the contender reports beyond the common figures."""

    label = "?"
    contender = "?"

    def __init__(self) -> None:
        self.extra: Dict[str, Any] = {}

    def open(self, fleet: SimFleet) -> contextlib.AbstractAsyncContextManager[StreamFn]:
        raise NotImplementedError


class OrchestraStreams(CutContender):
    """``Orchestra.chat_stream`` with ``RetryPolicy(mid_stream=...)``."""

    contender = "orchestra"

    def __init__(self, mid_stream: str) -> None:
        super().__init__()
        self.label = self.mid_stream = mid_stream

    @contextlib.asynccontextmanager
    async def open(self, fleet: SimFleet) -> AsyncIterator[StreamFn]:
        retry = RetryPolicy(
            attempts=3, backoff_base_s=0.01, backoff_max_s=0.1, mid_stream=self.mid_stream
        )
        async with Orchestra(config(fleet)) as orch:

            async def stream(i: int) -> AsyncIterator[Tuple[str, bool]]:
                async for chunk in orch.chat_stream(
                    MODEL, _prompt(i), options={"num_predict": LONG_TOKENS}, retry=retry
                ):
                    yield chunk.server, chunk.done

            yield stream
            m = orch.metrics()
            self.extra = {
                "orchestra_tokens_salvaged": m.tokens_salvaged,
                "orchestra_continuation_p95_ms": 1000 * m.continuation_p95_s,
            }


class LiteLLMStreams(CutContender):
    """LiteLLM's ``Router`` set up for failover: every host in one model group
    (``simple-shuffle``, its ``ollama_chat/`` provider), ``num_retries=2`` and a fallback group
    with every host again (a list of one group per host, the dead one first, cost seconds of
    retries against it before the live one). Deployments are declared
    ``supports_assistant_prefill`` (Ollama continues a final assistant message of
    ``/api/chat``). With ``continuation``, ``enable_mid_stream_fallback_continuation=True``
    (an opt-in of the Router, in 1.110.2 as measured here, absent from older versions: a
    stream that broke after text is continued on a fallback by assistant prefill); without
    it, LiteLLM's default, the stream's error reaches the caller."""

    contender = "litellm"

    def __init__(self, continuation: bool) -> None:
        super().__init__()
        self.continuation = continuation
        self.label = "litellm+cont" if continuation else "litellm"

    @staticmethod
    def supports_continuation() -> bool:
        """Whether the installed LiteLLM's ``Router`` has the continuation option."""
        router_cls = litellm_router()
        return router_cls is not None and (
            "enable_mid_stream_fallback_continuation"
            in inspect.signature(router_cls.__init__).parameters
        )

    @contextlib.asynccontextmanager
    async def open(self, fleet: SimFleet) -> AsyncIterator[StreamFn]:
        router_cls = litellm_router()
        assert router_cls is not None
        hosts = hosts_of(fleet)
        by_netloc = {urlsplit(h.url).netloc: h.name for h in hosts}
        info = {"supports_assistant_prefill": True}
        backup = f"{MODEL}-fallback"
        model_list = litellm_deployments(hosts, [MODEL], provider="ollama_chat", model_info=info)
        model_list += litellm_deployments(
            hosts, [MODEL], provider="ollama_chat", group=backup, model_info=info
        )
        kw: Dict[str, Any] = {}
        if self.continuation:
            kw["enable_mid_stream_fallback_continuation"] = True
        router = router_cls(
            model_list=model_list,
            routing_strategy="simple-shuffle",
            num_retries=2,
            retry_after=0,
            fallbacks=[{MODEL: [backup]}],
            timeout=60,
            **kw,
        )

        def host_of(chunk: Any, response: Any) -> str:
            # The chunk's own hidden params name the deployment that sent it (a fallback's
            # chunks get the fallback's); the stream's are the fallback's once one took over.
            for source in (chunk, response):
                base = str((getattr(source, "_hidden_params", None) or {}).get("api_base") or "")
                if base:
                    return by_netloc.get(urlsplit(base).netloc, base)
            return "?"

        async def stream(i: int) -> AsyncIterator[Tuple[str, bool]]:
            response = await router.acompletion(
                model=MODEL, messages=_prompt(i), max_tokens=LONG_TOKENS, stream=True
            )
            try:
                async for chunk in response:
                    choices = chunk.choices or []
                    final = bool(choices) and choices[0].finish_reason is not None
                    yield host_of(chunk, response), final
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

        # What LiteLLM logs about each failed stream (the error reaches the caller anyway).
        loggers = [logging.getLogger(n) for n in ("LiteLLM", "LiteLLM Router", "litellm")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield stream
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            self.extra = {"litellm_version": _litellm_version()}


def _litellm_version() -> str:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:  # pragma: no cover - depends on the environment
        return "?"


def cut_contenders() -> List[CutContender]:
    """The orchestra with each ``mid_stream`` policy, then LiteLLM's Router (when installed;
    with and without its continuation when its version has it)."""
    out: List[CutContender] = [OrchestraStreams("continue"), OrchestraStreams("raise")]
    if litellm_router() is not None:
        out.append(LiteLLMStreams(continuation=False))
        if LiteLLMStreams.supports_continuation():
            out.append(LiteLLMStreams(continuation=True))
    return out


async def midstream_run(
    streams: int, contender: Union[str, CutContender], *, timeout_s: float = 120.0
) -> Dict[str, Any]:
    """Kill one of two hosts under ``streams`` long streams; what the cut streams got.

    ``contender``: a :class:`CutContender`, or an orchestra ``mid_stream`` policy."""
    c = OrchestraStreams(contender) if isinstance(contender, str) else contender
    # The victim decodes slowly (Faults.slow: a token every 100 ms), so that its streams are
    # still running when the slowest contender (LiteLLM's Router spends milliseconds of CPU per
    # request and per chunk) has started its last stream.
    async with SimFleet(profiles(2, slots=streams), time_scale=0.05) as fleet:
        victim = fleet.servers[0]
        await victim.set_faults(Faults(slow=VICTIM_SLOW))
        started = 0
        all_started = anyio.Event()
        cut: List[Dict[str, Any]] = []
        completed: List[int] = []
        failed: Dict[int, str] = {}

        def start() -> None:
            nonlocal started
            started += 1
            if started == streams:
                all_started.set()

        async def one(stream: StreamFn, i: int) -> None:
            seen: List[Tuple[str, float]] = []
            final = False
            finished_on: Optional[str] = None
            error: Optional[str] = None
            try:
                async for server, final in stream(i):
                    seen.append((server, time.perf_counter()))
                    if final:
                        finished_on = server
                    if len(seen) == 3:
                        start()
            except Exception as exc:  # what reached the caller: the stream is not completed
                error = f"{type(exc).__name__}: {exc}"[:160]
            if len(seen) < 3:
                start()  # ended early: the kill must not wait for it
            done = error is None and final
            if done:
                completed.append(i)
            else:
                failed[i] = error or "ended without a final chunk"
            # Cut mid-answer: started on the victim and did not finish there before the kill.
            if seen and seen[0][0] == victim.name and finished_on != victim.name:
                before = [t for (server, t) in seen if server == victim.name]
                after = [t for (server, t) in seen if server != victim.name]
                cut.append(
                    {
                        "completed": done,
                        "gap_s": after[0] - before[-1] if after else None,
                        "salvaged": len(before) if after else 0,
                    }
                )

        with anyio.fail_after(timeout_s):
            async with c.open(fleet) as stream, anyio.create_task_group() as tg:
                t0 = time.perf_counter()
                for i in range(streams):
                    tg.start_soon(one, stream, i)
                await all_started.wait()
                kill_after = time.perf_counter() - t0
                await victim.kill()
    gaps = [x["gap_s"] for x in cut if x["gap_s"] is not None]
    return {
        "policy": c.label,
        "contender": c.contender,
        "streams": streams,
        "completed": len(completed),
        "failed": len(failed),
        "failed_examples": sorted(set(failed.values()))[:3],
        "cut": len(cut),
        "completed_share": sum(x["completed"] for x in cut) / len(cut) if cut else 0.0,
        "continued": len(gaps),
        "gap_p50_ms": 1000 * pct(gaps, 0.5),
        "gap_p95_ms": 1000 * pct(gaps, 0.95),
        "tokens_salvaged": sum(x["salvaged"] for x in cut),
        "kill_after_s": kill_after,
        **c.extra,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_failover", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (CI)")
    args = parser.parse_args(argv)
    kill = anyio.run(kill_run, 200)
    refused = anyio.run(refused_run, 20 if args.quick else 60)
    # 1,000 in quick mode too: with 300 the 99.5% bar (one loss allowed) failed 4% of runs
    # by chance (each request fails with p = 0.1^3); with 1,000 (five allowed), 0.06%.
    chaos = anyio.run(chaos_run, 1000, 0.10)
    # Fewer streams in quick mode: LiteLLM's Router takes seconds to start 50 (its CPU).
    cut_streams = 20 if args.quick else 50
    midstream = [anyio.run(midstream_run, cut_streams, c) for c in cut_contenders()]
    print("kill one of two hosts mid-run (200 requests in flight or queued)")
    print(
        f"  completed {kill['completed']}/{kill['requests']}, lost {kill['lost']}, rerouted {kill['rerouted']}"
    )
    print(
        f"  kill -> rerouted success: p50 {kill['reroute_p50_ms']:.1f} ms, p95 {kill['reroute_p95_ms']:.1f} ms,"
        f" max {kill['reroute_max_ms']:.1f} ms (includes the wait for a slot: half the capacity is gone)"
    )
    print(
        f"  orchestra's failover metric (first failure -> success): p95 {kill['orchestra_failover_p95_ms']:.1f} ms"
    )
    print("refused connection (a host died between probes): time a reroute adds to a request")
    print(
        f"  {refused['rerouted']} rerouted: p50 {refused['failover_p50_ms']:.1f} ms, p95 {refused['failover_p95_ms']:.1f} ms,"
        f" max {refused['failover_max_ms']:.1f} ms (goal p95 < 100 ms)"
    )
    print(
        f"chaos: every host fails {chaos['error_rate']:.0%} of requests at random,"
        f" {chaos['attempts']} attempts"
    )
    print(
        f"  {chaos['succeeded']}/{chaos['requests']} succeeded: {chaos['success_rate']:.2%}"
        f" ({chaos['expected_rate']:.2%} expected from the retry budget; goal: at most"
        f" {chaos['allowed_failures']} failed, its 99th percentile)"
    )
    print(
        f"streams cut mid-answer ({cut_streams} long streams, one of two hosts killed under them)"
    )
    print(
        f"  {'policy':<12} {'cut':>4} {'completed':>10} {'gap p50':>9} {'gap p95':>9} {'salvaged':>9}"
    )
    for r in midstream:
        print(
            f"  {r['policy']:<12} {r['cut']:>4} {r['completed_share']:>10.0%}"
            f" {r['gap_p50_ms']:>7.1f}ms {r['gap_p95_ms']:>7.1f}ms {r['tokens_salvaged']:>9}"
        )
    if litellm_router() is None:
        print(
            "  litellm      not installed: not compared (by default it raises a cut stream's error)"
        )
    else:
        for r in midstream:
            if r["contender"] == "litellm" and r["failed_examples"]:
                print(f"  {r['policy']}: what reached the caller: {r['failed_examples'][0][:100]}")
    write_json(
        "failover.json",
        {"kill": kill, "refused": refused, "chaos": chaos, "midstream": midstream},
    )
    cont = midstream[0]
    ok = (
        cont["cut"] > 0
        and cont["completed_share"] == 1.0
        and kill["lost"] == 0
        and kill["completed"] == kill["requests"]
        and chaos["requests"] - chaos["succeeded"] <= chaos["allowed_failures"]
    )
    ok = (
        ok and refused["rerouted"] > 0 and refused["failover_p95_ms"] < (200 if args.quick else 100)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
