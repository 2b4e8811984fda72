"""The orchestra against the alternatives, on the same workload in the same run.

Run from the repo root: ``python -m benchmarks.bench_compare [--quick] [--hosts URL ...]``.

Contenders (all run side by side, alternating A B C A B C ..., never all of A then all of B):

* ``orchestra-least_loaded``, ``orchestra-hybrid`` (``orchestra-model_aware`` in scenario c):
  :class:`ollama_orchestra.Orchestra` with that strategy, slots = the hosts' ``num_parallel``;
* ``one-host``: every request on the first host, plain ``httpx`` (today's setup);
* ``round-robin``: a hand-written client cycling over the host URLs with plain ``httpx``, no
  slots: concurrency bounded only by the workload (every request is sent at once);
* ``litellm-shuffle``, ``litellm-least-busy``: LiteLLM's ``Router`` with
  ``routing_strategy="simple-shuffle"`` / ``"least-busy"``, its ``ollama/`` provider pointed at
  the same hosts (``api_base``), every request sent at once.

Scenarios:

a. Scaling: 1, 2, 4, 8 identical hosts (quick: 1, 2), many more requests than slots:
   throughput relative to ``one-host`` measured in the same round, per-host utilization (from
   ``orch.metrics()``), imbalance. Goals: 2 hosts >= 1.95x (quick: 1.6x), utilization >= 95%,
   imbalance <= 2%.
b. Heterogeneous: two hosts, one twice as fast: throughput as a fraction of the sum of the
   hosts' capacities (each host's throughput alone, measured in the same round). Goal >= 0.95.
   Requests take twice as long as in a. (time scale 0.5), so that what each one costs on the
   way between processes is not mistaken for a balancing loss.
c. Mixed models with cold loads: each host holds one model at a time, a workload mixing two
   models: cold loads caused (the sims' ``loads`` counters) and throughput.
d. Overhead: an instant host; time per request (sequential) of the orchestra vs a direct
   ``httpx`` call vs the official ``ollama.AsyncClient`` vs LiteLLM's Router. Goal: the
   orchestra within 1.15x of direct ``httpx`` doing the same streamed request.

Timing is only ever reported as ratios measured side by side; absolute figures are printed,
never asserted. Results go to ``benchmarks/results/compare.json`` and two plots.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

import anyio
import httpx

from ollama_orchestra import HealthPolicy, Orchestra, OrchestraConfig, Server
from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet

RESULTS = Path(__file__).parent / "results"
MODEL = "work:latest"
MODEL_B = "other:latest"
SLOTS = 2
TOKENS = 8

log = logging.getLogger("benchmarks.compare")

# -- LiteLLM, optional ----------------------------------------------------------------------

_LITELLM: Optional[Any] = None
LITELLM_ERROR: Optional[str] = None


def litellm_router() -> Optional[Any]:
    """LiteLLM's ``Router`` class, imported offline and quiet; ``None`` if unavailable."""
    global _LITELLM, LITELLM_ERROR
    if _LITELLM is not None or LITELLM_ERROR is not None:
        return _LITELLM
    # Before the import: otherwise it fetches a price list from the network at import time.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    try:
        import litellm
        from litellm.router import Router
    except Exception as exc:  # pragma: no cover - depends on the environment
        LITELLM_ERROR = f"import failed: {exc!r}"
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _LITELLM = Router
    return Router


# -- hosts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    name: str
    url: str
    slots: int


def work_model(
    decode_tps: float = 20.0, *, name: str = MODEL, load_s: float = 0.01, size_gb: float = 1.0
) -> ModelSpec:
    return ModelSpec(
        name, size_gb=size_gb, decode_tps=decode_tps, load_s=load_s, default_num_predict=TOKENS
    )


def hosts_of(fleet: SimFleet) -> List[Host]:
    return [Host(s.name, s.url, s.profile.num_parallel) for s in fleet.servers]


# -- contenders -----------------------------------------------------------------------------


@dataclass
class Outcome:
    contender: str
    requests: int
    elapsed_s: float
    per_host: Dict[str, int]
    failures: int = 0
    utilization: Dict[str, float] = field(default_factory=dict)  # busy slot-s / slot-s
    window_utilization: Dict[str, float] = field(default_factory=dict)  # metrics' own figure
    imbalance: Optional[float] = None
    timeline: List[Tuple[float, Dict[str, float]]] = field(default_factory=list)
    finished: List[float] = field(default_factory=list)  # completion times since the start

    @property
    def throughput(self) -> float:
        """Answers per second over the whole batch: first send to last answer."""
        return (self.requests - self.failures) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def steady_throughput(self) -> float:
        """Answers per second at saturation: between the 10% and the 90% completion, which
        leaves out the ramp-up and the tail (the last answers of a batch)."""
        done = sorted(self.finished)
        lo, hi = len(done) // 10, (9 * len(done)) // 10
        if hi <= lo or done[hi - 1] <= done[lo]:
            return self.throughput
        return (hi - 1 - lo) / (done[hi - 1] - done[lo])

    def share_imbalance(self, hosts: Sequence[Host]) -> float:
        """Largest gap between a host's share of answers and its share of slots."""
        done = sum(self.per_host.values()) or 1
        slots = sum(h.slots for h in hosts)
        return max(abs(self.per_host.get(h.name, 0) / done - h.slots / slots) for h in hosts)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "contender": self.contender,
            "requests": self.requests,
            "failures": self.failures,
            "elapsed_s": self.elapsed_s,
            "throughput_rps": self.throughput,
            "steady_throughput_rps": self.steady_throughput,
            "per_host": self.per_host,
            "utilization": self.utilization,
            "window_utilization": self.window_utilization,
            "imbalance": self.imbalance,
        }


Send = Callable[[str, str], "Any"]  # (model, prompt) -> awaitable host name


class Contender:
    """One way of sending the workload: ``async with c.open(hosts) as send``."""

    name = "?"
    orchestra: Optional[Orchestra] = None

    def open(self, hosts: Sequence[Host]) -> contextlib.AbstractAsyncContextManager[Send]:
        raise NotImplementedError


def _plain_client() -> httpx.AsyncClient:
    # No pool limit: concurrency is bounded only by the workload.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(600.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        trust_env=False,
    )


def _body(model: str, prompt: str, stream: bool = False) -> Dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "stream": stream,
        "options": {"num_predict": TOKENS},
    }


class OrchestraContender(Contender):
    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.name = f"orchestra-{strategy}"

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        cfg = OrchestraConfig(
            servers=tuple(Server(h.name, h.url, max_concurrency=h.slots) for h in hosts),
            strategy=self.strategy,
            health=HealthPolicy(interval_s=5.0),
        )
        async with Orchestra(cfg) as orch:
            self.orchestra = orch

            async def send(model: str, prompt: str) -> str:
                r = await orch.generate(model, prompt, options={"num_predict": TOKENS})
                return r.server

            try:
                yield send
            finally:
                self.orchestra = None


class OneHost(Contender):
    name = "one-host"

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        first = hosts[0]
        async with _plain_client() as client:

            async def send(model: str, prompt: str) -> str:
                r = await client.post(first.url + "/api/generate", json=_body(model, prompt))
                r.raise_for_status()
                return first.name

            yield send


class RoundRobin(Contender):
    name = "round-robin"

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        turn = itertools.cycle(hosts)
        async with _plain_client() as client:

            async def send(model: str, prompt: str) -> str:
                host = next(turn)
                r = await client.post(host.url + "/api/generate", json=_body(model, prompt))
                r.raise_for_status()
                return host.name

            yield send


class LiteLLMContender(Contender):
    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.name = "litellm-" + ("shuffle" if strategy == "simple-shuffle" else strategy)

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        router_cls = litellm_router()
        assert router_cls is not None
        by_base = {h.url.rstrip("/"): h.name for h in hosts}
        models = sorted({MODEL, MODEL_B})
        model_list = [
            {
                "model_name": m,
                "litellm_params": {"model": f"ollama/{m}", "api_base": h.url},
            }
            for m in models
            for h in hosts
        ]
        router = router_cls(
            model_list=model_list, routing_strategy=self.strategy, num_retries=0, timeout=600
        )

        async def send(model: str, prompt: str) -> str:
            r = await router.acompletion(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS
            )
            base = str(getattr(r, "_hidden_params", {}).get("api_base") or "").rstrip("/")
            return by_base.get(base, base or "?")

        yield send


def contenders_for(
    strategies: Sequence[str], *, one_host: bool = True, litellm: bool = True
) -> List[Contender]:
    out: List[Contender] = [OrchestraContender(s) for s in strategies]
    if one_host:
        out.append(OneHost())
    out.append(RoundRobin())
    if litellm and litellm_router() is not None:
        out += [LiteLLMContender("simple-shuffle"), LiteLLMContender("least-busy")]
    return out


# -- running a workload -------------------------------------------------------------------


async def run_workload(
    contender: Contender,
    hosts: Sequence[Host],
    models: Sequence[str],
    *,
    sample_every: Optional[float] = None,
) -> Outcome:
    """Every request of the workload sent at once; elapsed = first send to last answer."""
    per_host: Dict[str, int] = {}
    finished: List[float] = []
    failures = 0
    timeline: List[Tuple[float, Dict[str, float]]] = []
    async with contender.open(hosts) as send:
        # Warm: the connection pool and, for the orchestra, its view of the hosts.
        with anyio.fail_after(120):
            await send(models[0], "warm")
        orch = contender.orchestra
        if orch is not None:
            orch.reset_metrics()
        t0 = time.perf_counter()
        last = t0

        async def one(i: int, model: str) -> None:
            nonlocal failures, last
            try:
                name = await send(model, f"request {i}")
            except Exception as exc:
                failures += 1
                log.warning("%s: request %d failed: %r", contender.name, i, exc)
                return
            per_host[name] = per_host.get(name, 0) + 1
            last = time.perf_counter()
            finished.append(last - t0)

        async def sampler() -> None:
            assert orch is not None and sample_every is not None
            prev = {n: s.busy_slot_s for n, s in orch.metrics().servers.items()}
            before = time.perf_counter()
            while True:
                await anyio.sleep(sample_every)
                snap = orch.metrics().servers
                now = time.perf_counter()
                dt = max(now - before, 1e-6)
                util = {
                    n: min(1.0, (s.busy_slot_s - prev[n]) / (s.slots * dt)) for n, s in snap.items()
                }
                prev = {n: s.busy_slot_s for n, s in snap.items()}
                before = now
                timeline.append((now - t0, util))

        async with anyio.create_task_group() as outer:
            if orch is not None and sample_every:
                outer.start_soon(sampler)
            async with anyio.create_task_group() as tg:
                for i, model in enumerate(models):
                    tg.start_soon(one, i, model)
            elapsed = last - t0
            outer.cancel_scope.cancel()
        out = Outcome(
            contender.name,
            len(models),
            elapsed,
            per_host,
            failures,
            timeline=timeline,
            finished=finished,
        )
        if orch is not None:
            m = orch.metrics()
            # busy_slot_s is integrated exactly since reset_metrics(); the snapshot's own
            # `utilization` comes from 1 s buckets and under-counts windows of a few seconds
            # (the first, partial second after a reset is discounted twice): both reported.
            out.utilization = {
                n: s.busy_slot_s / (s.slots * m.elapsed_s) for n, s in m.servers.items()
            }
            out.window_utilization = {n: s.utilization for n, s in m.servers.items()}
            out.imbalance = m.imbalance
    if out.imbalance is None:
        out.imbalance = out.share_imbalance(hosts)
    return out


# -- scenario a: scaling ------------------------------------------------------------------


async def scaling(
    fleet_hosts: List[Host],
    counts: Sequence[int],
    per_slot: int,
    rounds: int,
) -> Dict[str, Any]:
    contenders = contenders_for(["least_loaded", "hybrid"])
    out: Dict[str, Any] = {"counts": list(counts), "per_slot": per_slot, "rounds": rounds}
    rows: Dict[str, Dict[str, Any]] = {}
    timeline: List[Tuple[float, Dict[str, float]]] = []
    for n in counts:
        hosts = fleet_hosts[:n]
        slots = sum(h.slots for h in hosts)
        runs: Dict[str, List[Outcome]] = {c.name: [] for c in contenders}
        for r in range(rounds):
            for c in contenders:  # alternating: A B C ... A B C ...
                size = per_slot * (hosts[0].slots if isinstance(c, OneHost) else slots)
                sample = 0.1 if (c.name == "orchestra-hybrid" and n == counts[-1]) else None
                o = await run_workload(c, hosts, [MODEL] * size, sample_every=sample)
                if sample and r == rounds - 1:
                    timeline = o.timeline
                runs[c.name].append(o)
                print(
                    f"  scaling {n} host(s) round {r + 1}: {c.name:<22} "
                    f"{o.steady_throughput:7.2f} req/s at saturation, {o.throughput:7.2f} over the batch",
                    flush=True,
                )
        base = [o.steady_throughput for o in runs["one-host"]]
        base_batch = [o.throughput for o in runs["one-host"]]
        row: Dict[str, Any] = {}
        for name, outs in runs.items():
            ratios = [o.steady_throughput / b for o, b in zip(outs, base)]
            util = [min(o.utilization.values()) for o in outs if o.utilization]
            wutil = [min(o.window_utilization.values()) for o in outs if o.window_utilization]
            row[name] = {
                "throughput_rps": statistics.mean(o.steady_throughput for o in outs),
                "speedup_vs_one_host": statistics.mean(ratios),
                "batch_speedup_vs_one_host": statistics.mean(
                    o.throughput / b for o, b in zip(outs, base_batch)
                ),
                "min_utilization": statistics.mean(util) if util else None,
                "min_window_utilization": statistics.mean(wutil) if wutil else None,
                "imbalance": statistics.mean(o.imbalance or 0.0 for o in outs),
                "failures": sum(o.failures for o in outs),
                "runs": [o.to_dict() for o in outs],
            }
        rows[str(n)] = row
    out["by_hosts"] = rows
    out["timeline"] = [{"t": t, "utilization": u} for t, u in timeline]
    return out


# -- scenario b: heterogeneous -------------------------------------------------------------


async def heterogeneous(hosts: List[Host], per_slot: int, rounds: int) -> Dict[str, Any]:
    contenders = contenders_for(["least_loaded", "hybrid"], one_host=False)
    slots = sum(h.slots for h in hosts)
    caps: Dict[str, List[float]] = {h.name: [] for h in hosts}
    runs: Dict[str, List[Outcome]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for h in hosts:  # each host's capacity: its throughput alone, in this same round
            o = await run_workload(OneHost(), [h], [MODEL] * (per_slot * h.slots))
            caps[h.name].append(o.throughput)
            print(f"  heterogeneous round {r + 1}: {h.name} alone {o.throughput:7.2f} req/s")
        for c in contenders:
            o = await run_workload(c, hosts, [MODEL] * (per_slot * slots))
            runs[c.name].append(o)
            print(f"  heterogeneous round {r + 1}: {c.name:<22} {o.throughput:7.2f} req/s")
    total = [sum(caps[h.name][r] for h in hosts) for r in range(rounds)]
    result: Dict[str, Any] = {
        "capacity_rps": {k: statistics.mean(v) for k, v in caps.items()},
        "contenders": {},
    }
    for name, outs in runs.items():
        result["contenders"][name] = {
            "throughput_rps": statistics.mean(o.throughput for o in outs),
            "fraction_of_capacity": statistics.mean(o.throughput / t for o, t in zip(outs, total)),
            "per_host": outs[-1].per_host,
            "failures": sum(o.failures for o in outs),
        }
    return result


# -- scenario c: mixed models, cold loads -------------------------------------------------


async def _unload_all(fleet: SimFleet) -> None:
    async with _plain_client() as client:
        for s in fleet.servers:
            for m in s.profile.models:
                body = {"model": m.name, "prompt": "", "keep_alive": 0}
                (await client.post(s.url + "/api/generate", json=body)).raise_for_status()
        for _ in range(200):
            states = [await s.fetch_state() for s in fleet.servers]
            if not any(st["loaded"] or st["loading"] for st in states):
                return
            await anyio.sleep(0.02)


async def _loads(fleet: SimFleet) -> int:
    total = 0
    for s in fleet.servers:
        total += int((await s.fetch_state())["loads"])
    return total


async def mixed_models(fleet: SimFleet, requests: int, rounds: int) -> Dict[str, Any]:
    hosts = hosts_of(fleet)
    contenders = contenders_for(["least_loaded", "hybrid", "model_aware"])
    rng = random.Random(7)
    models = [rng.choice((MODEL, MODEL_B)) for _ in range(requests)]
    runs: Dict[str, List[Tuple[Outcome, int]]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders:
            await _unload_all(fleet)  # every contender starts from the same cold fleet
            before = await _loads(fleet)
            o = await run_workload(c, hosts, models)
            loads = await _loads(fleet) - before
            runs[c.name].append((o, loads))
            print(
                f"  mixed models round {r + 1}: {c.name:<22} {o.throughput:7.2f} req/s, {loads} cold loads",
                flush=True,
            )
    base = [o.throughput for o, _ in runs["one-host"]]
    result: Dict[str, Any] = {"requests": requests, "contenders": {}}
    for name, pairs in runs.items():
        result["contenders"][name] = {
            "throughput_rps": statistics.mean(o.throughput for o, _ in pairs),
            "speedup_vs_one_host": statistics.mean(
                o.throughput / b for (o, _), b in zip(pairs, base)
            ),
            "cold_loads": statistics.mean(n for _, n in pairs),
            "failures": sum(o.failures for o, _ in pairs),
        }
    return result


# -- scenario d: overhead -------------------------------------------------------------------


async def overhead(host: Host, batch: int, rounds: int) -> Dict[str, Any]:
    import ollama

    calls: Dict[str, Callable[[int], Any]] = {}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(_plain_client())
        url = host.url + "/api/generate"

        async def httpx_stream(i: int) -> None:
            # What the orchestra sends: a streamed generate, NDJSON parsed line by line.
            async with client.stream("POST", url, json=_body(MODEL, f"p{i}", True)) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line:
                        json.loads(line)

        async def httpx_plain(i: int) -> None:
            (await client.post(url, json=_body(MODEL, f"p{i}"))).raise_for_status()

        oll = ollama.AsyncClient(host=host.url)

        async def ollama_client(i: int) -> None:
            await oll.generate(model=MODEL, prompt=f"p{i}", options={"num_predict": TOKENS})

        orch = await stack.enter_async_context(
            Orchestra(
                OrchestraConfig(
                    servers=(Server(host.name, host.url, max_concurrency=host.slots),),
                    strategy="hybrid",
                    health=HealthPolicy(interval_s=5.0),
                )
            )
        )

        async def orchestra(i: int) -> None:
            await orch.generate(MODEL, f"p{i}", options={"num_predict": TOKENS})

        calls = {
            "httpx-stream": httpx_stream,
            "httpx": httpx_plain,
            "ollama.AsyncClient": ollama_client,
            "orchestra": orchestra,
        }
        router_cls = litellm_router()
        if router_cls is not None:
            router = router_cls(
                model_list=[
                    {
                        "model_name": MODEL,
                        "litellm_params": {"model": f"ollama/{MODEL}", "api_base": host.url},
                    }
                ],
                routing_strategy="simple-shuffle",
                num_retries=0,
            )

            async def litellm(i: int) -> None:
                await router.acompletion(
                    model=MODEL, messages=[{"role": "user", "content": f"p{i}"}], max_tokens=TOKENS
                )

            calls["litellm-router"] = litellm
        for fn in calls.values():  # warm every client
            for i in range(5):
                await fn(i)
        times: Dict[str, List[float]] = {k: [] for k in calls}
        for _ in range(rounds):
            for name, fn in calls.items():  # alternating batches
                t0 = time.perf_counter()
                for i in range(batch):
                    await fn(i)
                times[name].append((time.perf_counter() - t0) / batch)
    per_req = {k: statistics.median(v) for k, v in times.items()}
    base = per_req["httpx-stream"]
    return {
        "batch": batch,
        "rounds": rounds,
        "per_request_ms": {k: 1000 * v for k, v in per_req.items()},
        "ratio_vs_httpx_stream": {k: v / base for k, v in per_req.items()},
        "ratio_vs_httpx": {k: v / per_req["httpx"] for k, v in per_req.items()},
    }


# -- plots --------------------------------------------------------------------------------


def plot(report: Dict[str, Any]) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib missing: no plots (pip install -e '.[bench]')")
        return []
    written: List[str] = []
    sc = report.get("scaling")
    if sc:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        counts = sc["counts"]
        names = list(sc["by_hosts"][str(counts[0])].keys())
        styles = itertools.cycle(["o-", "s-", "^--", "v--", "D:", "x:", "*-"])
        for name in names:
            ys = [sc["by_hosts"][str(n)][name]["speedup_vs_one_host"] for n in counts]
            ax.plot(counts, ys, next(styles), label=name)
        ax.plot(counts, counts, color="grey", linewidth=0.8, label="ideal (n x one host)")
        ax.set_xlabel("hosts (identical, 2 slots each)")
        ax.set_ylabel("throughput / one host's (same round)")
        ax.set_xticks(counts)
        ax.set_title(
            "Throughput vs hosts, at saturation (10%-90% of answers)\n"
            f"simulated hosts as subprocesses on {os.cpu_count()} CPUs",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / "compare_scaling.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
        tl = sc.get("timeline") or []
        if tl:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            ts = [p["t"] for p in tl]
            for name in tl[0]["utilization"]:
                ax.plot(ts, [100 * p["utilization"].get(name, 0.0) for p in tl], label=name)
            ax.set_ylim(0, 110)
            ax.set_xlabel("seconds since the first request (real time)")
            ax.set_ylabel("busy slots, % (per 100 ms)")
            ax.set_title(f"Per-server utilization, orchestra-hybrid on {counts[-1]} hosts")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, ncol=2, loc="lower center")
            fig.tight_layout()
            path = RESULTS / "compare_utilization.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path.name)
    return written


# -- checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    bench: str
    figure: str
    value: str
    goal: str
    ok: Optional[bool]  # None: reported only
    gated: bool = False  # does a failure fail quick mode?


def checks(report: Dict[str, Any], quick: bool) -> List[Check]:
    out: List[Check] = []
    sc = report.get("scaling")
    if sc and "2" in sc["by_hosts"]:
        two = sc["by_hosts"]["2"]
        for name, row in two.items():
            s = row["speedup_vs_one_host"]
            whole = f"{s:.2f}x (whole batch {row['batch_speedup_vs_one_host']:.2f}x)"
            if name.startswith("orchestra"):
                goal = 1.6 if quick else 1.95
                out.append(
                    Check(
                        "compare",
                        f"a. 2 hosts vs 1, {name}",
                        whole,
                        f">= {goal}x",
                        s >= goal,
                        gated=quick,
                    )
                )
            else:
                out.append(Check("compare", f"a. 2 hosts vs 1, {name}", whole, "-", None))
        for n, rows in sc["by_hosts"].items():
            for name, row in rows.items():
                if name.startswith("orchestra") and row["min_utilization"] is not None:
                    u = row["min_utilization"]
                    w = row.get("min_window_utilization") or 0.0
                    out.append(
                        Check(
                            "compare",
                            f"a. {n} hosts, {name}: lowest host utilization",
                            f"{u:.1%} (metrics' windowed figure {w:.1%})",
                            ">= 95%",
                            u >= 0.95,
                        )
                    )
                    im = row["imbalance"]
                    out.append(
                        Check(
                            "compare",
                            f"a. {n} hosts, {name}: imbalance",
                            f"{im:.1%}",
                            "<= 2%",
                            im <= 0.02,
                        )
                    )
        last = sc["counts"][-1]
        for name, row in sc["by_hosts"][str(last)].items():
            out.append(
                Check(
                    "compare",
                    f"a. {last} hosts vs 1, {name}",
                    f"{row['speedup_vs_one_host']:.2f}x (whole batch "
                    f"{row['batch_speedup_vs_one_host']:.2f}x, imbalance {row['imbalance']:.1%})",
                    "-",
                    None,
                )
            )
    het = report.get("heterogeneous")
    if het:
        for name, row in het["contenders"].items():
            f = row["fraction_of_capacity"]
            orch = name.startswith("orchestra")
            out.append(
                Check(
                    "compare",
                    f"b. fast+slow host, {name}: share of summed capacity",
                    f"{f:.1%}",
                    ">= 95%" if orch else "-",
                    f >= 0.95 if orch else None,
                )
            )
    mix = report.get("mixed_models")
    if mix:
        for name, row in mix["contenders"].items():
            out.append(
                Check(
                    "compare",
                    f"c. two models, one loaded per host, {name}",
                    f"{row['cold_loads']:.0f} cold loads, {row['speedup_vs_one_host']:.2f}x one host",
                    "-",
                    None,
                )
            )
    ov = report.get("overhead")
    if ov:
        r = ov["ratio_vs_httpx_stream"]
        ms = ov["per_request_ms"]
        out.append(
            Check(
                "compare",
                "d. overhead: orchestra / direct httpx (same streamed request)",
                f"{r['orchestra']:.2f}x ({ms['orchestra']:.2f} vs {ms['httpx-stream']:.2f} ms)",
                "<= 1.15x",
                r["orchestra"] <= 1.15,
                gated=False,
            )
        )
        for name in ("httpx", "ollama.AsyncClient", "litellm-router"):
            if name in r:
                out.append(
                    Check(
                        "compare",
                        f"d. overhead: {name} / direct httpx (streamed)",
                        f"{r[name]:.2f}x ({ms[name]:.2f} ms)",
                        "-",
                        None,
                    )
                )
        if "litellm-router" in ms:
            out.append(
                Check(
                    "compare",
                    "d. overhead: LiteLLM Router / orchestra",
                    f"{ms['litellm-router'] / ms['orchestra']:.2f}x",
                    "-",
                    None,
                )
            )
    return out


# -- main -------------------------------------------------------------------------------------


async def run_sim(quick: bool, only: Sequence[str] = "abcd") -> Dict[str, Any]:
    t0 = time.perf_counter()
    try:
        return await _run_sim(quick, only)
    finally:
        print(f"  (simulated scenarios took {time.perf_counter() - t0:.0f}s)", flush=True)


async def _run_sim(quick: bool, only: Sequence[str]) -> Dict[str, Any]:
    report: Dict[str, Any] = {"mode": "quick" if quick else "full", "hosts": "simulated"}
    rounds = 1 if quick else 2
    counts = [1, 2] if quick else [1, 2, 4, 8]
    per_slot = 8 if quick else 20
    het_per_slot = 8 if quick else 20
    mixed_requests = 20 if quick else 48
    batch = 20 if quick else 60
    model = work_model()
    profiles = [HostProfile(f"h{i + 1}", (model,), num_parallel=SLOTS) for i in range(counts[-1])]
    if "a" in only:
        print(f"a. scaling over {counts} identical hosts", flush=True)
        async with SimFleet(profiles, time_scale=0.25, mode="subprocess") as fleet:
            report["scaling"] = await scaling(hosts_of(fleet), counts, per_slot, rounds)
    if "b" in only:
        print("b. heterogeneous: one host twice as fast", flush=True)
        het = [
            HostProfile("slow", (model,), num_parallel=SLOTS),
            HostProfile("fast", (model,), num_parallel=SLOTS, speed=2.0),
        ]
        # Longer requests than in a.: with ~90 ms ones, the few milliseconds each request
        # spends between the hosts and this process (3 processes on this machine's cores)
        # are a visible share of the fast host's time, and of no contender's doing.
        async with SimFleet(het, time_scale=0.5, mode="subprocess") as fleet:
            report["heterogeneous"] = await heterogeneous(
                hosts_of(fleet), het_per_slot, rounds if quick else 3
            )
    if "c" in only:
        print("c. mixed models, one loaded per host, cold loads", flush=True)
        two = (work_model(name=MODEL, load_s=2.0), work_model(name=MODEL_B, load_s=2.0))
        mixed = [
            HostProfile(f"m{i + 1}", two, num_parallel=SLOTS, max_loaded_models=1) for i in range(2)
        ]
        async with SimFleet(mixed, time_scale=0.1, mode="subprocess") as fleet:
            report["mixed_models"] = await mixed_models(fleet, mixed_requests, rounds)
    if "d" in only:
        print("d. overhead on an instant host", flush=True)
        instant = HostProfile(
            "instant", (work_model(1e6, load_s=0.0),), num_parallel=4, keep_alive_s=1e6
        )
        async with SimFleet([instant], time_scale=0.01, mode="subprocess") as fleet:
            report["overhead"] = await overhead(hosts_of(fleet)[0], batch, 3 if quick else 9)
    return report


async def run_real(urls: Sequence[str], model: str, slots: int, quick: bool) -> Dict[str, Any]:
    """Against real Ollama hosts: scaling (1, 2, 4, ... of them), heterogeneous (the first two,
    whatever their speeds), overhead (the first one). Cold loads need the simulator's counters."""
    global MODEL, TOKENS
    MODEL = model
    TOKENS = 32
    hosts = [Host(f"host{i + 1}", u.rstrip("/"), slots) for i, u in enumerate(urls)]
    rounds = 1 if quick else 2
    per_slot = 4 if quick else 8
    counts = [n for n in (1, 2, 4, 8, 16) if n <= len(hosts)]
    report: Dict[str, Any] = {"mode": "quick" if quick else "full", "hosts": list(urls)}
    report["scaling"] = await scaling(hosts, counts, per_slot, rounds)
    if len(hosts) >= 2:
        report["heterogeneous"] = await heterogeneous(hosts[:2], per_slot, rounds)
    report["overhead"] = await overhead(hosts[0], 10, 3)
    return report


def run(quick: bool, hosts: Optional[Sequence[str]] = None, **real: Any) -> Dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)
    litellm_router()
    if hosts:
        report = anyio.run(
            lambda: run_real(hosts, real.get("model") or MODEL, real.get("slots") or 1, quick)
        )
    else:
        report = anyio.run(run_sim, quick, real.get("only") or "abcd")
    report["litellm"] = "ok" if LITELLM_ERROR is None else LITELLM_ERROR
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report)
    (RESULTS / "compare.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def add_common_args(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options ``python -m benchmarks`` shares with this script: quick mode, real hosts."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--hosts", nargs="+", metavar="URL", help="real Ollama hosts")
    parser.add_argument("--model", help="the model to use on real hosts")
    parser.add_argument("--slots", type=int, default=1, help="OLLAMA_NUM_PARALLEL of real hosts")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_compare", description=__doc__)
    add_common_args(parser, "fewer hosts and rounds (CI)")
    parser.add_argument("--only", default="abcd", help="scenarios to run (simulated), e.g. 'cd'")
    args = parser.parse_args(argv)
    report = run(args.quick, args.hosts, model=args.model, slots=args.slots, only=args.only)
    cs = checks(report, args.quick)
    for c in cs:
        mark = "-" if c.ok is None else ("ok" if c.ok else "FAIL")
        print(f"{mark:>4}  {c.figure}: {c.value} (goal {c.goal})")
    return 1 if any(c.gated and c.ok is False for c in cs) else 0


if __name__ == "__main__":
    sys.exit(main())
