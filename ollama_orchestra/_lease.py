"""The slot-lease seam: where the slots each server has given out are kept.

The balancer decides *which* server a request gets; a :class:`SlotStore` keeps *who holds*
each server's slots. :class:`LocalSlots` keeps them in this process; a store shared by
several orchestras (the shared-slots issue: e.g. Redis) implements the same three methods
and is passed to the balancer, with no change to its strategies.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Protocol, Sequence, TypeVar

__all__ = ["LocalSlots", "SlotStore"]

L = TypeVar("L")


class SlotStore(Protocol[L]):
    """The slots given out per server, as the leases that hold them."""

    def held(self, server: str) -> Sequence[L]:
        """The leases holding a slot on ``server`` now (their number is its in-flight count)."""
        ...

    def take(self, server: str, lease: L) -> None:
        """Record that ``lease`` holds a slot on ``server``."""
        ...

    def give_back(self, server: str, lease: L) -> None:
        """Record that ``lease`` no longer holds its slot (unknown leases are ignored)."""
        ...


class LocalSlots(SlotStore[L]):
    """The in-process store: a list of leases per server."""

    __slots__ = ("_held",)

    def __init__(self, servers: Iterable[str]) -> None:
        self._held: Dict[str, List[L]] = {name: [] for name in servers}

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={len(ls)}" for n, ls in self._held.items())
        return f"<LocalSlots {counts}>"

    def held(self, server: str) -> Sequence[L]:
        return self._held[server]

    def take(self, server: str, lease: L) -> None:
        self._held[server].append(lease)

    def give_back(self, server: str, lease: L) -> None:
        try:
            self._held[server].remove(lease)
        except ValueError:
            pass
