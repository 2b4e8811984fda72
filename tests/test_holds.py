"""The executor's two look-ahead rules for hosts holding different models (issue 18): least
flexible first, and a ready task held back so another feeds a starved server sooner."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import httpx

from ollama_orchestra import Orchestra, Task, TaskResult
from ollama_orchestra._holds import ServerView, flexibility, plan_holds
from ollama_orchestra._ranks import order_priorities
from ollama_orchestra.sim import HostProfile, ModelSpec

from .conftest import OTHER, TINY, config_for, fleet

G, C = "general", "coder"


async def step(runner: Any, inputs: Mapping[str, str]) -> str:
    return "done"


def view(name: str, warm: Sequence[str], *, busy: bool = False, free: bool = True) -> ServerView:
    return ServerView(name, frozenset(warm), busy, free)


def pipelines(n: int = 3) -> Dict[str, Task]:
    """``n`` pipelines: a plan (model G), then two coding tasks (model C) on its answer."""
    tasks: List[Task] = []
    for i in range(n):
        tasks.append(Task(f"plan{i}", model=G, prompt="p"))
        for j in range(2):
            tasks.append(Task(f"code{i}{j}", model=C, prompt="c", depends_on=[f"plan{i}"]))
    return {t.id: t for t in tasks}


def dependents(tasks: Dict[str, Task]) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for t in tasks.values():
        for d in t.depends_on:
            out.setdefault(d, []).append(t.id)
    return out


MODELS = {tid: t.model for tid, t in pipelines().items()}
#: The demo's shape: one host holds the coder only, the other both models.
DEMO_FLEET = [view("small", [C]), view("big", [G, C])]


class TestFlexibility:
    def test_servers_holding_each_task_model(self) -> None:
        """A task counts the servers its model is loaded on."""
        flex = flexibility(MODELS, DEMO_FLEET)
        assert flex["plan0"] == 1 and flex["code00"] == 2

    def test_a_model_loaded_nowhere_is_as_flexible_as_the_most(self) -> None:
        """A cold model can be loaded anywhere: not ranked ahead as if only one server had it."""
        flex = flexibility({"a": "cold", "b": G, "c": C}, DEMO_FLEET)
        assert flex == {"a": 2, "b": 1, "c": 2}


class TestLeastFlexibleFirst:
    def test_fewer_warm_servers_first_then_rank(self) -> None:
        """A task only one server holds warm goes before one with a longer chain that two
        servers hold; within a class, the longer chain first."""
        tasks = {t: Task(t, model="m", prompt="x") for t in ("long", "mid", "short")}
        rank = {"long": 30.0, "mid": 20.0, "short": 5.0}
        plain = order_priorities(tasks, rank)
        assert plain["long"] > plain["mid"] > plain["short"]
        prio = order_priorities(tasks, rank, flex={"long": 2, "mid": 2, "short": 1})
        assert prio["short"] > prio["long"] > prio["mid"]

    def test_a_step_without_a_model_counts_as_the_most_flexible(self) -> None:
        """A custom step (no model, no flexibility) is not ranked ahead of the classes."""
        tasks = {t: Task(t, model="m", prompt="x") for t in ("tight", "loose")}
        tasks["step"] = Task("step", fn=step)
        rank = {"tight": 1.0, "loose": 2.0, "step": 3.0}
        prio = order_priorities(tasks, rank, flex={"tight": 1, "loose": 2})
        assert prio["tight"] > prio["step"] > prio["loose"]

    def test_an_explicit_priority_is_kept(self) -> None:
        """The user's own priority is not moved by the flexibility classes."""
        tasks = {
            "a": Task("a", model="m", prompt="x", priority=7),
            "b": Task("b", model="m", prompt="x"),
        }
        prio = order_priorities(tasks, {"a": 1.0, "b": 2.0}, flex={"a": 1, "b": 2})
        assert prio["a"] == 7


class TestPlanHolds:
    def test_one_plan_first_when_a_server_can_run_only_the_next_stage(self) -> None:
        """``small`` holds the coder only and nothing it can run is ready: the first plan runs,
        the others (which could only share ``big`` with it) wait."""
        tasks = pipelines()
        ready = ["plan0", "plan1", "plan2"]
        got = plan_holds(ready, tasks, MODELS, dependents(tasks), set(), DEMO_FLEET)
        assert got == ("plan0", ["plan1", "plan2"])

    def test_no_hold_when_no_server_starves(self) -> None:
        """``small`` has work (running, or waiting for its model), or ready work it can run
        warm: nothing is held."""
        tasks = pipelines()
        deps = dependents(tasks)
        busy = [view("small", [C], busy=True), view("big", [G, C])]
        assert plan_holds(["plan0", "plan1"], tasks, MODELS, deps, set(), busy) == (None, [])
        ready = ["plan1", "code00"]
        assert plan_holds(ready, tasks, MODELS, deps, {"plan0"}, DEMO_FLEET) == (None, [])

    def test_a_task_feeds_only_as_the_last_missing_dependency(self) -> None:
        """A join's dependency does not feed it while another dependency is not done."""
        tasks = {
            "q1": Task("q1", model=G, prompt="x"),
            "q2": Task("q2", model=G, prompt="x"),
            "fix": Task("fix", model=C, prompt="x", depends_on=["q1", "q2"]),
        }
        models = {t: m.model for t, m in tasks.items()}
        deps = dependents(tasks)
        assert plan_holds(["q1", "q2"], tasks, models, deps, set(), DEMO_FLEET) == (None, [])
        assert plan_holds(["q2"], tasks, models, deps, {"q1"}, DEMO_FLEET) == (None, [])
        tasks["other"] = Task("other", model=G, prompt="x")
        models["other"] = G
        got = plan_holds(["q2", "other"], tasks, models, deps, {"q1"}, DEMO_FLEET)
        assert got == ("q2", ["other"])

    def test_only_tasks_that_would_share_the_feeders_servers_wait(self) -> None:
        """A ready task that can run warm elsewhere too is not held; nor is a feeder whose
        servers have no free slot."""
        tasks = pipelines(2)
        tasks["spare"] = Task("spare", model="both", prompt="x")
        models = {**MODELS, "spare": "both"}
        servers = [view("small", [C]), view("big", [G, C, "both"]), view("third", ["both"])]
        got = plan_holds(
            ["plan0", "plan1", "spare"], tasks, models, dependents(tasks), set(), servers
        )
        assert got == ("plan0", ["plan1"])
        full = [view("small", [C]), view("big", [G, C], free=False)]
        ready = ["plan0", "plan1"]
        assert plan_holds(ready, tasks, models, dependents(tasks), set(), full) == (None, [])


class TestOnTheSimulator:
    async def run(self, lookahead: bool) -> Dict[str, TaskResult]:
        """Two roots of ``tiny`` on host ``a`` (two slots), each feeding an ``other`` task
        that only host ``b`` holds: the results by id."""
        profiles = [
            HostProfile("a", (ModelSpec(TINY, size_gb=1, decode_tps=400.0),), num_parallel=2),
            HostProfile("b", (ModelSpec(OTHER, size_gb=1, decode_tps=400.0),), num_parallel=1),
        ]
        tasks = [
            Task("r1", model=TINY, prompt="first", options={"num_predict": 40}),
            Task("r2", model=TINY, prompt="second", options={"num_predict": 40}),
            Task("c1", model=OTHER, prompt="{r1}", depends_on=["r1"]),
            Task("c2", model=OTHER, prompt="{r2}", depends_on=["r2"]),
        ]
        async with fleet(profiles) as sim:
            async with httpx.AsyncClient() as http:
                for s, model in zip(sim.servers, (TINY, OTHER)):
                    body = {"model": model, "keep_alive": -1}
                    (await http.post(s.url + "/api/generate", json=body)).raise_for_status()
            async with Orchestra(config_for(sim)) as orch:
                result = await orch.run(tasks, lookahead=lookahead)
        assert result.ok
        return {r.id: r for r in result.results}

    async def test_the_second_root_waits_for_the_first(self) -> None:
        """With the look-ahead, ``r2`` starts when ``r1`` ends (``b`` starts sooner)."""
        by_id = await self.run(lookahead=True)
        r1, r2 = by_id["r1"], by_id["r2"]
        assert r1.finished_at is not None and r2.started_at is not None
        assert r2.started_at >= r1.finished_at

    async def test_without_the_look_ahead_both_start_at_once(self) -> None:
        """Without it, both roots start together and share host ``a``."""
        by_id = await self.run(lookahead=False)
        r1, r2 = by_id["r1"], by_id["r2"]
        assert r1.finished_at is not None and r2.started_at is not None
        assert r2.started_at < r1.finished_at
