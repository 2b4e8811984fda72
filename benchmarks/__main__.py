"""Every benchmark, one command: ``python -m benchmarks [--quick] [--hosts URL ...]``.

Runs bench_sim, bench_dag, bench_failover, bench_agent, bench_compare, bench_soak (and bench_proxy, when
that module exists), each in this order, then writes ``benchmarks/results/summary.md``: one Markdown table
with every figure, its goal and whether it was met. Each benchmark also writes its JSON to
``benchmarks/results/``. The exit status is non-zero when a benchmark fails or a quick-mode
check is missed. With ``--hosts``, only the comparisons run, against those real Ollama hosts
(the other benchmarks need the simulator's controls: kills, faults, exact timing).

Absolute timings depend on the machine; only ratios measured side by side are checked.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Sequence

from . import bench_agent, bench_dag, bench_failover, bench_sim, bench_soak, compare
from .common import FULL_RESULTS, Check, add_common_args, read_json, results_dir, use_results


def _optional(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{name}":
            raise
        return None


def sim_checks(quick: bool) -> List[Check]:
    rows = read_json("sim.json").get("rows", [])
    tol = bench_sim.QUICK_TOLERANCE if quick else bench_sim.TOLERANCE
    return [
        Check(
            "sim",
            f"simulator: {r['metric']}",
            f"{r['measured']:.2f} {r['unit']} ({r['ratio']:.3f}x the profile)",
            f"within {tol:.0%} of the profile",
            abs(r["ratio"] - 1) <= tol,
            gated=True,
        )
        for r in rows
    ]


def dag_checks(quick: bool) -> List[Check]:
    d = read_json("dag.json")
    if not d:
        return []
    goal = bench_dag.speedup_goal(quick)
    us = d["scheduler_us_per_task"]
    return [
        Check(
            "dag",
            f"{d['independent_tasks']} independent tasks: 2 hosts vs 1",
            f"{d['two_host_speedup']:.2f}x",
            f">= {goal}x",
            d["two_host_speedup"] >= goal,
            gated=True,
        ),
        Check(
            "dag",
            "uneven DAG: waves makespan / eager makespan",
            f"{d['eager_vs_waves']:.2f}x",
            "> 1.0x",
            d["eager_vs_waves"] > 1.0,
            gated=True,
        ),
        Check(
            "dag",
            "uneven DAG: sequential / eager",
            f"{d['eager_vs_sequential']:.2f}x",
            "-",
            None,
        ),
        *(
            Check(
                "dag",
                f"{label}: {name} makespan / best possible (lower bound)",
                f"{figures['vs_lower_bound']:.2f}x"
                + (
                    f" ({figures['vs_best_found']:.2f}x the best schedule found)"
                    if "vs_best_found" in figures
                    else ""
                ),
                "reported (issue 18: within 1.05x)",
                None,
            )
            for label, ref in d.get("best_possible", {}).items()
            for name, figures in ref["contenders"].items()
        ),
        Check(
            "dag",
            "scheduler overhead, eager (10,000 tasks)",
            f"{us['eager']:.1f} us/task"
            + (
                f", {us['eager'] / us['bare']:.2f}x a bare graphlib + anyio executor"
                if "bare" in us
                else ""
            ),
            f"< {bench_dag.QUICK_US_PER_TASK} us/task"
            if quick
            else f"<= {bench_dag.SCHEDULER_VS_BARE:.0f}x the bare executor",
            bench_dag.overhead_ok(us, quick) if quick or "bare" in us else None,
            gated=True,
        ),
    ]


def failover_checks(quick: bool) -> List[Check]:
    d = read_json("failover.json")
    if not d:
        return []
    k, c = d["kill"], d["chaos"]
    return [
        Check(
            "failover",
            "kill one of two hosts mid-run: requests lost",
            f"{k['lost']} of {k['requests']}",
            "0",
            k["lost"] == 0 and k["completed"] == k["requests"],
            gated=True,
        ),
        Check(
            "failover",
            "kill -> rerouted success, p95",
            f"{k['reroute_p95_ms']:.0f} ms",
            "< 100 ms",
            k["reroute_p95_ms"] < 100,
            gated=False,
        ),
        Check(
            "failover",
            f"chaos ({c['error_rate']:.0%} errors per attempt): success rate",
            f"{c['success_rate']:.2%} of {c['requests']}"
            f" ({c['expected_rate']:.2%} expected from {c['attempts']} attempts)",
            f"<= {c['allowed_failures']} failed (the retry budget's 99th percentile)",
            c["requests"] - c["succeeded"] <= c["allowed_failures"],
            gated=False,
        ),
    ]


def write_summary(
    checks: List[Check], exits: Dict[str, int], quick: bool, hosts: Optional[Sequence[str]]
) -> str:
    lines = [
        "# Benchmark summary",
        "",
        f"Mode: {'quick' if quick else 'full'}; hosts: "
        + (", ".join(hosts) if hosts else "simulated (subprocesses on loopback)")
        + f"; machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        + f"{platform.system()} {platform.machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Only ratios measured side by side are checked; absolute figures are printed, never "
        "asserted. *gated*: a miss fails `python -m benchmarks --quick`.",
        "",
        "| bench | figure | value | goal | result |",
        "|---|---|---|---|---|",
    ]
    lines += [c.summary_row() for c in checks]
    lines += ["", "| benchmark | exit status |", "|---|---|"]
    lines += [f"| {name} | {code} |" for name, code in exits.items()]
    text = "\n".join(lines) + "\n"
    results_dir().mkdir(parents=True, exist_ok=True)
    (results_dir() / "summary.md").write_text(text, encoding="utf-8")
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_common_args(parser, "CI: under 2 minutes")
    parser.add_argument(
        "--results",
        type=Path,
        help="where to write results (default: benchmarks/results, or results/quick with --quick)",
    )
    args = parser.parse_args(argv)
    proxy = _optional("bench_proxy")
    use_results(args.results or (FULL_RESULTS / "quick" if args.quick else FULL_RESULTS))
    flag = ["--quick"] if args.quick else []
    exits: Dict[str, int] = {}
    checks: List[Check] = []
    started = time.perf_counter()

    def step(name: str, fn: Callable[[], int]) -> None:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        exits[name] = fn()
        print(f"== {name}: exit {exits[name]} in {time.perf_counter() - t0:.0f}s", flush=True)

    if not args.hosts:
        step(
            "bench_sim",
            lambda: bench_sim.main(
                ["--tokens", "400", "--tolerance", str(bench_sim.QUICK_TOLERANCE)]
                if args.quick
                else []
            ),
        )
        checks += sim_checks(args.quick)
        step("bench_dag", lambda: bench_dag.main(flag))
        checks += dag_checks(args.quick)
        step("bench_failover", lambda: bench_failover.main(flag))
        checks += failover_checks(args.quick)
        step("bench_agent", lambda: bench_agent.main(flag))
        checks += bench_agent.checks(read_json("agent.json"), args.quick)
    compare_args = list(flag)
    if args.hosts:
        compare_args += ["--hosts", *args.hosts, "--slots", str(args.slots)]
        if args.model:
            compare_args += ["--model", args.model]
    step("bench_compare", lambda: compare.main(compare_args))
    checks += compare.checks(read_json("compare.json"), args.quick)
    if not args.hosts:  # the soak abuses the proxy on a simulated fleet
        step("bench_soak", lambda: bench_soak.main(flag))
        checks += bench_soak.checks(args.quick)
    if proxy is not None and not args.hosts:
        step("bench_proxy", lambda: int(proxy.main(flag)))
        proxy_checks = getattr(proxy, "checks", None)
        if proxy_checks is not None:
            checks += proxy_checks(args.quick)
    print(write_summary(checks, exits, args.quick, args.hosts))
    print(f"all benchmarks in {time.perf_counter() - started:.0f}s")
    missed = [c for c in checks if c.gated and c.ok is False]
    if args.quick:
        return 1 if missed or any(exits.values()) else 0
    return 1 if any(c.ok is False for c in checks) or any(exits.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
