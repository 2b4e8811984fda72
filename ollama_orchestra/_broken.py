"""Hosts whose connection broke under a request: no new request there for a moment.

A host that dies (killed, powered off, its network gone) breaks every open connection at
once, but the orchestra hears of them one by one, as each request's read fails: over a few
milliseconds, more on a loaded event loop. Until a connection attempt is refused (which marks
the host down), every request that fails there frees a slot that looks free, and the
balancer would hand it to the next waiting request: one more request sent to a dead host,
failed and rerouted, behind the others' retries.

So once a request's connection breaks on a host (an attempt that failed with ``connect`` or
``reset``: ``AttemptError.connection_lost``), the host takes no new request while it still
runs a request it had then, for at most :data:`WINDOW_S`, or until a request succeeds there.
The requests it had then either fail too (their retries go elsewhere) or finish; a host
that is alive is back as soon as one does.
"""

from __future__ import annotations

from typing import Callable, Collection, Dict, Protocol

__all__ = ["WINDOW_S", "BrokenHosts"]

#: The longest a host is left alone after a connection broke there: a host that died breaks
#: every connection at once, and the client hears of them within milliseconds; a second
#: covers a loaded event loop, and bounds what a live host loses to one broken connection.
WINDOW_S = 1.0


class _Held(Protocol):
    @property
    def acquired_at(self) -> float: ...


class BrokenHosts:
    """Where a connection broke, and when (the latest), until the host serves again."""

    __slots__ = ("_at", "_held")

    def __init__(self, held: Callable[[str], Collection[_Held]]) -> None:
        self._held = held
        self._at: Dict[str, float] = {}

    def broke(self, name: str, now: float) -> None:
        """A request's connection to ``name`` broke (or could not be made) at ``now``."""
        self._at[name] = now

    def served(self, name: str) -> None:
        """A request succeeded on ``name``: it serves."""
        self._at.pop(name, None)

    def holds(self, name: str, now: float) -> bool:
        """Whether ``name`` is left alone now: it still runs a request it had when its
        connection broke, and that was less than :data:`WINDOW_S` ago."""
        at = self._at.get(name)
        if at is None:
            return False
        if now - at < WINDOW_S and any(le.acquired_at < at for le in self._held(name)):
            return True
        del self._at[name]
        return False

    def any(self, now: float) -> bool:
        """Whether any host is left alone now."""
        left = False
        for name in list(self._at):  # every one: ``holds`` forgets those that ended
            left = self.holds(name, now) or left
        return left

    def ends_in(self, now: float) -> float:
        """Seconds until the last open window ends; infinite if none is open (the windows
        that ended are forgotten: a waiter's timer never comes out as zero for one)."""
        for name, at in list(self._at.items()):
            if now - at >= WINDOW_S:
                del self._at[name]
        if not self._at:
            return float("inf")
        return max(self._at.values()) + WINDOW_S - now
