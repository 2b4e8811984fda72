"""The library's one clock: anyio's, so an event loop's clock (real or virtual) drives everything.

Every duration, deadline and timestamp the library compares (breaker cooldowns, lease ages,
latencies, model expiry, metrics windows) is read with :func:`now`, and every wait goes through
anyio (``anyio.sleep``, ``move_on_after``, ``fail_after``, cancel-scope deadlines), which use the
same clock. A test can therefore run the library on virtual time, e.g. under trio's
``MockClock`` (tests/test_virtual_time.py).

Outside a running event loop (a synchronous constructor) anyio has no clock; :func:`now` then
falls back to :func:`time.monotonic`, which is what asyncio's ``loop.time()`` returns, so the
two readings agree on a real asyncio loop. Only calendar times (``created`` in an OpenAI answer,
the RFC 3339 ``expires_at`` of ``/api/ps``) are read with :func:`time.time`, where they are used.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["now"]


def now() -> float:
    """Seconds on the running event loop's clock (``anyio.current_time()``).

    Outside an event loop (e.g. in a constructor) this is ``time.monotonic()``.
    """
    try:
        return anyio.current_time()
    except RuntimeError:  # no running loop: NoEventLoopError / AsyncLibraryNotFoundError
        return time.monotonic()
