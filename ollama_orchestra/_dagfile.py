"""DAG files: :func:`load_dag` reads a TOML or JSON file into a :class:`DagSpec`.

Errors name the file, the task (index and id) and the bad field; the graph is validated
whole (:func:`._tasks.validate`) before the spec is returned.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Tuple, Union

from ._errors import DagValidationError
from ._tasks import SCHEDULES, Task, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DagSpec", "load_dag"]


@dataclass(frozen=True)
class DagSpec:
    """A DAG loaded from a file: tasks, inputs for placeholders, and the schedule to use."""

    tasks: Tuple[Task, ...]
    inputs: Mapping[str, str] = field(default_factory=dict)
    schedule: str = "eager"


_TASK_KEYS = (
    "id",
    "model",
    "prompt",
    "messages",
    "depends_on",
    "priority",
    "options",
    "timeout",
    "system",
    "estimate",
)


def load_dag(path: Union[str, Path]) -> DagSpec:
    """Load a DAG from a TOML (``[[task]]`` tables) or JSON (``{"tasks": [...]}``) file.

    Errors name the file, the task (index and id) and the bad field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DagValidationError(f"{p}: cannot be read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
        raise DagValidationError(f"{p}: not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise DagValidationError(f"{p}: expected a table/object at the top")
    raw_tasks = data.get("task", data.get("tasks"))
    if not isinstance(raw_tasks, list):
        raise DagValidationError(f"{p}: expected [[task]] tables (TOML) or a 'tasks' list (JSON)")
    unknown_top = set(data) - {"task", "tasks", "inputs", "schedule"}
    if unknown_top:
        raise DagValidationError(f"{p}: unknown top-level key(s): {', '.join(sorted(unknown_top))}")
    inputs = data.get("inputs", {})
    if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
        raise DagValidationError(f"{p}: 'inputs' must be a table of strings")
    schedule = data.get("schedule", "eager")
    if schedule not in SCHEDULES:
        raise DagValidationError(
            f"{p}: unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}"
        )
    tasks: List[Task] = []
    for i, raw in enumerate(raw_tasks):
        label = f"{p}: task[{i}]"
        if not isinstance(raw, dict):
            raise DagValidationError(f"{label}: must be a table")
        if "id" in raw:
            label += f" ({raw['id']!r})"
        for key in raw:
            if key not in _TASK_KEYS:
                raise DagValidationError(
                    f"{label}: unknown field {key!r}; expected one of {', '.join(_TASK_KEYS)}"
                )
        if "id" not in raw:
            raise DagValidationError(f"{label}: id is required")
        try:
            tasks.append(Task(**raw))
        except DagValidationError as exc:
            raise DagValidationError(f"{label}: {exc}", task_id=exc.task_id) from exc
        except TypeError as exc:
            raise DagValidationError(f"{label}: {exc}") from exc
    validate(tasks, inputs, source=str(p))
    return DagSpec(tuple(tasks), dict(inputs), schedule)
