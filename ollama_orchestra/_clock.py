"""The library's one clock: anyio's, so an event loop's clock (real or virtual) drives everything.

Every duration, deadline and timestamp the library compares (breaker cooldowns, lease ages,
latencies, model expiry, metrics windows) is read with :func:`now`, and every wait goes through
anyio (``anyio.sleep``, ``move_on_after``, ``fail_after``, cancel-scope deadlines), which use the
same clock. A test can therefore run the library on virtual time, e.g. under trio's
``MockClock`` (tests/test_virtual_time.py).

On asyncio, :func:`now` reads the running loop's ``time()`` itself: that is what
``anyio.current_time()`` returns there, after a library lookup (sniffio) and a backend
dispatch that cost about three times the reading. A loop of readings in one task (a
collected answer's chunks) takes :func:`reader`'s bound clock once instead (70 ns a reading
instead of 280). Any other backend (trio sets sniffio's thread-local name) goes through anyio.

Outside a running event loop (a synchronous constructor) anyio has no clock; :func:`now` then
falls back to :func:`time.monotonic`, which is what asyncio's ``loop.time()`` returns, so the
two readings agree on a real asyncio loop. Only calendar times (``created`` in an OpenAI answer,
the RFC 3339 ``expires_at`` of ``/api/ps``) are read with :func:`time.time`, where they are used.
"""

from __future__ import annotations

import time
from asyncio import get_running_loop
from types import SimpleNamespace
from typing import Any, Callable, Optional

import anyio

_thread_local: Any
_library_var: Callable[[], Optional[str]]
try:  # optional for anyio (4.16); trio, which needs it, sets its thread-local name
    import sniffio

    _thread_local = sniffio.thread_local
    _library_var = sniffio.current_async_library_cvar.get
except ImportError:  # pragma: no cover - then only asyncio can be running
    _thread_local = SimpleNamespace(name=None)
    _library_var = type(None)

__all__ = ["now", "reader"]


def now() -> float:
    """Seconds on the running event loop's clock (``anyio.current_time()``).

    Outside an event loop (e.g. in a constructor) this is ``time.monotonic()``.
    """
    # sniffio's own first two checks (anyio.run sets the variable to "asyncio"); neither
    # set means asyncio if a loop runs here.
    if _thread_local.name is None and _library_var() in (None, "asyncio"):
        try:
            return get_running_loop().time()
        except RuntimeError:  # no running loop
            return time.monotonic()
    try:
        return anyio.current_time()
    except RuntimeError:  # no running loop: NoEventLoopError / AsyncLibraryNotFoundError
        return time.monotonic()


def reader() -> Callable[[], float]:
    """:func:`now` for a loop of readings inside one running task (a streamed answer's
    chunks): on asyncio the running loop's bound ``time``, looked up once instead of on
    every reading; anyio's clock on any other backend."""
    if _thread_local.name is None and _library_var() in (None, "asyncio"):
        try:
            return get_running_loop().time
        except RuntimeError:  # no running loop
            return time.monotonic
    return anyio.current_time
