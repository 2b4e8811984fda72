"""The best makespan a DAG can have on a simulated fleet: a proven lower bound, and the best
schedule found, both under the simulator's timing model (issue 18, item 3).

Pure functions over plain data (:class:`TaskSpec`, :class:`HostSpec`); :func:`host_spec`
and :func:`task_specs` build them from a :class:`~ollama_orchestra.sim.HostProfile` and the
executor's tasks. The demo and ``benchmarks/bench_dag.py`` print achieved / bound.

The timing model (``_decode.py``, ``_scheduler.py``), in simulated seconds:

- A request of model ``m`` on host ``h`` decodes at ``r = decode_tps * speed * A(n) / n``
  tokens/s, ``n`` the requests decoding on ``h`` at once (every model's, one GPU) and ``A``
  :func:`~ollama_orchestra.sim.aggregate_speedup` (increasing; ``A(n)/n`` decreasing). So
  a request alone is at its fastest, and ``h`` does at most ``A(n_max)`` "alone-seconds" of
  decoding per second, ``n_max`` the most requests that can decode there at once:
  ``num_parallel`` slots per loaded model, times the most of the DAG's models that fit at
  once (``max_loaded_models``, ``vram_gb``), and at most the client's ``max_concurrency``
  for the host where given (:attr:`HostSpec.max_concurrent`).
- A model's runner evaluates one prompt at a time, at ``prompt_tps * speed`` (its lowest
  slot's first, as llama-server fills each batch; ``_decode.py``), slowed by its decoding
  requests (a 512-token chunk rides each decode step, which slows those decodes too).
- A model not loaded at the start costs ``load_s`` before its first request on that host;
  a host loads one model at a time, and evicts an idle one when the next does not fit.

The lower bound (:func:`lower_bound`) is the largest of:

1. the critical path: each task on its fastest host alone (prompt and decode at the
   alone rates), starting no sooner than its dependencies' earliest finish and, on a host
   where its model is not loaded at the start, than that model's load time. A prompt
   cache holds only what requests of its model on its host that had *finished* evaluated
   or generated (``_kvcache.py``: a slot takes a request's tokens when it ends, the RAM
   cache only an idle slot's), so a task that starts on ``h`` before the first request of
   its model ends there evaluates its whole prompt (:func:`model_paths`: less the tokens
   inside its model's answers, optimistically). This takes the caches empty at the start
   and the DAG's requests as the only ones with a prompt (models preloaded by empty
   requests, as the demo and the executor's look-ahead do). That first request itself started with
   nothing cached: it ends no sooner than ``F(h, m)``, the least over the model's tasks of
   release + whole prompt + decode on ``h``. So a task ends no sooner than the lesser of
   (start + whole prompt) and (``max(start, F(h, m))`` + its own tokens), plus its
   decode; :func:`earliest_finish` iterates this to a fixed point (every round's values
   are bounds, the next round's ``F`` computed from them);
2. the work bound: decode work (``output_tokens / (decode_tps * speed)`` alone-seconds on
   each host) against the hosts' decode capacity ``A(n_max)``, each host working only from
   the moment one of the models is loaded there. For weights ``w_h >= 0``:
   ``sum w_h * A(n_max_h) * max(0, T - ready_h) >= sum over tasks of min over its hosts of
   w_h * work``; the weights tried are each subset of hosts (which also covers models that
   only some hosts have) scaled by each task's relative cost there (exact for two hosts).
   The same holds for the tasks of any set of models alone, with ``n_max`` counting only
   their slots: ``k`` of them among ``n`` decoding requests get ``k * A(n) / n <= A(k)``
   (a large model's tasks, held to their own slots, often bind more than the whole DAG).
   For one model, prompt evaluation adds to its runner's time (each batch is a decode step
   plus a prompt chunk): at least :func:`prefill_floor` tokens, the distinct prefixes of
   its prompts that no answer holds, since a cache holds only what its runner evaluated
   or generated, and splitting the tasks among hosts only adds to the count.

3. the placement bound (``_placement.py``): a case split on which models each host runs,
   counting, on a host that holds one model at a time, its loads and prompt evaluation as
   time no decoding shares, and on every host the tasks' releases.

All three hold for any scheduler (a property test checks them against the list schedules, a
test against the simulator itself); every approximation is on the optimistic side: a
task's own prompt counts only its :attr:`TaskSpec.prompt_tokens` on the critical path
(the tokens of its prompt no other prompt of its model shares, at least 1 in the
simulator; 0 when unsure); the prompt cache is taken as large as need be; prompt
evaluation does not count against other models' decoding; cold loads only delay work,
and evictions, the one-load-at-a-time rule and the client's overhead are left out.
Rendering a prompt in :func:`task_specs` tokenizes the text between dependencies' answers
piece by piece, which may split a token at a boundary differently from the simulator
(a token or so per answer), and counts an answer of ``num_predict`` words as that many
tokens (the simulator's tokenizer makes a word one token or more). The simulator's
real-time overhead only adds to a measured makespan.

The best schedule found and :func:`bounds`, which reports both, are in ``_schedules.py``.

Longer than 500 lines because each bound's proof sits in this docstring next to the code it
justifies, and the task and host specs the bounds share are defined here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from ._prompt import render_generate, tokenize
from ._spec import aggregate_speedup

if TYPE_CHECKING:
    from ._spec import HostProfile

__all__ = [
    "HostSpec",
    "ModelTiming",
    "TaskSpec",
    "critical_path_bound",
    "earliest_finish",
    "finish_time",
    "first_finish",
    "host_spec",
    "lower_bound",
    "model_paths",
    "output_token",
    "prefill_floor",
    "prompt_paths",
    "task_specs",
    "topological",
    "weight_choices",
    "weighted_finish",
    "weighted_work",
    "whole_prompts",
    "with_prompt_floors",
    "work_bound",
]

_EPS = 1e-9
#: Rounds of :func:`earliest_finish`'s fixed point (each one's values are already sound).
_FIRST_FINISH_ROUNDS = 4


@dataclass(frozen=True)
class TaskSpec:
    """One task: its model, the prompt tokens it must evaluate at least, its answer's length
    (``num_predict``), the ids it waits for, and optionally its prompt's tokens (with each
    dependency's answer as :func:`output_token` placeholders), for the prompt-cache-aware
    prefill bound of :func:`work_bound`."""

    id: str
    model: str
    output_tokens: int
    prompt_tokens: int = 0
    deps: Tuple[str, ...] = ()
    prompt: Tuple[str, ...] = ()


def output_token(task_id: str, i: int) -> str:
    """The placeholder of token ``i`` of ``task_id``'s answer in a :attr:`TaskSpec.prompt`
    (equal only to itself: answers are the simulator's random words)."""
    return f"\x00{task_id}\x00{i}"


@dataclass(frozen=True)
class ModelTiming:
    """A model on a host: single-request decode and prompt speeds (tokens/s, on a ``speed=1``
    host) and its cold-load time (s)."""

    decode_tps: float
    prompt_tps: float
    load_s: float
    size_gb: float = 0.0
    #: The KV cache's bytes per token (for the RAM prompt cache's size limit).
    kv_bytes: int = 0
    #: The tokens a slot holds (the context a request gets here).
    num_ctx: int = 0


@dataclass(frozen=True)
class HostSpec:
    """A host: its models, speed, slots per loaded model, what is loaded at the start, and the
    most requests that may run on it at once (``None``: as many as its slots allow)."""

    name: str
    models: Mapping[str, ModelTiming]
    speed: float = 1.0
    slots: int = 1
    loaded: FrozenSet[str] = frozenset()
    max_loaded_models: int = 3
    vram_gb: Optional[float] = None
    max_concurrent: Optional[int] = None
    #: The simulator's prompt caches, for the list schedules of ``_schedules.py``: each
    #: loaded model's ``slots`` KV caches plus a RAM cache of this many bytes
    #: (``--cache-ram``), each slot holding up to ``num_ctx`` tokens. ``None``: one cache per
    #: model as large as need be (the optimistic model the lower bound also uses).
    cache_ram_bytes: Optional[int] = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.loaded) - set(self.models))
        if unknown:
            raise ValueError(f"HostSpec({self.name!r}).loaded: {unknown!r} are not its models")
        if not self.fits(self.loaded):
            raise ValueError(
                f"HostSpec({self.name!r}).loaded: {sorted(self.loaded)!r} do not fit at once"
            )
        if self.slots < 1 or (self.max_concurrent is not None and self.max_concurrent < 1):
            raise ValueError(f"HostSpec({self.name!r}): slots and max_concurrent must be >= 1")

    def fits(self, models: Iterable[str]) -> bool:
        """Whether these models can be loaded at once."""
        names = list(models)
        if len(names) > self.max_loaded_models:
            return False
        size = sum(self.models[m].size_gb for m in names)
        return self.vram_gb is None or size <= self.vram_gb + _EPS

    def decode_s(self, task: TaskSpec) -> float:
        """Seconds to decode ``task``'s answer alone here."""
        return task.output_tokens / (self.models[task.model].decode_tps * self.speed)

    def prompt_s(self, task: TaskSpec) -> float:
        """Seconds to evaluate ``task``'s prompt alone here."""
        return task.prompt_tokens / (self.models[task.model].prompt_tps * self.speed)

    def ready_s(self, model: str) -> float:
        """The earliest a request for ``model`` can start here."""
        return 0.0 if model in self.loaded else self.models[model].load_s

    def max_decoding(self, models: Iterable[str]) -> int:
        """The most requests of these models that can decode here at once."""
        here = sorted({m for m in models if m in self.models})
        most = 0
        for k in range(len(here), 0, -1):
            if any(self.fits(c) for c in itertools.combinations(here, k)):
                most = k
                break
        n = most * self.slots
        return n if self.max_concurrent is None else min(n, self.max_concurrent)


def host_spec(
    profile: HostProfile,
    *,
    loaded: Iterable[str] = (),
    max_concurrent: Optional[int] = None,
) -> HostSpec:
    """The :class:`HostSpec` of a simulated host (``loaded``: models loaded at the start),
    with its per-slot and RAM prompt caches."""
    models = {
        m.name: ModelTiming(
            m.decode_tps,
            m.prompt_rate,
            m.cold_load_s,
            m.size_gb,
            m.kv_bytes,
            profile.default_num_ctx(m),
        )
        for m in profile.models
    }
    return HostSpec(
        profile.name,
        models,
        speed=profile.speed,
        slots=profile.num_parallel,
        loaded=frozenset(loaded),
        max_loaded_models=profile.max_loaded_models,
        vram_gb=profile.vram_gb,
        max_concurrent=max_concurrent,
        cache_ram_bytes=profile.cache_ram_mib * 1024 * 1024,
    )


def task_specs(
    tasks: Sequence[Any],
    *,
    roles: Optional[Mapping[str, str]] = None,
    inputs: Optional[Mapping[str, str]] = None,
    default_num_predict: int = 128,
    prompts: bool = True,
) -> List[TaskSpec]:
    """:class:`TaskSpec` of the executor's prompt tasks (``id``, ``model``, ``prompt``,
    ``system``, ``depends_on``, ``options["num_predict"]``); ``roles`` maps role names to
    models, ``inputs`` fills the prompts' other placeholders. Each prompt is rendered as the
    simulator renders a generate request, with each dependency's answer as ``num_predict``
    :func:`output_token` placeholders (a word is at least one token), then
    :func:`with_prompt_floors` sets the tokens each must evaluate. ``prompts=False`` leaves
    prompts out (0 tokens): for a fleet whose caches already hold some of them."""
    budget = {t.id: int((t.options or {}).get("num_predict", default_num_predict)) for t in tasks}
    out = []
    for t in tasks:
        model = (roles or {}).get(t.model, t.model)
        prompt: Tuple[str, ...] = ()
        if prompts and t.prompt is not None:
            values: Dict[str, str] = dict(inputs or {})
            values.update({d: f"\x01{d}\x01" for d in t.depends_on})
            text = render_generate(t.prompt.format(**values), t.system or "", raw=False)
            pieces: List[str] = []
            for i, part in enumerate(text.split("\x01")):
                if i % 2:
                    pieces.extend(output_token(part, j) for j in range(budget[part]))
                else:
                    pieces.extend(tokenize(part))
            prompt = tuple(pieces)
        out.append(TaskSpec(t.id, model, budget[t.id], 0, tuple(t.depends_on), prompt))
    return with_prompt_floors(out)


# -- the lower bound -----------------------------------------------------------------------


def topological(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> List[TaskSpec]:
    """``tasks`` in a topological order; ValueError naming the task on bad input."""
    if not hosts:
        raise ValueError("hosts: at least one host is needed")
    by_id = {t.id: t for t in tasks}
    if len(by_id) != len(tasks):
        raise ValueError(f"tasks: duplicate ids {sorted(t.id for t in tasks)!r}")
    for t in tasks:
        if not any(t.model in h.models for h in hosts):
            raise ValueError(f"task {t.id!r}: no host has model {t.model!r}")
        if not any(t.model in h.models and h.fits([t.model]) for h in hosts):
            raise ValueError(f"task {t.id!r}: model {t.model!r} fits on no host")
        if t.output_tokens < 0 or t.prompt_tokens < 0:
            raise ValueError(f"task {t.id!r}: token counts must be >= 0")
        for d in t.deps:
            if d not in by_id:
                raise ValueError(f"task {t.id!r}: unknown dependency {d!r}")
    order: List[TaskSpec] = []
    state: Dict[str, int] = {}

    def visit(t: TaskSpec) -> None:
        if state.get(t.id) == 2:
            return
        if state.get(t.id) == 1:
            raise ValueError(f"task {t.id!r}: dependency cycle")
        state[t.id] = 1
        for d in t.deps:
            visit(by_id[d])
        state[t.id] = 2
        order.append(t)

    for t in tasks:
        visit(t)
    return order


def critical_path_bound(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> float:
    """The longest chain, each task at its fastest host alone (see the module)."""
    return max(earliest_finish(tasks, hosts).values(), default=0.0)


def whole_prompts(tasks: Sequence[TaskSpec]) -> Dict[str, int]:
    """Per task, the tokens of its whole prompt that a cold runner evaluates: its own, or
    all of it but what lies inside its model's answers (:func:`model_paths`), the more."""
    paths = model_paths(tasks)
    return {t.id: max(t.prompt_tokens, len(paths.get(t.id, ()))) for t in tasks}


def earliest_finish(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    whole: Optional[Mapping[str, int]] = None,
) -> Dict[str, float]:
    """Each task's earliest finish on the critical path bound's terms, with a prompt cache
    that holds only finished requests' tokens (see the module). ``whole``:
    :func:`whole_prompts` of ``tasks``, where already known."""
    order = topological(tasks, hosts)
    full = whole_prompts(tasks) if whole is None else whole
    first: Dict[Tuple[int, str], float] = {}  # (host, model): its first finish, at least
    finish: Dict[str, float] = {}
    for _ in range(_FIRST_FINISH_ROUNDS):
        done: Dict[str, float] = {}
        for t in order:
            ready = max((done[d] for d in t.deps), default=0.0)
            best = math.inf
            for i, h in enumerate(hosts):
                if t.model not in h.models:
                    continue
                start = max(ready, h.ready_s(t.model))
                rate = h.models[t.model].prompt_tps * h.speed
                # Started before any request of its model finished here: no cache to reuse.
                cold = start + full[t.id] / rate
                warm = max(start, first.get((i, t.model), 0.0)) + h.prompt_s(t)
                best = min(best, min(cold, warm) + h.decode_s(t))
            done[t.id] = max(best, finish.get(t.id, 0.0))
        if done == finish:
            break
        finish = done
        first = first_finish(tasks, hosts, finish, full)
    return finish


def first_finish(
    tasks: Sequence[TaskSpec],
    hosts: Sequence[HostSpec],
    finish: Mapping[str, float],
    whole: Optional[Mapping[str, int]] = None,
) -> Dict[Tuple[int, str], float]:
    """Per (host index, model): the earliest a request of that model can finish there,
    given earliest finishes ``finish``: the first to finish started with nothing cached
    there, so it evaluated its whole prompt (see the module). ``whole``:
    :func:`whole_prompts` of ``tasks``, where already known."""
    full = whole_prompts(tasks) if whole is None else whole
    first: Dict[Tuple[int, str], float] = {}
    for t in tasks:
        ready = max((finish[d] for d in t.deps), default=0.0)
        for i, h in enumerate(hosts):
            if t.model in h.models:
                rate = h.models[t.model].prompt_tps * h.speed
                end = max(ready, h.ready_s(t.model)) + full[t.id] / rate + h.decode_s(t)
                first[(i, t.model)] = min(first.get((i, t.model), math.inf), end)
    return first


def work_bound(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> float:
    """Decode (and, per model, prompt) work over the fleet's capacity, at the best host
    weights, for every set of the DAG's models (see the module)."""
    topological(tasks, hosts)
    used = sorted({t.model for t in tasks})
    best = 0.0
    for k in range(1, len(used) + 1):
        for models in itertools.combinations(used, k):
            mine = [t for t in tasks if t.model in models]
            capacity = []
            for h in hosts:
                eligible = sum(1 for t in mine if t.model in h.models)
                capacity.append(aggregate_speedup(max(1, min(h.max_decoding(models), eligible))))
            costs = [
                [
                    h.decode_s(t) / c if t.model in h.models else math.inf
                    for h, c in zip(hosts, capacity)
                ]
                for t in mine
            ]
            extra = [0.0] * len(hosts)
            if k == 1:
                # One model: one runner per host, whose batches take a decode step plus a
                # prompt chunk: its prompt evaluation adds to its decoding time.
                (model,) = models
                tokens = max(sum(t.prompt_tokens for t in mine), prefill_floor(mine))
                extra = [
                    tokens / (h.models[model].prompt_tps * h.speed)
                    if model in h.models
                    else math.inf
                    for h in hosts
                ]
            # Nothing of these models runs on a host before one of them is loaded there.
            ready = [
                min(h.ready_s(m) if m in h.models else math.inf for m in models) for h in hosts
            ]
            best = max(best, weighted_finish([*costs, extra], ready))
    return best


def weighted_finish(costs: Sequence[Sequence[float]], ready: Sequence[float]) -> float:
    """The largest ``(sum over rows of min_h w_h * cost + sum w_h * ready_h) / sum(w)`` over
    the weights of :func:`weight_choices`. A row is one piece of work, its cost on each
    host (``inf``: not there); host ``h`` works from ``ready_h`` on, one unit of cost a
    second."""
    return max(
        (finish_time(weighted_work(costs, w), w, ready) for w in weight_choices(costs, ready)),
        default=0.0,
    )


def weight_choices(costs: Sequence[Sequence[float]], ready: Sequence[float]) -> List[List[float]]:
    """The host weights tried: each subset of hosts, scaled by each row's inverse costs
    (where finite on every host) and by 1."""
    shapes: List[List[float]] = [[1.0] * len(ready)]
    for row in costs:
        if all(math.isfinite(x) and x > 0 for x in row):
            shapes.append([1.0 / x for x in row])
    out = []
    for mask in range(1, 1 << len(ready)):
        for shape in shapes:
            weights = [w if mask >> i & 1 else 0.0 for i, w in enumerate(shape)]
            if sum(weights) > 0:
                out.append(weights)
    return out


def weighted_work(costs: Sequence[Sequence[float]], weights: Sequence[float]) -> float:
    """``sum over rows of min_h w_h * cost``: the least weighted work of the rows."""
    return sum(
        min((w * x for w, x in zip(weights, row) if math.isfinite(x)), default=0.0) for row in costs
    )


def finish_time(work: float, weights: Sequence[float], ready: Sequence[float]) -> float:
    """The least ``T`` with ``sum w_h * max(0, T - ready_h) >= work``: hosts join as they
    become ready (one ready only after ``T`` does nothing)."""
    hosts = sorted((r, w) for w, r in zip(weights, ready) if w > 0 and math.isfinite(r))
    if work <= 0:
        return 0.0
    total, rate = work, 0.0
    for r, w in hosts:
        if rate > 0 and total / rate <= r:
            break  # done before this host is ready
        total += w * r
        rate += w
    return total / rate if rate > 0 else 0.0


def prefill_floor(tasks: Sequence[TaskSpec]) -> int:
    """The fewest prompt tokens these tasks (of one model) evaluate in all, on any hosts: the
    distinct prefixes of their prompts (a prompt cache holds only what was evaluated or
    generated on it; splitting the tasks among hosts only adds to the count), less those
    inside an answer that another of them generated after its prompt."""
    paths = prompt_paths(tasks)
    return len({node for path in paths.values() for node in path})


def prompt_paths(tasks: Sequence[TaskSpec]) -> Dict[str, List[int]]:
    """Each task's prompt as the nodes of the prefix tree of every prompt and answer, less
    the nodes inside an answer (generated, so cached without being evaluated)."""
    nodes: Dict[Tuple[int, str], int] = {}
    free: Set[int] = set()
    for t in tasks:
        node = 0
        answer = (output_token(t.id, j) for j in range(t.output_tokens))
        for i, tok in enumerate(itertools.chain(t.prompt, answer)):
            node = nodes.setdefault((node, tok), len(nodes) + 1)
            if i >= len(t.prompt):
                free.add(node)
    paths: Dict[str, List[int]] = {}
    for t in tasks:
        node, path = 0, []
        for tok in t.prompt:
            node = nodes[(node, tok)]
            if node not in free:
                path.append(node)
        paths[t.id] = path
    return paths


def model_paths(tasks: Sequence[TaskSpec]) -> Dict[str, List[int]]:
    """:func:`prompt_paths` of each model's tasks (node ids are per model)."""
    paths: Dict[str, List[int]] = {}
    for model in {t.model for t in tasks}:
        paths.update(prompt_paths([t for t in tasks if t.model == model and t.prompt]))
    return paths


def with_prompt_floors(tasks: Sequence[TaskSpec]) -> List[TaskSpec]:
    """``tasks`` with :attr:`TaskSpec.prompt_tokens` raised to the tokens of their prompt
    that no other task of their model has, nor generated (at least 1 where there is a
    prompt): a prompt cache cannot hold those before the task runs."""
    out = list(tasks)
    for model in {t.model for t in tasks}:
        mine = [t for t in tasks if t.model == model and t.prompt]
        paths = prompt_paths(mine)
        seen: Dict[int, int] = {}
        for path in paths.values():
            for node in path:
                seen[node] = seen.get(node, 0) + 1
        for i, t in enumerate(out):
            if t.id in paths:
                own = max(1, sum(1 for node in paths[t.id] if seen[node] == 1))
                out[i] = replace(t, prompt_tokens=max(t.prompt_tokens, own))
    return out


def lower_bound(tasks: Sequence[TaskSpec], hosts: Sequence[HostSpec]) -> float:
    """A makespan no schedule can beat on these hosts (simulated seconds): the largest of
    the critical path, the work bound and the placement bound (``_placement.py``)."""
    from ._placement import placement_bound  # it builds on this module

    return max(
        critical_path_bound(tasks, hosts),
        work_bound(tasks, hosts),
        placement_bound(tasks, hosts),
    )
