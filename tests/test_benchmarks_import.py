"""The benchmark modules import (no benchmark runs here: see ``python -m benchmarks``)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "benchmarks.bench_sim",
        "benchmarks.bench_dag",
        "benchmarks.bench_failover",
        "benchmarks.bench_compare",
        "benchmarks.bench_proxy",
        "benchmarks.bench_soak",
        "benchmarks.bench_agent",
        "benchmarks.makespan_bound",
        "benchmarks.compare",
        "benchmarks.compare.cli",
        "benchmarks.__main__",
    ],
)
def test_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.main)


@pytest.mark.parametrize(
    "name",
    [
        "benchmarks.common",
        "benchmarks.compare.contenders",
        "benchmarks.compare.runner",
        "benchmarks.compare.scenarios",
        "benchmarks.compare.checks",
        "benchmarks.compare.plots",
    ],
)
def test_benchmark_part_imports(name: str) -> None:
    assert importlib.import_module(name).__doc__


def test_compare_checks_on_an_empty_report() -> None:
    from benchmarks.compare import checks

    assert checks({}, quick=True) == []


def test_old_compare_module_is_the_package() -> None:
    """``benchmarks.bench_compare`` (old invocations, imports) runs the package's code."""
    from benchmarks import bench_compare, common, compare

    assert bench_compare.main is compare.main
    assert bench_compare.checks is compare.checks
    assert bench_compare.Check is common.Check


def test_optional_parts_are_imported_only_when_used() -> None:
    """Importing the benchmarks imports neither the plots (matplotlib) nor LiteLLM, which
    must only be imported once ``LITELLM_LOCAL_MODEL_COST_MAP`` is set."""
    code = (
        "import sys, benchmarks.__main__, benchmarks.bench_compare\n"
        "print(sorted(m for m in ('benchmarks.compare.plots', 'matplotlib', 'litellm')"
        " if m in sys.modules))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


class TestCommon:
    """What the benchmarks share: results files and the rows of their checks."""

    def test_json_goes_to_the_chosen_results_dir(self, tmp_path: Path) -> None:
        """write_json/read_json use the directory use_results chose; a missing file reads {}."""
        from benchmarks import common

        before = common.results_dir()
        common.use_results(tmp_path / "quick")
        try:
            assert common.read_json("x.json") == {}
            path = common.write_json("x.json", {"a": [1, 2]})
            assert path == tmp_path / "quick" / "x.json"
            assert common.read_json("x.json") == {"a": [1, 2]}
        finally:
            common.use_results(before)

    @pytest.mark.parametrize(
        ("ok", "gated", "line", "result"),
        [
            (True, True, "  ok  f: 2.00x (goal >= 1.6x)", "pass (gated)"),
            (False, False, "FAIL  f: 2.00x (goal >= 1.6x)", "**FAIL**"),
            (None, True, "   -  f: 2.00x (goal >= 1.6x)", "-"),
        ],
    )
    def test_check_rows(self, ok: Optional[bool], gated: bool, line: str, result: str) -> None:
        """A check prints as `mark  figure: value (goal ...)` and as a summary table row."""
        from benchmarks.common import Check

        check = Check("compare", "f", "2.00x", ">= 1.6x", ok, gated)
        assert check.line() == line
        assert check.summary_row() == f"| compare | f | 2.00x | >= 1.6x | {result} |"


class TestAgentWorkload:
    """The agent benchmark's workload and its sticky contender."""

    def test_histories_grow(self) -> None:
        """Each turn re-sends the previous turn's messages, then the answer and a tool result."""
        from benchmarks.bench_agent import AgentWorkload, Conversation

        wl = AgentWorkload(sessions=2, turns=4, context_tokens=100, tool_tokens=20)
        conv = Conversation("s0", wl)
        sent = [list(conv.messages)]
        for t in range(wl.turns - 1):
            conv.advance(f"answer {t}")
            sent.append(list(conv.messages))
        for before, after in zip(sent, sent[1:]):
            assert after[: len(before)] == before
            assert [m["role"] for m in after[len(before) :]] == ["assistant", "tool"]
        assert len(sent[0][0]["content"]) >= 4 * wl.context_tokens  # the long shared context
        other = Conversation("s1", wl)
        assert other.messages[0] == sent[0][0]  # every session shares the system prompt

    def test_uneven_sessions(self) -> None:
        """Uneven: one long session (3T turns), the others short (2 turns)."""
        from benchmarks.bench_agent import AgentWorkload

        wl = AgentWorkload(sessions=4, turns=5, uneven=True)
        assert [wl.turns_of(i) for i in range(4)] == [15, 2, 2, 2]

    def test_sticky_maps_a_conversation_to_one_server(self) -> None:
        """The sticky contender sends a conversation to the same host, and spreads several."""
        from benchmarks.bench_agent import sticky_host

        hosts = ["ollama01", "ollama02"]
        for cid in ("s0", "s1", "session-42"):
            assert len({sticky_host(cid, hosts) for _ in range(5)}) == 1
        assert {sticky_host(f"s{i}", hosts) for i in range(20)} == set(hosts)

    def test_cache_goals_are_reported_not_gated_in_quick_mode(self) -> None:
        """Until GATE_CACHE_GOALS is flipped, a missed cache goal does not fail quick mode;
        an incomplete turn always does; full runs check everything."""
        from benchmarks import bench_agent

        row = {
            "turns": 3,
            "expected_turns": 3,
            "failures": 0,
            "turns_per_s": 1.0,
            "ttft_p50_s": 1.0,
            "ttft_p95_s": 2.0,
            "cache_hit_share": 0.5,
            "cached_tokens_after_first_turn": 10.0,
            "ideal_sticky_cached_tokens": 100,
        }
        rows = {"hybrid": row, "least_loaded": row, "sticky": row}
        report = {"scenarios": {"even": {"contenders": rows}, "uneven": {"contenders": rows}}}
        quick = bench_agent.checks(report, quick=True)
        missed = [c for c in quick if c.ok is False]
        assert missed and all(not c.gated for c in missed) is (not bench_agent.GATE_CACHE_GOALS)
        assert all(c.gated for c in bench_agent.checks(report, quick=False) if c.ok is False)
        broken = dict(row, turns=2)
        bad = {"scenarios": {"even": {"contenders": {"hybrid": broken}}}}
        assert any(c.gated and c.ok is False for c in bench_agent.checks(bad, quick=True))
