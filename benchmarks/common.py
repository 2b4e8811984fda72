"""What every benchmark shares: where results go, their JSON files, checks and their rows.

Each benchmark writes ``<name>.json`` with :func:`write_json` into :func:`results_dir`
(``benchmarks/results/`` unless ``python -m benchmarks`` points it elsewhere, e.g.
``results/quick`` with ``--quick``), and states its goals as :class:`Check` rows, which
``python -m benchmarks`` gathers into ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

#: Where the full run's results live (committed); quick runs go to ``results/quick``.
FULL_RESULTS = Path(__file__).parent / "results"
_results = FULL_RESULTS


def results_dir() -> Path:
    """The directory results are written to and read from."""
    return _results


def use_results(path: Path) -> None:
    """Write (and read) every benchmark's results in ``path`` from now on."""
    global _results
    _results = path


def write_json(name: str, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``name`` in the results directory; return the path."""
    _results.mkdir(parents=True, exist_ok=True)
    path = _results / name
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def read_json(name: str) -> Dict[str, Any]:
    """The JSON object a benchmark wrote to ``name``; empty if it wrote none."""
    path = _results / name
    if not path.exists():
        return {}
    data: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@dataclass(frozen=True)
class Check:
    """One figure of a benchmark, its goal and whether it was met."""

    bench: str
    figure: str
    value: str
    goal: str
    ok: Optional[bool]  # None: reported only
    gated: bool = False  # does a failure fail quick mode?

    def line(self) -> str:
        """The row a benchmark prints on its own."""
        mark = "-" if self.ok is None else ("ok" if self.ok else "FAIL")
        return f"{mark:>4}  {self.figure}: {self.value} (goal {self.goal})"

    def summary_row(self) -> str:
        """The row of ``summary.md``'s Markdown table."""
        result = "-" if self.ok is None else ("pass" if self.ok else "**FAIL**")
        if self.gated and self.ok is not None:
            result += " (gated)"
        return f"| {self.bench} | {self.figure} | {self.value} | {self.goal} | {result} |"


def add_common_args(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """The options ``python -m benchmarks`` shares with the comparison: quick mode, real hosts."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--hosts", nargs="+", metavar="URL", help="real Ollama hosts")
    parser.add_argument("--model", help="the model to use on real hosts")
    parser.add_argument("--slots", type=int, default=1, help="OLLAMA_NUM_PARALLEL of real hosts")
