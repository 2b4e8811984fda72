"""The DAG executor: dependent tasks run in parallel across the fleet.

Tasks form a graph through ``depends_on``; :func:`run_dag` validates it whole before anything
runs, then schedules it on :class:`graphlib.TopologicalSorter` (``graphlib-backport`` before
3.9) and anyio task groups:

* ``eager`` (default): a task starts the moment its last dependency finishes;
* ``waves``: each wave of ready tasks runs in one task group; the next starts when it ends;
* ``sequential``: one task at a time, in topological order (the baseline).

Every started task simply asks the orchestra for a slot: concurrency is bounded by the
fleet's slots in the balancer, and tasks on the critical path (the longest chain of remaining
work) carry a higher priority there, so they go first. On an orchestra, that chain is measured
in seconds by the live cost model (:mod:`._ranks`: upward ranks, recomputed as answers come
in), and ``eager`` loads the model of a stage about to start where it is loaded nowhere
(:mod:`._preload`, ``lookahead``); :class:`ColdLoads` in the result counts the cold loads paid
and hidden. With the look-ahead, on hosts that hold different models, the tasks fewer servers
hold warm go first, and a ready task may wait for a sibling that feeds an idle server
(:mod:`._holds`).

Tasks and graph validation live in :mod:`._tasks`, DAG files in :mod:`._dagfile`; both are
re-exported here (``Task``, ``DagSpec``, ``load_dag``).

Longer than 500 lines because one run's state (:class:`_Run`: results, priorities, preloads,
holds) is shared by the three schedules below; split, each would reach into the others.
"""

from __future__ import annotations

import logging
import sys
from typing import (
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
)

import anyio

from ._clock import now as clock_now
from ._dagfile import DagSpec, load_dag
from ._dagresult import DagResult, EventKind, Skipped, TaskEvent, TaskResult
from ._errors import DagValidationError, NoCapableServer
from ._holds import flexibility, plan_holds, server_views
from ._preload import COLD_LOAD_NS, ColdLoads, Preloader, critical_chain
from ._ranks import fleet_costs, order_priorities, task_costs, upward_ranks
from ._tasks import SCHEDULES, Task, dependents, validate_graph
from ._types import ChatResponse, GenerateResponse

if sys.version_info >= (3, 9):
    import graphlib
else:  # pragma: no cover
    # graphlib-backport installs the same module name, without type information.
    import graphlib  # type: ignore[import-untyped]

__all__ = [
    "ColdLoads",
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
        lookahead: bool = False,
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
        self.running: Set[str] = set()
        # Ranks from the live cost model on an orchestra; from the tasks' estimates otherwise.
        self.costed = _has_costs(runner)
        self.models: Dict[str, str] = {}
        if self.costed:
            resolve = runner.config.resolve_model
            self.models = {tid: resolve(t.model)[0] for tid, t in by_id.items() if t.fn is None}
        self.priority: Dict[str, int] = {}
        self.cost: Dict[str, float] = {}
        self.ranked_at = -1  # tasks finished when the priorities were last computed
        self.looked_at = 0  # tasks finished at the last look-ahead
        self.lookahead = lookahead and self.costed
        self.reprioritize()
        self.preloader = Preloader(runner, by_id, self.models) if self.lookahead else None
        self.stop: Optional[anyio.CancelScope] = None
        self.sorter: Optional[graphlib.TopologicalSorter[str]] = None
        self.failed = False
        #: Ready tasks held back while ``feeder`` runs (:mod:`._holds`).
        self.held: List[str] = []
        self.feeder: Optional[str] = None
        self.dependents = dependents(by_id)

    def reprioritize(self) -> None:
        """Integer priorities for the balancer: longer remaining chain first (an explicit
        priority as given). On an orchestra, recomputed from the cost model as answers come
        in: at most about 32 times a run, each time for the tasks not started yet (a task's
        rank depends only on the tasks after it), so a large DAG stays cheap."""
        done = len(self.results)
        if self.priority and (
            not self.costed or done - self.ranked_at < max(1, len(self.by_id) // 32)
        ):
            return
        self.ranked_at = done
        if not self.cost:
            self.cost = {tid: t.estimate for tid, t in self.by_id.items()}
        if self.costed:
            waiting = {
                tid: t
                for tid, t in self.by_id.items()
                if tid not in self.results and tid not in self.running
            }
            try:
                views = fleet_costs(self.runner, self.by_id, self.inputs, self.outputs)
                self.cost.update(task_costs(waiting, views))
            except Exception:  # priorities are a hint: never the run's failure
                log.exception("estimating the DAG's task costs failed; using estimates")
        flex = None
        if self.lookahead:
            try:
                flex = flexibility(self.models, server_views(self.runner.balancer))
            except Exception:  # priorities are a hint: never the run's failure
                log.exception("reading the fleet's loaded models failed")
        self.priority = order_priorities(
            self.by_id, upward_ranks(self.by_id, self.cost), list(self.results), flex=flex
        )

    def admit(self, ready: Sequence[str]) -> List[str]:
        """The ready tasks to start now, in priority order; the others are held back (see
        :mod:`._holds`) until the task that feeds a starved server finishes."""
        if self.feeder is not None and self.feeder not in self.results and not self.failed:
            return self.ordered(ready)  # the feeder still runs: the held ones keep waiting
        ids = self.ordered([*self.held, *ready])
        self.held, self.feeder = [], None
        if not self.lookahead or self.failed:
            return ids
        try:
            feeder, held = plan_holds(
                ids,
                self.by_id,
                self.models,
                self.dependents,
                set(self.results),
                server_views(self.runner.balancer),
            )
        except Exception:  # a hold is a hint: never the run's failure
            log.exception("planning holds failed")
            return ids
        if feeder is None:
            return ids
        self.feeder, self.held = feeder, held
        return [tid for tid in ids if tid not in held]

    def look_ahead(self, start_soon: Callable[..., Any]) -> None:
        """Preload the models of the tasks about to be ready (see :mod:`._preload`)."""
        if self.preloader is None or self.failed:
            return
        done = set(self.results)
        # On a large DAG, look again only every so many finished tasks (each look is linear
        # in the running tasks and their dependents).
        if done and len(done) - self.looked_at < max(1, len(self.by_id) // 256):
            return
        self.looked_at = len(done)
        try:
            pairs = self.preloader.plan(self.running, frozenset(), done, self.priority)
        except Exception:  # a preload is a hint: never the run's failure
            log.exception("planning model preloads failed")
            return
        self.preloader.start(start_soon, pairs)

    def cold_loads(self) -> ColdLoads:
        paid = sum(1 for r in self.results.values() if r.cold_load)
        chain = critical_chain(self.results, self.by_id)
        p = self.preloader
        return ColdLoads(
            paid=paid,
            hidden=p.hidden if p else 0,
            preloads=p.preloads if p else 0,
            on_critical_path=sum(1 for tid in chain if self.results[tid].cold_load),
        )

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
            TaskResult(task.id, "skipped", error=Skipped(reason), priority=self.priority[task.id])
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
        self.running.add(task.id)
        try:
            if task.timeout is None:
                output, server, attempts, queued, cold = await self.call(task, prio)
            else:
                with anyio.fail_after(task.timeout):
                    output, server, attempts, queued, cold = await self.call(task, prio)
        except anyio.get_cancelled_exc_class():
            self.running.discard(task.id)
            self.results[task.id] = TaskResult(
                task.id, "cancelled", started_at=started, finished_at=self.clock(), priority=prio
            )
            self.emit("cancelled", task.id, self.results[task.id])
            raise
        except Exception as exc:
            self.running.discard(task.id)
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
        self.running.discard(task.id)
        if self.preloader is not None:
            self.preloader.used(server, self.models.get(task.id), cold)
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
                cold_load=cold,
            )
        )

    async def call(self, task: Task, prio: int) -> Tuple[str, Optional[str], int, float, bool]:
        if task.fn is not None:
            inputs = {d: self.outputs[d] for d in task.depends_on if d in self.outputs}
            out = await task.fn(self.runner, inputs)
            return str(out), None, 0, 0.0, False
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
        load = getattr(r, "load_duration", None)
        return (
            str(r.text),
            getattr(r, "server", None),
            int(getattr(r, "attempts", 1)),
            float(getattr(r, "queued_s", 0.0)),
            isinstance(load, (int, float)) and load >= COLD_LOAD_NS,
        )

    def ordered(self, ids: Sequence[str]) -> List[str]:
        self.reprioritize()
        return sorted(ids, key=lambda tid: -self.priority[tid])


async def run_dag(
    runner: Any,
    tasks: Sequence[Task],
    *,
    schedule: str = "eager",
    fail_fast: bool = False,
    on_event: Optional[Callable[[TaskEvent], None]] = None,
    inputs: Optional[Mapping[str, str]] = None,
    clock: Callable[[], float] = clock_now,
    lookahead: bool = True,
) -> DagResult:
    """Run a DAG of tasks on ``runner`` (an :class:`Orchestra`); see the module docstring.

    A failed task's dependents are skipped (the cause recorded), independent branches go on;
    with ``fail_fast=True`` the first failure cancels everything still running. Errors of
    tasks never propagate: they are in the result. Cancelling ``run_dag`` cancels its tasks.
    ``lookahead`` (``eager`` on an orchestra): preload the model of a stage about to start
    where no healthy server has it loaded, never evicting a model that work needs.

    Raises:
        TypeError: ``lookahead`` is not a bool.
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
    if not isinstance(lookahead, bool):
        raise TypeError(f"lookahead must be a bool, got {lookahead!r}")
    inputs = dict(inputs or {})
    by_id, sorter = validate_graph(tasks, inputs)
    t0 = clock()
    if not tasks:
        return DagResult((), 0.0)
    await _preflight(runner, tasks)
    run = _Run(runner, tasks, by_id, inputs, fail_fast, on_event, clock, lookahead)
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
    return DagResult(tuple(run.results[t.id] for t in tasks), clock() - t0, run.cold_loads())


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


def _has_costs(runner: Any) -> bool:
    """Whether ``runner`` exposes the live cost model (an :class:`Orchestra` does)."""
    try:
        balancer = runner.balancer
        return (
            hasattr(balancer, "costs")
            and hasattr(balancer, "fleet")
            and callable(getattr(runner.config, "resolve_model", None))
        )
    except Exception:
        return False


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
                run.running.discard(tid)
                finished.append(tid)
                wake.set()

        pending = 0
        while sorter.is_active():
            for tid in run.admit(sorter.get_ready()):
                run.emit("queued", tid)
                run.running.add(tid)  # for the look-ahead: its dependents are near now
                tg.start_soon(one, tid)
                pending += 1
            run.look_ahead(tg.start_soon)
            if pending == 0:
                break  # pragma: no cover - a prepared sorter always has work here
            if not finished:
                await wake.wait()
            wake = anyio.Event()
            done, finished[:] = list(finished), []
            pending -= len(done)
            sorter.done(*done)
        if run.preloader is not None:
            run.preloader.cancel()  # the DAG is done: no load is worth waiting for


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
