"""DAG figures: two hosts vs one, eager vs waves vs sequential, and the scheduler's own cost.

Run from the repo root: ``python -m benchmarks.bench_dag [--quick]``.

1. Independent tasks on one simulated host, then on two identical ones: the makespan ratio
   (goal: about 2x).
2. A DAG with uneven task lengths on one two-slot host: the orchestra (``hybrid``,
   ``eager``, ranks from the cost model, look-ahead) side by side with ``eager`` without
   look-ahead, ``waves``, ``sequential`` and ``least_loaded`` (eager should beat waves).
3. A two-model pipeline on two hosts (issue 18): a chain of the warm model, then a stage of a
   model loaded nowhere; with and without look-ahead, the cold loads paid, hidden by a
   preload, and paid on the critical chain.
4. The best possible makespan of each DAG on its fleet under the simulator's timing model
   (``makespan_bound``): a proven lower bound and, for the small DAGs, the best list
   schedule found; each contender's makespan over them is reported (goal: the orchestra
   within 5% of the bound on the uneven DAG).
5. The demo's pipelines on the preset fleet (full runs only): the orchestra side by side with
   ``eager`` without look-ahead, ``waves`` and ``least_loaded``, each over the demo's lower
   bound and best schedule found (issue 18's first goal: within 5% of the optimum).
6. Scheduler overhead: 10,000 tasks (a wide layer and chains) against an instant backend, so
   only the executor's own work is timed: microseconds per task, median of 5 runs, next to
   the least a graphlib + anyio executor does (:func:`bare_dag`), run alternately with it.
   Goal: full runs, within :data:`SCHEDULER_VS_BARE` of it (a ratio: the machines are
   noisy); quick mode, under :data:`QUICK_US_PER_TASK` us (issue 8).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import anyio

from ollama_orchestra import (
    ColdLoads,
    GenerateResponse,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    Server,
)
from ollama_orchestra._demo import demo_bounds, demo_run, plan
from ollama_orchestra._executor import Task, run_dag
from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet

from .common import write_json
from .makespan_bound import Bounds, bounds, host_spec, reference, reference_line, task_specs

if sys.version_info >= (3, 9):
    import graphlib
else:  # graphlib-backport installs the same module name, without type information.
    import graphlib  # type: ignore[import-untyped,unused-ignore]

MODEL = "work:latest"
#: The second model of the two-model pipeline: loaded nowhere at the start.
LATER = "later:latest"
#: Its cold load, simulated seconds.
LATER_LOAD_S = 1.5

#: The uneven DAG's time scale: slower than the others, so the client's real-time overhead (a
#: few milliseconds a request) weighs less as simulated seconds (at 0.05 it was 4 points of
#: the orchestra's 9% over the optimum).
UNEVEN_SCALE = 0.2
#: The demo's time scale here (its own default).
DEMO_SCALE = 0.05
#: The contenders on the uneven DAG (and, but for ``sequential``, the demo's pipelines): (strategy, schedule, look-ahead).
CONTENDERS = {
    "orchestra": ("hybrid", "eager", True),
    "eager, no look-ahead": ("hybrid", "eager", False),
    "waves": ("hybrid", "waves", False),
    "least_loaded": ("least_loaded", "eager", False),
    "sequential": ("hybrid", "sequential", False),
}


def profile(name: str) -> HostProfile:
    return HostProfile(
        name,
        (
            ModelSpec(MODEL, size_gb=1, decode_tps=100.0, load_s=0.01),
            ModelSpec(LATER, size_gb=1, decode_tps=100.0, load_s=LATER_LOAD_S),
        ),
        num_parallel=2,
    )


async def run_on(
    hosts: int,
    tasks: Sequence[Task],
    schedule: str,
    time_scale: float,
    strategy: str = "least_loaded",
    lookahead: bool = False,
) -> Tuple[float, ColdLoads]:
    """The makespan (simulated seconds) and cold loads of ``tasks`` on ``hosts`` fresh
    hosts, ``MODEL`` warmed on the first by one request."""
    async with SimFleet(
        [profile(f"h{i + 1}") for i in range(hosts)], time_scale=time_scale, mode="subprocess"
    ) as fleet:
        servers = tuple(Server(s.name, s.url, max_concurrency=2) for s in fleet.servers)
        cfg = OrchestraConfig(servers=servers, strategy=strategy, health=HealthPolicy(interval_s=5))
        async with Orchestra(cfg) as orch:
            # Raw, so it shares no token with the tasks' prompts (each starts with the chat
            # template): the caches hold nothing the DAG can reuse, as :func:`references`
            # assumes.
            await orch.generate(MODEL, "warm", raw=True, options={"num_predict": 1})
            result = await orch.run(list(tasks), schedule=schedule, lookahead=lookahead)
            assert result.ok, [r.error_message for r in result.results if not r.ok]
            return float(result.makespan_s) / time_scale, result.cold_loads


async def demo_makespan(strategy: str, schedule: str, lookahead: bool) -> float:
    """The demo's pipelines on the preset fleet, warm as the demo leaves it (simulated s)."""
    demo = plan()
    names = [h.name for h in demo.hosts]
    result, _, _ = await demo_run(demo, names, DEMO_SCALE, strategy, lookahead, schedule)
    assert result.ok, [r.error_message for r in result.results if not r.ok]
    return float(result.makespan_s) / DEMO_SCALE


async def makespan(hosts: int, tasks: Sequence[Task], schedule: str, time_scale: float) -> float:
    return (await run_on(hosts, tasks, schedule, time_scale))[0]


def references(n: int = 16) -> Dict[str, Bounds]:
    """The bounds of the DAGs run here, on the fleets they run on (hosts as :func:`makespan`
    configures them: every model cold but for the one warm-up request, which the bound
    leaves out), prompts included: the uneven DAG's second stage carries the first stage's
    answers (b0 evaluates a0's 400 tokens), and caches start with nothing of them (the
    warm-up is a raw prompt)."""

    def fleet(hosts: int) -> List[Any]:
        return [host_spec(profile(f"h{i + 1}"), max_concurrent=2) for i in range(hosts)]

    return {
        "independent, 1 host": bounds(task_specs(independent(n)), fleet(1)),
        "independent, 2 hosts": bounds(task_specs(independent(n)), fleet(2)),
        "uneven DAG": bounds(task_specs(uneven()), fleet(1), local=300),
        "two-model pipeline": bounds(task_specs(two_model()), fleet(2), local=300),
    }


def two_model() -> List[Task]:
    """A chain of three ``MODEL`` tasks, then four ``LATER`` tasks on its last answer: the
    second stage's model is loaded nowhere, and a preload can hide its load behind the chain."""
    tasks = [Task("a0", model=MODEL, prompt="a0", options={"num_predict": 100})]
    for i in (1, 2):
        tasks.append(
            Task(
                f"a{i}",
                model=MODEL,
                prompt=f"a{i} {{a{i - 1}}}",
                depends_on=[f"a{i - 1}"],
                options={"num_predict": 100},
            )
        )
    for i in range(4):
        tasks.append(
            Task(
                f"b{i}",
                model=LATER,
                prompt=f"b{i} {{a2}}",
                depends_on=["a2"],
                options={"num_predict": 100},
            )
        )
    return tasks


def independent(n: int) -> List[Task]:
    return [
        Task(f"t{i}", model=MODEL, prompt=f"task {i}", options={"num_predict": 100})
        for i in range(n)
    ]


def uneven() -> List[Task]:
    """Two stages; in each, one long task and several short ones; stage 2 waits on stage 1's
    matching task only, so eager can start it while stage 1's long task still runs."""
    tasks: List[Task] = []
    for i in range(4):
        n = 400 if i == 0 else 50
        tasks.append(
            Task(f"a{i}", model=MODEL, prompt=f"a{i}", options={"num_predict": n}, estimate=n)
        )
    for i in range(4):
        n = 400 if i == 1 else 50
        tasks.append(
            Task(
                f"b{i}",
                model=MODEL,
                prompt=f"b{i} {{a{i}}}",
                depends_on=[f"a{i}"],
                options={"num_predict": n},
                estimate=n,
            )
        )
    return tasks


class Instant:
    """A backend that answers at once: only the executor's own work is left to time."""

    async def generate(self, model: str, prompt: str = "", **kw: Any) -> GenerateResponse:
        return GenerateResponse(response="x", server="instant")

    async def chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], **kw: Any
    ) -> GenerateResponse:
        return GenerateResponse(response="x", server="instant")


def big_dag(n: int) -> List[Task]:
    """A wide first layer, then chains of four on each tenth task."""
    tasks = [Task(f"w{i}", model=MODEL, prompt="x") for i in range(n // 2)]
    i = 0
    while len(tasks) < n:
        root = f"w{(i * 10) % (n // 2)}"
        prev = root
        for j in range(4):
            if len(tasks) >= n:
                break
            tid = f"c{i}_{j}"
            tasks.append(Task(tid, model=MODEL, prompt="y", depends_on=[prev]))
            prev = tid
        i += 1
    return tasks


def speedup_goal(quick: bool) -> float:
    """Independent tasks on 2 hosts vs 1 (quick: a loose regression check)."""
    return 1.6 if quick else 1.8


#: Quick mode: the executor's cost per task, in microseconds (issue 8's loose regression check).
QUICK_US_PER_TASK = 300
#: Full runs: the executor's cost per task over :func:`bare_dag`'s, measured side by side (a
#: ratio: the machines are noisy; the absolute goal of 100 us failed at 100.2 us on a machine
#: that ran everything 1.8x slower). Measured 1.1-1.3x: spawning anyio tasks is most of it.
SCHEDULER_VS_BARE = 2.0


async def bare_dag(backend: Instant, tasks: Sequence[Task]) -> List[GenerateResponse]:
    """The least an executor on graphlib and anyio does for ``tasks``: start each ready task
    in a task group, store its answer, release its dependents; results in input order. No
    validation, prompts, priorities, retries or report: the baseline of the overhead ratio."""
    order = graphlib.TopologicalSorter({t.id: t.depends_on for t in tasks})
    order.prepare()
    by_id = {t.id: t for t in tasks}
    answers: Dict[str, GenerateResponse] = {}
    send, receive = anyio.create_memory_object_stream[str](len(tasks))

    async def one(t: Task) -> None:
        answers[t.id] = await backend.generate(t.model, t.prompt or "")
        await send.send(t.id)

    async with send, receive, anyio.create_task_group() as tg:
        while order.is_active():
            for tid in order.get_ready():
                tg.start_soon(one, by_id[tid])
            order.done(await receive.receive())
    return [answers[t.id] for t in tasks]


async def overhead(n: int, repeats: int = 5) -> Dict[str, float]:
    """Microseconds per task, the median of ``repeats`` runs of ``n`` tasks per schedule, and
    of :func:`bare_dag` (alternating; each from a collected heap). One run on this VM varies by
    +-30%."""
    tasks = big_dag(n)
    samples: Dict[str, List[float]] = {"eager": [], "waves": [], "bare": []}
    for _ in range(repeats):
        for schedule in samples:
            gc.collect()
            t0 = time.perf_counter()
            if schedule == "bare":
                done = len(await bare_dag(Instant(), tasks))
            else:
                r = await run_dag(Instant(), tasks, schedule=schedule)
                assert r.ok
                done = len(r.results)
            elapsed = time.perf_counter() - t0
            assert done == n
            samples[schedule].append(1e6 * elapsed / n)
    return {schedule: statistics.median(us) for schedule, us in samples.items()}


def overhead_ok(per_task: Mapping[str, float], quick: bool) -> bool:
    """Quick: under :data:`QUICK_US_PER_TASK`; full: within :data:`SCHEDULER_VS_BARE` of the
    bare executor measured in the same run."""
    if quick:
        return per_task["eager"] < QUICK_US_PER_TASK
    return per_task["eager"] <= SCHEDULER_VS_BARE * per_task["bare"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_dag", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    scale = 0.05
    n = 16 if args.quick else 32
    one = anyio.run(makespan, 1, independent(n), "eager", scale)
    two = anyio.run(makespan, 2, independent(n), "eager", scale)
    spans: Dict[str, float] = {}
    for name, (strategy, schedule, look) in CONTENDERS.items():
        spans[name] = anyio.run(run_on, 1, uneven(), schedule, UNEVEN_SCALE, strategy, look)[0]
    # the names the earlier reports used
    spans["eager"] = spans["eager, no look-ahead"]
    piped: Dict[str, float] = {}
    cold: Dict[str, Dict[str, int]] = {}
    for name, look in (("look-ahead", True), ("no look-ahead", False)):
        span, loads = anyio.run(run_on, 2, two_model(), "eager", scale, "hybrid", look)
        piped[name] = span
        cold[name] = {
            "paid": loads.paid,
            "hidden": loads.hidden,
            "preloads": loads.preloads,
            "on_critical_path": loads.on_critical_path,
        }
    per_task = anyio.run(overhead, 10_000, 3 if args.quick else 5)
    refs = references(n)
    demo_spans: Dict[str, float] = {}
    if not args.quick:
        demo_spans = {
            name: anyio.run(demo_makespan, strategy, schedule, look)
            for name, (strategy, schedule, look) in CONTENDERS.items()
            if name != "sequential"
        }
        refs["demo pipelines"] = demo_bounds(search=True)
    uneven_measured = {k: v for k, v in spans.items() if k != "eager"}
    measured = {
        "independent, 1 host": {"eager": one},
        "independent, 2 hosts": {"eager": two},
        "uneven DAG": uneven_measured,
        "two-model pipeline": piped,
    }
    if demo_spans:
        measured["demo pipelines"] = demo_spans
    report: Dict[str, Any] = {
        "independent_tasks": n,
        "one_host_makespan_s": one,
        "two_hosts_makespan_s": two,
        "two_host_speedup": one / two,
        "uneven_makespan_s": spans,
        "eager_vs_waves": spans["waves"] / spans["eager"],
        "eager_vs_sequential": spans["sequential"] / spans["eager"],
        "orchestra_vs_bound": spans["orchestra"] / refs["uneven DAG"].lower,
        "two_model_pipeline_makespan_s": piped,
        "cold_loads": cold,
        "scheduler_us_per_task": per_task,
        "best_possible": {k: reference(refs[k], measured[k]) for k in refs},
    }
    print(
        f"{n} independent tasks: 1 host {one:.1f}s, 2 hosts {two:.1f}s (simulated): {one / two:.2f}x (goal ~2x)"
    )
    print(
        "uneven DAG makespan: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in uneven_measured.items())
        + f": waves/eager {report['eager_vs_waves']:.2f}x, sequential/eager {report['eager_vs_sequential']:.2f}x"
    )
    for name, c in cold.items():
        print(
            f"two-model pipeline, {name}: makespan {piped[name]:.2f}s; cold loads paid {c['paid']}"
            f" (on the critical chain {c['on_critical_path']}), hidden by a preload {c['hidden']}"
            f" ({c['preloads']} preloads)"
        )
    goal = (
        f"goal < {QUICK_US_PER_TASK} us/task"
        if args.quick
        else f"goal: eager <= {SCHEDULER_VS_BARE:.0f}x bare"
    )
    print(
        f"scheduler overhead on 10,000 tasks: eager {per_task['eager']:.1f} us/task, waves"
        f" {per_task['waves']:.1f} us/task, a bare graphlib + anyio executor"
        f" {per_task['bare']:.1f} us/task: eager {per_task['eager'] / per_task['bare']:.2f}x"
        f" bare ({goal})"
    )
    for label, b in refs.items():
        print(reference_line(label, b, measured[label]))
    write_json("dag.json", report)
    ok = (
        report["two_host_speedup"] >= speedup_goal(args.quick)
        and report["eager_vs_waves"] > 1.0
        and overhead_ok(per_task, args.quick)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
