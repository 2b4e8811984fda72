"""What the command line prints: status and metrics tables, live progress, run reports."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, TextIO

from ._executor import DagResult, TaskEvent, TaskResult
from ._metrics import MetricsSnapshot
from ._state import FleetSnapshot, ServerSnapshot

__all__ = [
    "Progress",
    "down_cause",
    "metrics_table",
    "one_line",
    "print_outputs",
    "run_report",
    "status_table",
    "summary",
    "table",
    "task_counts",
]


# -- tables ------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")


def status_table(snap: FleetSnapshot, out: TextIO) -> None:
    rows = [
        [
            "server",
            "health",
            "version",
            "models",
            "loaded",
            "slots",
            "in-flight",
            "latency",
            "breaker",
        ]
    ]
    for s in snap.servers.values():
        latency = (
            ", ".join(f"{m.split(':')[0]} {v:.2f}s" for m, v in sorted(s.latency_s.items())) or "-"
        )
        rows.append(
            [
                s.name,
                "up" if s.healthy else "DOWN",
                s.version or "-",
                ", ".join(s.models) or "-",
                ", ".join(m.name for m in s.loaded) or "-",
                str(s.slots),
                str(s.in_flight),
                latency,
                s.breaker,
            ]
        )
    table(rows, out)
    down = [s for s in snap.servers.values() if not s.healthy]
    if down:
        out.write("\n")
    for s in down:
        out.write(f"{s.name} is down: {down_cause(s)}\n")


def down_cause(s: ServerSnapshot) -> str:
    return one_line(s.last_error or "no answer to the probes yet")


def one_line(text: str) -> str:
    return " ".join(text.split())


def metrics_table(m: MetricsSnapshot, counts: Dict[str, int], out: TextIO) -> None:
    rows = [["server", "tasks", "utilization", "share", "fair share", "tokens/s"]]
    for s in m.servers.values():
        rows.append(
            [
                s.name,
                str(counts.get(s.name, 0)),
                f"{s.utilization:.0%}",
                f"{s.share:.0%}",
                f"{s.fair_share:.0%}",
                f"{s.tokens_per_s:.0f}",
            ]
        )
    table(rows, out)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A live progress bar on a terminal; plain lines otherwise (no dependency)."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.done = 0
        self.running = 0
        self.failed = 0

    def __call__(self, event: TaskEvent) -> None:
        if event.kind == "started":
            self.running += 1
        elif event.kind in ("finished", "failed", "skipped", "cancelled"):
            self.done += 1
            if event.kind == "finished" or event.kind == "failed":
                self.running = max(0, self.running - 1)
            if event.kind != "finished":
                self.failed += 1
        else:
            return
        if self.tty:
            width = 30
            filled = int(width * self.done / max(1, self.total))
            bar = "#" * filled + "." * (width - filled)
            self.out.write(
                f"\r[{bar}] {self.done}/{self.total} done, {self.running} running, {self.failed} not ok"
            )
            if self.done == self.total:
                self.out.write("\n")
        else:
            where = (
                f" on {event.result.server}"
                if event.result is not None and event.result.server
                else ""
            )
            self.out.write(f"{event.kind:9} {event.task_id}{where}\n")
        self.out.flush()


# -- run reports ------------------------------------------------------------------------------


def run_report(result: DagResult, metrics: MetricsSnapshot, t0: float) -> Dict[str, Any]:
    """``run --json``: every task's outcome (times in seconds from the start of the run),
    then the makespan and each server's share of the work."""

    def since(at: Optional[float]) -> Optional[float]:
        return None if at is None else round(at - t0, 6)

    def task(r: TaskResult) -> Dict[str, Any]:
        return {
            "id": r.id,
            "status": r.status,
            "output": r.output,
            "server": r.server,
            "attempts": r.attempts,
            "queued_s": round(r.queued_s, 6),
            "started_s": since(r.started_at),
            "finished_s": since(r.finished_at),
            "run_s": round(r.run_s, 6),
            "priority": r.priority,
            "error": r.error_message or None,
        }

    counts = task_counts(result)
    return {
        "ok": result.ok,
        "tasks": [task(r) for r in result.results],
        "makespan_s": result.makespan_s,
        "imbalance": metrics.imbalance,
        "servers": {
            s.name: {
                "tasks": counts.get(s.name, 0),
                "requests": s.requests,
                "failures": s.failures,
                "utilization": s.utilization,
                "share": s.share,
                "fair_share": s.fair_share,
                "tokens_per_s": s.tokens_per_s,
            }
            for s in metrics.servers.values()
        },
    }


def print_outputs(result: DagResult, out: TextIO) -> None:
    for r in result.results:
        if r.ok and r.output is not None:
            out.write(f"\n== {r.id}" + (f" ({r.server})" if r.server else "") + " ==\n")
            out.write(r.output.rstrip("\n") + "\n")


def task_counts(result: DagResult) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for r in result.results:
        if r.server:
            counts[r.server] = counts.get(r.server, 0) + 1
    return counts


def summary(
    result: DagResult, metrics: MetricsSnapshot, out: TextIO, *, scale: float = 1.0
) -> None:
    out.write("\n")
    metrics_table(metrics, task_counts(result), out)
    ok = sum(1 for r in result.results if r.ok)
    out.write(
        f"\n{ok}/{len(result.results)} tasks ok, makespan {result.makespan_s / scale:.2f}s, imbalance {metrics.imbalance:.1%}\n"
    )
