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
