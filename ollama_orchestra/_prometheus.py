"""The metrics in Prometheus' text exposition format (0.0.4).

Pure: :func:`render_prometheus` turns what :class:`~._metrics.Metrics` collected (a
:class:`~._metrics.MetricsSnapshot` and the histograms behind its percentiles, as
:class:`~._metrics.Distributions`) into text, and reads nothing else. Only server names and
figures are written: no URL, no header, so no secret can leak here. Label values are
escaped as the format says (backslash, double quote, newline).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # only for annotations: _metrics imports this module
    from ._metrics import Distributions, MetricsSnapshot

__all__ = ["COORDINATION_MODES", "PREFIX", "render_prometheus"]

#: Every metric's name starts with this (and an underscore).
PREFIX = "ollama_orchestra"

#: ``MetricsSnapshot.coordination``'s values: one gauge line each (a state set).
COORDINATION_MODES = ("off", "redis", "local-fallback")

#: One latency bucket in this many is written: ~19 of the histogram's ~150, 2.1x apart.
_BUCKET_STRIDE = 8

#: (name, type, help, ``ServerMetrics`` attribute): one line per server each.
_PER_SERVER = (
    ("in_flight", "gauge", "Slots busy now.", "in_flight"),
    ("slots", "gauge", "Slots (max_concurrency).", "slots"),
    ("busy_slot_seconds_total", "counter", "Busy slot-seconds.", "busy_slot_s"),
    ("utilization", "gauge", "Busy share of slot time over the window.", "utilization"),
    ("share", "gauge", "Share of successful requests.", "share"),
    ("breaker_trips_total", "counter", "Circuit breaker trips.", "breaker_trips"),
    ("prompt_tokens_total", "counter", "Prompt tokens of successful requests.", "prompt_tokens"),
    (
        "cached_prompt_tokens_total",
        "counter",
        "Prompt tokens the server's prompt cache held (estimated).",
        "cached_tokens",
    ),
    ("prefill_seconds_total", "counter", "Seconds spent evaluating prompts.", "prefill_s"),
)


def render_prometheus(snap: MetricsSnapshot, dists: Distributions) -> str:
    """The text exposition of ``snap``, with the latency histograms and failover sum of
    ``dists`` (taken at the same moment)."""
    p = PREFIX
    lines: List[str] = []

    def head(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP {p}_{name} {text}")
        lines.append(f"# TYPE {p}_{name} {kind}")

    head("requests_total", "counter", "Requests finished, by server and outcome.")
    for s in snap.servers.values():
        label = f'server="{_esc(s.name)}"'
        lines.append(f'{p}_requests_total{{{label},outcome="success"}} {s.successes}')
        lines.append(f'{p}_requests_total{{{label},outcome="failure"}} {s.failures}')
    for name, kind, text, attr in _PER_SERVER:
        head(name, kind, text)
        for s in snap.servers.values():
            lines.append(f'{p}_{name}{{server="{_esc(s.name)}"}} {_num(getattr(s, attr))}')
    head("latency_seconds", "histogram", "Latency of successful requests.")
    for server, h in dists.latency.items():
        label = f'server="{_esc(server)}"'
        for bound, cum in h.buckets[::_BUCKET_STRIDE]:
            lines.append(f'{p}_latency_seconds_bucket{{{label},le="{bound:.6g}"}} {cum}')
        lines.append(f'{p}_latency_seconds_bucket{{{label},le="+Inf"}} {h.count}')
        lines.append(f"{p}_latency_seconds_sum{{{label}}} {_num(h.sum)}")
        lines.append(f"{p}_latency_seconds_count{{{label}}} {h.count}")
    head("failovers_total", "counter", "Requests that succeeded after failing over.")
    lines.append(f"{p}_failovers_total {snap.failovers}")
    head(
        "failover_seconds",
        "summary",
        "Time from a request's first failure to its rerouted success.",
    )
    lines.append(f'{p}_failover_seconds{{quantile="0.5"}} {_num(snap.failover_p50_s)}')
    lines.append(f'{p}_failover_seconds{{quantile="0.95"}} {_num(snap.failover_p95_s)}')
    lines.append(f"{p}_failover_seconds_sum {_num(dists.failover.sum)}")
    lines.append(f"{p}_failover_seconds_count {snap.failovers}")
    head("continuations_total", "counter", "Streams continued elsewhere, by broken server.")
    for name, n in sorted(snap.continuations.items()):
        lines.append(f'{p}_continuations_total{{server="{_esc(name)}"}} {n}')
    head("tokens_salvaged_total", "counter", "Answer tokens kept across continuations.")
    lines.append(f"{p}_tokens_salvaged_total {snap.tokens_salvaged}")
    head("imbalance", "gauge", "Largest deviation of a server's share from its fair share.")
    lines.append(f"{p}_imbalance {_num(snap.imbalance)}")
    head(
        "coordination",
        "gauge",
        "How slots are shared with other processes: 1 for the mode in force.",
    )
    for mode in COORDINATION_MODES:
        lines.append(f'{p}_coordination{{mode="{mode}"}} {int(snap.coordination == mode)}')
    return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
