"""The comparison's goals, checked on its report (``compare.json``).

Goals: a. 2 hosts >= 1.95x one host (quick: 1.6x, gated), lowest host utilization >= 95%,
imbalance <= 2%; b. >= 95% of the hosts' summed capacity; d. the orchestra within 1.15x of
direct ``httpx`` doing the same streamed request. The other figures are reported only.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..common import Check


def _check(figure: str, value: str, goal: str = "-", ok: Optional[bool] = None) -> Check:
    return Check("compare", figure, value, goal, ok)


def _scaling(sc: Dict[str, Any], quick: bool) -> List[Check]:
    out: List[Check] = []
    if "2" not in sc["by_hosts"]:
        return out
    for name, row in sc["by_hosts"]["2"].items():
        s = row["speedup_vs_one_host"]
        whole = f"{s:.2f}x (whole batch {row['batch_speedup_vs_one_host']:.2f}x)"
        if name.startswith("orchestra"):
            goal = 1.6 if quick else 1.95
            figure = f"a. 2 hosts vs 1, {name}"
            out.append(Check("compare", figure, whole, f">= {goal}x", s >= goal, gated=quick))
        else:
            out.append(_check(f"a. 2 hosts vs 1, {name}", whole))
    for n, rows in sc["by_hosts"].items():
        for name, row in rows.items():
            if name.startswith("orchestra") and row["min_utilization"] is not None:
                u = row["min_utilization"]
                w = row.get("min_window_utilization") or 0.0
                out.append(
                    _check(
                        f"a. {n} hosts, {name}: lowest host utilization",
                        f"{u:.1%} (metrics' windowed figure {w:.1%})",
                        ">= 95%",
                        u >= 0.95,
                    )
                )
                im = row["imbalance"]
                out.append(
                    _check(f"a. {n} hosts, {name}: imbalance", f"{im:.1%}", "<= 2%", im <= 0.02)
                )
    last = sc["counts"][-1]
    for name, row in sc["by_hosts"][str(last)].items():
        out.append(
            _check(
                f"a. {last} hosts vs 1, {name}",
                f"{row['speedup_vs_one_host']:.2f}x (whole batch "
                f"{row['batch_speedup_vs_one_host']:.2f}x, imbalance {row['imbalance']:.1%})",
            )
        )
    return out


def _overhead(ov: Dict[str, Any]) -> List[Check]:
    r = ov["ratio_vs_httpx_stream"]
    ms = ov["per_request_ms"]
    out = [
        _check(
            "d. overhead: orchestra / direct httpx (same streamed request)",
            f"{r['orchestra']:.2f}x ({ms['orchestra']:.2f} vs {ms['httpx-stream']:.2f} ms)",
            "<= 1.15x",
            r["orchestra"] <= 1.15,
        )
    ]
    for name in ("httpx", "ollama.AsyncClient", "litellm-router"):
        if name in r:
            out.append(
                _check(
                    f"d. overhead: {name} / direct httpx (streamed)",
                    f"{r[name]:.2f}x ({ms[name]:.2f} ms)",
                )
            )
    if "litellm-router" in ms:
        out.append(
            _check(
                "d. overhead: LiteLLM Router / orchestra",
                f"{ms['litellm-router'] / ms['orchestra']:.2f}x",
            )
        )
    return out


def checks(report: Dict[str, Any], quick: bool) -> List[Check]:
    """Every figure of ``report``, with its goal where it has one."""
    out: List[Check] = []
    sc = report.get("scaling")
    if sc:
        out += _scaling(sc, quick)
    het = report.get("heterogeneous")
    if het:
        for name, row in het["contenders"].items():
            f = row["fraction_of_capacity"]
            orch = name.startswith("orchestra")
            out.append(
                _check(
                    f"b. fast+slow host, {name}: share of summed capacity",
                    f"{f:.1%}",
                    ">= 95%" if orch else "-",
                    f >= 0.95 if orch else None,
                )
            )
    mix = report.get("mixed_models")
    if mix:
        for name, row in mix["contenders"].items():
            out.append(
                _check(
                    f"c. two models, one loaded per host, {name}",
                    f"{row['cold_loads']:.0f} cold loads, {row['speedup_vs_one_host']:.2f}x one host",
                )
            )
    ov = report.get("overhead")
    if ov:
        out += _overhead(ov)
    return out
