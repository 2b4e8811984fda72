"""What an attempt's outcome changes: the one place a finished attempt is recorded.

A lease's breaker permits get their verdict (:meth:`~._balancer.Lease.settle`); the fleet
state its latency, speed, load time, loaded model or failure; the prompt cost model
(``_rates.PromptCosts``) its rates, time ratio and prefix index; the metrics their counters.
A connection refused or a model not found there asks the health monitor for a probe now.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Mapping

from ._balancer import Lease
from ._errors import Attempt
from ._exchange import Exchange
from ._failover import AttemptError, classify
from ._metrics import Metrics
from ._rates import PromptCosts
from ._state import FleetState

__all__ = ["Outcomes"]

log = logging.getLogger("ollama_orchestra")


class Outcomes:
    """Records finished attempts (see the module docstring)."""

    def __init__(
        self,
        state: FleetState,
        metrics: Metrics,
        costs: PromptCosts,
        clock: Callable[[], float],
        poke: Callable[[str], None],
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._costs = costs
        self._clock = clock
        self._poke = poke

    def failed(
        self, lease: Lease, exc: BaseException, model: str, started: float, attempts: List[Attempt]
    ) -> None:
        """A failed attempt: its verdict to the breakers (none when it was the caller's own
        error or a cancellation), a record in ``attempts``, the state and the metrics."""
        name = lease.server.name
        err = exc if isinstance(exc, AttemptError) else classify(exc, name)
        if err is None:
            # Cancelled, a caller error (400), or a bug: no verdict on the server.
            lease.settle(None)
            return
        duration = self._clock() - started
        attempts.append(Attempt(name, err.message, started, duration))
        self._metrics.request_finished(name, ok=False, latency_s=duration)
        lease.settle(err)
        if err.kind == "connect":
            self._state.mark_down(name, err.message)
            self._poke(name)
        elif err.kind == "not_found":
            self._state.forget_model(name, model)
            self._poke(name)
        else:
            self._state.record_failure(name, err.message)
        log.info("attempt on %s failed (%s): %s", name, err.kind, err.message)

    def succeeded(
        self, lease: Lease, final: Mapping[str, Any], exchange: Exchange, keep_alive: Any
    ) -> None:
        """A success: its verdict to the breakers; what it showed to the state, the prompt
        cost model (rates, time ratio, prefix index) and the metrics."""
        name = lease.server.name
        lease.settle(True)
        # From its send, or from its start for a request sent ahead into a busy host's queue.
        latency = self._clock() - max(exchange.started, lease.acquired_at)
        costs = self._costs
        seen = costs.observe(
            name,
            lease.model,
            lease.prompt,
            final,
            observed_s=latency,
            slots=lease.server.max_concurrency,
            predicted_cached_chars=lease.predicted_cached_chars,
        )
        eval_count = int(final.get("eval_count") or 0)
        eval_ns = int(final.get("eval_duration") or 0)
        load_ns = int(final.get("load_duration") or 0)
        self._state.record_success(
            name,
            lease.model,
            latency_s=latency,
            eval_count=eval_count,
            eval_duration_ns=eval_ns,
            load_duration_ns=load_ns,
            keep_alive_s=keep_alive
            if isinstance(keep_alive, (int, float)) and keep_alive > 0
            else 300.0,
            time_ratio=costs.time_ratio(name),
        )
        self._metrics.request_finished(
            name,
            ok=True,
            latency_s=latency,
            eval_count=eval_count,
            eval_duration_s=eval_ns / 1e9,
            prompt_tokens=seen.prompt_tokens,
            cached_tokens=seen.cached_tokens,
            prefill_s=seen.prefill_s,
        )
        if load_ns > 1e9:
            # A cold load may have evicted other models there: ask for /api/ps now rather
            # than route on a stale list of loaded models until the next probe.
            self._poke(name)
