"""``python -m benchmarks.compare``: the scenarios on simulated fleets or on real hosts, the
report (``compare.json`` and the plots) and the command line."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Dict, Optional, Sequence

import anyio

from ollama_orchestra.sim import HostProfile, SimFleet

from ..common import add_common_args, results_dir, write_json
from .checks import checks
from .contenders import WORKLOAD, Host, hosts_of, litellm_status, work_model
from .scenarios import head_to_head, heterogeneous, mixed_models, overhead, scaling

SLOTS = 2  # of each simulated host


async def run_sim(quick: bool, only: Sequence[str] = "abcd") -> Dict[str, Any]:
    """The scenarios in ``only`` on simulated fleets (subprocesses on loopback)."""
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
            if not quick:
                print("a. head to head: hybrid, direct, round robin; 1 and 2 hosts", flush=True)
                report["head_to_head"] = await head_to_head(hosts_of(fleet), per_slot, 8)
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
        two = (
            work_model(name=WORKLOAD.model, load_s=2.0),
            work_model(name=WORKLOAD.other_model, load_s=2.0),
        )
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
    WORKLOAD.model = model
    WORKLOAD.tokens = 32
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
    """Run the comparison; write ``compare.json`` and the plots into the results directory."""
    logging.basicConfig(level=logging.ERROR)
    status = litellm_status()
    if hosts:
        report = anyio.run(
            lambda: run_real(
                hosts, real.get("model") or WORKLOAD.model, real.get("slots") or 1, quick
            )
        )
    else:
        report = anyio.run(run_sim, quick, real.get("only") or "abcd")
    report["litellm"] = status
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    from .plots import plot  # matplotlib is optional, and slow to import

    report["plots"] = plot(report, out)
    write_json("compare.json", report)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import __doc__ as overview

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=overview)
    add_common_args(parser, "fewer hosts and rounds (CI)")
    parser.add_argument("--only", default="abcd", help="scenarios to run (simulated), e.g. 'cd'")
    args = parser.parse_args(argv)
    report = run(args.quick, args.hosts, model=args.model, slots=args.slots, only=args.only)
    cs = checks(report, args.quick)
    for c in cs:
        print(c.line())
    return 1 if any(c.gated and c.ok is False for c in cs) else 0
