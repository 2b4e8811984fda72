"""The benchmark modules import (no benchmark runs here: see ``python -m benchmarks``)."""

from __future__ import annotations

import importlib

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
        "benchmarks.__main__",
    ],
)
def test_benchmark_module_imports(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.main)


def test_compare_checks_on_an_empty_report() -> None:
    from benchmarks.bench_compare import checks

    assert checks({}, quick=True) == []
