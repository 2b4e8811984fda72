"""HybridStrategy.choose, computed in one pass, chooses as the plain definition does."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_orchestra._strategies import (
    WAIT,
    Candidate,
    Choice,
    HybridStrategy,
    LeastLoadedStrategy,
    RouteRequest,
)


def reference_choice(
    least: LeastLoadedStrategy, request: RouteRequest, candidates: Sequence[Candidate]
) -> Choice:
    """The hybrid choice as written before the one-pass version (its definition)."""
    known = [(c.service_s - c.prefill_s) * c.weight for c in candidates if c.service_s is not None]
    base = sum(known) / len(known) if known else 1.0

    def service(c: Candidate) -> float:
        if c.service_s is not None:
            return c.service_s
        return max(0.0, base) / c.weight + c.prefill_s

    free_slots = sum(c.slots - c.in_use for c in candidates if c.free)
    contended = request.waiting >= free_slots
    least_prefill = min((c.prefill_s for c in candidates), default=0.0)
    least_cold = min((c.cold_s for c in candidates), default=0.0)
    affinity = any(c.cached_chars for c in candidates)

    def ect(c: Candidate) -> float:
        t = max(c.busy_for_s, c.queued_prefill_s) + service(c) + c.cold_s
        if contended:
            t += c.prefill_s - least_prefill + c.cold_s - least_cold
        else:
            if affinity and not c.free:
                t += c.busy_for_s
            if c.in_use:
                t += c.prefill_s - least_prefill
        return t

    free = [c for c in candidates if c.free]
    if not free:
        warm = [c for c in candidates if c.loaded]
        if warm and len(warm) < len(candidates):
            best_cold = min((ect(c) for c in candidates if not c.loaded), default=0.0)
            best_warm = min(ect(c) for c in warm)
            if best_warm < best_cold:
                return Choice(
                    None, among=frozenset(c.name for c in warm), widen_after_s=best_cold - best_warm
                )
        return WAIT
    best_free_ect = min(ect(c) for c in free)
    best = min(candidates, key=ect)
    guessed = best.service_s is None and all(c.cold_s <= best.cold_s for c in free)
    if not best.free and not guessed and ect(best) < HybridStrategy.wait_margin * best_free_ect:
        among = frozenset(
            c.name for c in candidates if ect(c) < HybridStrategy.wait_margin * best_free_ect
        )
        return Choice(None, among=among, widen_after_s=best_free_ect - ect(best))
    good = [c for c in free if ect(c) <= best_free_ect / HybridStrategy.margin]
    return least.choose(request, good)


def _seconds(high: float) -> st.SearchStrategy[float]:
    # A few coarse values, so ties (and near ties) between servers are common.
    return st.sampled_from([0.0, 0.5, 1.0, 2.0, high])


@st.composite
def _candidates(draw: st.DrawFn) -> List[Candidate]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        slots = draw(st.integers(1, 3))
        service: Optional[float] = draw(st.one_of(st.none(), _seconds(9.0)))
        out.append(
            Candidate(
                f"s{i}",
                slots,
                draw(st.integers(0, slots)),
                draw(st.sampled_from([0.5, 1.0, 2.0])),
                draw(st.booleans()),
                service,
                draw(_seconds(30.0)),
                draw(_seconds(5.0)),
                draw(_seconds(3.0)),
                draw(st.sampled_from([0, 0, 512])),
                draw(_seconds(4.0)),
            )
        )
    return out


class TestOnePassHybrid:
    """The one-pass hybrid choice equals its definition, tie rotation included."""

    @settings(max_examples=300, deadline=None)
    @given(rounds=st.lists(st.tuples(_candidates(), st.integers(0, 6)), min_size=1, max_size=4))
    def test_same_choices(self, rounds: List[Tuple[List[Candidate], int]]) -> None:
        ours, least = HybridStrategy(), LeastLoadedStrategy()
        for cands, waiting in rounds:
            request = RouteRequest("m", waiting=waiting)
            assert ours.choose(request, cands) == reference_choice(least, request, cands)


def cand(
    name: str,
    *,
    in_use: int = 0,
    weight: float = 1.0,
    loaded: bool = True,
    service_s: Optional[float] = None,
    cold_s: float = 0.0,
    busy_for_s: float = 0.0,
) -> Candidate:
    """A candidate with one slot, weight 1, warm, nothing measured, free, unless told."""
    return Candidate(name, 1, in_use, weight, loaded, service_s, cold_s, busy_for_s)


class TestWaitingNeedsEvidence:
    """``hybrid`` waits for a busy server only on a measured service time, or a cold load the
    free servers would pay."""

    def test_a_free_slot_beats_a_guessed_faster_server(self) -> None:
        """Nothing measured for the model: the faster busy server's finish is a guess (the
        demo's coding tasks waited 6 s for ``ollama02`` while ``ollama01`` idled)."""
        free = cand("small")
        busy = cand("big", in_use=1, weight=1.5, busy_for_s=0.15)
        choice = HybridStrategy().choose(RouteRequest("m", waiting=1), [free, busy])
        assert choice.server == "small"

    def test_a_measured_faster_server_is_waited_for(self) -> None:
        """Measured: the busy server that finishes markedly sooner is waited for."""
        free = cand("small", service_s=10.0)
        busy = cand("big", in_use=1, weight=1.5, busy_for_s=1.0, service_s=5.0)
        choice = HybridStrategy().choose(RouteRequest("m", waiting=1), [free, busy])
        assert choice.server is None and choice.among == frozenset({"big"})

    def test_a_cold_load_is_evidence_enough(self) -> None:
        """Nothing measured, but the free server would load the model: wait for the warm one."""
        free = cand("small", loaded=False, cold_s=14.0)
        busy = cand("big", in_use=1, busy_for_s=1.0)
        choice = HybridStrategy().choose(RouteRequest("m"), [free, busy])
        assert choice.server is None and choice.among == frozenset({"big"})
