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
The same holds for each model alone on its runners (item 2 with the runner's own prompts,
on every host).

5. **The profile: few tasks at the start and the end.** A task runs only after its
   release (item 1) and ends at least its *tail* before the makespan ``T``: the longest
   chain of its dependents, each at its fastest host alone. So at time ``t`` at most
   ``N(t)`` tasks run, those whose window holds ``t`` (at the start the first stage, at
   the end the last), and on ``h`` at most ``N_h(t)``, those of ``S_h``. ``n`` running
   requests on ``h`` decode at most ``A(n)`` alone-seconds a second, a share ``g_h(n) =
   A(min(n, n_max)) / A(n_max)`` of the full speed the costs count, so the weighted work
   done by ``T`` is at most ``integral over [0, T] of the most sum w_h * g_h(n_h)`` with
   ``sum n_h <= N(t)``, ``n_h <= N_h(t)`` (a small knapsack per stretch of time), from each
   host's start on. On an exclusive host, a prompt chunk stops its decoding while a task
   runs there (``g >= g_h(1)``), so its ``P`` seconds of prompts remove at least
   ``g_h(1) * P`` from that integral: its tasks' prompts cost ``g_h(1) * prompt_s`` there,
   and its shared prompts take ``g_h(1) * first`` off. Each host counts from the earliest
   a task can run there (its loads are left out: they may come at any time). The least
   ``T`` whose capacity reaches the work (bisection; the bound is the largest ``T`` found
   below it) bounds the case; this refines the best few weights of each case.

6. **Before the first finish.** A prompt cache holds only what finished requests of its
   model on its host evaluated (``_makespan.py``, item 1), and the first request of
   model ``m`` to finish on ``h`` ends no sooner than ``F(h, m)``
   (:func:`~._makespan.first_finish`). On an exclusive host, before ``F_h``, the least
   ``F(h, m)`` over ``S_h``, nothing of ``S_h`` has finished there, so every request
   running there started with nothing cached and evaluates its whole prompt. Let ``k``
   be the most requests running there at once before ``F_h`` (one runner at a time: all
   of one model ``m``; the first request of ``m`` there is among them, as it started no
   later and has not finished). Then ``n_h <= k`` before ``F_h``, and the ``k`` evaluate
   ``k`` shared prompts of ``m``, ``k - 1`` more than item 3 counts: at least ``k - 1``
   times the least shared prompt of a model of ``S_h``, taking ``g_h(1)`` of the profile
   each as in item 5. A schedule picks ``k`` (fewer requests at once, or more prompts),
   so the profile's capacity by ``T`` is the largest over the choices of ``k`` (1 to the
   host's most) for each such host.

7. **One model alone before its first finish.** On a host whose models fit together, let
   ``m`` be a model of ``S_h`` and ``e`` the lesser of ``F(h, m)`` and the earliest any
   other model of ``S_h`` can start there (release and load): before ``e`` only ``m``'s
   runner works on ``h``, and nothing of ``m`` has finished there. Let ``k`` be the
   requests that decode there at some moment before ``e``: each first evaluated its whole
   prompt there, all of it before ``e`` (it started no sooner than 0), at least ``Q``
   seconds, the least whole prompt of ``m``'s tasks at the alone rate; so ``m``'s runner
   spent at least ``k * Q`` seconds on prompt chunks before ``e``, when no decoding ran
   on ``h``, and at most ``k`` requests decode there at once before ``e``. As in items 5
   and 6: ``n_h <= k`` before ``e``, and ``g_h(1) * k * Q`` off the capacity (while a
   chunk runs, a request runs there, and ``k >= 1``); a schedule picks ``k`` (0 up to the
   host's most), so the capacity is the largest over the choices. (Item 3 counts no
   prompts on such a host, so nothing is counted twice.) Of ``S_h``'s models, the one
   with the latest ``e`` above its own earliest start is used.

Every schedule falls in one case, so the least over the cases bounds them all. The cases
are the subsets of each host's models that fit alone, so their number is the product over
hosts of ``2^models``: above :data:`MAX_CASES` the bound is not computed (0). Everything
else stays as optimistic as ``_makespan.py`` says.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ._makespan import (
    HostSpec,
    TaskSpec,
    earliest_finish,
    finish_time,
    first_finish,
    topological,
    weight_choices,
    weighted_finish,
    weighted_work,
    whole_prompts,
)
from ._spec import aggregate_speedup

__all__ = ["MAX_CASES", "PROFILE_WEIGHTS", "placement_bound"]

#: Above this many cases (subsets of models per host, multiplied) the bound is skipped.
MAX_CASES = 4096
#: How many of a case's best host weights the profile refines.
PROFILE_WEIGHTS = 3


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
    whole = whole_prompts(tasks)
    finish = earliest_finish(tasks, hosts, whole)
    timing = _Timing(
        release={t.id: max((finish[d] for d in t.deps), default=0.0) for t in tasks},
        tail=_tails(tasks, hosts),
        # Per task, its prompt's tokens beyond its own (less those inside answers of its
        # model's tasks): what the first task on a fresh runner evaluates on top of its own.
        shared={t.id: whole[t.id] - t.prompt_tokens for t in tasks},
        first=first_finish(tasks, hosts, finish, whole),
    )
    plain = []
    for case in itertools.product(*options):
        if all(any(m in s for s in case) for m in used):  # every model runs somewhere
            plain.append((_case_bound(tasks, hosts, case, timing), case))
    best = math.inf
    for value, case in sorted(plain, key=lambda x: x[0]):
        if value >= best:
            break  # the profile only raises a case's bound
        best = min(best, max(value, _profiled(tasks, hosts, case, timing)))
    return 0.0 if not math.isfinite(best) else best


@dataclass(frozen=True)
class _Timing:
    release: Mapping[str, float]  # dependencies' earliest finish
    tail: Mapping[str, float]  # the least time from a task's end to the makespan
    shared: Mapping[str, int]  # prompt tokens beyond a task's own
    first: Mapping[Tuple[int, str], float]  # (host, model): its first finish there, at least


def _tails(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> Dict[str, float]:
    """Per task, the longest chain of its dependents, each at its fastest host alone: a
    task ends at least that long before the makespan."""
    succ: Dict[str, List[TaskSpec]] = {t.id: [] for t in tasks}
    for t in tasks:
        for d in t.deps:
            succ[d].append(t)
    tail: Dict[str, float] = {}
    for t in reversed(topological(tasks, hosts)):
        tail[t.id] = max(
            (
                tail[s.id]
                + min(h.prompt_s(s) + h.decode_s(s) for h in hosts if s.model in h.models)
                for s in succ[t.id]
            ),
            default=0.0,
        )
    return tail


@dataclass(frozen=True)
class _Host:
    """One host in one case: from when its work can fill its time (after its loads, where
    exclusive), the fixed time its fresh runners' shared prompts take, the decoding gain of
    ``n`` running requests (its share of full speed), whether it is exclusive, and from
    when any task can run there."""

    begin: float
    first: float
    gain: Tuple[float, ...]
    exclusive: bool
    models: FrozenSet[str]
    #: The earliest a task can run there (its loads may come later).
    early: float
    #: Before this (0: no such time) a request running there evaluated its whole prompt
    #: first: on an exclusive host, its shared part (s, at least) beyond the ``fresh`` (1)
    #: that ``first`` counts; elsewhere all of it (``fresh`` 0), one model running alone.
    window: float = 0.0
    extra: float = 0.0
    fresh: int = 1

    @property
    def start(self) -> float:
        return self.begin + self.first


def _case_hosts(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    case: Sequence[FrozenSet[str]],
    timing: _Timing,
    model: Optional[str],
    profile: bool = False,
) -> Tuple[List[List[float]], List[Optional[_Host]]]:
    """The tasks' costs on each host of the case (one row per task of ``model``, or every
    task), and the hosts' terms (None: runs none of them). With ``profile``, an exclusive
    host's prompts cost ``A(1) / A(n)`` of their time (see the module)."""
    mine = [t for t in tasks if model is None or t.model == model]
    costs: List[List[float]] = [[] for _ in mine]
    out: List[Optional[_Host]] = []
    for i, (h, models) in enumerate(zip(hosts, case)):
        if model is not None:
            models = models & {model}
        runs = [t for t in mine if t.model in models]
        if not runs:
            out.append(None)
            for row in costs:
                row.append(math.inf)
            continue
        most = max(1, min(h.max_decoding(models), len(runs)))
        cap = aggregate_speedup(most)
        exclusive = model is not None or not any(
            h.fits(pair) for pair in itertools.combinations(sorted(models), 2)
        )
        gain = tuple(aggregate_speedup(min(n, most)) / cap if n else 0.0 for n in range(most + 1))
        begin, first = _start(h, models, runs, timing, exclusive)
        early = min(max(timing.release[t.id], h.ready_s(t.model)) for t in runs)
        window, extra, fresh = _window(h, i, models, runs, timing, exclusive)
        out.append(_Host(begin, first, gain, exclusive, models, early, window, extra, fresh))
        prompts = (gain[1] if profile else 1.0) if exclusive else 0.0
        for row, t in zip(costs, mine):
            if t.model not in models:
                row.append(math.inf)
            else:
                row.append(h.decode_s(t) / cap + prompts * h.prompt_s(t))
    return costs, out


def _window(
    h: HostSpec,
    i: int,
    models: FrozenSet[str],
    runs: Sequence[TaskSpec],
    timing: _Timing,
    exclusive: bool,
) -> Tuple[float, float, int]:
    """Host ``h``'s (index ``i``) window before its first finish, the prompt seconds each
    request running in it costs, and how many of those ``first`` counts (see the module,
    item 6)."""
    seconds = {
        t.id: (t.prompt_tokens + timing.shared[t.id]) / (h.models[t.model].prompt_tps * h.speed)
        for t in runs
    }
    if exclusive:
        shared = min(
            min(timing.shared[t.id] for t in runs if t.model == m)
            / (h.models[m].prompt_tps * h.speed)
            for m in models
        )
        return min(timing.first[(i, m)] for m in models), shared, 1
    starts = {
        m: min(max(timing.release[t.id], h.ready_s(m)) for t in runs if t.model == m)
        for m in models
    }
    best = (0.0, 0.0, 0)
    for m in models:
        others = min((v for k, v in starts.items() if k != m), default=math.inf)
        end = min(timing.first[(i, m)], others)
        if end > starts[m] and end > best[0]:
            whole = min(seconds[t.id] for t in runs if t.model == m)
            best = (end, whole, 0)
    return best


def _case_bound(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    case: Sequence[FrozenSet[str]],
    timing: _Timing,
) -> float:
    """The makespan bound when host ``i`` runs exactly the models ``case[i]``: for all
    tasks on the hosts' time, and for each model's tasks on its runners' time."""
    best = 0.0
    for model in [None, *sorted({t.model for t in tasks})]:
        costs, terms = _case_hosts(tasks, hosts, case, timing, model)
        start = [math.inf if x is None else x.start for x in terms]
        best = max(best, weighted_finish(costs, start))
    return best


def _start(
    h: HostSpec,
    models: FrozenSet[str],
    runs: Sequence[TaskSpec],
    timing: _Timing,
    exclusive: bool,
) -> Tuple[float, float]:
    """When ``h`` can start on ``runs`` (the tasks of ``models``), and, on an exclusive host
    (or one runner), the time its fresh runners take first for the shared prompts."""
    release = timing.release
    if not exclusive:
        return min(max(release[t.id], h.ready_s(t.model)) for t in runs), 0.0
    loads = sum(h.models[m].load_s for m in models if m not in h.loaded)
    first = 0.0
    for m in models:
        rate = h.models[m].prompt_tps * h.speed
        first += min(timing.shared[t.id] for t in runs if t.model == m) / rate
    begin = max(min(release[t.id] for t in runs), loads)
    if len(models) == 1:
        # One runner: it cannot start before its model is loaded, nor before a task is ready.
        begin = max(begin, min(max(release[t.id], h.ready_s(t.model)) for t in runs))
    return begin, first


# -- the profile: few tasks can run at the start and at the end ---------------------------


def _profiled(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    case: Sequence[FrozenSet[str]],
    timing: _Timing,
) -> float:
    """The case's bound for all tasks with each host's decoding gain limited by how many
    tasks can be running at each moment (see the module)."""
    costs, terms = _case_hosts(tasks, hosts, case, timing, None, profile=True)
    start = [math.inf if x is None else x.start for x in terms]
    scored = sorted(
        ((finish_time(weighted_work(costs, w), w, start), w) for w in weight_choices(costs, start)),
        key=lambda x: -x[0],
    )
    best = 0.0
    for value, weights in scored[:PROFILE_WEIGHTS]:
        work = weighted_work(costs, weights)
        best = max(best, _profile_finish(tasks, terms, weights, work, timing, value))
    return best


def _profile_finish(
    tasks: Sequence[TaskSpec],
    terms: Sequence[Optional[_Host]],
    weights: Sequence[float],
    work: float,
    timing: _Timing,
    lo: float,
) -> float:
    """The largest ``T`` (from ``lo``, to a relative 1e-7) whose capacity stays below
    ``work``: no schedule finishes by it."""
    if work <= 0:
        return 0.0
    memo: Dict[Tuple[int, ...], float] = {}
    # The most requests each host runs at once in its window (-1: no window).
    ranges = [
        range(x.fresh, len(x.gain))
        if x is not None and weights[i] > 0 and x.window > x.early
        else range(-1, 0)
        for i, x in enumerate(terms)
    ]
    choices = list(itertools.product(*ranges))

    def most(horizon: float) -> float:
        return max(_capacity(tasks, terms, weights, timing, horizon, memo, ks) for ks in choices)

    hi = max(lo, 1e-9) * 2.0
    while most(hi) < work:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-7 * hi:
        mid = (lo + hi) / 2.0
        if most(mid) < work:
            lo = mid
        else:
            hi = mid
    return lo


def _capacity(
    tasks: Sequence[TaskSpec],
    terms: Sequence[Optional[_Host]],
    weights: Sequence[float],
    timing: _Timing,
    horizon: float,
    memo: Dict[Tuple[int, ...], float],
    cold: Sequence[int],
) -> float:
    """The most weighted work the hosts can do by ``horizon``: a task runs only between its
    release and ``horizon`` less its tail; at each moment the hosts' gains for at most that
    many running tasks (each host only the tasks of its models)."""
    flat = 0.0
    profiled: List[int] = []
    for i, x in enumerate(terms):
        if x is None or weights[i] <= 0:
            continue
        profiled.append(i)
        # Its runners' shared prompts (exclusive), on time when a task runs there; with k
        # requests at once in its window, k - fresh more prompts (see the module).
        prompts = (x.first if x.exclusive else 0.0) + max(0, cold[i] - x.fresh) * x.extra
        flat -= weights[i] * prompts * x.gain[1]
    windows = [
        (timing.release[t.id], horizon - timing.tail[t.id], t.model)
        for t in tasks
        if horizon - timing.tail[t.id] > timing.release[t.id]
    ]
    cuts = {0.0, horizon}
    for a, b, _ in windows:
        cuts.update(x for x in (a, b) if 0.0 < x < horizon)
    for i in profiled:
        term = terms[i]
        assert term is not None
        cuts.update(x for x in (term.early, term.window) if 0.0 < x < horizon)
    points = sorted(cuts)
    total = flat
    for a, b in zip(points, points[1:]):
        mid = (a + b) / 2.0
        running = [m for lo, hi, m in windows if lo <= mid < hi]
        key = [len(running)]
        for i in profiled:
            term = terms[i]
            assert term is not None
            if mid < term.early:
                key.append(0)
            else:
                here = sum(1 for m in running if m in term.models)
                if cold[i] >= 0 and mid < term.window:
                    here = min(here, cold[i])
                key.append(min(here, len(term.gain) - 1))
        k = tuple(key)
        if k not in memo:
            memo[k] = _best_split(k[0], k[1:], [terms[i] for i in profiled], profiled, weights)
        total += memo[k] * (b - a)
    return total


def _best_split(
    n: int,
    limits: Sequence[int],
    terms: Sequence[Optional[_Host]],
    index: Sequence[int],
    weights: Sequence[float],
) -> float:
    """The largest weighted gain of at most ``n`` running tasks, at most ``limits[i]`` on
    host ``i``."""
    best = [0.0] * (n + 1)  # best[k]: at most k tasks on the hosts so far
    for limit, term, i in zip(limits, terms, index):
        assert term is not None
        nxt = list(best)
        for k in range(n + 1):
            for j in range(1, min(limit, k) + 1):
                nxt[k] = max(nxt[k], best[k - j] + weights[i] * term.gain[j])
        best = nxt
    return best[n]
