"""``ollama-orchestra demo``: a coding team's pipelines on the simulated preset fleet.

The fleet is the simulator's preset (:func:`ollama_orchestra.sim.preset_fleet`), and every
model name, host name, slot count and speed the demo uses is read from it (:func:`plan`),
so the demo cannot drift from the simulator. The demo runs the pipelines twice: on the
fastest host alone (the user's setup today), then on the whole fleet, and prints the
speed-up and the fleet's capacity bound.

The pipelines are agent-shaped (issue 14): every prompt starts with the same repository
context (``{context}``, :data:`CONTEXT_TOKENS` tokens), and grows as a real pipeline's do:
coding tasks carry the plan, QA carries the plan and the code, debugging the plan and every
review. Ollama reuses a slot's cached prefix, so the demo also prints the prefill time saved:
from each answer's ``prompt_eval_count`` (every prompt token) and ``prompt_eval_duration``
(only the evaluated ones), the tokens not re-evaluated at the rate learned from the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, TextIO, Tuple

from ._client import Orchestra
from ._config import OrchestraConfig, Server
from ._executor import DagResult, Task, run_dag
from ._metrics import MetricsSnapshot
from ._report import summary

if TYPE_CHECKING:
    from .sim import HostProfile
    from .sim._schedules import Bounds

__all__ = [
    "CONTEXT_TOKENS",
    "PIPELINES",
    "DemoPlan",
    "PrefillTally",
    "allowance",
    "capacity_bound",
    "concurrency",
    "demo_bounds",
    "demo_inputs",
    "demo_run",
    "pipeline_dag",
    "plan",
    "repository_context",
    "run_demo",
]

#: The independent feature pipelines the demo runs.
PIPELINES = ("auth", "sync", "export")
#: Coding tasks (each with its QA task) per pipeline.
PARTS = 4
#: Which kind of model each role of the pipeline needs: ``general`` is the preset's smaller
#: chat model, ``coder`` its larger one.
ROLE_KINDS = {"planning": "general", "coding": "coder", "qa": "general", "debugging": "coder"}
#: Tokens (the simulator's, about 4 characters each) of the repository context every prompt
#: starts with.
CONTEXT_TOKENS = 3000


def repository_context(tokens: int = CONTEXT_TOKENS) -> str:
    """The system prompt and repository context every task of the demo starts with."""
    words = ("def", "class", "return", "import", "async", "await", "test", "config", "server")
    text = "You are one of a coding team's agents. The repository:\n"
    body = " ".join(f"{words[i % len(words)]}_{i % 97}" for i in range(tokens // 2))
    return text + body


def pipeline_dag(features: Sequence[str] = PIPELINES, parts: int = PARTS) -> List[Task]:
    """The user's pipeline, once per feature: plan, parallel coding, QA of each part, debugging.

    The features are independent of each other, as a team's pipelines are; within one, each
    step waits for the step before.
    """
    tasks: List[Task] = []
    for f in features:
        tasks.append(
            Task(
                f"{f}_plan",
                model="planning",
                prompt=f"{{context}}\nPlan the {f} feature of {{goal}}",
                options={"num_predict": 300},
            )
        )
        for i in range(parts):
            code, qa = f"{f}_code_{i}", f"{f}_qa_{i}"
            tasks.append(
                Task(
                    code,
                    model="coding",
                    prompt=f"{{context}}\nThe plan:\n{{{f}_plan}}\nImplement part {i}.",
                    depends_on=[f"{f}_plan"],
                    options={"num_predict": 400},
                )
            )
            tasks.append(
                Task(
                    qa,
                    model="qa",
                    prompt=f"{{context}}\nThe plan:\n{{{f}_plan}}\nReview part {i}:\n{{{code}}}",
                    depends_on=[code, f"{f}_plan"],
                    options={"num_predict": 150},
                )
            )
        qa_ids = [f"{f}_qa_{i}" for i in range(parts)]
        tasks.append(
            Task(
                f"{f}_debug",
                model="debugging",
                prompt=f"{{context}}\nThe plan:\n{{{f}_plan}}\nFix what QA found:\n"
                + "\n".join("{" + q + "}" for q in qa_ids),
                depends_on=[*qa_ids, f"{f}_plan"],
                options={"num_predict": 300},
            )
        )
    return tasks


@dataclass(frozen=True)
class DemoPlan:
    """What the demo takes from the preset fleet."""

    hosts: Tuple[HostProfile, ...]
    #: The host that runs everything in the first run (the fastest).
    alone: HostProfile
    #: Role name -> model name.
    roles: Dict[str, str]
    #: Host name -> the models it keeps loaded in steady state (the largest that fit its VRAM).
    warm: Dict[str, Tuple[str, ...]]


def plan() -> DemoPlan:
    """Roles, warm models and hosts, from :func:`ollama_orchestra.sim.preset_fleet`."""
    from .sim import preset_fleet

    hosts = preset_fleet()
    chat = sorted(
        {m.name: m for h in hosts for m in h.models if "embedding" not in m.capabilities}.values(),
        key=lambda m: m.size_gb,
    )
    models = {"general": chat[0].name, "coder": chat[-1].name}
    warm: Dict[str, Tuple[str, ...]] = {}
    for h in hosts:
        room, keep = h.vram_gb or float("inf"), []
        for m in reversed(chat):  # the largest first: it is the one a cold load costs most
            if m.size_gb <= room:
                keep.append(m)
                room -= m.size_gb
        warm[h.name] = tuple(m.name for m in sorted(keep, key=lambda m: m.size_gb))
    return DemoPlan(
        hosts=hosts,
        alone=max(hosts, key=lambda h: h.speed),
        roles={role: models[kind] for role, kind in ROLE_KINDS.items()},
        warm=warm,
    )


@dataclass
class PrefillTally:
    """Prompt evaluation as the answers report it, per (server, model): ``prompt_eval_count``
    (every prompt token) and ``prompt_eval_duration`` (only the evaluated ones, seconds)."""

    answers: List[Tuple[str, str, int, float]]

    def rates(self) -> Dict[Tuple[str, str], float]:
        """Prompt tokens/s per (server, model), learned from its least cached answer (the
        lowest apparent rate: cached tokens only make an answer look faster)."""
        out: Dict[Tuple[str, str], float] = {}
        for server, model, count, seconds in self.answers:
            if count > 0 and seconds > 0:
                key = (server, model)
                out[key] = min(out.get(key, float("inf")), count / seconds)
        return out

    def totals(self) -> Tuple[int, float, float]:
        """Prompt tokens, the estimated tokens evaluated, and the estimated seconds saved."""
        rates = self.rates()
        total, evaluated, saved = 0, 0.0, 0.0
        for server, model, count, seconds in self.answers:
            rate = rates.get((server, model))
            total += count
            if rate is None:
                evaluated += count
                continue
            done = min(float(count), seconds * rate)
            evaluated += done
            saved += (count - done) / rate
        return total, evaluated, saved


class _Recording:
    """The orchestra, recording each answer's prompt evaluation figures (for the tally)."""

    def __init__(self, orch: Orchestra) -> None:
        self._orch = orch
        self.tally = PrefillTally([])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._orch, name)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        r = await self._orch.generate(*args, **kwargs)
        self.tally.answers.append(
            (
                r.server,
                r.model,
                r.prompt_eval_count or 0,
                (r.prompt_eval_duration or 0) / 1e9,
            )
        )
        return r


def concurrency(profile: HostProfile) -> int:
    """The ``max_concurrency`` the demo gives a host's server: its slots."""
    return profile.num_parallel


def demo_inputs() -> Dict[str, str]:
    """The demo's inputs: the goal, and the repository context every prompt starts with."""
    return {"goal": "a CLI todo app with sync", "context": repository_context()}


def demo_bounds(
    demo: Optional[DemoPlan] = None,
    names: Optional[Sequence[str]] = None,
    *,
    search: bool = False,
) -> Bounds:
    """The best possible makespan of the demo's DAG on ``names`` (default: the whole fleet),
    warm as the demo leaves it and with the servers' concurrency it configures, under the
    simulator's timing model: a proven lower bound (``sim/_makespan.py``), and with
    ``search`` the best schedule found (``sim/_schedules.py``: list schedules, then a local
    search that pins tasks to hosts and holds some back; a few seconds)."""
    from .sim._makespan import host_spec, task_specs
    from .sim._schedules import bounds

    demo = demo or plan()
    hosts = [
        host_spec(h, loaded=demo.warm.get(h.name, ()), max_concurrent=concurrency(h))
        for h in demo.hosts
        if names is None or h.name in names
    ]
    tasks = task_specs(pipeline_dag(), roles=demo.roles, inputs=demo_inputs())
    return bounds(tasks, hosts, search=search, budget=50, local=300)


async def demo_run(
    demo: DemoPlan,
    names: Sequence[str],
    time_scale: float,
    strategy: str,
    lookahead: bool = True,
    schedule: str = "eager",
) -> Tuple[DagResult, MetricsSnapshot, PrefillTally]:
    """One run of the demo's pipelines on ``names`` of a fresh simulated fleet, warm as the
    demo leaves it: the result, the orchestra's metrics and the prompt evaluation tally."""
    import httpx

    from .sim import SimFleet

    async with SimFleet(demo.hosts, time_scale=time_scale, mode="subprocess") as fleet:
        async with httpx.AsyncClient(timeout=600) as http:
            for s in fleet.servers:
                for model in demo.warm.get(s.name, ()):
                    r = await http.post(
                        s.url + "/api/generate", json={"model": model, "keep_alive": -1}
                    )
                    r.raise_for_status()
        servers = tuple(
            Server(s.name, s.url, max_concurrency=concurrency(s.profile), weight=s.profile.speed)
            for s in fleet.servers
            if s.name in names
        )
        config = OrchestraConfig(servers=servers, roles=demo.roles, strategy=strategy)
        async with Orchestra(config) as orch:
            orch.reset_metrics()
            runner = _Recording(orch)
            result = await run_dag(
                runner,
                pipeline_dag(),
                inputs=demo_inputs(),
                lookahead=lookahead,
                schedule=schedule,
            )
            return result, orch.metrics(), runner.tally


async def run_demo(out: TextIO, scale: float, strategy: str) -> int:
    """The demo's two runs and its report on ``out``; 0 when every task of both ran ok."""
    demo = plan()
    alone = demo.alone
    others = [h for h in demo.hosts if h is not alone]
    for n, h in enumerate(others):
        lead = "Simulated fleet: " if n == 0 else " " * 17
        out.write(
            f"{lead}{h.name} ({h.vram_gb or 0:.0f} GB-class: slower, {h.num_parallel} slots,"
            " one large model at a time)\n"
        )
    slower = min(h.speed for h in demo.hosts)
    out.write(
        f"                 {alone.name} ({alone.vram_gb or 0:.0f} GB-class: "
        f"{alone.speed / slower:.1f}x faster, {alone.num_parallel} slots, every model loaded)\n"
    )
    out.write(
        f"Work: {len(PIPELINES)} feature pipelines, each plan -> {PARTS} coding tasks -> QA of each -> debugging ({len(pipeline_dag())} tasks),\n"
        f"      every prompt starting with the same {CONTEXT_TOKENS:,}-token repository context\n"
    )
    out.write(f"time_scale={scale}: durations below are simulated seconds\n\n")
    out.write(f"1) today's setup: everything on {alone.name}\n")
    one, _, _ = await demo_run(demo, [alone.name], scale, strategy)
    out.write(
        f"   makespan {one.makespan_s / scale:,.1f}s, {sum(r.ok for r in one.results)}/{len(one.results)} tasks ok\n\n"
    )
    names = [h.name for h in demo.hosts]
    out.write(f"2) the orchestra on {' + '.join(names)} (strategy {strategy})\n")
    both, metrics, tally = await demo_run(demo, names, scale, strategy)
    out.write(
        f"   makespan {both.makespan_s / scale:,.1f}s, {sum(r.ok for r in both.results)}/{len(both.results)} tasks ok\n"
    )
    best = demo_bounds(demo, names, search=True)
    floor = best.lower
    span = both.makespan_s / scale
    out.write(
        f"   best possible makespan >= {floor:,.1f}s (lower bound under the simulator's timing"
        f" model): this run took {span / floor:.2f}x that\n"
    )
    if best.best is not None:
        found = best.best.makespan
        out.write(
            f"   best schedule found {found:,.1f}s (same model and per-slot prompt caches;"
            f" {len(best.best.holds)} holds of a task for a sibling, {len(best.best.placed)}"
            f" tasks pinned to a host):\n"
            f"   this run took {span / found:.2f}x that; the optimum lies between"
            f" {floor:,.1f}s and {found:,.1f}s\n"
        )
    c = both.cold_loads
    out.write(
        f"   cold loads: {c.paid} paid ({c.on_critical_path} on the critical chain),"
        f" {c.hidden} hidden by loading a model ahead of its stage ({c.preloads} preloads)\n"
    )
    summary(both, metrics, out, scale=scale)
    speedup = one.makespan_s / both.makespan_s if both.makespan_s else 0.0
    out.write(f"\nspeed-up over {alone.name} alone: {speedup:.2f}x\n")
    total, evaluated, saved = tally.totals()
    share = 1 - evaluated / total if total else 0.0
    out.write(
        f"prefill time saved: {saved:,.1f}s ({evaluated:,.0f} of {total:,} prompt tokens "
        f"evaluated, {share:.0%} served from the hosts' prompt caches)\n"
    )
    util = ", ".join(f"{s.name} {s.utilization:.0%}" for s in metrics.servers.values())
    out.write(f"utilization: {util}; imbalance {metrics.imbalance:.1%}\n")
    bound = capacity_bound(demo)
    out.write(
        f"(the fleet's decode capacity is {bound:.2f}x {alone.name}'s alone: the most any balancer can gain here)\n"
    )
    for line in allowance(demo):
        out.write(line + "\n")
    return 0 if one.ok and both.ok else 1


def allowance(demo: DemoPlan) -> List[str]:
    """What the DAG and the hosts' memory allow, in words: why utilization and the share of
    tasks cannot follow the hosts' capacity (read from the plan and the pipeline)."""
    tasks = pipeline_dag()
    model_of = {t.id: demo.roles.get(t.model, t.model) for t in tasks}
    lines = ["what the DAG allows:"]
    for h in demo.hosts:
        chat = {m for m in model_of.values() if any(x.name == m for x in h.models)}
        warm = set(demo.warm.get(h.name, ()))
        if chat <= warm:
            continue
        held = sorted(warm & chat)
        mine = sum(1 for m in model_of.values() if m in held)
        others = sorted({t.model for t in tasks if model_of[t.id] not in held})
        lines.append(
            f"  {h.name} holds one of the pipeline's {len(chat)} models at a time"
            f" ({', '.join(held)}): it can take only {mine} of the {len(tasks)} tasks without a"
            f" {max(x.cold_load_s for x in h.models if x.name in chat):.0f}s-class reload, so it"
            f" idles while the other model's stages ({', '.join(others)}) run, or reloads"
        )
    first = [t for t in tasks if not t.depends_on]
    last = [t for t in tasks if not any(t.id in u.depends_on for u in tasks)]
    slots = sum(concurrency(h) for h in demo.hosts)
    lines.append(
        f"  the first stage has {len(first)} tasks and the last {len(last)}, for {slots} slots:"
        " part of the fleet idles at the start and the end whatever the schedule"
    )
    return lines


def _capacity_share(demo: DemoPlan, host: HostProfile) -> float:
    """The host's share of the fleet's slots times speed (the metrics' fair share)."""
    total = sum(concurrency(h) * h.speed for h in demo.hosts)
    return concurrency(host) * host.speed / total


def capacity_bound(demo: DemoPlan) -> float:
    """The fleet's aggregate decode capacity over the lone host's: the best possible speed-up."""
    from .sim import aggregate_speedup

    def capacity(p: HostProfile) -> float:
        return float(p.speed * aggregate_speedup(p.num_parallel))

    return sum(capacity(h) for h in demo.hosts) / capacity(demo.alone)
