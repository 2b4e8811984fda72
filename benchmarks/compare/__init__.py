"""The orchestra against the alternatives, on the same workload in the same run.

Run from the repo root: ``python -m benchmarks.compare [--quick] [--hosts URL ...]`` (or, as
before, ``python -m benchmarks.bench_compare``).

Contenders (all run side by side, alternating A B C A B C ..., never all of A then all of B):

* ``orchestra-least_loaded``, ``orchestra-hybrid`` (``orchestra-model_aware`` in scenario c):
  :class:`ollama_orchestra.Orchestra` with that strategy, slots = the hosts' ``num_parallel``;
  ``orchestra-hybrid+nolookahead`` (scenarios a and b): the same with ``Server.lookahead = 0``
  (the handoff lookahead off: what it buys);
* ``one-host``: every request on the first host, plain ``httpx`` (today's setup);
* ``round-robin``: a hand-written client cycling over the host URLs with plain ``httpx``, no
  slots: concurrency bounded only by the workload (every request is sent at once);
* ``litellm-shuffle``, ``litellm-least-busy``: LiteLLM's ``Router`` with
  ``routing_strategy="simple-shuffle"`` / ``"least-busy"``, its ``ollama/`` provider pointed at
  the same hosts (``api_base``), every request sent at once.

Scenarios:

a. Scaling: 1, 2, 4, 8 identical hosts (quick: 1, 2), many more requests than slots:
   throughput relative to ``one-host`` measured in the same round, per-host utilization (from
   ``orch.metrics()``), imbalance. Goals: 2 hosts >= 1.95x (quick: 1.6x), utilization >= 95%,
   imbalance <= 2%. Then (full runs) head to head, 8 rounds: ``hybrid`` against ``one-host``
   on one and two hosts and against ``round-robin`` on two; issue 19's goals: >= 0.99x direct
   on one host, >= 1.97x on two and not below round robin (means of per-round ratios).
b. Heterogeneous: two hosts, one twice as fast: throughput as a fraction of the sum of the
   hosts' capacities (each host's throughput alone, measured in the same round). Goal >= 0.98
   for ``hybrid`` (issue 19), >= 0.95 for the other strategies.
   Requests take twice as long as in a. (time scale 0.5), so that what each one costs on the
   way between processes is not mistaken for a balancing loss.
c. Mixed models with cold loads: each host holds one model at a time, a workload mixing two
   models: cold loads caused (the sims' ``loads`` counters) and throughput.
d. Overhead: an instant host; time per request (sequential) of the orchestra vs a direct
   ``httpx`` call vs the official ``ollama.AsyncClient`` vs LiteLLM's Router. Goal: the
   orchestra within 1.10x of direct ``httpx`` doing the same streamed request.

Timing is only ever reported as ratios measured side by side; absolute figures are printed,
never asserted. Results go to ``benchmarks/results/compare.json`` and two plots.

Modules: :mod:`.contenders` (the ways of sending), :mod:`.runner` (a workload through one
contender; contenders side by side), :mod:`.scenarios` (a-d), :mod:`.checks` (the goals),
:mod:`.plots` (matplotlib, imported only to plot), :mod:`.cli` (fleets, report, command line).
"""

from __future__ import annotations

from .checks import checks
from .cli import main, run

__all__ = ["checks", "main", "run"]
