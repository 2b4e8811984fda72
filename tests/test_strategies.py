"""Strategies as objects: ``OrchestraConfig(strategy=...)`` takes a name or a Strategy."""

from __future__ import annotations

from typing import List, Sequence

import pytest

from ollama_orchestra import (
    Candidate,
    Choice,
    ConfigError,
    Orchestra,
    OrchestraConfig,
    RouteRequest,
    Server,
)

from .conftest import TINY, config_for, fleet, tiny_profile


class LastFree:
    """A custom strategy: the last candidate with a free slot."""

    def __init__(self) -> None:
        self.calls: List[RouteRequest] = []

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        self.calls.append(request)
        free = [c for c in candidates if c.in_use < c.slots]
        return Choice(server=free[-1].name) if free else Choice()


class TestCustomStrategy:
    async def test_orchestra_routes_with_a_custom_strategy(self) -> None:
        """An Orchestra configured with a Strategy object routes every request through it."""
        strategy = LastFree()
        sim = fleet([tiny_profile("h1"), tiny_profile("h2")])
        async with sim, Orchestra(config_for(sim, strategy=strategy)) as orch:
            answers = [await orch.generate(TINY, "x") for _ in range(3)]
            assert "LastFree" in repr(orch)
        assert [a.server for a in answers] == ["h2", "h2", "h2"]
        assert [r.model for r in strategy.calls] == [TINY] * 3

    @pytest.mark.parametrize("bad", ["fastest", 3, object()])
    def test_bad_strategy_is_refused(self, bad: object) -> None:
        """A strategy that is neither a known name nor an object with choose() is a ConfigError."""
        with pytest.raises(ConfigError, match="strategy"):
            OrchestraConfig(servers=(Server("a", "http://a:11434"),), strategy=bad)  # type: ignore[arg-type]
