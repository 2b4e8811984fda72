"""The DAG executor: dependent tasks run in parallel across the fleet.

Tasks form a graph through ``depends_on``; :func:`run_dag` validates it whole before anything
runs, then schedules it on :class:`graphlib.TopologicalSorter` (``graphlib-backport`` before
3.9) and anyio task groups:

* ``eager`` (default): a task starts the moment its last dependency finishes;
* ``waves``: each wave of ready tasks runs in one task group; the next starts when it ends;
* ``sequential``: one task at a time, in topological order (the baseline).

Every started task simply asks the orchestra for a slot: concurrency is bounded by the
fleet's slots in the balancer, and tasks on the critical path (the longest chain of remaining
work) carry a higher priority there, so they go first.

Tasks and graph validation live in :mod:`._tasks`, DAG files in :mod:`._dagfile`; both are
re-exported here (``Task``, ``DagSpec``, ``load_dag``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Literal,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

import anyio

from ._clock import now as clock_now
from ._dagfile import DagSpec, load_dag
from ._errors import DagValidationError, NoCapableServer
from ._tasks import SCHEDULES, Task, critical_path, validate_graph
from ._types import ChatResponse, GenerateResponse

if sys.version_info >= (3, 9):
    import graphlib
else:  # pragma: no cover
    # graphlib-backport installs the same module name, without type information.
    import graphlib  # type: ignore[import-untyped]

__all__ = [
    "DagResult",
    "DagSpec",
    "Runner",
    "Task",
    "TaskEvent",
    "TaskResult",
    "load_dag",
    "run_dag",
]

log = logging.getLogger("ollama_orchestra.executor")

Status = Literal["ok", "failed", "skipped", "cancelled"]
EventKind = Literal["queued", "started", "finished", "failed", "skipped", "cancelled"]


class Runner(Protocol):
    """What the executor needs from an orchestra (``Orchestra`` provides it)."""

    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> GenerateResponse: ...

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Optional[Mapping[str, Any]] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
    ) -> ChatResponse: ...


@dataclass(frozen=True)
class TaskResult:
    """How one task ended."""

    id: str
    status: Status
    output: Optional[str] = None
    error: Optional[BaseException] = field(default=None, compare=False)
    server: Optional[str] = None
    attempts: int = 0
    queued_s: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    priority: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def run_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at

    @property
    def error_message(self) -> str:
        if self.error is None:
            return ""
        if isinstance(self.error, _Skipped):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"


@dataclass(frozen=True)
class TaskEvent:
    """Progress: a task was queued, started, finished, failed, skipped or cancelled."""

    kind: EventKind
    task_id: str
    at: float
    result: Optional[TaskResult] = None


@dataclass(frozen=True)
class DagResult:
    """Every task's result, in input order, and the makespan."""

    results: Tuple[TaskResult, ...]
    makespan_s: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def outputs(self) -> Dict[str, str]:
        return {r.id: r.output for r in self.results if r.ok and r.output is not None}

    def __getitem__(self, task_id: str) -> TaskResult:
        for r in self.results:
            if r.id == task_id:
                return r
        raise KeyError(task_id)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def with_status(self, status: Status) -> Tuple[TaskResult, ...]:
        """The results with this status, in input order."""
        return tuple(r for r in self.results if r.status == status)

    @property
    def failed(self) -> Tuple[TaskResult, ...]:
        """The tasks that raised, in input order."""
        return self.with_status("failed")

    @property
    def skipped(self) -> Tuple[TaskResult, ...]:
        """The tasks skipped because a dependency did not succeed."""
        return self.with_status("skipped")

    @property
    def cancelled(self) -> Tuple[TaskResult, ...]:
        """The tasks cancelled by ``fail_fast``."""
        return self.with_status("cancelled")


class _Run:
    def __init__(
        self,
        runner: Any,
        tasks: Sequence[Task],
        by_id: Dict[str, Task],
        inputs: Mapping[str, str],
        fail_fast: bool,
        on_event: Optional[Callable[[TaskEvent], None]],
        clock: Callable[[], float],
    ) -> None:
        self.runner = runner
        self.tasks = tasks
        self.by_id = by_id
        self.inputs = dict(inputs)
        self.fail_fast = fail_fast
        self.on_event = on_event
        self.clock = clock
        self.results: Dict[str, TaskResult] = {}
        self.outputs: Dict[str, str] = {}
        cp = critical_path(by_id)
        # Integer priorities for the balancer: longer remaining chain first.
        scale = 1000.0 / max(cp.values()) if cp else 1.0
        self.priority = {
            tid: (t.priority if t.priority is not None else round(cp[tid] * scale))
            for tid, t in by_id.items()
        }
        self.stop: Optional[anyio.CancelScope] = None
        self.sorter: Optional[graphlib.TopologicalSorter[str]] = None
        self.failed = False

    def emit(self, kind: EventKind, task_id: str, result: Optional[TaskResult] = None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(TaskEvent(kind, task_id, self.clock(), result))
        except Exception:
            log.exception("on_event hook raised for %s %s", kind, task_id)

    def blocked_by(self, task: Task) -> Optional[TaskResult]:
        for dep in task.depends_on:
            r = self.results.get(dep)
            if r is not None and not r.ok:
                return r
        return None

    def finish(self, result: TaskResult) -> None:
        self.results[result.id] = result
        if result.ok and result.output is not None:
            self.outputs[result.id] = result.output
        kinds: Dict[str, EventKind] = {
            "ok": "finished",
            "failed": "failed",
            "skipped": "skipped",
            "cancelled": "cancelled",
        }
        self.emit(kinds[result.status], result.id, result)
        if result.status == "failed" and self.fail_fast and self.stop is not None:
            self.failed = True
            self.stop.cancel()

    def skip(self, task: Task, cause: TaskResult) -> None:
        reason = f"dependency {cause.id!r} {cause.status}"
        if cause.error is not None:
            reason += f": {cause.error_message}"
        # A skipped dependency already carries the root cause in its own message.
        self.finish(
            TaskResult(task.id, "skipped", error=_Skipped(reason), priority=self.priority[task.id])
        )

    def fill(self, template: str, task: Task) -> str:
        values = dict(self.inputs)
        values.update({d: self.outputs[d] for d in task.depends_on if d in self.outputs})
        return template.format(**values)

    async def run_task(self, task: Task) -> None:
        if self.failed:
            # fail_fast already fired: run_dag marks this task cancelled without calling out.
            return
        cause = self.blocked_by(task)
        if cause is not None:
            self.skip(task, cause)
            return
        prio = self.priority[task.id]
        started = self.clock()
        self.emit("started", task.id)
        try:
            if task.timeout is None:
                output, server, attempts, queued = await self.call(task, prio)
            else:
                with anyio.fail_after(task.timeout):
                    output, server, attempts, queued = await self.call(task, prio)
        except anyio.get_cancelled_exc_class():
            self.results[task.id] = TaskResult(
                task.id, "cancelled", started_at=started, finished_at=self.clock(), priority=prio
            )
            self.emit("cancelled", task.id, self.results[task.id])
            raise
        except Exception as exc:
            self.finish(
                TaskResult(
                    task.id,
                    "failed",
                    error=exc,
                    started_at=started,
                    finished_at=self.clock(),
                    priority=prio,
                )
            )
            return
        self.finish(
            TaskResult(
                task.id,
                "ok",
                output=output,
                server=server,
                attempts=attempts,
                queued_s=queued,
                started_at=started,
                finished_at=self.clock(),
                priority=prio,
            )
        )

    async def call(self, task: Task, prio: int) -> Tuple[str, Optional[str], int, float]:
        if task.fn is not None:
            inputs = {d: self.outputs[d] for d in task.depends_on if d in self.outputs}
            out = await task.fn(self.runner, inputs)
            return str(out), None, 0, 0.0
        system = self.fill(task.system, task) if task.system is not None else None
        if task.prompt is not None:
            r: Any = await self.runner.generate(
                task.model,
                self.fill(task.prompt, task),
                system=system,
                options=task.options,
                priority=prio,
            )
        else:
            messages = []
            if system is not None:
                messages.append({"role": "system", "content": system})
            for m in task.messages or ():
                m = dict(m)
                if isinstance(m.get("content"), str):
                    m["content"] = self.fill(m["content"], task)
                messages.append(m)
            r = await self.runner.chat(task.model, messages, options=task.options, priority=prio)
        return (
            str(r.text),
            getattr(r, "server", None),
            int(getattr(r, "attempts", 1)),
            float(getattr(r, "queued_s", 0.0)),
        )

    def ordered(self, ids: Sequence[str]) -> List[str]:
        return sorted(ids, key=lambda tid: -self.priority[tid])


class _Skipped(Exception):
    """A dependency did not succeed."""


async def run_dag(
    runner: Any,
    tasks: Sequence[Task],
    *,
    schedule: str = "eager",
    fail_fast: bool = False,
    on_event: Optional[Callable[[TaskEvent], None]] = None,
    inputs: Optional[Mapping[str, str]] = None,
    clock: Callable[[], float] = clock_now,
) -> DagResult:
    """Run a DAG of tasks on ``runner`` (an :class:`Orchestra`); see the module docstring.

    A failed task's dependents are skipped (the cause recorded), independent branches go on;
    with ``fail_fast=True`` the first failure cancels everything still running. Errors of
    tasks never propagate: they are in the result. Cancelling ``run_dag`` cancels its tasks.

    Raises:
        DagValidationError: duplicate or unknown ids, a cycle, a placeholder naming no
            dependency, a task whose model is neither a role nor a model any server has
            (checked against the fleet, when ``runner`` has ``check_models``): before
            anything runs.
        NoHealthyServer: the fleet's hosts are unreachable, so the DAG's models cannot be
            checked (see :meth:`Orchestra.check_models`): before anything runs.
    """
    if schedule not in SCHEDULES:
        raise DagValidationError(
            f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}"
        )
    inputs = dict(inputs or {})
    by_id, sorter = validate_graph(tasks, inputs)
    t0 = clock()
    if not tasks:
        return DagResult((), 0.0)
    await _preflight(runner, tasks)
    run = _Run(runner, tasks, by_id, inputs, fail_fast, on_event, clock)
    run.sorter = sorter
    with anyio.CancelScope() as scope:
        run.stop = scope
        if schedule == "eager":
            await _eager(run)
        elif schedule == "waves":
            await _waves(run)
        else:
            await _sequential(run)
    if scope.cancelled_caught or run.failed:
        for t in tasks:
            if t.id not in run.results:
                run.results[t.id] = TaskResult(t.id, "cancelled", priority=run.priority[t.id])
                run.emit("cancelled", t.id, run.results[t.id])
    return DagResult(tuple(run.results[t.id] for t in tasks), clock() - t0)


async def _preflight(runner: Any, tasks: Sequence[Task]) -> None:
    """Check every task's model or role against the fleet before the first task runs.

    An unknown model is the DAG's error, found before any GPU time is spent, like a bad
    placeholder: :class:`DagValidationError` naming the task (the fleet's
    :class:`NoCapableServer` is its cause). An unreachable fleet is not the DAG's fault:
    its :class:`NoHealthyServer` is raised as it is.
    """
    check = getattr(runner, "check_models", None)
    if check is None:  # a custom runner: nothing to check against
        return
    bad = await check([t.model for t in tasks if t.fn is None])
    for t in tasks:
        err = bad.get(t.model) if t.fn is None else None
        if err is None:
            continue
        if not isinstance(err, NoCapableServer):
            raise err
        config = getattr(runner, "config", None)
        roles: Mapping[str, str] = getattr(config, "roles", None) or {}
        listing = "; ".join(
            f"{name}: {', '.join(models) if models else '(none)'}"
            for name, models in err.available.items()
        )
        if t.model in roles:
            what = f"role {t.model!r} is model {err.model!r}, which no server has"
        else:
            known = ", ".join(f"{r}={m}" for r, m in roles.items()) or "none"
            what = (
                f"{t.model!r} is neither a configured role (roles: {known})"
                f" nor a model any server has"
            )
        raise DagValidationError(
            f"task {t.id!r}: {what} (models: {listing})", task_id=t.id
        ) from err


def _sorter(run: _Run) -> graphlib.TopologicalSorter[str]:
    assert run.sorter is not None
    return run.sorter


async def _eager(run: _Run) -> None:
    sorter = _sorter(run)
    # Finished ids are collected in a list and the loop woken by an event: cheaper than a
    # memory stream per task, which matters on DAGs of thousands of tasks.
    finished: List[str] = []
    wake = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def one(tid: str) -> None:
            nonlocal wake
            try:
                await run.run_task(run.by_id[tid])
            finally:
                finished.append(tid)
                wake.set()

        pending = 0
        while sorter.is_active():
            for tid in run.ordered(sorter.get_ready()):
                run.emit("queued", tid)
                tg.start_soon(one, tid)
                pending += 1
            if pending == 0:
                break  # pragma: no cover - a prepared sorter always has work here
            if not finished:
                await wake.wait()
            wake = anyio.Event()
            done, finished[:] = list(finished), []
            pending -= len(done)
            sorter.done(*done)


async def _waves(run: _Run) -> None:
    sorter = _sorter(run)
    while sorter.is_active():
        wave = run.ordered(sorter.get_ready())
        async with anyio.create_task_group() as tg:
            for tid in wave:
                run.emit("queued", tid)
                tg.start_soon(run.run_task, run.by_id[tid])
        sorter.done(*wave)


async def _sequential(run: _Run) -> None:
    sorter = _sorter(run)
    while sorter.is_active():
        for tid in run.ordered(sorter.get_ready()):
            run.emit("queued", tid)
            await run.run_task(run.by_id[tid])
            sorter.done(tid)
