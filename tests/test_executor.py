"""Tests for the DAG executor: validation, scheduling, failure semantics, events, files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import anyio
import pytest

from ollama_orchestra._errors import DagValidationError
from ollama_orchestra._executor import (
    DagSpec,
    Task,
    TaskEvent,
    load_dag,
    run_dag,
)
from ollama_orchestra._types import ChatResponse, GenerateResponse


class FakeRunner:
    """Records calls; each call either answers at once or waits for its gate to be set."""

    def __init__(self, *, gated: bool = False) -> None:
        self.gated = gated
        self.gates: Dict[str, anyio.Event] = {}
        self.calls: List[Tuple[str, str, Dict[str, Any]]] = []
        self.started: List[str] = []
        self.finished: List[str] = []
        self.cancelled: List[str] = []
        self.fail: Dict[str, BaseException] = {}

    def gate(self, key: str) -> anyio.Event:
        return self.gates.setdefault(key, anyio.Event())

    async def _serve(self, key: str) -> None:
        self.started.append(key)
        try:
            if self.gated or key in self.gates:
                await self.gate(key).wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(key)
            raise
        if key in self.fail:
            raise self.fail[key]
        self.finished.append(key)

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
        key = prompt.split(":", 1)[0]
        self.calls.append(
            (model, prompt, {"system": system, "options": options, "priority": priority})
        )
        await self._serve(key)
        return GenerateResponse(
            response=f"<{prompt}>", server="s1", attempts=2, queued_s=0.5, done=True
        )

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Optional[Mapping[str, Any]] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> ChatResponse:
        content = str(messages[-1]["content"])
        key = content.split(":", 1)[0]
        self.calls.append((model, content, {"messages": list(messages), "priority": priority}))
        await self._serve(key)
        return ChatResponse(message={"role": "assistant", "content": f"[{content}]"}, server="s2")


def t(tid: str, *deps: str, **kw: Any) -> Task:
    """A generate task whose prompt starts with its id, then its deps' outputs."""
    prompt = tid + ":" + "".join("{" + d + "}" for d in deps)
    return Task(tid, model="m", prompt=prompt, depends_on=deps, **kw)


class TestValidation:
    def test_duplicate_id(self) -> None:
        """Two tasks with one id are rejected, naming the id."""
        with pytest.raises(DagValidationError, match="duplicate task id 'a'") as ei:
            anyio.run(run_dag, FakeRunner(), [t("a"), t("a")])
        assert ei.value.task_id == "a"

    async def test_unknown_dependency(self) -> None:
        """A dependency on a missing task is rejected before anything runs."""
        runner = FakeRunner()
        with pytest.raises(DagValidationError, match="unknown task 'zz'"):
            await run_dag(runner, [t("a"), Task("b", model="m", prompt="x", depends_on=["zz"])])
        assert runner.calls == []

    async def test_self_dependency(self) -> None:
        """A task that depends on itself is rejected."""
        with pytest.raises(DagValidationError, match="depends on itself"):
            await run_dag(FakeRunner(), [Task("a", model="m", prompt="x", depends_on=["a"])])

    async def test_cycle_names_path(self) -> None:
        """A cycle is rejected with its path in the message."""
        tasks = [t("a", "c"), t("b", "a"), t("c", "b")]
        with pytest.raises(DagValidationError, match="cycle") as ei:
            await run_dag(FakeRunner(), tasks)
        msg = str(ei.value)
        assert all(x in msg for x in ("a", "b", "c")) and "->" in msg

    async def test_unknown_placeholder(self) -> None:
        """A placeholder naming neither a dependency nor an input is rejected with its name."""
        tasks = [t("a"), Task("b", model="m", prompt="use {nope}", depends_on=["a"])]
        with pytest.raises(DagValidationError, match=r"\{nope\}") as ei:
            await run_dag(FakeRunner(), tasks)
        assert ei.value.task_id == "b"

    async def test_literal_braces_and_inputs(self) -> None:
        """Doubled braces are literal; caller inputs fill their placeholders."""
        runner = FakeRunner()
        res = await run_dag(
            runner, [Task("a", model="m", prompt="a: {{x}} {goal}")], inputs={"goal": "G"}
        )
        assert res.ok and runner.calls[0][1] == "a: {x} G"

    @pytest.mark.parametrize(
        "kw",
        [{}, {"prompt": "p", "messages": [{"role": "user", "content": "c"}]}],
    )
    def test_exactly_one_body(self, kw: Dict[str, Any]) -> None:
        """Neither or both of prompt and messages is rejected."""
        with pytest.raises(DagValidationError, match="exactly one of prompt, messages or fn"):
            Task("a", model="m", **kw)

    @pytest.mark.parametrize("bad", ["", "a b", "x{y}"])
    def test_bad_id(self, bad: str) -> None:
        """Ids are non-empty letters, digits, '_', '-' or '.'."""
        with pytest.raises(DagValidationError, match="invalid"):
            Task(bad, model="m", prompt="p")

    async def test_bad_schedule(self) -> None:
        """An unknown schedule is a ValueError naming it."""
        with pytest.raises(ValueError, match="'fastest'"):
            await run_dag(FakeRunner(), [t("a")], schedule="fastest")

    async def test_empty(self) -> None:
        """An empty list gives an empty, ok result."""
        res = await run_dag(FakeRunner(), [])
        assert res.results == () and res.ok and res.outputs == {}


class TestOutputs:
    @pytest.mark.parametrize("schedule", ["eager", "waves", "sequential"])
    async def test_diamond(self, schedule: str) -> None:
        """Outputs flow through placeholders; results come in input order."""
        tasks = [t("d", "b", "c"), t("b", "a"), t("c", "a"), t("a")]
        res = await run_dag(FakeRunner(), tasks, schedule=schedule)
        assert [r.id for r in res.results] == ["d", "b", "c", "a"]
        assert res.ok
        assert res["a"].output == "<a:>"
        assert res["b"].output == "<b:<a:>>"
        assert res["d"].output == "<d:<b:<a:>><c:<a:>>>"
        assert res["a"].server == "s1" and res["a"].attempts == 2 and res["a"].queued_s == 0.5
        assert set(res.outputs) == {"a", "b", "c", "d"}

    async def test_wide_runs_in_parallel(self) -> None:
        """Independent tasks all start before any of them finishes."""
        runner = FakeRunner(gated=True)
        tasks = [t(f"w{i}") for i in range(6)] + [t("join", *[f"w{i}" for i in range(6)])]
        async with anyio.create_task_group() as tg:
            box: List[Any] = []

            async def go() -> None:
                box.append(await run_dag(runner, tasks))

            tg.start_soon(go)
            await anyio.wait_all_tasks_blocked()
            assert sorted(runner.started) == [f"w{i}" for i in range(6)]
            assert runner.finished == []
            for i in range(6):
                runner.gate(f"w{i}").set()
            await anyio.wait_all_tasks_blocked()
            runner.gate("join").set()
        assert box[0].ok and box[0]["join"].output.startswith("<join:<w0:>")

    async def test_chat_and_system(self) -> None:
        """Chat tasks fill message contents and prepend the system prompt."""
        runner = FakeRunner()
        tasks = [
            t("a"),
            Task(
                "b",
                model="coding",
                messages=[{"role": "user", "content": "b: {a}"}],
                system="sys {a}",
                depends_on=["a"],
            ),
        ]
        res = await run_dag(runner, tasks)
        msgs = runner.calls[1][2]["messages"]
        assert msgs[0] == {"role": "system", "content": "sys <a:>"}
        assert res["b"].output == "[b: <a:>]" and res["b"].server == "s2"

    async def test_callable_step(self) -> None:
        """A callable step gets the runner and its dependencies' outputs."""
        seen: List[Any] = []

        async def step(orch: Any, inputs: Mapping[str, str]) -> str:
            seen.append((orch, dict(inputs)))
            return inputs["a"].upper()

        runner = FakeRunner()
        res = await run_dag(runner, [t("a"), Task("s", fn=step, depends_on=["a"])])
        assert seen == [(runner, {"a": "<a:>"})]
        assert res["s"].output == "<A:>"


class TestFailures:
    async def test_failure_skips_transitive_dependents(self) -> None:
        """A failure skips exactly its transitive dependents; other branches finish."""
        runner = FakeRunner()
        runner.fail["b"] = RuntimeError("boom")
        tasks = [t("a"), t("b", "a"), t("c", "b"), t("d", "c"), t("e", "a"), t("f")]
        res = await run_dag(runner, tasks)
        assert [r.status for r in res.results] == ["ok", "failed", "skipped", "skipped", "ok", "ok"]
        assert isinstance(res["b"].error, RuntimeError)
        assert res["c"].error_message == "dependency 'b' failed: RuntimeError: boom"
        assert "dependency 'b' failed" in res["d"].error_message
        assert [r.id for r in res.failed] == ["b"] and [r.id for r in res.skipped] == ["c", "d"]
        assert not res.ok and "c" not in runner.started
        assert set(res.outputs) == {"a", "e", "f"}

    async def test_fail_fast_cancels_running(self) -> None:
        """With fail_fast, a failure cancels running tasks and marks unstarted ones cancelled."""
        runner = FakeRunner()
        runner.gate("slow")
        runner.fail["bad"] = RuntimeError("x")
        bad_gate = runner.gate("bad")
        tasks = [t("slow"), t("bad"), t("after", "slow")]
        async with anyio.create_task_group() as tg:
            box: List[Any] = []

            async def go() -> None:
                box.append(await run_dag(runner, tasks, fail_fast=True))

            tg.start_soon(go)
            await anyio.wait_all_tasks_blocked()
            bad_gate.set()
        res = box[0]
        assert runner.cancelled == ["slow"]
        assert [r.status for r in res.results] == ["cancelled", "failed", "cancelled"]
        assert "after" not in runner.started

    @pytest.mark.parametrize("schedule", ["waves", "sequential"])
    async def test_fail_fast_never_starts_later_tasks(self, schedule: str) -> None:
        """With fail_fast, tasks after the failure are never sent to the runner."""
        runner = FakeRunner()
        runner.fail["a"] = RuntimeError("x")
        res = await run_dag(
            runner, [t("a", priority=5000), t("b"), t("c", "b")], schedule=schedule, fail_fast=True
        )
        assert res["a"].status == "failed"
        assert "c" not in runner.started and res["c"].status == "cancelled"
        if schedule == "sequential":
            assert runner.started == ["a"] and res["b"].status == "cancelled"

    async def test_task_timeout(self) -> None:
        """A per-task timeout fails that task with TimeoutError and skips its dependents."""
        runner = FakeRunner()
        runner.gate("a")
        res = await run_dag(runner, [t("a", timeout=0.01), t("b", "a"), t("c")])
        assert isinstance(res["a"].error, TimeoutError)
        assert res["b"].status == "skipped" and res["c"].ok
        assert runner.cancelled == ["a"]

    async def test_outer_cancel_propagates(self) -> None:
        """Cancelling run_dag cancels its running tasks and does not return."""
        runner = FakeRunner(gated=True)
        returned: List[Any] = []
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def go() -> None:
                    returned.append(await run_dag(runner, [t("a"), t("b")]))

                tg.start_soon(go)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert sorted(runner.cancelled) == ["a", "b"] and returned == []


class TestScheduling:
    async def _run(self, schedule: str) -> List[str]:
        """a and b run; a finishes; returns what has started by then."""
        runner = FakeRunner(gated=True)
        tasks = [t("a"), t("b"), t("c", "a"), t("d", "b")]
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_dag(runner, tasks, schedule=schedule))
            await anyio.wait_all_tasks_blocked()
            runner.gate("a").set()
            await anyio.wait_all_tasks_blocked()
            snapshot = list(runner.started)
            for k in "bcd":
                runner.gate(k).set()
        return snapshot

    async def test_eager_starts_on_last_dependency(self) -> None:
        """Eager starts c as soon as a finishes, while b still runs."""
        assert sorted(await self._run("eager")) == ["a", "b", "c"]

    async def test_waves_wait_for_whole_wave(self) -> None:
        """Waves do not start c until b's wave is over too."""
        assert sorted(await self._run("waves")) == ["a", "b"]

    async def test_sequential_one_at_a_time(self) -> None:
        """Sequential runs one task at a time."""
        assert await self._run("sequential") in (["a", "b"], ["b", "a"])

    async def test_critical_path_priority(self) -> None:
        """Longer remaining chains get higher priority; explicit priority overrides."""
        runner = FakeRunner()
        tasks = [
            t("a"),
            t("b", "a"),
            t("c", "b", estimate=2.0),
            t("x"),
            t("y", priority=7),
        ]
        res = await run_dag(runner, tasks, schedule="sequential")
        prio = {r.id: r.priority for r in res.results}
        assert prio == {"a": 1000, "b": 750, "c": 500, "x": 250, "y": 7}
        sent = {c[1].split(":")[0]: c[2]["priority"] for c in runner.calls}
        assert sent == prio
        # sequential runs the highest-priority ready task first
        assert runner.started[:2] == ["a", "x"]

    async def test_parts_of_one_join_run_together(self) -> None:
        """Equal chains run join by join: one join's parts, then the next one's, though they
        were declared interleaved (so the first join can start while the second one's parts
        still run)."""
        runner = FakeRunner()
        tasks = [
            t("p"),
            t("a1", "p"),
            t("a2", "p"),
            t("b1", "p"),
            t("b2", "p"),
            t("j1", "a1", "b1"),
            t("j2", "a2", "b2"),
        ]
        await run_dag(runner, tasks, schedule="sequential")
        assert runner.started == ["p", "a1", "b1", "a2", "b2", "j1", "j2"]


class TestEvents:
    async def test_event_order(self) -> None:
        """Each task goes queued, started, then finished/failed; skipped tasks only skipped."""
        runner = FakeRunner()
        runner.fail["b"] = RuntimeError("no")
        events: List[TaskEvent] = []
        times = iter(range(1000))
        await run_dag(
            runner,
            [t("a"), t("b", "a"), t("c", "b")],
            on_event=events.append,
            clock=lambda: float(next(times)),
        )
        kinds = [(e.kind, e.task_id) for e in events]
        assert kinds == [
            ("queued", "a"),
            ("started", "a"),
            ("finished", "a"),
            ("queued", "b"),
            ("started", "b"),
            ("failed", "b"),
            ("queued", "c"),
            ("skipped", "c"),
        ]
        assert [e.at for e in events] == sorted(e.at for e in events)
        assert events[2].result is not None and events[2].result.output == "<a:>"

    async def test_raising_hook_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """A hook that raises is logged and the run goes on."""

        def hook(e: TaskEvent) -> None:
            raise ValueError("hook")

        res = await run_dag(FakeRunner(), [t("a"), t("b", "a")], on_event=hook)
        assert res.ok
        assert any(r.name == "ollama_orchestra.executor" for r in caplog.records)


class TestFiles:
    def test_toml(self, tmp_path: Path) -> None:
        """A TOML file gives tasks, inputs and schedule."""
        p = tmp_path / "dag.toml"
        p.write_text(
            'schedule = "waves"\n[inputs]\ngoal = "G"\n'
            '[[task]]\nid = "plan"\nmodel = "planning"\nprompt = "Plan {goal}"\n'
            '[[task]]\nid = "code"\nmodel = "coding"\nprompt = "{plan}"\n'
            'depends_on = ["plan"]\npriority = 3\ntimeout = 5.0\n'
        )
        spec = load_dag(p)
        assert isinstance(spec, DagSpec) and spec.schedule == "waves"
        assert spec.inputs == {"goal": "G"}
        assert [x.id for x in spec.tasks] == ["plan", "code"]
        assert spec.tasks[1].depends_on == ("plan",) and spec.tasks[1].priority == 3

    async def test_json_runs(self, tmp_path: Path) -> None:
        """A JSON file loads and runs."""
        p = tmp_path / "dag.json"
        data = {
            "inputs": {"goal": "G"},
            "tasks": [
                {"id": "a", "model": "m", "prompt": "a:{goal}"},
                {
                    "id": "b",
                    "model": "m",
                    "messages": [{"role": "user", "content": "b:{a}"}],
                    "depends_on": ["a"],
                },
            ],
        }
        p.write_text(json.dumps(data))
        spec = load_dag(p)
        res = await run_dag(FakeRunner(), spec.tasks, inputs=spec.inputs)
        assert res["b"].output == "[b:<a:G>]"

    def test_error_names_file_task_and_field(self, tmp_path: Path) -> None:
        """A bad field names the file, the task index and id, and the field."""
        p = tmp_path / "dag.toml"
        p.write_text(
            '[[task]]\nid = "ok"\nmodel = "m"\nprompt = "x"\n'
            '[[task]]\nid = "bad"\nmodel = "m"\nprompt = "x"\ncolour = 1\n'
        )
        with pytest.raises(DagValidationError) as ei:
            load_dag(p)
        msg = str(ei.value)
        assert str(p) in msg and "task[1]" in msg and "'bad'" in msg and "'colour'" in msg

    def test_graph_error_names_file(self, tmp_path: Path) -> None:
        """A graph error in a file names the file and the task."""
        p = tmp_path / "dag.json"
        p.write_text(json.dumps({"tasks": [{"id": "a", "model": "m", "prompt": "{zz}"}]}))
        with pytest.raises(DagValidationError, match=r"\{zz\}") as ei:
            load_dag(p)
        assert str(p) in str(ei.value) and ei.value.task_id == "a"

    @pytest.mark.parametrize(
        ("name", "text", "match"),
        [
            ("dag.toml", "[[task]\n", "not valid TOML"),
            ("dag.json", "{", "not valid JSON"),
            ("missing.toml", None, "cannot be read"),
        ],
    )
    def test_unreadable(self, tmp_path: Path, name: str, text: Optional[str], match: str) -> None:
        """An unreadable or unparsable file gives one clear error naming it."""
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        with pytest.raises(DagValidationError, match=match) as ei:
            load_dag(p)
        assert str(p) in str(ei.value)
