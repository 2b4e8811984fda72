"""Look-ahead model preloads and the cold-load counts of a DAG run (issue 18, item 2)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ollama_orchestra import Orchestra, Server, Task
from ollama_orchestra._preload import Preloader, critical_chain
from ollama_orchestra._state import FleetState, LoadedModel
from ollama_orchestra.sim import HostProfile, ModelSpec

from .conftest import OTHER, TINY, config_for, fleet, two_model_profile


class FakeBalancer:
    """What the preloader reads of a balancer: the fleet's state, waiters, slots in use."""

    def __init__(
        self,
        hosts: Mapping[str, Tuple[Sequence[str], Sequence[str]]],
        waiting: Optional[Dict[str, int]] = None,
        busy: Optional[Dict[str, int]] = None,
    ) -> None:
        self.fleet = FleetState(
            [Server(n, f"http://127.0.0.1:{9000 + i}") for i, n in enumerate(hosts)]
        )
        for name, (models, loaded) in hosts.items():
            st = self.fleet[name]
            st.healthy = True
            st.models = frozenset(models)
            st.loaded = {m: LoadedModel(m, None) for m in loaded}
        self.waiting = waiting or {}
        self.busy = busy or {}

    def now(self) -> float:
        return 0.0

    def waiting_for(self, model: str) -> int:
        return self.waiting.get(model, 0)

    def in_use(self, name: str) -> int:
        return self.busy.get(name, 0)


class FakeOrch:
    def __init__(self, balancer: FakeBalancer) -> None:
        self.balancer = balancer


def pipeline() -> Dict[str, Task]:
    """a (model A) -> b (model B); c (model A) independent."""
    tasks = [
        Task("a", model="A", prompt="x"),
        Task("b", model="B", prompt="y", depends_on=["a"]),
        Task("c", model="A", prompt="z"),
    ]
    return {t.id: t for t in tasks}


MODELS = {"a": "A", "b": "B", "c": "A"}


def plan(balancer: FakeBalancer, running: Sequence[str], done: Sequence[str] = ()) -> Any:
    p = Preloader(FakeOrch(balancer), pipeline(), MODELS)
    return p.plan(set(running), frozenset(), set(done), {})


class TestPlan:
    def test_near_stage_model_loaded_on_a_host_holding_nothing_wanted(self) -> None:
        """b is near (a runs) and B is loaded nowhere: B goes to the host whose loaded
        models no work wants, not to the one holding A, which a running task needs."""
        fleet_ = FakeBalancer({"h1": (["A", "B"], ["A"]), "h2": (["A", "B"], [])})
        assert plan(fleet_, running=["a"]) == [("h2", "B")]

    def test_never_evicts_a_model_running_work_needs(self) -> None:
        """One host, holding A that a running task uses: no preload (it could evict A)."""
        fleet_ = FakeBalancer({"h1": (["A", "B"], ["A"])})
        assert plan(fleet_, running=["a"]) == []
        assert plan(fleet_, running=["a", "c"]) == []

    def test_two_stages_ahead(self) -> None:
        """A stage two steps from the running one is near (depth 2), three steps is not."""
        chain = {
            "a": Task("a", model="A", prompt="x"),
            "b": Task("b", model="A", prompt="y", depends_on=["a"]),
            "c": Task("c", model="B", prompt="z", depends_on=["b"]),
            "d": Task("d", model="C", prompt="w", depends_on=["c"]),
        }
        models = {"a": "A", "b": "A", "c": "B", "d": "C"}
        fleet_ = FakeBalancer({"h1": (["A", "B", "C"], ["A"]), "h2": (["A", "B", "C"], [])})
        p = Preloader(FakeOrch(fleet_), chain, models)
        assert p.near({"a"}, {"a"}, set()) == ["b", "c"]
        assert p.plan({"a"}, frozenset(), set(), {}) == [("h2", "B")]

    def test_seen_together_allows(self) -> None:
        """A host already seen holding A and B at once may load B next to A."""
        fleet_ = FakeBalancer({"h1": (["A", "B"], ["A", "B"])})
        p = Preloader(FakeOrch(fleet_), pipeline(), MODELS)
        p.plan(set(), frozenset(), set(), {})  # seen: {A, B}
        fleet_.fleet["h1"].loaded.pop("B")
        assert p.plan({"a"}, frozenset(), set(), {}) == [("h1", "B")]

    def test_nothing_when_loaded_somewhere(self) -> None:
        """A near task whose model is loaded on a healthy host needs no preload."""
        fleet_ = FakeBalancer({"h1": (["A", "B"], ["A", "B"]), "h2": (["A", "B"], [])})
        assert plan(fleet_, running=["a"]) == []

    def test_idle_host_gets_the_model_requests_wait_for(self) -> None:
        """An idle host loads a model requests queue for, evicting only what no one wants."""
        fleet_ = FakeBalancer(
            {"h1": (["A", "B"], ["A", "B"]), "h2": (["A", "B"], ["A"])},
            waiting={"B": 3},
            busy={"h1": 2},
        )
        assert plan(fleet_, running=["b"], done=["a", "c"]) == [("h2", "B")]

    def test_idle_host_keeps_a_model_with_waiters(self) -> None:
        """An idle host keeps a model that requests wait for, or that a near task wants."""
        waiting = {"B": 3, "A": 1}
        fleet_ = FakeBalancer(
            {"h1": (["A", "B"], ["B"]), "h2": (["A", "B"], ["A"])}, waiting=waiting, busy={"h1": 2}
        )
        assert plan(fleet_, running=["b"], done=["a"]) == []
        waiting.pop("A")
        near_a = Preloader(
            FakeOrch(fleet_),
            {**pipeline(), "d": Task("d", model="A", prompt="w", depends_on=["b"])},
            {**MODELS, "d": "A"},
        )
        # d (model A) is near: A stays on h2, though h1 could load it again
        assert near_a.plan({"b"}, frozenset(), {"a", "c"}, {}) == []
        # A is wanted by no one now (c is done too): h2 may take B
        assert plan(fleet_, running=["b"], done=["a", "c"]) == [("h2", "B")]


class TestCriticalChain:
    def test_last_finisher_back_through_latest_dependency(self) -> None:
        """The chain goes from the last task to finish back through its latest dependency."""

        class R:
            def __init__(self, end: float) -> None:
                self.finished_at = end

        tasks = {
            "a": Task("a", model="m", prompt="x"),
            "b": Task("b", model="m", prompt="x"),
            "c": Task("c", model="m", prompt="x", depends_on=["a", "b"]),
        }
        results = {"a": R(1.0), "b": R(3.0), "c": R(4.0)}
        assert critical_chain(results, tasks) == ["c", "b"]


def two_stage() -> Sequence[Task]:
    """A step that waits (a stand-in for a long first stage), then a task of another model."""
    return [Task("b", model=OTHER, prompt="go {a}", depends_on=["a"], options={"num_predict": 4})]


class TestPreloadOnSimulator:
    async def _run(self, lookahead: bool) -> Any:
        # h1 holds TINY; OTHER is loaded nowhere, and loads for 20 simulated seconds.
        async with fleet([two_model_profile("h1"), two_model_profile("h2")]) as sim, Orchestra(
            config_for(sim)
        ) as orch:
            await orch.generate(TINY, "warm", options={"num_predict": 1})

            async def first_stage(o: Any, inputs: Any) -> str:
                if lookahead:
                    # the stage ends once the preload is through (the simulator's and the
                    # orchestra's view): no sleep as synchronisation
                    await orch.wait_for_state(
                        lambda snap: any(
                            OTHER in [m.name for m in s.loaded] for s in snap.servers.values()
                        )
                    )
                return "done"

            result = await orch.run([Task("a", fn=first_stage), *two_stage()], lookahead=lookahead)
            loads = sum(s.state().loads for s in sim.servers)
        return result, loads

    async def test_preload_hides_the_cold_load(self) -> None:
        """With look-ahead, b's model is loaded while a runs: b finds it warm (hidden 1,
        paid 0); without, b pays the load, on the critical chain."""
        result, _ = await self._run(lookahead=True)
        assert result.ok
        assert not result["b"].cold_load
        assert result.cold_loads.preloads == 1 and result.cold_loads.hidden == 1
        assert result.cold_loads.paid == 0 and result.cold_loads.on_critical_path == 0
        off, _ = await self._run(lookahead=False)
        assert off.ok and off["b"].cold_load
        assert off.cold_loads.preloads == 0 and off.cold_loads.hidden == 0
        assert off.cold_loads.paid == 1 and off.cold_loads.on_critical_path == 1

    async def test_small_memory_never_evicts_running_work(self) -> None:
        """One host that holds one model at a time, its TINY work running: no preload of
        OTHER (it would evict TINY); OTHER loads only once the TINY work is done."""
        profile = HostProfile(
            "h1",
            (
                ModelSpec(TINY, size_gb=1, decode_tps=400.0, load_s=2.0),
                ModelSpec(OTHER, size_gb=1, decode_tps=400.0, load_s=2.0),
            ),
            num_parallel=2,
            max_loaded_models=1,
        )
        async with fleet([profile]) as sim, Orchestra(config_for(sim)) as orch:
            await orch.generate(TINY, "warm", options={"num_predict": 1})
            tasks = [
                Task("a", model=TINY, prompt="a", options={"num_predict": 40}),
                Task("c", model=TINY, prompt="c", options={"num_predict": 40}),
                Task(
                    "b",
                    model=OTHER,
                    prompt="b {a}",
                    depends_on=["a"],
                    options={"num_predict": 4},
                ),
            ]
            result = await orch.run(tasks)
            state = sim.servers[0].state()
        assert result.ok
        assert result.cold_loads.preloads == 0
        assert result["b"].cold_load and result.cold_loads.paid == 1
        # one eviction: TINY, for b, once the TINY work was done
        assert state.evictions == 1
