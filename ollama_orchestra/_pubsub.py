"""One resilient Redis pub/sub loop, for everything a process learns from the others (freed
slots, breaker trips, hosts up or down): subscribe, hand each message over, and subscribe
again after an outage, forever.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, Tuple, Type

import anyio
from anyio.abc import TaskGroup, TaskStatus

__all__ = ["listen", "stop_listening"]


async def listen(
    redis: Any,
    *,
    on_message: Callable[[Mapping[str, Any]], None],
    down: Tuple[Type[BaseException], ...],
    retry_s: float,
    channels: Sequence[str] = (),
    patterns: Sequence[str] = (),
    timeout_s: Optional[float] = None,
    on_subscribed: Optional[Callable[[], Awaitable[None]]] = None,
    on_down: Optional[Callable[[BaseException], None]] = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Subscribe ``redis`` (an asyncio client) to ``channels`` and ``patterns`` and pass every
    message to ``on_message``, until cancelled.

    Once subscribed, ``on_subscribed()`` runs (e.g. to read what was published before);
    subscribing and it together are bounded by ``timeout_s``. A Redis error of ``down`` (or
    the timeout) goes to ``on_down`` and the loop subscribes again after ``retry_s``.
    Reports started (``task_group.start``) once first subscribed, or at the first failure:
    a process whose Redis is away at its start runs, and subscribes once it is back.
    """
    started = False
    while True:
        pubsub = redis.pubsub()
        try:
            with anyio.fail_after(timeout_s):
                if channels:
                    await pubsub.subscribe(*channels)
                if patterns:
                    await pubsub.psubscribe(*patterns)
                if on_subscribed is not None:
                    await on_subscribed()
            if not started:
                started = True
                task_status.started()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    on_message(message)
        except down as exc:
            if on_down is not None:
                on_down(exc)
            if not started:
                started = True
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                try:
                    await pubsub.aclose()
                except down:
                    pass
        await anyio.sleep(retry_s)


async def stop_listening(tg: Optional[TaskGroup], redis: Any) -> None:
    """Cancel and leave ``tg`` (the task group running a :func:`listen` loop), then close
    ``redis``.

    Shielded: leaving under cancellation (a proxy stopped) still closes every connection
    instead of leaving them to the garbage collector.
    """
    try:
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await redis.aclose()
