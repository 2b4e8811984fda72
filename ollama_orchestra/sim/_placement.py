"""A lower bound on a DAG's makespan that splits on where each model runs (issue 18, item 3).

The work bound of ``_makespan.py`` lets every host decode from the moment one of its models
is loaded, at its full decode capacity, with loads and prompt evaluation only delaying it.
On a host that holds one model at a time (the preset's ``ollama01``: its VRAM fits the
coder or the general model, not both) that is far from the truth: loading a model, and
evaluating prompts, take that host's time that no decoding can share. :func:`placement_bound`
counts them, at the price of a case split on which models each host runs.

Take any schedule, and let ``S_h`` be the set of models of the tasks it runs on host ``h``
(a request runs on one host). For that case:

1. **Release.** No task of ``S_h`` starts on ``h`` before ``r_h``, the least over those
   tasks of their dependencies' earliest finish (:func:`~._makespan.earliest_finish`, the
   critical path bound's terms), nor before its model is loaded there.
2. **A runner's time.** A model's runner evaluates prompts in chunks that ride its decode
   steps, one after the other (``_decode.py``: a decode step of every decoding request, then
   up to ``num_batch`` prompt tokens): its prompt tokens take ``tokens / (prompt_tps *
   speed)`` of its time and its decode steps the rest. ``n`` requests decoding on ``h`` do
   at most ``A(n)`` alone-seconds of decoding per second (``_makespan.py``), ``n`` at most
   :meth:`~._makespan.HostSpec.max_decoding` of ``S_h`` and at most the tasks of ``S_h``.
3. **Prompts on a fresh runner.** A runner starts with empty caches (a model loaded at the
   start, or loaded later: unloading ends its llama-server, slots and RAM cache with it,
   ``_kvcache.py``), so the first task of model ``m`` it runs evaluates its whole prompt,
   less (optimistically) the tokens inside answers of ``m``'s tasks; every task evaluates
   at least its own :attr:`~._makespan.TaskSpec.prompt_tokens`. So the runner evaluates at
   least ``sum of prompt_tokens + min over its tasks of (prompt - prompt_tokens)``: the
   shared part once.
4. **Exclusive hosts.** If no two models of ``S_h`` fit on ``h`` at once (or ``S_h`` has
   one model), one runner works at a time and a load waits for the evicted runner to idle
   (``_scheduler.py``: it evicts, waits for the victim's requests, unloads, then loads):
   loads, prompt chunks and decode steps take disjoint parts of ``h``'s time. Every model
   of ``S_h`` not loaded at the start costs its ``load_s`` at least once; at most ``r_h``
   of loading happens before ``r_h``; so in ``[0, T]``
   ``max(r_h, loads) + shared prompts + sum over its tasks of (prompt_s + decode_s / A(n))
   <= T``.
   Otherwise only the decode steps count (``sum of decode_s / A(n) <= T - start``, from
   the earliest release of a loaded model of ``S_h``): other runners' prompts may overlap
   them (optimistic).

With each task's cost on each host of the case as above (``inf`` where its model is not in
``S_h``), :func:`~._makespan.weighted_finish` gives a ``T`` no schedule of that case can
beat (for weights ``w_h``: ``sum w_h * (T - start_h) >= sum over tasks of min w_h * cost``).
Every schedule falls in one case, so the least over the cases bounds them all. The same
holds for each model alone on its runners (item 2 with the runner's own prompts, on every
host). The cases are the subsets of each host's models that fit alone, so their number is
the product over hosts of ``2^models``: above :data:`MAX_CASES` the bound is not computed
(0). Everything else stays as optimistic as ``_makespan.py`` says.
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ._makespan import (
    HostSpec,
    TaskSpec,
    earliest_finish,
    model_paths,
    topological,
    weighted_finish,
)
from ._spec import aggregate_speedup

__all__ = ["MAX_CASES", "placement_bound"]

#: Above this many cases (subsets of models per host, multiplied) the bound is skipped.
MAX_CASES = 4096


def placement_bound(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> float:
    """The least, over the sets of models each host may run, of the makespan such a
    placement allows (see the module); 0 when there are too many cases to try."""
    topological(tasks, hosts)
    if not tasks:
        return 0.0
    used = sorted({t.model for t in tasks})
    options: List[List[FrozenSet[str]]] = []
    count = 1
    for h in hosts:
        here = [m for m in used if m in h.models and h.fits([m])]
        subsets = [
            frozenset(c) for k in range(len(here) + 1) for c in itertools.combinations(here, k)
        ]
        options.append(subsets)
        count *= len(subsets)
        if count > MAX_CASES:
            return 0.0
    finish = earliest_finish(tasks, hosts)
    release = {
        t.id: max((finish[d] for d in t.deps), default=0.0) for t in tasks
    }  # dependencies' earliest finish
    shared = _shared_prompts(tasks)
    best = math.inf
    for case in itertools.product(*options):
        if not all(any(m in s for s in case) for m in used):
            continue  # some model runs nowhere
        best = min(best, _case_bound(tasks, hosts, case, release, shared))
    return 0.0 if not math.isfinite(best) else best


def _shared_prompts(tasks: Sequence[TaskSpec]) -> Dict[str, int]:
    """Per task, its prompt's tokens beyond its own :attr:`TaskSpec.prompt_tokens` (less
    those inside answers of its model's tasks): what the first task on a fresh runner
    evaluates on top of its own."""
    paths = model_paths(tasks)
    return {t.id: max(0, len(paths.get(t.id, ())) - t.prompt_tokens) for t in tasks}


def _case_bound(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    case: Sequence[FrozenSet[str]],
    release: Mapping[str, float],
    shared: Mapping[str, int],
) -> float:
    """The makespan bound when host ``i`` runs exactly the models ``case[i]``."""
    best = _bound_for(tasks, hosts, case, release, shared, None)
    for model in sorted({t.model for t in tasks}):
        best = max(best, _bound_for(tasks, hosts, case, release, shared, model))
    return best


def _bound_for(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    case: Sequence[FrozenSet[str]],
    release: Mapping[str, float],
    shared: Mapping[str, int],
    model: Optional[str],
) -> float:
    """All tasks (``model`` None: the hosts' time), or ``model``'s tasks on its runners."""
    mine = [t for t in tasks if model is None or t.model == model]
    costs: List[List[float]] = [[] for _ in mine]
    start: List[float] = []
    for h, models in zip(hosts, case):
        if model is not None:
            models = models & {model}
        runs = [t for t in mine if t.model in models]
        if not runs:
            start.append(math.inf)
            for row in costs:
                row.append(math.inf)
            continue
        cap = aggregate_speedup(max(1, min(h.max_decoding(models), len(runs))))
        exclusive = model is not None or not any(
            h.fits(pair) for pair in itertools.combinations(sorted(models), 2)
        )
        begin, first = _start(h, models, runs, release, shared, exclusive)
        start.append(begin + first)
        for row, t in zip(costs, mine):
            if t.model not in models:
                row.append(math.inf)
            else:
                row.append(h.decode_s(t) / cap + (h.prompt_s(t) if exclusive else 0.0))
    return weighted_finish(costs, start)


def _start(
    h: HostSpec,
    models: FrozenSet[str],
    runs: Sequence[TaskSpec],
    release: Mapping[str, float],
    shared: Mapping[str, int],
    exclusive: bool,
) -> Tuple[float, float]:
    """When ``h`` can start on ``runs`` (the tasks of ``models``), and, on an exclusive host
    (or one runner), the time its fresh runners take first for the shared prompts."""
    if not exclusive:
        return min(max(release[t.id], h.ready_s(t.model)) for t in runs), 0.0
    loads = sum(h.models[m].load_s for m in models if m not in h.loaded)
    first = 0.0
    for m in models:
        rate = h.models[m].prompt_tps * h.speed
        first += min(shared[t.id] for t in runs if t.model == m) / rate
    begin = max(min(release[t.id] for t in runs), loads)
    if len(models) == 1:
        # One runner: it cannot start before its model is loaded, nor before a task is ready.
        begin = max(begin, min(max(release[t.id], h.ready_s(t.model)) for t in runs))
    return begin, first
