"""Background services that survive being entered and exited in different tasks.

``async with Orchestra(...)`` starts the health monitor's task group. pytest-asyncio runs an
async fixture's setup and teardown in two different tasks, and an anyio cancel scope must be
exited in the task that entered it; so on asyncio the task group lives in a task of its own,
started here and stopped (cancelled and awaited) on exit. On trio, whose test runners keep a
fixture in one task, the task group is entered directly.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, List, Optional

import anyio
from anyio.abc import TaskGroup

__all__ = ["Background"]

log = logging.getLogger("ollama_orchestra")

Service = Callable[..., Coroutine[Any, Any, Any]]


class Background:
    """One task group running long-lived services until :meth:`stop`."""

    def __init__(self) -> None:
        self._task: Optional[asyncio.Task[None]] = None
        self._tg: Optional[TaskGroup] = None
        self._stop: Optional[anyio.Event] = None

    async def start(self, service: Service) -> None:
        """Start ``service`` (called with ``task_status=``) and return once it reports started."""
        if not _on_asyncio():
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            try:
                await self._tg.start(service)
            except BaseException:
                await self._exit_direct()
                raise
            return
        started = anyio.Event()
        stop = self._stop = anyio.Event()
        failure: List[BaseException] = []

        async def host() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(service)
                    started.set()
                    await stop.wait()
                    tg.cancel_scope.cancel()
            except BaseException as exc:  # reported to start() if it fails early
                if started.is_set() and isinstance(exc, Exception):
                    # Too late for start() to raise it: never let a crash go unseen.
                    log.error("background service crashed", exc_info=exc)
                failure.append(exc)
                started.set()
                if not isinstance(exc, Exception):
                    raise

        self._task = asyncio.get_running_loop().create_task(host())
        try:
            await started.wait()
        except BaseException:
            await self.stop()
            raise
        if failure:
            self._task = None
            raise failure[0]

    async def stop(self) -> None:
        """Cancel every service and wait until they have all ended."""
        if self._tg is not None:
            await self._exit_direct()
            return
        task, self._task = self._task, None
        if task is None:
            return
        if self._stop is not None:
            self._stop.set()
        with anyio.CancelScope(shield=True):
            try:
                await asyncio.shield(task)
            except Exception:  # a service crashed on the way out: nothing left to run
                pass

    async def _exit_direct(self) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
