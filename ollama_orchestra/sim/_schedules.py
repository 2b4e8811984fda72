"""The best schedule found for a DAG on a simulated fleet, and :func:`bounds`: the lower bound
of ``_makespan.py`` next to it (issue 18, item 3).

The best list schedule (:func:`best_schedule`) is an upper bound only where the simulator
behaves as modelled: an event simulation (:func:`simulate`) of the rates of
``_makespan.py`` (decode shared as ``A(n) / n``, one prompt at a time per runner in chunks
riding decode steps, loads one at a time per host evicting idle models), dispatching ready
tasks in a priority order to the host that would finish each first alone. Prompt caches: on a host built by
:func:`~._makespan.host_spec` (:attr:`HostSpec.cache_ram_bytes` set), the simulator's own
:class:`~._kvcache.PromptCache` per loaded model (a KV cache per slot, a slot chosen by
prefix similarity else LRU, the RAM cache behind them), fed the tasks' rendered prompts and
answers, so concurrent prompts each evaluate what their slot lacks, as in a real run; the
time to copy KV state between RAM and VRAM is left out. Without it, one cache per model as
large as need be, holding every finished request's prompt (optimistic: a schedule the
simulator may not reach; like the simulator's, it holds nothing of a request still running). The client's
overhead can only make a real run slower. For DAGs of up to :data:`EXHAUSTIVE_TASKS` tasks every topological
order is tried (within a budget), else the upward-rank order and seeded random ones.

A list scheduler never leaves a slot idle while a task is ready, and sends each task to the
host that would finish it first alone; the best schedule is often neither. With ``local``,
:func:`best_schedule` goes on with a local search (:func:`_local_search`) that pins tasks to
hosts and *holds* a task back until a sibling (a task with the same dependencies) finishes.
On the demo's DAG it finds 71.5 s where the best of 200 list schedules took 76.7 s: one plan
runs alone first, so the host that can only run the coding stage starts seconds sooner, and
a debugging task is pinned to that host. The lower bound stays the proof: the optimum is
between the two, and equal to the best found when that meets the lower bound.

Longer than 500 lines because the list scheduler, its event simulation and the local search
over it share the simulation's state and its one timing model; split, each would restate it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import (
    Any,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from ._decode import NUM_BATCH
from ._kvcache import PromptCache
from ._makespan import (
    HostSpec,
    TaskSpec,
    critical_path_bound,
    lower_bound,
    model_paths,
    output_token,
    topological,
    work_bound,
)
from ._placement import placement_bound
from ._spec import aggregate_speedup

__all__ = ["EXHAUSTIVE_TASKS", "Bounds", "Schedule", "best_schedule", "bounds", "simulate"]

#: DAGs up to this many tasks get every topological order tried (within the budget).
EXHAUSTIVE_TASKS = 12
_EPS = 1e-9


@dataclass
class _Job:
    task: TaskSpec
    host: int
    prompt_left: float
    decode_left: float
    rate: float = 0.0
    slot: Optional[int] = None  # the prompt-cache slot it holds (per-slot caches)

    @property
    def prefilling(self) -> bool:
        return self.prompt_left > _EPS


@dataclass
class _HostState:
    spec: HostSpec
    resident: Dict[str, int] = field(default_factory=dict)  # model -> requests running
    loading: Optional[str] = None
    load_done: float = math.inf
    cached: Dict[str, Set[int]] = field(default_factory=dict)  # model -> prompt-tree nodes
    caches: Dict[str, PromptCache] = field(default_factory=dict)  # model -> its slots' caches

    def cache(self, model: str) -> PromptCache:
        """``model``'s prompt cache here (per-slot, as the simulator's)."""
        if model not in self.caches:
            m = self.spec.models[model]
            self.caches[model] = PromptCache(
                self.spec.slots,
                kv_bytes_per_token=m.kv_bytes,
                ram_bytes=self.spec.cache_ram_bytes or 0,
                limit_tokens=m.num_ctx * self.spec.slots,
            )
        return self.caches[model]


def _rerate(jobs: Sequence[_Job], hosts: Sequence[_HostState]) -> None:
    """The simulator's rates for the running jobs (see the module): a runner evaluates one
    prompt at a time, its lowest slot's (in start order where caches have no slots)."""
    for i, hs in enumerate(hosts):
        mine = [j for j in jobs if j.host == i]
        decoding = sum(1 for j in mine if not j.prefilling)
        share = aggregate_speedup(max(1, decoding)) / max(1, decoding)
        for j in mine:
            m = hs.spec.models[j.task.model]
            decode = m.decode_tps * hs.spec.speed * share
            prompt = m.prompt_tps * hs.spec.speed
            same = [k for k in mine if k.task.model == j.task.model]
            if j.prefilling:
                if any(not k.prefilling for k in same):
                    prompt = NUM_BATCH / (NUM_BATCH / prompt + 1.0 / decode)
                waiting = [k for k in same if k.prefilling]
                first = min(waiting, key=lambda k: -1 if k.slot is None else k.slot)
                j.rate = prompt if j is first else 0.0
            elif any(k.prefilling for k in same):
                j.rate = 1.0 / (1.0 / decode + NUM_BATCH / prompt)
            else:
                j.rate = decode


def simulate(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    order: Sequence[str],
    paths: Optional[Mapping[str, List[int]]] = None,
    *,
    placed: Optional[Mapping[str, str]] = None,
    holds: Iterable[Tuple[str, str]] = (),
) -> float:
    """The makespan of the list schedule dispatching ready tasks in ``order``, each to the
    host that would finish it first alone (or to the host named ``placed[task id]``), under
    the simulator's timing model; for each ``(first, then)`` of ``holds``, ``then`` starts
    only once ``first`` finished (a :class:`Schedule` replays as
    ``simulate(tasks, hosts, s.order, placed=dict(s.placed), holds=s.holds)``)."""
    by_id = {t.id: t for t in tasks}
    index = {h.name: i for i, h in enumerate(hosts)}
    pinned = {tid: index[name] for tid, name in (placed or {}).items()}
    rank = {tid: i for i, tid in enumerate(order)}
    state = [_HostState(h, dict.fromkeys(h.loaded, 0)) for h in hosts]
    if paths is None:
        paths = model_paths(tasks)
    waiting = {t.id: set(t.deps) for t in tasks}
    for first, then in holds:
        waiting[then].add(first)
    ready = sorted((tid for tid, d in waiting.items() if not d), key=rank.__getitem__)
    jobs: List[_Job] = []
    now, left = 0.0, len(tasks)
    while left:
        _dispatch(by_id, paths, ready, jobs, state, now, pinned)
        _rerate(jobs, state)
        step = min(
            [(j.prompt_left if j.prefilling else j.decode_left) / j.rate for j in jobs if j.rate]
            + [hs.load_done - now for hs in state]
        )
        if not math.isfinite(step):
            raise ValueError("no task can start: a model fits on no host")  # pragma: no cover
        now += step
        for hs in state:
            if hs.loading is not None and hs.load_done <= now + _EPS:
                hs.resident[hs.loading] = 0
                hs.loading, hs.load_done = None, math.inf
        for j in list(jobs):
            done = j.rate * step
            if j.prefilling:
                j.prompt_left -= done
                if j.prompt_left <= _EPS:
                    j.prompt_left = 0.0
                continue
            j.decode_left -= done
            if j.decode_left <= _EPS * max(1.0, j.task.output_tokens):
                jobs.remove(j)
                hs = state[j.host]
                hs.resident[j.task.model] -= 1
                if j.slot is not None:
                    _release(hs, j)
                else:
                    hs.cached.setdefault(j.task.model, set()).update(paths.get(j.task.id, ()))
                left -= 1
                for tid, deps in waiting.items():
                    if j.task.id in deps:
                        deps.discard(j.task.id)
                        if not deps:
                            ready.append(tid)
                ready.sort(key=rank.__getitem__)
    return now


def _dispatch(
    by_id: Mapping[str, TaskSpec],
    paths: Mapping[str, List[int]],
    ready: List[str],
    jobs: List[_Job],
    state: Sequence[_HostState],
    now: float,
    placed: Mapping[str, int],
) -> None:
    """Start what can start, in priority order; begin loads where a model is missing."""
    for tid in list(ready):
        t = by_id[tid]
        best: Optional[Tuple[float, int]] = None
        for i, hs in enumerate(state):
            h = hs.spec
            if t.model not in h.models or placed.get(tid, i) != i:
                continue
            running = sum(hs.resident.values())
            full = h.max_concurrent is not None and running >= h.max_concurrent
            if t.model in hs.resident:
                if full or hs.resident[t.model] >= h.slots:
                    continue
                start = now
            elif hs.loading is None and _room(hs, t.model):
                start = now + h.models[t.model].load_s
            else:
                continue
            finish = start + h.prompt_s(t) + h.decode_s(t)
            if best is None or finish < best[0] - _EPS:
                best = (finish, i)
        if best is None:
            continue
        hs = state[best[1]]
        if t.model in hs.resident:
            hs.resident[t.model] += 1
            slot: Optional[int] = None
            if hs.spec.cache_ram_bytes is not None and t.prompt:
                # The simulator's caches: a slot's KV cache and the RAM cache behind it.
                admission = hs.cache(t.model).admit(t.prompt)
                slot, prompt = admission.slot, max(t.prompt_tokens, admission.evaluate)
            else:
                # A prompt cache as large as need be, filled as requests finish (as a
                # slot's is): the prompt's nodes no finished request evaluated here.
                cached = hs.cached.setdefault(t.model, set())
                new = [node for node in paths.get(t.id, ()) if node not in cached]
                prompt = max(t.prompt_tokens, len(new))
            jobs.append(_Job(t, best[1], float(prompt), float(t.output_tokens), slot=slot))
            ready.remove(tid)
        else:
            idle = [m for m, n in hs.resident.items() if n == 0]
            while idle and not hs.spec.fits([*hs.resident, t.model]):
                gone = idle.pop(0)  # evict an idle model, as the simulator does
                del hs.resident[gone]
                hs.cached.pop(gone, None)
                hs.caches.pop(gone, None)
            hs.loading, hs.load_done = t.model, now + hs.spec.models[t.model].load_s


def _release(hs: _HostState, job: _Job) -> None:
    """The slot of a finished job keeps its prompt and answer (less the last token, never
    evaluated when generation stops at ``num_predict``), up to the model's context."""
    assert job.slot is not None
    t = job.task
    answer = [output_token(t.id, i) for i in range(max(0, t.output_tokens - 1))]
    held = [*t.prompt, *answer][: hs.spec.models[t.model].num_ctx or None]
    hs.cache(t.model).release(job.slot, held)


def _room(hs: _HostState, model: str) -> bool:
    """Whether ``model`` fits here once the idle models are evicted."""
    return hs.spec.fits([*(m for m, n in hs.resident.items() if n > 0), model])


def _upward_rank(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> List[str]:
    """Task ids by remaining critical path (fastest host alone), longest first."""
    cost = {
        t.id: min(h.prompt_s(t) + h.decode_s(t) for h in hosts if t.model in h.models)
        for t in tasks
    }
    succ: Dict[str, List[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            succ[d].append(t.id)
    rank: Dict[str, float] = {}
    for t in reversed(topological(tasks, hosts)):
        rank[t.id] = cost[t.id] + max((rank[s] for s in succ[t.id]), default=0.0)
    return sorted(rank, key=lambda tid: -rank[tid])


def _topological_orders(tasks: Sequence[TaskSpec]) -> Iterator[List[str]]:
    deps = {t.id: set(t.deps) for t in tasks}
    order: List[str] = []

    def extend(done: FrozenSet[str]) -> Iterator[List[str]]:
        if len(order) == len(tasks):
            yield list(order)
            return
        for t in tasks:
            if t.id not in done and deps[t.id] <= done:
                order.append(t.id)
                yield from extend(done | {t.id})
                order.pop()

    yield from extend(frozenset())


@dataclass(frozen=True)
class Schedule:
    """The best schedule found: its makespan, priority order, how many schedules were
    simulated, and whether the search was complete (every topological order tried, or one
    found that meets the lower bound). Where the local search (:func:`best_schedule`) found
    better than the list schedules, ``placed`` pins tasks to hosts (task id, host name) and
    ``holds`` makes a task wait for a sibling's finish (first, then), as a scheduler may."""

    makespan: float
    order: Tuple[str, ...]
    tried: int
    exhaustive: bool
    placed: Tuple[Tuple[str, str], ...] = ()
    holds: Tuple[Tuple[str, str], ...] = ()


def best_schedule(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    *,
    budget: int = 2000,
    seed: int = 0,
    local: int = 0,
) -> Schedule:
    """The best of up to ``budget`` list schedules (see the module); every topological order
    when there are at most :data:`EXHAUSTIVE_TASKS` tasks and no more than ``budget`` orders.
    Then, unless that met the lower bound, up to ``local`` more schedules of the local search
    (:func:`_local_search`), from the upward-rank order, then from the best one (a local
    optimum of one is often not one of the other)."""
    topological(tasks, hosts)
    first = _upward_rank(tasks, hosts)
    paths = model_paths(tasks)
    ranked = simulate(tasks, hosts, first, paths)
    best = (ranked, tuple(first))
    tried, exhaustive = 1, False
    floor = lower_bound(tasks, hosts)
    if len(tasks) <= EXHAUSTIVE_TASKS:
        orders = _topological_orders(tasks)
        exhaustive = True
        for order in orders:
            if tried >= budget:
                exhaustive = False
                break
            tried += 1
            span = simulate(tasks, hosts, order, paths)
            if span < best[0] - _EPS:
                best = (span, tuple(order))
            if best[0] <= floor + _EPS:
                break  # optimal: it meets the lower bound
    rng = random.Random(seed)
    while not exhaustive and tried < budget and best[0] > floor + _EPS:
        keys = {t.id: rng.random() for t in tasks}
        order = list(first)
        order.sort(key=keys.__getitem__)
        tried += 1
        span = simulate(tasks, hosts, order, paths)
        if span < best[0] - _EPS:
            best = (span, tuple(order))
    found = Schedule(best[0], best[1], tried, exhaustive)
    if local > 0 and best[0] > floor + _EPS:
        starts = [found]
        if best[1] != tuple(first):  # the rank order first: its local optimum is often best
            starts.insert(0, Schedule(ranked, tuple(first), 0, False))
        spent = 0
        for s in starts:
            better = _local_search(tasks, hosts, s, paths, local - spent, floor)
            spent += better.tried - s.tried
            if better.makespan < found.makespan - _EPS:
                found = better
            if found.makespan <= floor + _EPS:
                break
        found = replace(found, tried=tried + spent, exhaustive=exhaustive)
    return found


def _local_search(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    start: Schedule,
    paths: Mapping[str, List[int]],
    budget: int,
    floor: float,
) -> Schedule:
    """Schedules a list scheduler cannot reach, by first-improvement descent from ``start``:
    each task pinned to each host that has its model (or set free again), and each *hold*
    toggled: a task waits for a sibling (a task with the same dependencies) to finish, which
    leaves a slot idle on purpose so the sibling runs with fewer requests beside it and
    releases its dependents sooner (the demo: one plan first, so a host that can only run
    the next stage starts seconds earlier). Every move keeps a schedule the simulator can
    run, so the result stays an upper bound on the optimum; stops at a local optimum, the
    lower bound, or ``budget`` simulations."""
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for t in tasks:
        groups.setdefault(tuple(sorted(t.deps)), []).append(t.id)
    pairs = [(a, b) for g in groups.values() for a in g for b in g if a != b]
    placed: Dict[str, str] = {}
    holds: Set[Tuple[str, str]] = set()
    cur, tried = start.makespan, 0

    def span(p: Mapping[str, str], h: Set[Tuple[str, str]]) -> float:
        nonlocal tried
        tried += 1
        try:
            return simulate(tasks, hosts, start.order, paths, placed=p, holds=sorted(h))
        except ValueError:  # pragma: no cover - a pinned task no host state can start
            return math.inf

    moved = True
    while moved and tried < budget and cur > floor + _EPS:
        moved = False
        for t in tasks:
            able = (h.name for h in hosts if t.model in h.models and h.fits([t.model]))
            for name in [None, *able]:
                if tried >= budget:
                    break
                p = {k: v for k, v in placed.items() if k != t.id}
                if name is not None:
                    p[t.id] = name
                if p == placed:
                    continue
                s = span(p, holds)
                if s < cur - _EPS:
                    placed, cur, moved = p, s, True
        for pair in pairs:
            if tried >= budget:
                break
            h = holds ^ {pair}
            if _cyclic(h):
                continue
            s = span(placed, h)
            if s < cur - _EPS:
                holds, cur, moved = h, s, True
    if cur >= start.makespan - _EPS:
        return replace(start, tried=start.tried + tried)
    return Schedule(
        cur,
        start.order,
        start.tried + tried,
        start.exhaustive,
        tuple(sorted(placed.items())),
        tuple(sorted(holds)),
    )


def _cyclic(edges: Set[Tuple[str, str]]) -> bool:
    """Whether these (first, then) holds wait in a circle (siblings share their
    dependencies, so a cycle can only run through holds)."""
    after: Dict[str, List[str]] = {}
    for a, b in edges:
        after.setdefault(a, []).append(b)
    state: Dict[str, int] = {}

    def visit(n: str) -> bool:
        if state.get(n) == 1:
            return True
        if state.get(n) == 2:
            return False
        state[n] = 1
        if any(visit(m) for m in after.get(n, ())):
            return True
        state[n] = 2
        return False

    return any(visit(n) for n in list(after))


@dataclass(frozen=True)
class Bounds:
    """Where a makespan stands: the lower bound (with its three parts) and, where computed, the
    best schedule found."""

    lower: float
    critical_path: float
    work: float
    best: Optional[Schedule] = None
    #: The placement bound (``_placement.py``); 0 where not computed.
    placement: float = 0.0

    @property
    def optimal(self) -> Optional[float]:
        """The optimum, where the best schedule found meets the lower bound."""
        if self.best is not None and self.best.makespan <= self.lower * (1 + 1e-6):
            return self.best.makespan
        return None

    def shares(self, makespan: float) -> Dict[str, float]:
        """``makespan`` over the lower bound, and over the best found where computed."""
        out = {"vs_lower_bound": makespan / self.lower if self.lower > 0 else math.inf}
        if self.best is not None and self.best.makespan > 0:
            out["vs_best_found"] = makespan / self.best.makespan
        return out

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able form."""
        out: Dict[str, Any] = {
            "lower_bound_s": self.lower,
            "critical_path_s": self.critical_path,
            "work_bound_s": self.work,
            "placement_bound_s": self.placement,
        }
        if self.best is not None:
            out["best_found_s"] = self.best.makespan
            out["best_found_orders_tried"] = self.best.tried
            out["best_found_exhaustive"] = self.best.exhaustive
            out["optimal_s"] = self.optimal
        return out


def bounds(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    *,
    search: Optional[bool] = None,
    budget: int = 2000,
    local: int = 0,
) -> Bounds:
    """The lower bound and, for small DAGs (or with ``search=True``), the best schedule found
    (``budget`` list schedules, then up to ``local`` of the local search)."""
    cp, work = critical_path_bound(tasks, hosts), work_bound(tasks, hosts)
    placed = placement_bound(tasks, hosts)
    if search is None:
        search = len(tasks) <= EXHAUSTIVE_TASKS
    best = best_schedule(tasks, hosts, budget=budget, local=local) if search and tasks else None
    return Bounds(max(cp, work, placed), cp, work, best, placed)
