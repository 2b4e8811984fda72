"""What a simulated host reports about itself: the requests it received, its scheduler's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = ["RequestRecord", "SimState", "SimulatedReset"]


class SimulatedReset(Exception):
    """Raised inside the app to make the server drop a connection mid-stream."""


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the host received it."""

    route: str
    model: str
    prompt: Optional[str]
    messages: Optional[Tuple[Dict[str, Any], ...]]
    options: Dict[str, Any]
    received_at: float


@dataclass(frozen=True)
class SimState:
    """A snapshot of the host's scheduler."""

    loaded: Tuple[str, ...]
    in_flight: int
    in_flight_by_model: Dict[str, int]
    waiting_for_slot: int
    waiting_for_load: int
    loading: Optional[str]
    requests: int
    completed: int
    loads: int
    evictions: int
    rejected_busy: int
    paused: bool
    #: distinct client connections seen (host, port) since the host (re)started.
    connections: int = 0
    #: per loaded model: the tokens each slot's KV cache holds, by slot.
    slot_cached_tokens: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    #: per loaded model: the tokens of each entry of llama-server's RAM prompt cache.
    ram_cached_tokens: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    #: per loaded model: the context (``num_ctx``) it was loaded with.
    num_ctx: Dict[str, int] = field(default_factory=dict)
    #: prompt tokens of every request evaluated since the host started (what Ollama reports
    #: as ``prompt_eval_count``), and of those the ones its caches held (llama-server's
    #: ``cache_n``; restored from the RAM cache included). Ollama does not report the
    #: latter; the simulator does, so benchmarks can count cache hits exactly.
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def queued(self) -> int:
        return self.waiting_for_slot + self.waiting_for_load
