"""The DAG executor: validation, wiring through placeholders, scheduling modes, failures."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from ollama_orchestra import DagValidationError
from ollama_orchestra._executor import (
    DagResult,
    Task,
    TaskEvent,
    critical_path,
    load_dag,
    run_dag,
    validate,
)
from ollama_orchestra._types import ChatResponse, GenerateResponse


class FakeRunner:
    """Answers "<id-ish>:<prompt>" and lets the test decide when each call returns."""

    def __init__(self, *, gated: bool = False, fail: Sequence[str] = ()) -> None:
        self.gated = gated
        self.fail = set(fail)
        self.calls: List[Dict[str, Any]] = []
        self.started: List[str] = []
        self.finished: List[str] = []
        self.cancelled: List[str] = []
        self.gates: Dict[str, anyio.Event] = {}

    def release(self, key: str) -> None:
        self.gates.setdefault(key, anyio.Event()).set()

    async def _answer(self, model: str, text: str, priority: int) -> str:
        key = text.split("|", 1)[0]
        self.calls.append({"model": model, "text": text, "priority": priority})
        self.started.append(key)
        try:
            if self.gated:
                await self.gates.setdefault(key, anyio.Event()).wait()
            else:
                await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(key)
            raise
        self.finished.append(key)
        if key in self.fail:
            raise RuntimeError(f"{key} exploded")
        return f"<{text}>"

    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> GenerateResponse:
        out = await self._answer(model, prompt, priority)
        return GenerateResponse(response=out, server="fake", attempts=1, queued_s=0.0)

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Optional[Mapping[str, Any]] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> ChatResponse:
        text = str(messages[-1]["content"])
        out = await self._answer(model, text, priority)
        return ChatResponse(message={"role": "assistant", "content": out}, server="fake")


def diamond() -> List[Task]:
    return [
        Task("plan", model="m", prompt="plan|{goal}"),
        Task("a", model="m", prompt="a|{plan}", depends_on=["plan"]),
        Task("b", model="m", prompt="b|{plan}", depends_on=["plan"]),
        Task("qa", model="m", prompt="qa|{a}+{b}", depends_on=["a", "b"]),
    ]


class TestValidation:
    @pytest.mark.parametrize(
        ("tasks", "message"),
        [
            (
                [Task("x", model="m", prompt="p"), Task("x", model="m", prompt="q")],
                "duplicate task id 'x'",
            ),
            ([Task("x", model="m", prompt="p", depends_on=["y"])], "unknown task 'y'"),
            ([Task("x", model="m", prompt="p", depends_on=["x"])], "depends on itself"),
            ([Task("x", model="m", prompt="{z}")], "placeholder {z} names no dependency"),
            ([Task("x", model="m", prompt="{}")], "must name a dependency"),
        ],
    )
    def test_bad_graphs(self, tasks: List[Task], message: str) -> None:
        """Each bad graph raises DagValidationError with a message naming the problem."""
        with pytest.raises(
            DagValidationError, match=message.replace("{", r"\{").replace("}", r"\}")
        ):
            validate(tasks)

    def test_cycle_reports_its_path(self) -> None:
        """A cycle is refused and its path is in the message."""
        tasks = [
            Task("a", model="m", prompt="p", depends_on=["c"]),
            Task("b", model="m", prompt="p", depends_on=["a"]),
            Task("c", model="m", prompt="p", depends_on=["b"]),
        ]
        with pytest.raises(DagValidationError, match="cycle") as info:
            validate(tasks)
        text = str(info.value)
        assert all(n in text for n in ("a", "b", "c")) and "->" in text

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"model": "m"},
            {"model": "m", "prompt": "p", "messages": [{"role": "user", "content": "x"}]},
            {"prompt": "p"},
            {"model": "m", "prompt": "p", "timeout": 0},
        ],
    )
    def test_bad_task(self, kwargs: Dict[str, Any]) -> None:
        """A task needs exactly one of prompt/messages/fn, a model, a positive timeout."""
        with pytest.raises(DagValidationError):
            Task("t", **kwargs)

    async def test_bad_schedule(self) -> None:
        """An unknown schedule is refused before anything runs."""
        with pytest.raises(DagValidationError, match="schedule"):
            await run_dag(FakeRunner(), diamond(), schedule="fastest", inputs={"goal": "g"})

    async def test_empty(self) -> None:
        """An empty list gives an empty result."""
        r = await run_dag(FakeRunner(), [])
        assert r.results == () and r.ok

    def test_critical_path(self) -> None:
        """The critical path counts the longest chain of remaining work, weighted by estimates."""
        tasks = {t.id: t for t in diamond()}
        cp = critical_path(tasks)
        assert cp == {"plan": 3.0, "a": 2.0, "b": 2.0, "qa": 1.0}


class TestRunning:
    @pytest.mark.parametrize("schedule", ["eager", "waves", "sequential"])
    async def test_diamond_wires_outputs(self, schedule: str) -> None:
        """Outputs flow through placeholders; results come back in input order."""
        runner = FakeRunner()
        r = await run_dag(runner, diamond(), schedule=schedule, inputs={"goal": "G"})
        assert [x.id for x in r.results] == ["plan", "a", "b", "qa"]
        assert r.ok
        assert r["plan"].output == "<plan|G>"
        assert r["a"].output == "<a|<plan|G>>"
        assert r["qa"].output == "<qa|<a|<plan|G>>+<b|<plan|G>>>"
        assert r["qa"].server == "fake"

    async def test_wide_dag_runs_in_parallel(self) -> None:
        """Independent tasks are all started before any finishes."""
        runner = FakeRunner(gated=True)
        tasks = [Task(f"t{i}", model="m", prompt=f"t{i}|x") for i in range(8)]
        async with anyio.create_task_group() as tg:
            results: List[DagResult] = []

            async def go() -> None:
                results.append(await run_dag(runner, tasks))

            tg.start_soon(go)
            await wait_all_tasks_blocked()
            assert sorted(runner.started) == sorted(f"t{i}" for i in range(8))
            assert runner.finished == []
            for i in range(8):
                runner.release(f"t{i}")
        assert [x.id for x in results[0].results] == [f"t{i}" for i in range(8)]

    async def test_eager_does_not_wait_for_the_wave(self) -> None:
        """Eager starts a task when its own dependency finishes; waves waits for the wave."""
        tasks = [
            Task("fast", model="m", prompt="fast|x"),
            Task("slow", model="m", prompt="slow|x"),
            Task("after_fast", model="m", prompt="after_fast|{fast}", depends_on=["fast"]),
        ]
        for schedule, expect_started in (("eager", True), ("waves", False)):
            runner = FakeRunner(gated=True)
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(run_dag, runner, tasks, schedule=schedule))
                await wait_all_tasks_blocked()
                runner.release("fast")
                await wait_all_tasks_blocked()
                assert ("after_fast" in runner.started) is expect_started, schedule
                runner.release("slow")
                runner.release("after_fast")

    async def test_failure_skips_exactly_the_dependents(self) -> None:
        """A failed task's dependents (transitively) are skipped; other branches finish."""
        tasks = [
            Task("root", model="m", prompt="root|x"),
            Task("bad", model="m", prompt="bad|{root}", depends_on=["root"]),
            Task("good", model="m", prompt="good|{root}", depends_on=["root"]),
            Task("child", model="m", prompt="child|{bad}", depends_on=["bad"]),
            Task("grandchild", model="m", prompt="gc|{child}", depends_on=["child"]),
            Task("after_good", model="m", prompt="ag|{good}", depends_on=["good"]),
        ]
        r = await run_dag(FakeRunner(fail=["bad"]), tasks)
        status = {x.id: x.status for x in r.results}
        assert status == {
            "root": "ok",
            "bad": "failed",
            "good": "ok",
            "child": "skipped",
            "grandchild": "skipped",
            "after_good": "ok",
        }
        assert "exploded" in r["bad"].error_message
        assert "'bad'" in r["child"].error_message and "'child'" in r["grandchild"].error_message
        assert not r.ok

    async def test_fail_fast_cancels_running_tasks(self) -> None:
        """With fail_fast, the first failure cancels what runs and marks the rest cancelled."""
        runner = FakeRunner(gated=True, fail=["bad"])
        tasks = [
            Task("bad", model="m", prompt="bad|x"),
            Task("long", model="m", prompt="long|x"),
            Task("later", model="m", prompt="later|{long}", depends_on=["long"]),
        ]
        out: List[DagResult] = []
        async with anyio.create_task_group() as tg:

            async def go() -> None:
                out.append(await run_dag(runner, tasks, fail_fast=True))

            tg.start_soon(go)
            await wait_all_tasks_blocked()
            runner.release("bad")
        r = out[0]
        assert r["bad"].status == "failed"
        assert r["long"].status == "cancelled" and r["later"].status == "cancelled"
        assert runner.cancelled == ["long"]

    async def test_cancelling_run_cancels_tasks(self) -> None:
        """Cancelling run_dag cancels every running task and propagates."""
        runner = FakeRunner(gated=True)
        tasks = [Task(f"t{i}", model="m", prompt=f"t{i}|x") for i in range(3)]
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run_dag(runner, tasks))
                await wait_all_tasks_blocked()
                scope.cancel()
        assert sorted(runner.cancelled) == ["t0", "t1", "t2"]

    async def test_task_timeout(self) -> None:
        """A task over its timeout fails with a TimeoutError; others are unaffected."""
        runner = FakeRunner(gated=True)
        tasks = [
            Task("stuck", model="m", prompt="stuck|x", timeout=0.01),
            Task("fine", model="m", prompt="fine|x"),
        ]
        runner.release("fine")
        r = await run_dag(runner, tasks)
        assert r["stuck"].status == "failed" and isinstance(r["stuck"].error, TimeoutError)
        assert r["fine"].ok

    async def test_priorities_follow_the_critical_path(self) -> None:
        """Tasks with longer remaining chains get higher priority; explicit priority wins."""
        runner = FakeRunner()
        tasks = [*diamond(), Task("solo", model="m", prompt="solo|x", priority=7)]
        await run_dag(runner, tasks, inputs={"goal": "g"})
        prio = {c["text"].split("|")[0]: c["priority"] for c in runner.calls}
        assert prio["plan"] > prio["a"] == prio["b"] > prio["qa"]
        assert prio["solo"] == 7

    async def test_chat_and_callable_steps(self) -> None:
        """Chat tasks fill message placeholders; callable steps get their inputs."""
        runner = FakeRunner()

        async def step(orch: Any, inputs: Mapping[str, str]) -> str:
            assert orch is runner
            return "step(" + inputs["c"] + ")"

        tasks = [
            Task("c", model="m", messages=[{"role": "user", "content": "c|hi"}]),
            Task("s", fn=step, depends_on=["c"]),
        ]
        r = await run_dag(runner, tasks)
        assert r["c"].output == "<c|hi>"
        assert r["s"].output == "step(<c|hi>)"

    async def test_events_in_order_and_hook_errors_ignored(self) -> None:
        """Events come queued → started → finished per task; a raising hook breaks nothing."""
        events: List[TaskEvent] = []

        def hook(e: TaskEvent) -> None:
            events.append(e)
            raise ValueError("hook bug")

        r = await run_dag(FakeRunner(), diamond(), on_event=hook, inputs={"goal": "g"})
        assert r.ok
        for tid in ("plan", "a", "b", "qa"):
            kinds = [e.kind for e in events if e.task_id == tid]
            assert kinds == ["queued", "started", "finished"]
        assert events[0].task_id == "plan"


class TestFiles:
    def test_toml(self, tmp_path: Path) -> None:
        """A TOML DAG loads with inputs and schedule."""
        p = tmp_path / "dag.toml"
        p.write_text(
            'schedule = "waves"\n[inputs]\ngoal = "G"\n'
            '[[task]]\nid = "plan"\nmodel = "planning"\nprompt = "Plan {goal}"\n'
            '[[task]]\nid = "code"\nmodel = "coding"\nprompt = "Code {plan}"\ndepends_on = ["plan"]\n',
            encoding="utf-8",
        )
        spec = load_dag(p)
        assert [t.id for t in spec.tasks] == ["plan", "code"]
        assert spec.inputs == {"goal": "G"} and spec.schedule == "waves"

    def test_json(self, tmp_path: Path) -> None:
        """A JSON DAG loads too."""
        p = tmp_path / "dag.json"
        p.write_text(
            json.dumps(
                {
                    "tasks": [
                        {"id": "a", "model": "m", "messages": [{"role": "user", "content": "x"}]}
                    ]
                }
            ),
            encoding="utf-8",
        )
        assert load_dag(p).tasks[0].messages == ({"role": "user", "content": "x"},)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                '[[task]]\nid = "a"\nmodel = "m"\nprompt = "x"\nslots = 2\n',
                r"task\[0\] \('a'\): unknown field 'slots'",
            ),
            ('[[task]]\nid = "a"\nmodel = "m"\n', r"task\[0\] \('a'\): .*exactly one of prompt"),
            ('[[task]]\nid = "a"\nmodel = "m"\nprompt = "{nope}"\n', "placeholder {nope}"),
            ("[[task]\n", "not valid TOML"),
        ],
    )
    def test_errors_name_file_and_task(self, tmp_path: Path, text: str, message: str) -> None:
        """File errors name the file, the task and the problem."""
        p = tmp_path / "bad.toml"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(DagValidationError, match=message) as info:
            load_dag(p)
        assert str(p) in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is one clear error."""
        with pytest.raises(DagValidationError, match="cannot be read"):
            load_dag(tmp_path / "nope.toml")
