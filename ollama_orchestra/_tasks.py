"""Tasks of a DAG and their validation: each field on construction, the graph as a whole.

:class:`Task` checks its own fields (with the shared predicates of :mod:`._validate`);
:func:`validate` checks a list of tasks as a graph (unique ids, known dependencies,
placeholders that name a dependency or an input, no cycle). The scheduler
(:mod:`._executor`) and the file loader (:mod:`._dagfile`) both use it.
"""

from __future__ import annotations

import json
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ._errors import DagValidationError
from ._validate import is_integer, is_positive_number

if sys.version_info >= (3, 9):
    import graphlib
else:  # pragma: no cover
    # graphlib-backport installs the same module name, without type information.
    import graphlib  # type: ignore[import-untyped]

__all__ = ["SCHEDULES", "StepFn", "Task", "dependents", "validate", "validate_graph"]

#: The schedules :func:`run_dag` and DAG files accept.
SCHEDULES = ("eager", "waves", "sequential")

StepFn = Callable[[Any, Mapping[str, str]], Awaitable[str]]


@dataclass(frozen=True)
class Task:
    """One unit of work in a DAG.

    Exactly one of ``prompt`` (``/api/generate``), ``messages`` (``/api/chat``) or ``fn`` (a
    custom step, ``async def step(orch, inputs) -> str``) must be given. ``prompt``,
    ``system`` and message contents may use their dependencies' outputs by id, as
    ``str.format`` placeholders: ``"Review:\\n{code}"`` (``{{``/``}}`` for literal braces).

    Args:
        id: unique in the DAG; letters, digits, ``_`` and ``-`` (a placeholder needs an
            identifier, so use ``_`` in ids you refer to).
        model: a model or a role name.
        depends_on: ids of the tasks whose outputs this one needs.
        priority: for the balancer's queue; ``None`` (default) uses the critical path.
        estimate: relative length of the task, for the critical path (default 1).
        timeout: seconds for the whole task (all attempts).
    """

    id: str
    model: str = ""
    prompt: Optional[str] = None
    messages: Optional[Sequence[Mapping[str, Any]]] = None
    fn: Optional[StepFn] = field(default=None, compare=False)
    depends_on: Sequence[str] = ()
    priority: Optional[int] = None
    options: Optional[Mapping[str, Any]] = None
    timeout: Optional[float] = None
    system: Optional[str] = None
    estimate: float = 1.0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.id, str)
            or not self.id
            or not all(c.isalnum() or c in "_-." for c in self.id)
        ):
            raise DagValidationError(
                f"task id {self.id!r} is invalid: use letters, digits, '_', '-' or '.'",
                task_id=str(self.id),
            )
        given = [name for name in ("prompt", "messages", "fn") if getattr(self, name) is not None]
        if len(given) != 1:
            what = "neither" if not given else "more than one of " + ", ".join(given)
            raise DagValidationError(
                f"task {self.id!r}: give exactly one of prompt, messages or fn (got {what})",
                task_id=self.id,
            )

        def bad(name: str, value: object, expected: str) -> DagValidationError:
            return DagValidationError(
                f"task {self.id!r}: {name} must be {expected}, got {value!r}", task_id=self.id
            )

        if not isinstance(self.model, str):
            raise bad("model", self.model, "a model or role name (a string)")
        if self.fn is None and not self.model.strip():
            raise DagValidationError(f"task {self.id!r}: model is required", task_id=self.id)
        for name in ("prompt", "system"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise bad(name, value, "a string")
        if self.fn is not None and not callable(self.fn):
            raise bad("fn", self.fn, "an async function (orch, inputs) -> str")
        deps: Any = self.depends_on
        if isinstance(deps, (str, bytes)) or not isinstance(deps, (list, tuple)):
            raise bad("depends_on", deps, "a list of task ids")
        for dep in deps:
            if not isinstance(dep, str):
                raise bad("depends_on", deps, "a list of task ids (strings)")
        object.__setattr__(self, "depends_on", tuple(deps))
        if self.messages is not None:
            object.__setattr__(self, "messages", _check_messages(self.messages, bad))
        if self.options is not None:
            if not isinstance(self.options, Mapping) or not all(
                isinstance(k, str) for k in self.options
            ):
                raise bad("options", self.options, "a table of option = value")
            try:
                json.dumps(dict(self.options), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise bad("options", self.options, f"JSON data ({exc})") from None
            object.__setattr__(self, "options", dict(self.options))
        if self.priority is not None and not is_integer(self.priority):
            raise bad("priority", self.priority, "an integer")
        if self.timeout is not None and not is_positive_number(self.timeout):
            raise bad("timeout", self.timeout, "a finite number of seconds > 0")
        if not is_positive_number(self.estimate):
            raise bad("estimate", self.estimate, "a finite number > 0")

    def templates(self) -> List[str]:
        out = [t for t in (self.prompt, self.system) if t is not None]
        for m in self.messages or ():
            content = m.get("content")
            if isinstance(content, str):
                out.append(content)
        return out


def _check_messages(
    messages: object, bad: Callable[[str, object, str], DagValidationError]
) -> Tuple[Dict[str, Any], ...]:
    """Chat messages as Ollama takes them: mappings with a string ``role`` (and ``content``)."""
    expected = "a list of {role = ..., content = ...} tables"
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, (list, tuple)):
        raise bad("messages", messages, expected)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise bad(f"messages[{i}]", m, "a {role = ..., content = ...} table")
        if not isinstance(m.get("role"), str):
            raise bad(f"messages[{i}].role", m.get("role"), "a string")
        if "content" in m and not isinstance(m["content"], str):
            raise bad(f"messages[{i}].content", m["content"], "a string")
        out.append(dict(m))
    return tuple(out)


# -- validation ------------------------------------------------------------------------------


def _placeholders(template: str, task_id: str) -> Set[str]:
    names: Set[str] = set()
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            base = name.split(".", 1)[0].split("[", 1)[0]
            if not base or base.isdigit():
                raise DagValidationError(
                    f"task {task_id!r}: placeholder {{{name}}} must name a dependency (use {{{{ }}}} for literal braces)",
                    task_id=task_id,
                )
            names.add(base)
    except ValueError as exc:
        raise DagValidationError(
            f"task {task_id!r}: bad placeholder syntax: {exc}", task_id=task_id
        ) from exc
    return names


def validate(
    tasks: Sequence[Task], inputs: Mapping[str, str] = {}, *, source: str = ""
) -> Dict[str, Task]:
    """Check a DAG whole; return the tasks by id. Raises :class:`DagValidationError`."""
    return validate_graph(tasks, inputs, source=source)[0]


def validate_graph(
    tasks: Sequence[Task], inputs: Mapping[str, str] = {}, *, source: str = ""
) -> Tuple[Dict[str, Task], graphlib.TopologicalSorter[str]]:
    """:func:`validate`, also returning the prepared sorter (preparing finds cycles, and
    costs as much as the rest of validation: it is done once, and the sorter is reused)."""
    where = f"{source}: " if source else ""
    by_id: Dict[str, Task] = {}
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise DagValidationError(f"{where}tasks[{i}] is not a Task: {t!r}")
        if t.id in by_id:
            raise DagValidationError(
                f"{where}duplicate task id {t.id!r} (tasks[{i}])", task_id=t.id
            )
        by_id[t.id] = t
    for t in tasks:
        for dep in t.depends_on:
            if dep == t.id:
                raise DagValidationError(f"{where}task {t.id!r} depends on itself", task_id=t.id)
            if dep not in by_id:
                raise DagValidationError(
                    f"{where}task {t.id!r} depends on unknown task {dep!r}", task_id=t.id
                )
        for template in t.templates():
            for name in _placeholders(template, t.id):
                if name not in t.depends_on and name not in inputs:
                    raise DagValidationError(
                        f"{where}task {t.id!r}: placeholder {{{name}}} names no dependency of this task"
                        f" (depends_on: {list(t.depends_on)}) and no input",
                        task_id=t.id,
                    )
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
        {t.id: t.depends_on for t in tasks}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1] if len(exc.args) > 1 else []
        path = " -> ".join(reversed([str(c) for c in cycle]))
        raise DagValidationError(
            f"{where}dependency cycle: {path}", task_id=str(cycle[0]) if cycle else None
        ) from exc
    return by_id, sorter


def dependents(tasks: Mapping[str, Task]) -> Dict[str, List[str]]:
    """Each task's dependents (every task id a key), in declaration order."""
    out: Dict[str, List[str]] = {tid: [] for tid in tasks}
    for t in tasks.values():
        for dep in t.depends_on:
            out[dep].append(t.id)
    return out


# -- running ---------------------------------------------------------------------------------
