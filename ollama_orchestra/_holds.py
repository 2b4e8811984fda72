"""Two rules of the eager executor's look-ahead for fleets whose hosts hold different models
(issue 18): which task a server takes first, and when a ready task waits on purpose.

Both come from the best schedule the local search of ``sim/_schedules.py`` found for the
demo's DAG (71.5 s where the orchestra took 80-81 s), read as rules that need no model of the
hosts' speeds, only which models each server holds:

* **Least flexible first** (:func:`flexibility`). A task whose model is loaded on one server
  only can run nowhere else without a cold load; one whose model is loaded on several can
  wait for another. So the balancer's queue puts the tasks that fewer servers hold warm
  first, and the upward rank orders each class (Pinedo, *Scheduling: Theory, Algorithms, and
  Systems*, the LFJ rule for parallel machines with eligibility constraints). On the demo
  the QA tasks (the general model: loaded on ``ollama02`` only) go before the coding tasks
  (the coder model: loaded on both), so each pipeline's debugging step is ready while
  ``ollama01`` still has coding work, instead of every QA task waiting for the last coding
  task and ``ollama01`` idling at the end.
* **Feed a starved server** (:func:`plan_holds`). A server is *starved* when nothing runs
  there and nothing ready or waiting can run warm on it (``ollama01`` at the start: it holds
  the coder model, and every ready task is a plan). A ready task that is the last missing
  dependency of a task that can run warm there *feeds* it: it runs first, and the ready tasks
  that could only share its server with it (their models warm only where its model is) wait
  until it finishes. Alone on its server it finishes sooner (requests decoding together share
  the GPU's time), so the starved server starts sooner: on the demo one plan runs alone for
  4 s instead of three together for 9 s, and ``ollama01`` starts coding 5 s earlier.

Measured on the demo (``--time-scale 0.1``, two runs each): neither rule alone gains
robustly (holds with the rank order 77.8-81.3 s, the rank order 77.3-80.2 s); both together
72.7 s, 1.02x the best schedule found.

Pure functions over plain data, and :func:`server_views`, which reads a balancer's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ._tasks import Task

__all__ = ["ServerView", "flexibility", "plan_holds", "server_views"]


@dataclass(frozen=True)
class ServerView:
    """One healthy server as the holds see it: the models loaded there, whether requests run
    or wait for it (for one of those models), and whether a slot is free."""

    name: str
    warm: FrozenSet[str]
    busy: bool
    free: bool


def server_views(balancer: Any) -> List[ServerView]:
    """The healthy servers of an orchestra's balancer, as the holds see them (now)."""
    now = balancer.now()
    out = []
    for st in balancer.fleet.servers():
        if not st.healthy:
            continue
        name = st.server.name
        warm = st.loaded_at(now)
        used = balancer.in_use(name)
        busy = used > 0 or any(balancer.waiting_for(m) > 0 for m in warm)
        out.append(ServerView(name, warm, busy, used < st.server.max_concurrency))
    return out


def flexibility(models: Mapping[str, str], servers: Sequence[ServerView]) -> Dict[str, int]:
    """Per task id: the servers its model is loaded on (a model loaded nowhere: as flexible as
    the most flexible, since a cold load can go anywhere)."""
    count: Dict[str, int] = {}
    for m in set(models.values()):
        count[m] = sum(1 for s in servers if m in s.warm)
    most = max(count.values(), default=0)
    return {tid: count[m] or most for tid, m in models.items()}


def plan_holds(
    ready: Sequence[str],
    tasks: Mapping[str, Task],
    models: Mapping[str, str],
    dependents: Mapping[str, Sequence[str]],
    done: AbstractSet[str],
    servers: Sequence[ServerView],
) -> Tuple[Optional[str], List[str]]:
    """``(feeder, held)`` for the ``ready`` tasks (in priority order; see the module): the
    first one that feeds a starved server through a free slot of a server its model is
    warm on, and the ready tasks after it that could only run where it runs. ``(None, [])``
    when no server is starved or no ready task feeds one."""
    starved = [s for s in servers if not s.busy and not any(models.get(t) in s.warm for t in ready)]
    if not starved:
        return None, []
    hungry = frozenset(m for s in starved for m in s.warm)
    # Each ready task's home: the servers its model is warm on (empty for a custom step).
    home = {tid: frozenset(s.name for s in servers if models.get(tid) in s.warm) for tid in ready}
    for k, tid in enumerate(ready):
        here = home[tid]
        if not here or not any(s.free for s in servers if s.name in here):
            continue
        if any(
            models.get(d) in hungry and all(x in done or x == tid for x in tasks[d].depends_on)
            for d in dependents.get(tid, ())
        ):
            held = [t for t in ready[k + 1 :] if home[t] and home[t] <= here]
            return (tid, held) if held else (None, [])
    return None, []
