"""What a DAG run returns and reports: :class:`TaskResult`, :class:`TaskEvent`, :class:`DagResult`
(split from :mod:`._executor`, which runs the graph)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple

from ._preload import ColdLoads

__all__ = ["DagResult", "EventKind", "Skipped", "Status", "TaskEvent", "TaskResult"]

Status = Literal["ok", "failed", "skipped", "cancelled"]
EventKind = Literal["queued", "started", "finished", "failed", "skipped", "cancelled"]


@dataclass(frozen=True)
class TaskResult:
    """How one task ended."""

    id: str
    status: Status
    output: Optional[str] = None
    error: Optional[BaseException] = field(default=None, compare=False)
    server: Optional[str] = None
    attempts: int = 0
    queued_s: float = 0.0
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    priority: int = 0
    #: The answer reports a cold load (the task waited for its model to load).
    cold_load: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def run_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at

    @property
    def error_message(self) -> str:
        if self.error is None:
            return ""
        if isinstance(self.error, Skipped):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"


@dataclass(frozen=True)
class TaskEvent:
    """Progress: a task was queued, started, finished, failed, skipped or cancelled."""

    kind: EventKind
    task_id: str
    at: float
    result: Optional[TaskResult] = None


@dataclass(frozen=True)
class DagResult:
    """Every task's result, in input order, the makespan, and the cold loads paid and hidden."""

    results: Tuple[TaskResult, ...]
    makespan_s: float
    cold_loads: ColdLoads = field(default_factory=ColdLoads)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def outputs(self) -> Dict[str, str]:
        return {r.id: r.output for r in self.results if r.ok and r.output is not None}

    def __getitem__(self, task_id: str) -> TaskResult:
        for r in self.results:
            if r.id == task_id:
                return r
        raise KeyError(task_id)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def with_status(self, status: Status) -> Tuple[TaskResult, ...]:
        """The results with this status, in input order."""
        return tuple(r for r in self.results if r.status == status)

    @property
    def failed(self) -> Tuple[TaskResult, ...]:
        """The tasks that raised, in input order."""
        return self.with_status("failed")

    @property
    def skipped(self) -> Tuple[TaskResult, ...]:
        """The tasks skipped because a dependency did not succeed."""
        return self.with_status("skipped")

    @property
    def cancelled(self) -> Tuple[TaskResult, ...]:
        """The tasks cancelled by ``fail_fast``."""
        return self.with_status("cancelled")


class Skipped(Exception):
    """A dependency did not succeed."""
