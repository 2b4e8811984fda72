"""The best possible makespan of a benchmark's DAG on its simulated fleet (issue 18, item 3).

The model and its proofs live in the package (``ollama_orchestra/sim/_makespan.py``: the
lower bound, with ``_placement.py``'s case split on where each model runs;
``ollama_orchestra/sim/_schedules.py``: the best schedule found: list schedules, then a local search), because
``ollama-orchestra demo`` prints the bound too and ships in the wheel, which has no
``benchmarks``. Their docstrings state the timing model and where it is optimistic. This
module is the benchmarks' side: the same functions, and :func:`reference`, the figures a
benchmark prints and writes to its JSON for each contender: makespan / lower bound (and /
best found, where the DAG is small enough to search).

Run ``python -m benchmarks.makespan_bound`` for the bounds of the demo's and ``bench_dag``'s
DAGs on their fleets.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Mapping, Optional, Sequence

from ollama_orchestra.sim._makespan import (
    HostSpec,
    ModelTiming,
    TaskSpec,
    critical_path_bound,
    host_spec,
    lower_bound,
    output_token,
    prefill_floor,
    task_specs,
    with_prompt_floors,
    work_bound,
)
from ollama_orchestra.sim._placement import placement_bound
from ollama_orchestra.sim._schedules import Bounds, Schedule, best_schedule, bounds, simulate

__all__ = [
    "Bounds",
    "HostSpec",
    "ModelTiming",
    "Schedule",
    "TaskSpec",
    "best_schedule",
    "bounds",
    "critical_path_bound",
    "host_spec",
    "lower_bound",
    "output_token",
    "placement_bound",
    "prefill_floor",
    "reference",
    "reference_line",
    "simulate",
    "task_specs",
    "with_prompt_floors",
    "work_bound",
]


def reference(b: Bounds, makespans: Mapping[str, float]) -> Dict[str, Any]:
    """The bounds, and each contender's makespan over them (JSON-able)."""
    out = b.to_dict()
    out["contenders"] = {name: {"makespan_s": m, **b.shares(m)} for name, m in makespans.items()}
    return out


def reference_line(label: str, b: Bounds, makespans: Mapping[str, float]) -> str:
    """One line: the bounds and each contender's makespan as a multiple of them."""
    best = b.best
    head = f"{label}: best possible >= {b.lower:.2f}s (lower bound)"
    if best is not None:
        how = "optimal" if b.optimal is not None else "best schedule found"
        head += f", {best.makespan:.2f}s ({how})"
    parts = []
    for name, m in makespans.items():
        shares = b.shares(m)
        part = f"{name} {shares['vs_lower_bound']:.2f}x"
        if "vs_best_found" in shares:
            part += f" ({shares['vs_best_found']:.2f}x best)"
        parts.append(part)
    return head + "; makespan / bound: " + ", ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the bounds of the demo's and ``bench_dag``'s DAGs."""
    from ollama_orchestra._demo import demo_bounds, plan

    from . import bench_dag

    demo = plan()
    found = {
        **bench_dag.references(),
        "demo, whole fleet": demo_bounds(demo, search=True),
        f"demo, {demo.alone.name} alone": demo_bounds(demo, [demo.alone.name], search=True),
    }
    for label, b in found.items():
        print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in b.to_dict().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
