"""The estimates routing is made of, as pure functions the strategies and the balancer share.

Each takes what it needs (server states, lease times, a clock reading) and returns seconds:
nothing here reads a clock, holds state or changes any. That keeps the arithmetic testable
on its own and one place to change when a model of cost improves.
"""

from __future__ import annotations

import heapq
from typing import AbstractSet, Iterable, Optional, Sequence, Tuple

from ._state import ServerState

__all__ = [
    "DEFAULT_COLD_LOAD_S",
    "LOAD_BYTES_PER_S",
    "cold_load_s",
    "displaced_s",
    "expected_service_s",
    "wait_s",
]

#: Guess for a cold load when nothing better is known (seconds).
DEFAULT_COLD_LOAD_S = 5.0
#: Rough disk-to-VRAM speed used to guess a cold load from a model's size.
LOAD_BYTES_PER_S = 1.5e9


def mean(values: Iterable[float]) -> Optional[float]:
    """The mean, ``None`` for no values."""
    seen = list(values)
    return sum(seen) / len(seen) if seen else None


def cold_load_s(st: ServerState, model: str, fleet: Sequence[ServerState]) -> float:
    """Expected cost of loading ``model`` on ``st``'s server: measured there; else measured
    elsewhere in ``fleet``; else guessed from the model's size; else a default."""
    if model in st.load_s:
        return st.load_s[model]
    elsewhere = mean(o.load_s[model] for o in fleet if model in o.load_s)
    if elsewhere is not None:
        return elsewhere
    if st.model_sizes.get(model):
        return 0.5 + st.model_sizes[model] / LOAD_BYTES_PER_S
    return DEFAULT_COLD_LOAD_S


def displaced_s(
    st: ServerState,
    model: str,
    now: float,
    wanted: AbstractSet[str],
    fleet: Sequence[ServerState],
) -> float:
    """What loading ``model`` on ``st``'s server may cost others: a model loaded there that
    requests are using or waiting for (``wanted``) may be evicted (Ollama makes room when
    memory or its model limit runs out), and would then need loading again."""
    costs = [
        cold_load_s(st, other, fleet)
        for other in st.loaded
        if other != model and other in wanted and st.is_loaded(other, now)
    ]
    return max(costs, default=0.0)


def expected_service_s(st: ServerState, model: str, fleet: Sequence[ServerState]) -> float:
    """How long a request for ``model`` is expected to hold a slot on ``st``'s server:
    measured there; else measured for that model elsewhere; else the server's typical
    request; else the fleet's; else a second."""
    known = st.latency_s.get(model)
    if known is not None:
        return known
    elsewhere = mean(o.latency_s[model] for o in fleet if model in o.latency_s)
    if elsewhere is not None:
        return elsewhere
    typical = mean(st.latency_s.values())
    if typical is None:
        typical = mean(t for o in fleet for t in o.latency_s.values())
    return 1.0 if typical is None else typical


def wait_s(
    leases: Iterable[Tuple[float, float]], slots: int, claimed: int, hold: float, now: float
) -> float:
    """Predicted time until a slot is free for the next claimant.

    ``leases`` are the server's open leases as ``(acquired_at, predicted_end)``. Each slot
    frees when its lease is predicted to end (a lease past that point is expected to need a
    quarter of its age more, so a stuck server soon stops looking about to free up); each of
    the ``claimed`` claims ahead then holds the slot it gets for ``hold`` seconds.
    """
    ends = []
    for acquired_at, predicted_end in leases:
        ends.append(predicted_end if predicted_end > now else now + 0.25 * (now - acquired_at))
    ends.extend([now] * max(0, slots - len(ends)))
    heapq.heapify(ends)
    for _ in range(claimed):
        heapq.heapreplace(ends, ends[0] + hold)
    return max(0.0, ends[0] - now)
