"""Upward ranks under the cost model (issue 18, item 1): hand-computed small DAGs."""

from __future__ import annotations

from typing import Dict, List, Sequence

import pytest

from ollama_orchestra import Orchestra, Task
from ollama_orchestra._ranks import (
    PRIOR_TOKENS_PER_S,
    TIE_FACTOR,
    ServerCosts,
    chain_ends,
    fleet_costs,
    order_priorities,
    server_cost,
    task_costs,
    upward_ranks,
)

from .conftest import TINY, config_for, fleet, two_model_profile


def t(tid: str, *deps: str, n: int = 100, **kw: object) -> Task:
    return Task(tid, model="m", prompt="x", depends_on=list(deps), options={"num_predict": n}, **kw)  # type: ignore[arg-type]


def by_id(tasks: Sequence[Task]) -> Dict[str, Task]:
    return {x.id: x for x in tasks}


class TestUpwardRanks:
    def test_fork_join(self) -> None:
        """A task's rank is its cost plus the largest rank among its dependents."""
        tasks = by_id([t("a"), t("b", "a"), t("c", "a"), t("d", "b", "c")])
        cost = {"a": 2.0, "b": 3.0, "c": 5.0, "d": 1.0}
        assert upward_ranks(tasks, cost) == {"d": 1.0, "b": 4.0, "c": 6.0, "a": 8.0}


def pipelines() -> Dict[str, Task]:
    """Two pipelines declared stage by stage, their parts interleaved: plan, two parts, a
    join (``p1, p2, a1, a2, b1, b2, j1, j2``; ``a1, b1`` feed ``j1``)."""
    return by_id(
        [
            t("p1"),
            t("p2"),
            t("a1", "p1"),
            t("a2", "p2"),
            t("b1", "p1"),
            t("b2", "p2"),
            t("j1", "a1", "b1"),
            t("j2", "a2", "b2"),
        ]
    )


class TestOrderPriorities:
    def test_chain_ends(self) -> None:
        """A task's critical chain ends where its highest-ranked dependents lead (the first
        declared among equal ones); a sink ends its own."""
        tasks = by_id([t("a"), t("b", "a"), t("c", "a"), t("d", "b"), t("e", "c")])
        rank = {"a": 9.0, "b": 5.0, "c": 7.0, "d": 1.0, "e": 2.0}
        assert chain_ends(tasks, rank) == {"a": "e", "b": "d", "c": "e", "d": "d", "e": "e"}
        rank["b"] = 7.0
        assert chain_ends(tasks, rank)["a"] == "d"

    def test_near_ties_go_join_by_join(self) -> None:
        """Equal ranks are ordered by the join they feed, so one pipeline's parts run before
        the next one's (declared interleaved: p1, p2, a1, a2, b1, b2, j1, j2)."""
        tasks = pipelines()
        rank = upward_ranks(tasks, dict.fromkeys(tasks, 1.0))
        prio = order_priorities(tasks, rank)
        order = sorted(tasks, key=lambda tid: -prio[tid])
        assert order == ["p1", "p2", "a1", "b1", "a2", "b2", "j1", "j2"]
        assert prio["p1"] == 1000 and prio["j2"] == 125

    def test_rank_beyond_the_tie_factor_wins(self) -> None:
        """A rank larger by more than the tie factor goes first whatever its join; within
        the factor the join decides."""
        tasks = pipelines()
        rank = upward_ranks(tasks, dict.fromkeys(tasks, 1.0))
        rank["b2"] = rank["a1"] * TIE_FACTOR * 1.01
        prio = order_priorities(tasks, rank)
        assert prio["b2"] > prio["a1"] > prio["b1"] > prio["a2"]
        rank["b2"] = rank["a1"] * TIE_FACTOR * 0.99
        prio = order_priorities(tasks, rank)
        assert prio["a1"] > prio["b1"] > prio["a2"] > prio["b2"]

    def test_pipeline_that_finished_first_goes_first(self) -> None:
        """Among near-ties, the chain end whose first task finished first goes first (the
        pipeline that started first), whatever the declaration order; then the others."""
        tasks = pipelines()
        rank = upward_ranks(tasks, dict.fromkeys(tasks, 1.0))
        prio = order_priorities(tasks, rank, done=["p2"])
        order = sorted(tasks, key=lambda tid: -prio[tid])
        assert order == ["p2", "p1", "a2", "b2", "a1", "b1", "j2", "j1"]
        # the order is kept as the other pipeline catches up
        prio = order_priorities(tasks, rank, done=["p2", "p1", "a1", "b1"])
        assert prio["a2"] > prio["b2"] > prio["j2"] > prio["j1"]

    def test_explicit_priority_kept(self) -> None:
        """An explicit priority is the user's word; the others share 0..1000 by their order."""
        tasks = by_id([t("a"), t("b", "a"), t("x", priority=7)])
        prio = order_priorities(tasks, {"a": 8.0, "b": 2.0, "x": 4.0})
        assert prio == {"a": 1000, "b": 500, "x": 7}


class TestServerCost:
    def test_measured_rate_and_cold_load(self) -> None:
        """Cold load (where not loaded) + prefill + num_predict at the rate measured there."""
        fast = ServerCosts("fast", True, False, 1.5, cold_s=5.0, prefill_s=1.0, tokens_per_s=50.0)
        assert server_cost(100, fast) == pytest.approx(5.0 + 1.0 + 2.0)
        warm = ServerCosts("slow", True, True, 1.0, cold_s=9.0, tokens_per_s=10.0)
        assert server_cost(100, warm) == pytest.approx(10.0)

    def test_rate_from_other_servers_by_weight(self) -> None:
        """Unmeasured here: the fleet's rate per unit of weight, times this server's weight."""
        measured = ServerCosts("a", True, True, 1.0, tokens_per_s=30.0)
        fresh = ServerCosts("b", True, True, 2.0)
        assert server_cost(120, fresh, [measured, fresh]) == pytest.approx(120 / 60.0)

    def test_prior(self) -> None:
        """Nothing measured anywhere: num_predict over the prior rate times the weight."""
        fresh = ServerCosts("b", True, True, 2.0)
        assert server_cost(100, fresh, [fresh]) == pytest.approx(100 / (PRIOR_TOKENS_PER_S * 2))

    def test_unequal_hosts_least_cost(self) -> None:
        """A task costs what it takes on the server that finishes it first; ranks add up
        along the chain (hand-computed on two unequal hosts)."""
        tasks = by_id([t("a", n=100), t("b", "a", n=300)])
        fast = ServerCosts("fast", True, False, 2.0, cold_s=4.0, tokens_per_s=50.0)
        slow = ServerCosts("slow", True, True, 1.0, tokens_per_s=20.0)
        # a: fast 4 + 2 = 6, slow 5 -> 5; b: fast 4 + 6 = 10, slow 15 -> 10
        cost = task_costs(tasks, lambda task: [fast, slow])
        assert cost == pytest.approx({"a": 5.0, "b": 10.0})
        assert upward_ranks(tasks, cost) == pytest.approx({"a": 15.0, "b": 10.0})

    def test_custom_step_costs_its_estimate_times_the_mean(self) -> None:
        """A custom step costs its estimate times the mean cost of the model tasks."""

        async def step(orch: object, inputs: object) -> str:
            return ""

        tasks = by_id([t("a", n=100), Task("f", fn=step, estimate=2.0)])
        one = ServerCosts("s", True, True, 1.0, tokens_per_s=50.0)
        assert task_costs(tasks, lambda task: [one]) == pytest.approx({"a": 2.0, "f": 4.0})


class TestFleetCosts:
    async def test_prior_then_measured(self) -> None:
        """Before any answer a task costs the cold load plus num_predict at the prior rate;
        once an answer is measured, the model is loaded (no cold load) and the measured rate
        replaces the prior."""
        task = Task("x", model=TINY, prompt="p", options={"num_predict": 400})
        tasks = {"x": task}
        async with fleet([two_model_profile("h1", load_s=0.5)]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            (before,) = fleet_costs(orch, tasks, {}, {})(task)
            assert before.has and not before.loaded and before.cold_s > 0
            assert before.tokens_per_s is None
            assert server_cost(400, before) == pytest.approx(
                before.cold_s + before.prefill_s + 400 / PRIOR_TOKENS_PER_S
            )
            await orch.generate(TINY, "warm", options={"num_predict": 32})
            (after,) = fleet_costs(orch, tasks, {}, {})(task)
        assert after.loaded and after.tokens_per_s is not None
        # the simulated host decodes 400 tokens/s (time_scale 0.01: 40,000 per second here)
        assert server_cost(400, after) < server_cost(400, before) / 10


class TestExecutorRanks:
    async def test_priorities_follow_the_cost_model(self) -> None:
        """On an orchestra, a longer answer (num_predict) ranks higher, and the balancer
        gets the rank as the request's priority."""
        # In real time (time_scale 1): at the usual 0.01, a 64-token answer takes 1.6 ms, and
        # the client's own milliseconds on a loaded machine decide which chain looks longer.
        async with fleet([two_model_profile("h1", load_s=0.05)], time_scale=1.0) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            await orch.generate(TINY, "warm", options={"num_predict": 8})
            tasks: List[Task] = [
                Task("long", model=TINY, prompt="a", options={"num_predict": 128}),
                Task("short", model=TINY, prompt="b", options={"num_predict": 8}),
                Task(
                    "after",
                    model=TINY,
                    prompt="c",
                    depends_on=["short"],
                    options={"num_predict": 8},
                ),
                Task("mine", model=TINY, prompt="d", priority=3),
            ]
            result = await orch.run(tasks)
        assert result.ok
        prio = {r.id: r.priority for r in result.results}
        assert prio["long"] == 1000 and prio["mine"] == 3
        assert 0 < prio["after"] < prio["short"] < prio["long"]

    async def test_pipeline_that_finished_first_goes_first(self) -> None:
        """On an orchestra, near-tie tasks run pipeline by pipeline, the one whose first step
        finished first before the other, though declared after it."""
        async with fleet([two_model_profile("h1", load_s=0.5)]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            await orch.generate(TINY, "warm", options={"num_predict": 8})

            def task(tid: str, *deps: str, n: int = 8) -> Task:
                prompt = tid + "".join("{" + d + "}" for d in deps)
                return Task(
                    tid, model=TINY, prompt=prompt, depends_on=deps, options={"num_predict": n}
                )

            tasks = [
                task("p1"),
                task("p2", n=64),  # the longer chain: it runs (and finishes) first
                task("a1", "p1"),
                task("a2", "p2"),
                task("b1", "p1"),
                task("b2", "p2"),
                task("j1", "a1", "b1"),
                task("j2", "a2", "b2"),
            ]
            result = await orch.run(tasks, schedule="sequential")
        assert result.ok
        started = [r.id for r in sorted(result.results, key=lambda r: r.started_at or 0.0)]
        assert started[:6] == ["p2", "p1", "a2", "b2", "a1", "b1"]
