"""The four scenarios, each on hosts it is given (simulated or real); see the package docstring.

a. :func:`scaling`: 1, 2, 4, 8 identical hosts (and :func:`head_to_head`: the orchestra
against direct sends and round robin on one and two, more rounds); b. :func:`heterogeneous`:
one fast host and one slow; c. :func:`mixed_models`: two models, one loaded per host
(simulated only: it reads the simulator's load counters); d. :func:`overhead`: time per
request on an instant host.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
from typing import Any, Awaitable, Callable, Dict, List, Sequence, Tuple

import anyio

from ollama_orchestra.sim import SimFleet

from .contenders import (
    WORKLOAD,
    Contender,
    Host,
    LiteLLMContender,
    OneHost,
    OrchestraContender,
    RoundRobin,
    contenders_for,
    generate_body,
    hosts_of,
    litellm_router,
    plain_client,
)
from .runner import Outcome, mean_ratio, run_workload, side_by_side

Call = Callable[[int], Awaitable[Any]]  # scenario d: request number -> one request done

# -- a. scaling -----------------------------------------------------------------------------


async def scaling(
    fleet_hosts: List[Host],
    counts: Sequence[int],
    per_slot: int,
    rounds: int,
) -> Dict[str, Any]:
    """Throughput on the first n hosts for each n in ``counts``, relative to ``one-host`` in
    the same round; the orchestra's utilization over time on the most hosts."""
    contenders = contenders_for(["least_loaded", "hybrid", "hybrid+nolookahead"])
    timeline: List[Tuple[float, Dict[str, float]]] = []

    async def on(n: int) -> Dict[str, Any]:
        hosts = fleet_hosts[:n]
        slots = sum(h.slots for h in hosts)

        async def batch(c: Contender, r: int) -> Outcome:
            nonlocal timeline
            size = per_slot * (hosts[0].slots if isinstance(c, OneHost) else slots)
            sample = 0.1 if (c.name == "orchestra-hybrid" and n == counts[-1]) else None
            o = await run_workload(c, hosts, [WORKLOAD.model] * size, sample_every=sample)
            if sample and r == rounds - 1:
                timeline = o.timeline
            print(
                f"  scaling {n} host(s) round {r + 1}: {c.name:<22} "
                f"{o.steady_throughput:7.2f} req/s at saturation, {o.throughput:7.2f} over the batch",
                flush=True,
            )
            return o

        runs = await side_by_side(contenders, rounds, batch)
        base = [o.steady_throughput for o in runs["one-host"]]
        base_batch = [o.throughput for o in runs["one-host"]]
        row: Dict[str, Any] = {}
        for name, outs in runs.items():
            util = [min(o.utilization.values()) for o in outs if o.utilization]
            wutil = [min(o.window_utilization.values()) for o in outs if o.window_utilization]
            row[name] = {
                "throughput_rps": statistics.mean(o.steady_throughput for o in outs),
                "speedup_vs_one_host": mean_ratio((o.steady_throughput for o in outs), base),
                "batch_speedup_vs_one_host": mean_ratio((o.throughput for o in outs), base_batch),
                "min_utilization": statistics.mean(util) if util else None,
                "min_window_utilization": statistics.mean(wutil) if wutil else None,
                "imbalance": statistics.mean(o.imbalance or 0.0 for o in outs),
                "failures": sum(o.failures for o in outs),
                "runs": [o.to_dict() for o in outs],
            }
        return row

    out: Dict[str, Any] = {"counts": list(counts), "per_slot": per_slot, "rounds": rounds}
    out["by_hosts"] = {str(n): await on(n) for n in counts}
    out["timeline"] = [{"t": t, "utilization": u} for t, u in timeline]
    return out


async def head_to_head(fleet_hosts: List[Host], per_slot: int, rounds: int) -> Dict[str, Any]:
    """Issue 19's saturation figures, measured more often than :func:`scaling`'s overview:
    the orchestra (``hybrid``, the default) against sending directly to one host and against
    round robin over two, alternating for ``rounds`` rounds. Each figure is the mean of the
    per-round ratios (same round, so a drift of the machine cancels), with their spread."""
    one, two = fleet_hosts[:1], fleet_hosts[:2]
    hybrid, direct, rr = OrchestraContender("hybrid"), OneHost(), RoundRobin()
    contenders: List[Contender] = [hybrid, direct, rr]

    async def batch(c: Contender, r: int) -> Dict[int, Outcome]:
        # Batches on one host, then on two (round robin: two only; direct: one host both
        # times, the second being the base of "2 hosts vs 1" in this round).
        outs: Dict[int, Outcome] = {}
        for n in (1, 2) if c is not rr else (2,):
            hosts = one if c is direct or n == 1 else two
            size = per_slot * sum(h.slots for h in hosts)
            outs[n] = await run_workload(c, hosts, [WORKLOAD.model] * size)
        print(
            f"  head to head round {r + 1}: {c.name:<16} "
            + ", ".join(f"{n} host(s) {o.steady_throughput:6.2f}" for n, o in outs.items())
            + " req/s at saturation",
            flush=True,
        )
        return outs

    # A round not counted first: the first batches on a fleet run slower (measured: up to 7%
    # on hosts just started), whichever contender runs them.
    await side_by_side(contenders, 1, batch)
    runs = await side_by_side(contenders, rounds, batch)

    def ratios(num: Contender, i: int, den: Contender, j: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, rate in (("steady", "steady_throughput"), ("batch", "throughput")):
            per_round = [
                getattr(a[i], rate) / getattr(b[j], rate)
                for a, b in zip(runs[num.name], runs[den.name])
            ]
            out[key] = {"mean": statistics.mean(per_round), "rounds": per_round}
        return out

    return {
        "rounds": rounds,
        "per_slot": per_slot,
        "one_host_vs_direct": ratios(hybrid, 1, direct, 1),
        "two_hosts_vs_direct": ratios(hybrid, 2, direct, 2),
        "two_hosts_vs_round_robin": ratios(hybrid, 2, rr, 2),
        "round_robin_vs_direct": ratios(rr, 2, direct, 2),
    }


# -- b. heterogeneous -----------------------------------------------------------------------


async def heterogeneous(hosts: List[Host], per_slot: int, rounds: int) -> Dict[str, Any]:
    """Throughput as a fraction of the hosts' summed capacities, each host's capacity being
    its throughput alone, measured in the same round."""
    contenders = contenders_for(["least_loaded", "hybrid", "hybrid+nolookahead"], one_host=False)
    slots = sum(h.slots for h in hosts)
    caps: Dict[str, List[float]] = {h.name: [] for h in hosts}

    async def capacities(r: int) -> None:
        for h in hosts:
            o = await run_workload(OneHost(), [h], [WORKLOAD.model] * (per_slot * h.slots))
            caps[h.name].append(o.throughput)
            print(f"  heterogeneous round {r + 1}: {h.name} alone {o.throughput:7.2f} req/s")

    async def batch(c: Contender, r: int) -> Outcome:
        o = await run_workload(c, hosts, [WORKLOAD.model] * (per_slot * slots))
        print(f"  heterogeneous round {r + 1}: {c.name:<22} {o.throughput:7.2f} req/s")
        return o

    runs = await side_by_side(contenders, rounds, batch, before_round=capacities)
    total = [sum(caps[h.name][r] for h in hosts) for r in range(rounds)]
    result: Dict[str, Any] = {
        "capacity_rps": {k: statistics.mean(v) for k, v in caps.items()},
        "contenders": {},
    }
    for name, outs in runs.items():
        result["contenders"][name] = {
            "throughput_rps": statistics.mean(o.throughput for o in outs),
            "fraction_of_capacity": mean_ratio((o.throughput for o in outs), total),
            "per_host": outs[-1].per_host,
            "failures": sum(o.failures for o in outs),
        }
    return result


# -- c. mixed models, cold loads --------------------------------------------------------------


async def _unload_all(fleet: SimFleet) -> None:
    async with plain_client() as client:
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
    """A workload mixing two models on hosts that hold one at a time: cold loads caused (the
    simulators' ``loads`` counters) and throughput relative to ``one-host``."""
    hosts = hosts_of(fleet)
    contenders = contenders_for(["least_loaded", "hybrid", "model_aware"])
    rng = random.Random(7)
    models = [rng.choice((WORKLOAD.model, WORKLOAD.other_model)) for _ in range(requests)]

    async def batch(c: Contender, r: int) -> Tuple[Outcome, int]:
        await _unload_all(fleet)  # every contender starts from the same cold fleet
        before = await _loads(fleet)
        o = await run_workload(c, hosts, models)
        loads = await _loads(fleet) - before
        print(
            f"  mixed models round {r + 1}: {c.name:<22} {o.throughput:7.2f} req/s, {loads} cold loads",
            flush=True,
        )
        return o, loads

    runs = await side_by_side(contenders, rounds, batch)
    base = [o.throughput for o, _ in runs["one-host"]]
    result: Dict[str, Any] = {"requests": requests, "contenders": {}}
    for name, pairs in runs.items():
        result["contenders"][name] = {
            "throughput_rps": statistics.mean(o.throughput for o, _ in pairs),
            "speedup_vs_one_host": mean_ratio((o.throughput for o, _ in pairs), base),
            "cold_loads": statistics.mean(n for _, n in pairs),
            "failures": sum(o.failures for o, _ in pairs),
        }
    return result


# -- d. overhead ------------------------------------------------------------------------------


async def overhead(host: Host, batch: int, rounds: int) -> Dict[str, Any]:
    """Time per request, one at a time, of the orchestra and of direct clients, in alternating
    batches; ratios to a direct ``httpx`` call doing what the orchestra sends (streamed)."""
    import ollama

    model = WORKLOAD.model
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(plain_client())
        url = host.url + "/api/generate"

        async def httpx_stream(i: int) -> None:
            # What the orchestra sends: a streamed generate, NDJSON parsed line by line.
            body = generate_body(model, f"p{i}", True)
            async with client.stream("POST", url, json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line:
                        json.loads(line)

        oll = ollama.AsyncClient(host=host.url)

        async def ollama_client(i: int) -> None:
            await oll.generate(
                model=model, prompt=f"p{i}", options={"num_predict": WORKLOAD.tokens}
            )

        async def through(contender: Contender) -> Call:
            send = await stack.enter_async_context(contender.open([host]))
            return lambda i: send(model, f"p{i}")

        calls: Dict[str, Call] = {
            "httpx-stream": httpx_stream,
            "httpx": await through(OneHost()),
            "ollama.AsyncClient": ollama_client,
            "orchestra": await through(OrchestraContender("hybrid")),
        }
        if litellm_router() is not None:
            calls["litellm-router"] = await through(LiteLLMContender("simple-shuffle"))
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
