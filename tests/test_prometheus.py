"""The Prometheus text exposition (``_prometheus``): golden output, parsing, escaping, no secrets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from ollama_orchestra import Orchestra, OrchestraConfig
from ollama_orchestra._config import Server
from ollama_orchestra._metrics import Metrics
from ollama_orchestra._prometheus import render_prometheus

GOLDEN = Path(__file__).parent / "data" / "prometheus_golden.txt"
HOSTILE = 'we"ird\\name\nx'  # quote, backslash, newline
ODD = 'b}c,d="e"'  # what a naive label parser would split on
SECRETS = ("s3cr3t", "secret-host", "user")

#: Every family in order: (name, TYPE, HELP). Dashboards and alerts depend on these.
FAMILIES: List[Tuple[str, str, str]] = [
    ("requests_total", "counter", "Requests finished, by server and outcome."),
    ("in_flight", "gauge", "Slots busy now."),
    ("slots", "gauge", "Slots (max_concurrency)."),
    ("busy_slot_seconds_total", "counter", "Busy slot-seconds."),
    ("utilization", "gauge", "Busy share of slot time over the window."),
    ("share", "gauge", "Share of successful requests."),
    ("breaker_trips_total", "counter", "Circuit breaker trips."),
    ("prompt_tokens_total", "counter", "Prompt tokens of successful requests."),
    (
        "cached_prompt_tokens_total",
        "counter",
        "Prompt tokens the server's prompt cache held (estimated).",
    ),
    ("prefill_seconds_total", "counter", "Seconds spent evaluating prompts."),
    ("latency_seconds", "histogram", "Latency of successful requests."),
    ("failovers_total", "counter", "Requests that succeeded after failing over."),
    (
        "failover_seconds",
        "summary",
        "Time from a request's first failure to its rerouted success.",
    ),
    ("continuations_total", "counter", "Streams continued elsewhere, by broken server."),
    ("tokens_salvaged_total", "counter", "Answer tokens kept across continuations."),
    ("imbalance", "gauge", "Largest deviation of a server's share from its fair share."),
    (
        "coordination",
        "gauge",
        "How slots are shared with other processes: 1 for the mode in force.",
    ),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fleet() -> List[Server]:
    return [
        Server(
            "a",
            "http://secret-host:11434",
            max_concurrency=2,
            weight=1.0,
            headers={"Authorization": "Bearer s3cr3t-tok"},
        ),
        Server(HOSTILE, "http://h:1", max_concurrency=1, weight=2.0),
        Server(ODD, "http://user:pw-s3cr3t@h:2", max_concurrency=3),
    ]


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def parse(text: str) -> Series:
    """A tiny exposition-format parser: (name, labels) -> value; checks HELP/TYPE come first."""
    out: Series = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        m = _LINE.match(line)
        assert m, f"bad line: {line!r}"
        name, raw, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"{name} has no TYPE line"
        labels: List[Tuple[str, str]] = []
        if raw:
            consumed = "".join(x.group(0) for x in _LABEL.finditer(raw))
            assert consumed == raw, f"bad labels: {raw!r}"
            labels = [(k, v) for k, v in _LABEL.findall(raw)]
        out[(name, tuple(labels))] = float(value)
    return out


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def headers(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def golden_headers() -> List[str]:
    out = []
    for name, kind, text in FAMILIES:
        out += [f"# HELP ollama_orchestra_{name} {text}", f"# TYPE ollama_orchestra_{name} {kind}"]
    return out


def busy_work(m: Metrics, clock: FakeClock) -> None:
    """The scenario behind the golden file."""
    m.slots_held("a", 1)
    clock.now = 1.5
    m.slots_held("a", 2)
    m.slots_held(ODD, 1)
    m.request_finished("a", ok=True, latency_s=0.25, eval_count=40, eval_duration_s=0.5)
    m.request_finished(
        "a", ok=True, latency_s=3.0, prompt_tokens=9000, cached_tokens=8000, prefill_s=1.25
    )
    m.request_finished(ODD, ok=True, latency_s=0.01)
    m.request_finished(HOSTILE, ok=False, latency_s=1.0)
    clock.now = 2.0
    m.slots_held("a", 1)
    m.breaker_trip(HOSTILE)
    m.failover(0.7)
    m.failover(2.5)
    m.continued(HOSTILE, 12, 0.4)
    clock.now = 4.25


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestGolden:
    """The exposition is byte for byte the stored text (it was before it left ``_metrics``;
    the prompt-cache families were added since)."""

    def test_text_matches_the_golden_file(self, clock: FakeClock) -> None:
        """The same work renders exactly the stored text (names, order, numbers, escaping)."""
        m = Metrics(fleet(), clock=clock)
        busy_work(m, clock)
        text = render_prometheus(m.snapshot(), m.distributions())
        assert text == GOLDEN.read_text(encoding="utf-8")
        assert m.to_prometheus() == text

    def test_families_help_and_type(self, clock: FakeClock) -> None:
        """Every family has its HELP then TYPE line, in the documented order."""
        m = Metrics(fleet(), clock=clock)
        busy_work(m, clock)
        assert headers(m.to_prometheus()) == golden_headers()
        assert headers(GOLDEN.read_text(encoding="utf-8")) == golden_headers()

    def test_orchestra_prometheus_has_the_same_families(self) -> None:
        """orch.prometheus() (so the proxy's /metrics) has the same families, hostile names escaped."""
        orch = Orchestra(OrchestraConfig(servers=tuple(fleet())))
        text = orch.prometheus()
        assert headers(text) == golden_headers()
        servers = {dict(k[1]).get("server") for k in parse(text)} - {None}
        assert {unescape(s) for s in servers if s is not None} == {"a", HOSTILE, ODD}
        assert not any(s in text for s in SECRETS)


class TestParse:
    """The text parses, and carries the snapshot's values."""

    def test_text_parses_with_expected_values(self, clock: FakeClock) -> None:
        """Every line parses, has a TYPE, and carries the snapshot's values."""
        two = [
            Server("a", "http://a:11434", max_concurrency=2, weight=1.0),
            Server("b", "http://b:11434", max_concurrency=1, weight=2.0),
        ]
        m = Metrics(two, clock=clock)
        m.slots_held("a", 1)
        m.request_finished("a", ok=True, latency_s=0.5)
        m.request_finished("a", ok=False, latency_s=0.5)
        m.breaker_trip("b")
        m.failover(1.5)
        clock.now = 4.0
        text = m.to_prometheus()
        assert text.endswith("\n")
        v = parse(text)
        p = "ollama_orchestra_"
        assert v[(p + "requests_total", (("server", "a"), ("outcome", "success")))] == 1
        assert v[(p + "requests_total", (("server", "a"), ("outcome", "failure")))] == 1
        assert v[(p + "in_flight", (("server", "a"),))] == 1
        assert v[(p + "slots", (("server", "b"),))] == 1
        assert v[(p + "busy_slot_seconds_total", (("server", "a"),))] == pytest.approx(4.0)
        assert v[(p + "utilization", (("server", "a"),))] == pytest.approx(0.5)
        assert v[(p + "breaker_trips_total", (("server", "b"),))] == 1
        assert v[(p + "latency_seconds_count", (("server", "a"),))] == 1
        assert v[(p + "latency_seconds_sum", (("server", "a"),))] == 0.5
        assert v[(p + "latency_seconds_bucket", (("server", "a"), ("le", "+Inf")))] == 1
        assert v[(p + "failovers_total", ())] == 1
        assert v[(p + "failover_seconds_count", ())] == 1
        assert v[(p + "imbalance", ())] == pytest.approx(0.5)

    def test_buckets_are_cumulative_and_monotonic(self, clock: FakeClock) -> None:
        """Histogram buckets grow with le and end at the count."""
        m = Metrics(fleet(), clock=clock)
        for x in (0.01, 0.1, 1.0, 10.0):
            m.request_finished("a", ok=True, latency_s=x)
        v = parse(m.to_prometheus())
        buckets = sorted(
            (float(dict(k[1])["le"]), val)
            for k, val in v.items()
            if k[0] == "ollama_orchestra_latency_seconds_bucket" and dict(k[1])["server"] == "a"
        )
        counts = [c for _, c in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == 4
        below_half = [c for le, c in buckets if le < 0.5]
        assert below_half[-1] == 2


class TestEscaping:
    """Hostile server names cannot break or forge a line."""

    def test_label_values_are_escaped(self, clock: FakeClock) -> None:
        """Quotes, backslashes and newlines in a server name are escaped."""
        m = Metrics([Server(HOSTILE, "http://h:1")], clock=clock)
        text = m.to_prometheus()
        assert 'server="we\\"ird\\\\name\\nx"' in text
        v = parse(text)
        assert ("ollama_orchestra_slots", (("server", 'we\\"ird\\\\name\\nx'),)) in v

    def test_every_series_names_a_real_server(self, clock: FakeClock) -> None:
        """Each server label unescapes to a configured name: none split, none invented."""
        m = Metrics(fleet(), clock=clock)
        busy_work(m, clock)
        v = parse(m.to_prometheus())
        named = {unescape(dict(labels)["server"]) for _, labels in v if dict(labels).get("server")}
        assert named == {"a", HOSTILE, ODD}
        slots = {unescape(dict(k[1])["server"]): n for k, n in v.items() if k[0].endswith("_slots")}
        assert slots == {"a": 2, HOSTILE: 1, ODD: 3}


class TestNoSecrets:
    """Server headers, URLs and their passwords never appear in the metrics."""

    def test_no_secrets(self, clock: FakeClock) -> None:
        """Neither the Authorization header nor the URL (host, user, password) is written."""
        m = Metrics(fleet(), clock=clock)
        busy_work(m, clock)
        text = m.to_prometheus()
        assert not any(s in text for s in SECRETS)
