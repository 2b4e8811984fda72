"""Upward ranks of a DAG's tasks under the live cost model (issue 18, item 1).

A task's *upward rank* is the length of the longest chain of work from its start to the end of
the DAG (HEFT's ``rank_u``): its own cost plus the largest rank of the tasks that wait for it.
The executor turns ranks into the balancer's queue priorities (longest remaining chain first);
the balancer walks its queue in that order and its strategy gives each waiter the server that
would finish it first (``hybrid``'s expected completion), which is HEFT's placement.

A task's cost is the least, over the servers that can run it, of what it would take there
alone (:func:`server_cost`): the cold load where its model is not loaded, the prefill of what
the server's prompt cache likely lacks, and the decode of ``num_predict`` tokens at the rate
measured there (else measured for the model elsewhere, scaled by the servers' weights; else
the learned rest of such a request; else :data:`PRIOR_TOKENS_PER_S` times the server's
weight). The least, not HEFT's mean: the rank is then a chain of finishing times some schedule
can reach, as the critical-path part of the simulator's lower bound (``sim/_makespan.py``).
Measurements refine the costs as they arrive; the executor recomputes ranks whenever it queues
new tasks.

Ranks become priorities through one order (:func:`order_priorities`): longest remaining chain
first, but near-ties (ranks within :data:`TIE_FACTOR` of each other: the estimates are
averages) go chain by chain, by the task each one's critical chain ends in (:func:`chain_ends`),
in the order the chains started to finish (the pipeline that started first, first). A
pipeline's parallel parts then finish together and the step that joins them starts, instead of
every pipeline's join waiting for its last part while all pipelines advance in step: on the
demo's three pipelines (plan, four coding tasks, QA of each, debugging) the QA of one pipeline
runs before the next one's, so the debugging steps start one after another, each while the
other pipelines' QA still runs (makespan 85-88 s -> 82.8-83.4 s simulated at time scale 0.02).
The order of the chains is their first finish, not their declaration: it does not change as
they progress, so a task queued early keeps a priority consistent with those queued later
(the balancer does not re-prioritize a waiting request).

Nothing here reads a clock or does I/O but :func:`fleet_costs`, which reads the orchestra's
state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ._estimates import cold_load_s
from ._tasks import Task, dependents

__all__ = [
    "DEFAULT_NUM_PREDICT",
    "PRIOR_TOKENS_PER_S",
    "RANK_SCALE",
    "TIE_FACTOR",
    "ServerCosts",
    "chain_ends",
    "fleet_costs",
    "order_priorities",
    "server_cost",
    "task_costs",
    "task_tokens",
    "upward_ranks",
]

#: Decode speed assumed before anything is measured (tokens/s on a ``weight=1`` server): the
#: simulator's default for a model without a profile (``ModelSpec.decode_tps``).
PRIOR_TOKENS_PER_S = 40.0
#: Tokens a task without ``options.num_predict`` is taken to generate (times its ``estimate``).
DEFAULT_NUM_PREDICT = 128
#: Default priorities are ranks scaled to ``0..RANK_SCALE`` (an explicit priority is kept).
RANK_SCALE = 1000
#: Ranks within this factor of the largest of their group are near-ties (see the module).
TIE_FACTOR = 1.15


@dataclass(frozen=True)
class ServerCosts:
    """What the cost model knows of one server, for one model: whether it has and holds it,
    and the seconds (orchestra clock) of a cold load, of a prompt's uncached prefill, the
    decode rate measured there (tokens/s) and the learned rest of a request."""

    name: str
    has: bool
    loaded: bool
    weight: float = 1.0
    cold_s: float = 0.0
    prefill_s: float = 0.0
    tokens_per_s: Optional[float] = None
    base_s: Optional[float] = None


def server_cost(tokens: float, here: ServerCosts, fleet: Sequence[ServerCosts] = ()) -> float:
    """Seconds to run a task generating ``tokens`` tokens alone on ``here`` (see the module):
    cold load (unless loaded), prefill, then decode at the rate measured there, else measured
    on ``fleet`` (per unit of weight, times ``here``'s), else the learned rest of a request,
    else the prior."""
    rate = here.tokens_per_s
    if not rate:
        known = [c.tokens_per_s / c.weight for c in fleet if c.tokens_per_s and c.weight > 0]
        if known:
            rate = sum(known) / len(known) * here.weight
    if rate:
        decode = tokens / rate
    elif here.base_s is not None:
        decode = here.base_s
    else:
        decode = tokens / (PRIOR_TOKENS_PER_S * max(here.weight, 1e-9))
    return (0.0 if here.loaded else here.cold_s) + here.prefill_s + decode


def task_tokens(task: Task) -> float:
    """The tokens ``task`` is expected to generate: its ``num_predict`` (a positive one), else
    :data:`DEFAULT_NUM_PREDICT` times its ``estimate``."""
    n = (task.options or {}).get("num_predict")
    if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0:
        return float(n)
    return DEFAULT_NUM_PREDICT * task.estimate


def task_costs(
    tasks: Mapping[str, Task], servers: Callable[[Task], Sequence[ServerCosts]]
) -> Dict[str, float]:
    """Each task's cost: the least :func:`server_cost` over the servers that have its model.
    A custom step (``fn``) or a task no server has costs its ``estimate`` times the mean cost
    of the others (its ``estimate`` alone when there are none)."""
    out: Dict[str, float] = {}
    unknown: List[str] = []
    for tid, t in tasks.items():
        views = servers(t) if t.fn is None else ()
        able = [c for c in views if c.has]
        if not able:
            unknown.append(tid)
            continue
        tokens = task_tokens(t)
        out[tid] = min(server_cost(tokens, c, able) for c in able)
    mean = sum(out.values()) / len(out) if out else 1.0
    for tid in unknown:
        out[tid] = tasks[tid].estimate * mean
    return out


def _sinks_up(tasks: Mapping[str, Task]) -> Tuple[Dict[str, List[str]], List[str]]:
    """Each task's dependents, and the tasks ordered so that each comes after every task
    that depends on it (Kahn's algorithm from the sinks up; the graph is acyclic here)."""
    after = dependents(tasks)
    waiting = {tid: len(ds) for tid, ds in after.items()}
    ready = [tid for tid, n in waiting.items() if n == 0]
    order: List[str] = []
    while ready:
        tid = ready.pop()
        order.append(tid)
        for dep in tasks[tid].depends_on:
            waiting[dep] -= 1
            if waiting[dep] == 0:
                ready.append(dep)
    return after, order


def upward_ranks(tasks: Mapping[str, Task], cost: Mapping[str, float]) -> Dict[str, float]:
    """Each task's cost plus the largest upward rank among the tasks that depend on it."""
    dependents, order = _sinks_up(tasks)
    rank: Dict[str, float] = {}
    for tid in order:
        rank[tid] = cost[tid] + max((rank[d] for d in dependents[tid]), default=0.0)
    return rank


def chain_ends(tasks: Mapping[str, Task], rank: Mapping[str, float]) -> Dict[str, str]:
    """Where each task's critical chain ends: the task itself if nothing depends on it, else
    the chain end of its dependent with the largest rank (the first declared among equal
    ones). Tasks whose chains end in the same task feed the same join."""
    dependents, order = _sinks_up(tasks)
    end: Dict[str, str] = {}
    for tid in order:
        ds = dependents[tid]
        if ds:
            top = max(rank[d] for d in ds)
            end[tid] = end[next(d for d in ds if rank[d] == top)]
        else:
            end[tid] = tid
    return end


def order_priorities(
    tasks: Mapping[str, Task],
    rank: Mapping[str, float],
    done: Sequence[str] = (),
    tie: float = TIE_FACTOR,
    flex: Optional[Mapping[str, int]] = None,
) -> Dict[str, int]:
    """Queue priorities from one order of the tasks (see the module): the largest rank first;
    a group of near-ties (ranks within ``tie`` of the group's largest) ordered by the task
    their critical chain ends in (:func:`chain_ends`): first the chain end a task of which
    finished first (``done``: the finished tasks, in the order they finished), so pipelines
    finish in the order they started to (an order that does not change as more finish); then
    those with nothing done, in declaration order; within a chain end, as declared. The
    order is spread over ``RANK_SCALE`` (the first) down to ``RANK_SCALE / n``; a task's
    explicit ``priority`` is kept as given (the user's word). With ``flex`` (task id -> the
    servers its model is loaded on, ``_holds.flexibility``), the least flexible tasks come
    first, each class ordered as above."""
    index = {tid: i for i, tid in enumerate(tasks)}
    end = chain_ends(tasks, rank)
    first: Dict[str, int] = {}
    for k, tid in enumerate(done):
        if tid in end:
            first.setdefault(end[tid], k)
    late = len(done)

    def group(tid: str) -> Tuple[int, int]:
        return first.get(end[tid], late), index[end[tid]]

    # A task without a model (a custom step) is as flexible as the most flexible.
    loosest = max(flex.values(), default=0) if flex is not None else 0

    def cls(tid: str) -> int:
        return flex.get(tid, loosest) if flex is not None else 0

    own = sorted(
        (tid for tid, t in tasks.items() if t.priority is None),
        key=lambda tid: (cls(tid), -rank[tid], index[tid]),
    )
    order: List[str] = []
    i = 0
    while i < len(own):
        top = rank[own[i]]
        j = i
        while j < len(own) and cls(own[j]) == cls(own[i]) and rank[own[j]] * tie >= top:
            j += 1
        order.extend(
            sorted(
                own[i:j],
                key=lambda tid: (group(tid), index[tid]),
            )
        )
        i = j
    n = len(order)
    out = {tid: round(RANK_SCALE * (n - k) / n) for k, tid in enumerate(order)}
    for tid, t in tasks.items():
        if t.priority is not None:
            out[tid] = t.priority
    return {tid: out[tid] for tid in tasks}


def fleet_costs(
    orch: Any, tasks: Mapping[str, Task], inputs: Mapping[str, str], outputs: Mapping[str, str]
) -> Callable[[Task], Sequence[ServerCosts]]:
    """The :class:`ServerCosts` of each server for a task, read from an orchestra's live
    state (its balancer's fleet and prompt costs), at the time of the call. The prompt is the
    task's template with the known inputs and outputs filled in, and each missing answer
    counted as its ``num_predict`` tokens of four characters."""
    balancer = orch.balancer
    costs = balancer.costs
    states = balancer.fleet.servers()
    names = [st.server.name for st in states]
    resolve: Callable[[str], Any] = orch.config.resolve_model
    now = balancer.now()

    def views(task: Task) -> Sequence[ServerCosts]:
        model = resolve(task.model)[0]
        body: Dict[str, Any] = {}
        chars = 0
        if task.prompt is not None:
            prefix, chars = _known_prefix(task, task.prompt, tasks, inputs, outputs)
            body["prompt"] = prefix
        prompt = costs.prompt(model, body) if body.get("prompt") else None
        out = []
        for st in states:
            if not st.healthy:
                continue
            name = st.server.name
            has = model in st.models if st.models_known else True
            est = costs.estimate(name, model, prompt, names)
            extra = costs.tokens(model, chars) if chars else 0.0
            rate = costs.prompt_tps(name, model)
            prefill = est.prefill_s + (extra / rate if rate else 0.0)
            tps = st.tokens_per_s.get(model)
            ratio = costs.time_ratio(name)
            out.append(
                ServerCosts(
                    name,
                    has,
                    st.is_loaded(model, now),
                    st.server.weight,
                    cold_load_s(st, model, states) if has else 0.0,
                    prefill,
                    tps / ratio if tps and ratio > 0 else None,
                    est.base_s,
                )
            )
        return out

    return views


def _known_prefix(
    task: Task,
    template: str,
    tasks: Mapping[str, Task],
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
) -> Tuple[str, int]:
    """The template filled up to its first answer not known yet, and the characters guessed
    for the rest (each missing answer: its ``num_predict`` tokens of four characters)."""
    values = dict(inputs)
    values.update({d: outputs[d] for d in task.depends_on if d in outputs})
    missing = [d for d in task.depends_on if d not in outputs]
    marks = {d: f"\x00{d}\x00" for d in missing}
    try:
        text = template.format(**{**values, **marks})
    except (KeyError, IndexError, ValueError):
        return "", 0
    first = min((text.find(m) for m in marks.values() if m in text), default=-1)
    prefix = text if first < 0 else text[:first]
    rest = 0 if first < 0 else len(text) - first - sum(len(m) for m in marks.values())
    answers = sum(4 * task_tokens(tasks[d]) for d in missing if d in tasks)
    return prefix, max(0, rest) + round(answers)
