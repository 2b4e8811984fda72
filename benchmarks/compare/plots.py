"""The comparison's plots (matplotlib, from the ``bench`` extra): throughput vs hosts, and the
orchestra's per-server utilization over the largest scaling run. Imported only to plot."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Dict, List


def plot(report: Dict[str, Any], out: Path) -> List[str]:
    """Write the plots of ``report`` into ``out``; the names of the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib missing: no plots (pip install -e '.[bench]')")
        return []
    written: List[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    sc = report.get("scaling")
    if not sc:
        return written
    fig, ax = plt.subplots(figsize=(7, 4.5))
    counts = sc["counts"]
    names = list(sc["by_hosts"][str(counts[0])].keys())
    styles = itertools.cycle(["o-", "s-", "^--", "v--", "D:", "x:", "*-"])
    for name in names:
        ys = [sc["by_hosts"][str(n)][name]["speedup_vs_one_host"] for n in counts]
        ax.plot(counts, ys, next(styles), label=name)
    ax.plot(counts, counts, color="grey", linewidth=0.8, label="ideal (n x one host)")
    ax.set_xlabel("hosts (identical, 2 slots each)")
    ax.set_ylabel("throughput / one host's (same round)")
    ax.set_xticks(counts)
    ax.set_title(
        "Throughput vs hosts, at saturation (10%-90% of answers)\n"
        f"simulated hosts as subprocesses on {os.cpu_count()} CPUs",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "compare_scaling.png")
    tl = sc.get("timeline") or []
    if tl:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ts = [p["t"] for p in tl]
        for name in tl[0]["utilization"]:
            ax.plot(ts, [100 * p["utilization"].get(name, 0.0) for p in tl], label=name)
        ax.set_ylim(0, 110)
        ax.set_xlabel("seconds since the first request (real time)")
        ax.set_ylabel("busy slots, % (per 100 ms)")
        ax.set_title(f"Per-server utilization, orchestra-hybrid on {counts[-1]} hosts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2, loc="lower center")
        save(fig, "compare_utilization.png")
    return written
