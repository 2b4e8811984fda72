"""Checks for what a feature needs beyond the core: an extra, or the asyncio backend.

The core library (``Orchestra``, the transport, DAGs) needs neither. The simulator and the proxy
serve HTTP with uvicorn (the ``sim`` and ``proxy`` extras), and they, like the pytest fixtures
built on the simulator, run on asyncio only; each says so in one line instead of failing later
with ``No module named 'uvicorn'`` or ``no running event loop``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

from ._errors import AsyncioOnly, MissingExtra

__all__ = ["require_asyncio", "require_extra"]

#: The module each extra brings, keyed by the extra's name.
EXTRA_MODULES = {"sim": "uvicorn", "proxy": "uvicorn", "redis": "redis.asyncio"}


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless the modules of ``extra`` can be imported."""
    module = EXTRA_MODULES[extra]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(feature, extra, module) from exc


def require_asyncio(feature: str, hint: str = "") -> None:
    """Raise :class:`AsyncioOnly` when called from an event loop other than asyncio's."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    # Called from a coroutine that no asyncio loop runs: anyio's only other backend is trio.
    backend = "trio" if "trio" in sys.modules else "this event loop"
    raise AsyncioOnly(feature, backend, hint)
