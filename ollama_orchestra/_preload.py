"""Look-ahead model loading for the DAG executor, and the count of cold loads (issue 18, item 2).

The executor knows the graph ahead: when a task's dependencies are all running or done, or
near themselves (it is *near*: at most two stages ahead of the running ones) and its model is loaded on no healthy server that has it, :class:`Preloader` loads it
on one of them before the task is ready, so the load overlaps work instead of delaying the
task. Ollama loads a model on a generate request with an empty prompt, for ``keep_alive``
(ollama/ollama ``docs/api.md``, "Load a model"; ``server/routes.go`` ``GenerateHandler``:
``if req.Prompt == ""`` answers ``done_reason: "load"`` once the runner is scheduled, v0.12 to
v0.33; the simulator does the same, ``sim/_routes.py``).

The executor also knows when a host will idle: a host with no request in flight, while
requests for a model it has but has not loaded wait in the balancer's queue, gets that model
loaded, so the queue can spill onto it.

Loading a model may evict another (Ollama makes room when memory or ``max_loaded_models``
runs out), and the orchestra does not know a host's free memory, so a preload goes only where
nothing it could evict is needed there (the loaded models as the monitor's ``/api/ps`` and the
requests' answers say), or where the host was already seen holding those models and this one
at once:

* for a near task, no model loaded on the host is wanted by a running, runnable or near task;
* on an idle host (nothing running there), no model loaded there has requests waiting for it
  or is wanted by a near task (even where another host holds it too: the demo showed a near
  stage then routed to the host that had lost it, paying the reload on the critical chain).

So a preload never takes a model from running or runnable work.

:class:`ColdLoads` counts what the run paid and what the preloads hid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import (
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import anyio

from ._estimates import cold_load_s
from ._tasks import Task, dependents

__all__ = ["COLD_LOAD_NS", "ColdLoads", "Preloader", "critical_chain"]

log = logging.getLogger("ollama_orchestra.executor")

#: A request whose answer reports at least this much ``load_duration`` (server time) paid a
#: cold load: a warm request reports a few milliseconds.
COLD_LOAD_NS = 500_000_000


@dataclass(frozen=True)
class ColdLoads:
    """Cold loads in a DAG run.

    Attributes:
        paid: tasks whose answer reports a cold load (``load_duration`` of
            :data:`COLD_LOAD_NS` or more): the task waited for its model to load.
        hidden: preloaded models a task then found loaded (each preload counts once).
        preloads: preload requests that succeeded.
        on_critical_path: paid cold loads on the run's critical chain (the last task to
            finish, the dependency of it that finished last, and so on back).
    """

    paid: int = 0
    hidden: int = 0
    preloads: int = 0
    on_critical_path: int = 0


def critical_chain(results: Mapping[str, Any], tasks: Mapping[str, Task]) -> List[str]:
    """The run's critical chain, last task first: the task that finished last, then among its
    dependencies the one that finished last, and so on (``results``: id -> ``TaskResult``)."""
    done = {tid: r for tid, r in results.items() if r.finished_at is not None}
    if not done:
        return []
    tid: Optional[str] = max(done, key=lambda k: done[k].finished_at)
    chain: List[str] = []
    while tid is not None:
        chain.append(tid)
        deps = [d for d in tasks[tid].depends_on if d in done]
        tid = max(deps, key=lambda k: done[k].finished_at) if deps else None
    return chain


class Preloader:
    """Plans and sends preloads for one DAG run (see the module).

    ``orch`` is an :class:`Orchestra` (its balancer's fleet state, ``call_host`` and
    ``refresh``); ``models`` maps each model task's id to its resolved model.
    """

    def __init__(self, orch: Any, tasks: Mapping[str, Task], models: Mapping[str, str]) -> None:
        self.orch = orch
        self.tasks = tasks
        self.models = dict(models)
        self.loading: Set[Tuple[str, str]] = set()
        #: Preloaded (server, model) pairs no task has used yet.
        self.unused: Set[Tuple[str, str]] = set()
        #: Per server, the sets of models seen loaded there at once.
        self.seen: Dict[str, Set[FrozenSet[str]]] = {}
        self.preloads = 0
        self.hidden = 0
        self.scopes: List[anyio.CancelScope] = []
        self.dependents = dependents(tasks)
        self.model_set = frozenset(self.models.values())
        #: How many stages ahead of the running ones a model is loaded (see :meth:`near`).
        self.depth = 2

    # -- planning --------------------------------------------------------------------------

    def plan(
        self,
        running: AbstractSet[str],
        ready: AbstractSet[str],
        done: AbstractSet[str],
        priority: Mapping[str, int],
    ) -> List[Tuple[str, str]]:
        """The ``(server, model)`` pairs to preload now: for each near task's model (highest
        priority first) loaded on no healthy server that has it, the host where loading it
        evicts nothing wanted and costs least."""
        balancer = self.orch.balancer
        states = balancer.fleet.servers()
        now = balancer.now()
        loaded: Dict[str, FrozenSet[str]] = {}
        for st in states:
            here = st.loaded_at(now)
            loaded[st.server.name] = here
            self.seen.setdefault(st.server.name, set()).add(here)
        started = running | ready | done
        near = self.near(running, started, done)
        wanted = {self.models[t] for t in running | ready if t in self.models}
        wanted |= {self.models[t] for t in near}
        near.sort(key=lambda tid: -priority.get(tid, 0))
        out: List[Tuple[str, str]] = []
        planned: Set[str] = set()
        for tid in near:
            model = self.models[tid]
            if model in planned:
                continue
            planned.add(model)
            able = [st for st in states if st.healthy and model in st.models]
            names = {st.server.name for st in able}
            if any(model in loaded[n] or (n, model) in self.loading for n in names):
                continue
            hosts = [
                st
                for st in able
                if not (loaded[st.server.name] & wanted)
                or any(
                    seen >= loaded[st.server.name] | {model} for seen in self.seen[st.server.name]
                )
            ]
            if not hosts:
                continue
            best = min(hosts, key=lambda st: cold_load_s(st, model, states))
            out.append((best.server.name, model))
            self.loading.add((best.server.name, model))
        out.extend(self._idle(states, loaded, {self.models[t] for t in near}))
        return out

    def _idle(
        self,
        states: Sequence[Any],
        loaded: Mapping[str, FrozenSet[str]],
        near: AbstractSet[str],
    ) -> List[Tuple[str, str]]:
        """Idle hosts: a model they have but have not loaded, that requests wait for."""
        balancer = self.orch.balancer
        models = {m for m in self.model_set if balancer.waiting_for(m) > 0}
        out: List[Tuple[str, str]] = []
        for st in states:
            name = st.server.name
            if not st.healthy or balancer.in_use(name) or any(n == name for n, _ in self.loading):
                continue
            here = loaded[name]

            def needed(m: str) -> bool:
                return balancer.waiting_for(m) > 0 or m in near

            wanted = [
                m
                for m in sorted(models, key=lambda m: -balancer.waiting_for(m))
                if m in st.models and m not in here
            ]
            for model in wanted:
                keep = {m for m in here if needed(m)}
                if not keep or any(seen >= here | {model} for seen in self.seen[name]):
                    out.append((name, model))
                    self.loading.add((name, model))
                    break
        return out

    def near(
        self, running: AbstractSet[str], started: AbstractSet[str], done: AbstractSet[str]
    ) -> List[str]:
        """The model tasks not started yet that are at most :attr:`depth` steps from running:
        every dependency is running, done or itself near (one level less), at least one not
        done. Depth 2 reaches a stage while the one before it is still only near, so a load
        longer than one task can still be hidden."""
        level: Set[str] = set(running)
        ahead: Set[str] = set(done)
        out: List[str] = []
        seen: Set[str] = set()
        for _ in range(self.depth):
            # only the dependents of the level below can be near: no walk over the whole DAG
            nxt = set()
            for tid in {u for r in level for u in self.dependents.get(r, ())}:
                if tid in started or tid in seen:
                    continue
                deps = self.tasks[tid].depends_on
                if all(d in ahead or d in level for d in deps):
                    nxt.add(tid)
            if not nxt:
                break
            ahead |= level
            level = nxt
            seen |= nxt
            out.extend(sorted(nxt))
        return [tid for tid in out if tid in self.models]

    # -- sending ---------------------------------------------------------------------------

    def start(self, start_soon: Callable[..., Any], pairs: Sequence[Tuple[str, str]]) -> None:
        """Send each preload as a task of the executor's task group (cancelled by
        :meth:`cancel` when the DAG is done)."""
        for server, model in pairs:
            self.loading.add((server, model))  # planned ones are already in
            scope = anyio.CancelScope()
            self.scopes.append(scope)
            start_soon(self._load, server, model, scope)

    def cancel(self) -> None:
        """Stop the preloads still in flight (the DAG is done)."""
        for scope in self.scopes:
            scope.cancel()

    async def _load(self, server: str, model: str, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                st = self.orch.balancer.fleet[server]
                status, _ = await self.orch.call_host(
                    st.server,
                    "POST",
                    "/api/generate",
                    # No keep_alive: the server's own default (OLLAMA_KEEP_ALIVE) applies.
                    {"model": model, "stream": False},
                    timeout=self.orch.config.timeouts.first_byte_s,
                )
                if status != 200:
                    log.info("preloading %s on %s: HTTP %s", model, server, status)
                    return
                self.preloads += 1
                self.unused.add((server, model))
                await self.orch.refresh()  # routing sees the model loaded at once
            except Exception as exc:  # a preload is a hint: never the DAG's failure
                log.info("preloading %s on %s failed: %s", model, server, exc)
            finally:
                self.loading.discard((server, model))

    # -- counting --------------------------------------------------------------------------

    def used(self, server: Optional[str], model: Optional[str], cold: bool) -> None:
        """A task ran on ``server``: a preloaded model found warm there was a hidden load."""
        if server is None or model is None:
            return
        key = (server, model)
        if key in self.unused:
            self.unused.discard(key)
            if not cold:
                self.hidden += 1
