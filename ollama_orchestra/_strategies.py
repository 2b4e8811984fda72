"""Strategies: the one decision of routing, as small objects (a :class:`Strategy` protocol and
the five built-ins, registered by name in :data:`STRATEGY_CLASSES`).

A strategy sees the request (:class:`RouteRequest`) and the eligible servers with the
balancer's estimates (:class:`Candidate`), and answers a :class:`Choice`: a server with a free
slot, or wait (for given busy servers, or any). It holds no slot and reads no clock: the
balancer (``_balancer``) does both, and offers a waiting request the servers again whenever a
slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Protocol, Sequence, Union

from ._rates import Prompt

__all__ = [
    "STRATEGY_CLASSES",
    "WAIT",
    "Candidate",
    "Choice",
    "HybridStrategy",
    "LeastLoadedStrategy",
    "ModelAwareStrategy",
    "RoundRobinStrategy",
    "RouteRequest",
    "Strategy",
    "WeightedStrategy",
    "make_strategy",
    "redone_s",
]


# -- what strategies see and say -------------------------------------------------------------


@dataclass(frozen=True)
class RouteRequest:
    """The request being routed: its model, pipeline role, priority and prompt (its length
    and block hashes, for the prompt-cache estimate; ``None`` when it has none)."""

    model: str
    role: Optional[str] = None
    priority: int = 0
    prompt: Optional[Prompt] = None
    #: Other requests waiting for a slot when this one is routed (how contended the slots are).
    waiting: int = 0


@dataclass(frozen=True)
class Candidate:
    """An eligible server, as a strategy sees it.

    Attributes:
        service_s: predicted time to serve this request there (``None`` until measured),
            its ``prefill_s`` included.
        cold_s: predicted cold-load cost there (0 when the model is loaded).
        busy_for_s: predicted time until one of its slots frees (0 when one is free).
        prefill_s: predicted time to evaluate the part of the prompt the server's prompt
            cache likely does not hold (0 without a prompt or a learned rate).
        cached_chars: characters of the prompt's prefix likely cached there.
        queued_prefill_s: predicted time until the prompts already sent to that model there
            are evaluated. A runner evaluates one prompt at a time (llama-server fills each
            batch from its first slot on), so a free slot does not start this prompt at once
            if others wait before it (0 when none does).
    """

    name: str
    slots: int
    in_use: int
    weight: float
    loaded: bool
    service_s: Optional[float]
    cold_s: float
    busy_for_s: float
    prefill_s: float = 0.0
    cached_chars: int = 0
    queued_prefill_s: float = 0.0

    @property
    def free(self) -> bool:
        return self.in_use < self.slots

    @property
    def load(self) -> float:
        return self.in_use / self.slots


@dataclass(frozen=True)
class Choice:
    """A strategy's answer.

    Either ``server`` (a candidate with a free slot: take it now), or wait: for one of the
    busy servers in ``among`` (``None``: whichever frees first). A waiting request is
    offered the servers again whenever a slot frees, and after ``widen_after_s`` seconds
    (``None``: only when a slot frees), so the strategy can change its mind.
    """

    server: Optional[str] = None
    among: Optional[FrozenSet[str]] = None
    widen_after_s: Optional[float] = None


WAIT = Choice()


class Strategy(Protocol):
    """Picks a server for a request among the eligible candidates (one method)."""

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice: ...


class RoundRobinStrategy:
    """Rotate over the servers, skipping those without a free slot."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        n = len(candidates)
        for i in range(n):
            c = candidates[(self._next + i) % n]
            if c.free:
                self._next = (self._next + i + 1) % n
                return Choice(c.name)
        return WAIT


class LeastLoadedStrategy:
    """The free server with the smallest share of its slots busy; ties rotate."""

    def __init__(self) -> None:
        self._tie = 0

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        free = [c for c in candidates if c.free]
        if not free:
            return WAIT
        if len(free) == 1:  # the one free server (the tie counter moves on all the same)
            self._tie += 1
            return Choice(free[0].name)
        low = min(c.load for c in free)
        tied = [c for c in free if c.load == low]
        self._tie += 1
        return Choice(tied[self._tie % len(tied)].name)


class WeightedStrategy:
    """Smooth weighted round robin (as nginx does) over the servers with a free slot."""

    def __init__(self) -> None:
        self._current: Dict[str, float] = {}

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        free = [c for c in candidates if c.free]
        if not free:
            return WAIT
        total = 0.0
        best: Optional[Candidate] = None
        for c in free:
            cur = self._current.get(c.name, 0.0) + c.weight
            self._current[c.name] = cur
            total += c.weight
            if best is None or cur > self._current[best.name]:
                best = c
        assert best is not None
        self._current[best.name] -= total
        return Choice(best.name)


class ModelAwareStrategy:
    """Prefer servers where the model is already loaded: never cause a cold load needlessly;
    when it must be loaded, load it where that is cheapest (evicting nothing in use)."""

    def __init__(self) -> None:
        self._least = LeastLoadedStrategy()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        warm = [c for c in candidates if c.loaded]
        if warm:
            choice = self._least.choose(request, warm)
            if choice.server is None:
                return Choice(None, among=frozenset(c.name for c in warm))
            return choice
        # Loaded nowhere: load it where that costs least (it evicts nothing in use).
        free = [c for c in candidates if c.free]
        if not free:
            return WAIT
        cheapest = min(c.cold_s for c in free)
        return self._least.choose(request, [c for c in free if c.cold_s == cheapest])


def redone_s(c: Candidate, prefill_floor: float, cold_floor: float) -> float:
    """Time ``c`` would spend on work another candidate does not need: prompt evaluated
    beyond the least any candidate evaluates (``prefill_floor``), a load beyond the least
    cold-load cost (``cold_floor``). Where requests wait for slots it is taken from them, so
    ``hybrid`` and the handoff lookahead count it twice."""
    return c.prefill_s - prefill_floor + c.cold_s - cold_floor


class HybridStrategy:
    """Least expected completion time: wait + service + cold-load penalty (the default).

    With a free slot somewhere, the request takes the free server with the least expected
    completion time, unless a busy server would finish it markedly sooner (because the
    model is loaded there, it is much faster, or its prompt cache holds the request's
    prefix): then it waits for that server, but no longer than the time it would have saved.

    Prompt evaluated again where another server holds it cached, or a model loaded where another
    server has it loaded, is work no one needed: when the other waiting requests would take
    every free slot, that time is taken from them, so it counts twice. When free slots would idle instead, waiting for a busy server holding the
    prefix counts twice: a conversation that waits for its congested server now will wait
    again next turn, and moving it once spreads the load (near the end of a batch, too).

    A runner evaluates one prompt at a time: a request's prompt starts once a slot is free and
    the prompts sent there before it are evaluated (``queued_prefill_s``), and a prompt
    evaluated again where requests are in flight delays their next prompts, so there it counts
    twice even when free slots would idle.
    """

    #: Wait for a busy server only if its expected completion beats the best free one's by
    #: this factor (the estimates are averages: a near tie goes to the free server).
    wait_margin = 0.9
    #: Free servers whose expected completion is within this factor of the best one's are
    #: taken as equally good, and the load is spread over them.
    margin = 0.8

    def __init__(self) -> None:
        self._least = LeastLoadedStrategy()

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        # One pass for what every estimate needs (comprehensions and generators cost more
        # than the arithmetic here: a choice is made for every request).
        known: List[float] = []
        free_slots = 0
        least_prefill: Optional[float] = None
        least_cold: Optional[float] = None
        affinity = False
        for c in candidates:
            if c.service_s is not None:
                known.append((c.service_s - c.prefill_s) * c.weight)
            if c.free:
                free_slots += c.slots - c.in_use
            if least_prefill is None or c.prefill_s < least_prefill:
                least_prefill = c.prefill_s
            if least_cold is None or c.cold_s < least_cold:
                least_cold = c.cold_s
            if c.cached_chars:
                affinity = True
        # A server not measured yet is expected to serve like the measured ones (weighted),
        # apart from the prefill: that is its own (what its cache lacks of this prompt).
        base = sum(known) / len(known) if known else 1.0
        # Contended: the other waiters would take every free slot, so a slot's time spent
        # evaluating a prompt another server holds cached, or loading a model another has
        # loaded, is taken from them: it counts twice. Not contended: the free slots would
        # idle otherwise, and a conversation that waits for its congested server now will
        # likely wait there again next turn.
        contended = request.waiting >= free_slots
        prefill_floor = least_prefill if least_prefill is not None else 0.0
        cold_floor = least_cold if least_cold is not None else 0.0

        def ect(c: Candidate) -> float:
            service = c.service_s
            if service is None:
                service = max(0.0, base) / c.weight + c.prefill_s
            # The prompt starts once a slot frees and the prompts sent before it there are
            # evaluated (whichever is later).
            t = max(c.busy_for_s, c.queued_prefill_s) + service + c.cold_s
            if contended:
                t += redone_s(c, prefill_floor, cold_floor)
            else:
                if affinity and not c.free:
                    t += c.busy_for_s
                if c.in_use:
                    # One runner evaluates one prompt at a time: a prompt evaluated again
                    # here delays the next prompts of the requests in flight here too.
                    t += c.prefill_s - prefill_floor
            return t

        free = [c for c in candidates if c.free]
        if not free:
            warm = [c for c in candidates if c.loaded]
            if warm and len(warm) < len(candidates):
                best_cold = min((ect(c) for c in candidates if not c.loaded), default=0.0)
                best_warm = min(ect(c) for c in warm)
                if best_warm < best_cold:
                    return Choice(
                        None,
                        among=frozenset(c.name for c in warm),
                        widen_after_s=best_cold - best_warm,
                    )
            return WAIT
        # Each candidate's expected completion once: the best is the first least one (as
        # min(key=ect) picks it); the least among the free ones.
        best: Optional[Candidate] = None
        best_ect = 0.0
        best_free_ect: Optional[float] = None
        free_ects: List[float] = []
        for c in candidates:
            e = ect(c)
            if best is None or e < best_ect:
                best, best_ect = c, e
            if c.free:
                free_ects.append(e)
                if best_free_ect is None or e < best_free_ect:
                    best_free_ect = e
        assert best is not None and best_free_ect is not None  # ``free`` is not empty
        # Waiting needs evidence: a busy server whose service here was never measured has
        # a guessed finish (its running requests' ends are guessed too), so a free slot now
        # wins, unless the free servers would pay a cold load it does not.
        guessed = best.service_s is None and all(c.cold_s <= best.cold_s for c in free)
        if not best.free and not guessed and best_ect < self.wait_margin * best_free_ect:
            among = frozenset(
                c.name for c in candidates if ect(c) < self.wait_margin * best_free_ect
            )
            return Choice(None, among=among, widen_after_s=best_free_ect - best_ect)
        # Among (nearly) equally good free servers, spread the load.
        good = [c for c, e in zip(free, free_ects) if e <= best_free_ect / self.margin]
        return self._least.choose(request, good)


STRATEGY_CLASSES: Mapping[str, Callable[[], Strategy]] = {
    "round_robin": RoundRobinStrategy,
    "least_loaded": LeastLoadedStrategy,
    "weighted": WeightedStrategy,
    "model_aware": ModelAwareStrategy,
    "hybrid": HybridStrategy,
}


def make_strategy(name: Union[str, Strategy]) -> Strategy:
    """A fresh built-in strategy by its registered name; a :class:`Strategy` object as is."""
    if isinstance(name, str):
        return STRATEGY_CLASSES[name]()
    return name
