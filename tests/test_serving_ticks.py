"""The embedded uvicorn server's main loop: its ticks create no tasks, and a stop wakes it."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, Dict, List

import anyio

from ollama_orchestra._serving import bind_socket, embedded_uvicorn


async def _app(
    scope: Dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    raise AssertionError("no request is sent")  # pragma: no cover


class TestMainLoop:
    async def test_ticks_create_no_task(self) -> None:
        """Three ticks of the main loop create no asyncio task (a task made every 0.1 s shows
        up in other code's leak checks), and setting ``should_exit`` ends it."""
        loop = asyncio.get_running_loop()
        server = embedded_uvicorn(_app, graceful_shutdown_s=1)
        sock = bind_socket("127.0.0.1", 0, field="test")
        ticks = 0
        target = 2  # the first tick runs before the loop's first wait
        ticked = anyio.Event()
        on_tick = server.on_tick

        async def counting_tick(counter: int) -> bool:
            nonlocal ticks
            ticks += 1
            if ticks >= target:
                ticked.set()
            result: bool = await on_tick(counter)
            return result

        server.on_tick = counting_tick
        created: List[str] = []
        default_factory = loop.get_task_factory()

        def factory(lp: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
            if ticks >= 1:
                created.append(repr(coro))
            if default_factory is not None:  # pragma: no cover
                return default_factory(lp, coro)
            return asyncio.Task(coro, loop=lp)

        serving = loop.create_task(server.serve(sockets=[sock]))
        try:
            with anyio.fail_after(10):
                await ticked.wait()
                counting: Any = factory
                loop.set_task_factory(counting)
                ticked, target = anyio.Event(), ticks + 3
                await ticked.wait()
            loop.set_task_factory(default_factory)
            assert created == []
        finally:
            loop.set_task_factory(default_factory)
            server.should_exit = True
            with anyio.fail_after(5):
                await serving
            sock.close()
