"""The benchmark modules import (no benchmark runs here: see ``python -m benchmarks``)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

import pytest

if TYPE_CHECKING:
    from ollama_orchestra.sim import SimFleet


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
        "benchmarks.bench_scale",
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


class TestSideBySide:
    """Contenders run alternating, and the order turns by one each round."""

    async def test_order_turns(self) -> None:
        from benchmarks.compare.contenders import Contender
        from benchmarks.compare.runner import side_by_side

        order: List[str] = []

        class Named(Contender):
            def __init__(self, name: str) -> None:
                self.name = name

        async def run(c: Contender, r: int) -> Tuple[str, int]:
            order.append(c.name)
            return c.name, r

        runs = await side_by_side([Named("a"), Named("b"), Named("c")], 4, run)
        assert order == list("abcbcacababc")
        assert runs["b"] == [("b", 0), ("b", 1), ("b", 2), ("b", 3)]  # in round order


class TestRunWorkload:
    """Every batch sends prompts of its own: no batch finds the last one's in a host's cache."""

    async def test_prompts_differ_between_batches(self) -> None:
        from benchmarks.compare.contenders import Contender, Host
        from benchmarks.compare.runner import run_workload

        sent: List[str] = []

        class Recording(Contender):
            name = "recording"

            @contextlib.asynccontextmanager
            async def open(self, hosts: Any) -> AsyncIterator[Any]:
                async def send(model: str, prompt: str) -> str:
                    sent.append(prompt)
                    return "h"

                yield send

        hosts = [Host("h", "http://127.0.0.1:1", 1)]
        first = await run_workload(Recording(), hosts, ["m"] * 3)
        assert first.requests == 3 and first.per_host == {"h": 3}
        one, sent[:] = list(sent), []
        await run_workload(Recording(), hosts, ["m"] * 3)
        assert len(set(one)) == len(set(sent)) == 4  # the warm-up and three requests
        assert not set(one) & set(sent)


class TestHeadToHeadChecks:
    """Issue 19's goals on the per-round ratios: levels by their mean, "not below round
    robin" by the 95% confidence interval of the mean."""

    @staticmethod
    def report(vs_rr: Sequence[float]) -> Dict[str, Any]:
        def ratio(per: Sequence[float]) -> Dict[str, Any]:
            one = {"mean": sum(per) / len(per), "rounds": list(per)}
            return {"steady": one, "batch": one}

        return {
            "head_to_head": {
                "rounds": len(vs_rr),
                "one_host_vs_direct": ratio([0.99, 1.01, 1.0]),
                "two_hosts_vs_direct": ratio([1.96, 1.97, 1.975]),
                "two_hosts_vs_round_robin": ratio(vs_rr),
                "round_robin_vs_direct": ratio([2.0, 2.0, 2.0]),
            }
        }

    def test_confidence95(self) -> None:
        from benchmarks.compare.checks import confidence95

        mean, half = confidence95([1.0, 2.0, 3.0])
        assert mean == 2.0 and half == pytest.approx(4.30 * 1.0 / 3**0.5)
        assert confidence95([1.5]) == (1.5, 0.0)

    def test_goals(self) -> None:
        from benchmarks.compare import checks

        def by_figure(vs_rr: Sequence[float]) -> Dict[str, Any]:
            return {c.figure: c for c in checks(self.report(vs_rr), quick=False)}

        tie = by_figure([0.99, 1.0, 1.005])  # mean 0.998: no shortfall the rounds can show
        vs_rr = tie["a. head to head, 3 rounds, 2 hosts: hybrid / round robin"]
        assert vs_rr.ok is True and vs_rr.goal == "not below: CI reaches 1.00x"
        assert vs_rr.value.startswith("0.998x (95% CI 0.979-1.017, rounds 0.990-1.005")
        assert tie["a. head to head, 3 rounds, 1 host: hybrid / direct"].ok is True
        assert tie["a. head to head, 3 rounds, 2 hosts: hybrid / direct to one"].ok is False
        assert tie["a. head to head, 3 rounds, 2 hosts: round robin / direct to one"].ok is None
        short = by_figure([0.985, 0.99, 0.988])  # a shortfall every round
        assert short["a. head to head, 3 rounds, 2 hosts: hybrid / round robin"].ok is False


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
        assert len(sent[0][0]["content"]) >= 4 * wl.system_tokens  # the shared system prompt
        assert len(sent[0][1]["content"]) >= 4 * wl.context_tokens  # the task's own files
        other = Conversation("s1", wl)
        assert other.messages[0] == sent[0][0]  # every session shares the system prompt
        assert other.messages[1] != sent[0][1]  # and works on its own part of the repository

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
            "cached_tokens": 10,
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


class TestCutStreams:
    """bench_failover's streams cut mid-answer, on a few streams: every stream is accounted for."""

    @staticmethod
    def assert_well_formed(r: Dict[str, Any], streams: int) -> None:
        assert r["streams"] == streams
        assert r["completed"] + r["failed"] == streams  # nothing silently dropped
        assert 0 <= r["continued"] <= r["cut"] <= streams
        assert 0.0 <= r["completed_share"] <= 1.0
        not_completed = r["cut"] - round(r["completed_share"] * r["cut"])
        assert r["failed"] >= not_completed  # a cut stream not completed is a failed one
        assert 0.0 <= r["gap_p50_ms"] <= r["gap_p95_ms"]
        assert (r["gap_p95_ms"] > 0) is (r["continued"] > 0)
        assert (r["tokens_salvaged"] > 0) is (r["continued"] > 0)
        json.dumps(r)  # goes into failover.json as is

    async def test_orchestra_continue(self) -> None:
        """The orchestra's continue policy: the cut streams complete, continued on the other host."""
        from benchmarks.bench_failover import midstream_run

        r = await midstream_run(4, "continue", timeout_s=30)
        self.assert_well_formed(r, 4)
        assert (r["policy"], r["contender"]) == ("continue", "orchestra")
        assert r["cut"] >= 1 and r["continued"] == r["cut"] and r["completed"] == 4

    async def test_errors_count_as_failed(self) -> None:
        """A stream that raises, or ends without a final chunk, is counted failed, with its error."""
        from benchmarks.bench_failover import CutContender, StreamFn, midstream_run

        class Broken(CutContender):
            label = contender = "broken"

            @contextlib.asynccontextmanager
            async def open(self, fleet: SimFleet) -> AsyncIterator[StreamFn]:
                async def stream(i: int) -> AsyncIterator[Tuple[str, bool]]:
                    yield fleet.servers[0].name, False
                    if i == 0:
                        raise RuntimeError("boom")
                    if i == 1:
                        yield fleet.servers[1].name, True

                yield stream

        r = await midstream_run(3, Broken(), timeout_s=30)
        self.assert_well_formed(r, 3)
        assert (r["completed"], r["failed"], r["cut"], r["continued"]) == (1, 2, 3, 1)
        assert r["failed_examples"] == ["RuntimeError: boom", "ended without a final chunk"]

    def test_litellm(self) -> None:
        """LiteLLM's Router (when installed) runs the same scenario, as it comes and with its
        continuation; its figures are measured. In a child process: importing LiteLLM changes
        the process's loggers (httpx's level) and environment."""
        if importlib.util.find_spec("litellm") is None:
            pytest.skip("litellm is not installed (the bench extra)")
        code = (
            "import anyio, json\n"
            "from benchmarks.bench_failover import LiteLLMStreams, midstream_run\n"
            "flags = [False] + [True] * LiteLLMStreams.supports_continuation()\n"
            "rows = [anyio.run(lambda f=f: midstream_run(4, LiteLLMStreams(f), timeout_s=30))"
            " for f in flags]\n"
            "print(json.dumps(rows))\n"
        )
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        assert [r["policy"] for r in rows][:1] == ["litellm"]
        for r in rows:
            self.assert_well_formed(r, 4)
            assert r["contender"] == "litellm"
            assert r["litellm_version"] != "?"


class TestChaosGoal:
    """The chaos goal is the retry budget's 99th percentile, not its mean."""

    def test_three_attempts_at_ten_percent(self) -> None:
        from benchmarks.bench_failover import allowed_failures

        # Binomial(1000, 0.001): P(X <= 3) = 0.981, P(X <= 4) = 0.996.
        assert allowed_failures(1000, 0.1, 3) == 4

    def test_more_attempts_allow_fewer_failures(self) -> None:
        from benchmarks.bench_failover import allowed_failures

        assert allowed_failures(1000, 0.1, 4) < allowed_failures(1000, 0.1, 3)
        assert allowed_failures(1000, 0.0, 3) == 0


class TestSchedulerOverhead:
    """bench_dag's overhead goal: quick mode under issue 8's 300 us a task; full runs a ratio
    to the bare graphlib + anyio executor measured side by side."""

    async def test_the_bare_executor_runs_the_dag_in_dependency_order(self) -> None:
        from benchmarks.bench_dag import Instant, bare_dag, big_dag
        from ollama_orchestra._executor import Task

        seen: List[str] = []

        class Recording(Instant):
            async def generate(self, model: str, prompt: str = "", **kw: Any) -> Any:
                seen.append(prompt)
                return await super().generate(model, prompt, **kw)

        tasks = [
            Task("c", model="m", prompt="c", depends_on=["b"]),
            Task("a", model="m", prompt="a"),
            Task("b", model="m", prompt="b", depends_on=["a"]),
        ]
        answers = await bare_dag(Recording(), tasks)
        assert seen == ["a", "b", "c"] and len(answers) == 3
        assert len(await bare_dag(Instant(), big_dag(200))) == 200

    @pytest.mark.parametrize(
        ("per_task", "quick", "ok"),
        [
            ({"eager": 299.0, "bare": 10.0}, True, True),
            ({"eager": 301.0, "bare": 300.0}, True, False),
            ({"eager": 400.0, "bare": 250.0}, False, True),
            ({"eager": 90.0, "bare": 40.0}, False, False),
        ],
    )
    def test_the_goal(self, per_task: Dict[str, float], quick: bool, ok: bool) -> None:
        from benchmarks.bench_dag import overhead_ok

        assert overhead_ok(per_task, quick) is ok
