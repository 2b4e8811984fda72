"""Hand-rolled mutation check of the failure classification, the breakers and the balancer's
eligibility (not run by ``make test``). Usage: ``.venv/bin/python .ci/mutants.py [-k TEXT]``.

Each mutant replaces one snippet of the source, runs the fast relevant tests, and restores
the file; a mutant the tests still pass with "survived". The source is restored on every
path (and checked against a copy), so an interrupted run leaves the tree as it was.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ollama_orchestra"
TESTS = [
    "tests/test_failover_table.py",
    "tests/test_breaker.py",
    "tests/test_balancer.py",
    "tests/test_client_http.py",
    "tests/test_validation.py",
    "tests/test_config.py",
    "tests/test_failover.py",
]


class Mutant(NamedTuple):
    file: str
    old: str
    new: str
    what: str
    #: Why no test can kill it (the mutant behaves as the original), if so.
    equivalent: str = ""


M = Mutant
MUTANTS: List[Mutant] = [
    # -- the classification table (_failover) ---------------------------------------------
    M("_failover.py", '"busy": Outcome(retry=True, breaker=None)', '"busy": Outcome(retry=True, breaker="server")', "503 counts against the host"),
    M("_failover.py", '"not_found": Outcome(retry=True, breaker=None)', '"not_found": Outcome(retry=True, breaker="server")', "404 counts against the host"),
    M("_failover.py", '"client": Outcome(retry=False, breaker=None)', '"client": Outcome(retry=True, breaker=None)', "client errors retried"),
    M("_failover.py", '"model": Outcome(retry=True, breaker="model")', '"model": Outcome(retry=True, breaker="server")', "model failure counts against the host"),
    M("_failover.py", '"model": Outcome(retry=True, breaker="model")', '"model": Outcome(retry=True, breaker=None)', "model failure counts nowhere"),
    M("_failover.py", '"model": Outcome(retry=True, breaker="model")', '"model": Outcome(retry=False, breaker="model")', "model failure not retried"),
    M("_failover.py", '"connect": Outcome(retry=True, breaker="server")', '"connect": Outcome(retry=True, breaker=None)', "refused not a breaker failure"),
    M("_failover.py", '"timeout": Outcome(retry=True, breaker="server")', '"timeout": Outcome(retry=True, breaker=None)', "timeout not a breaker failure"),
    M("_failover.py", '"reset": Outcome(retry=True, breaker="server")', '"reset": Outcome(retry=True, breaker=None)', "reset not a breaker failure"),
    M("_failover.py", '"server": Outcome(retry=True, breaker="server")', '"server": Outcome(retry=True, breaker=None)', "5xx not a breaker failure"),
    M("_failover.py", '"server": Outcome(retry=True, breaker="server")', '"server": Outcome(retry=False, breaker="server")', "5xx not retried"),
    M("_failover.py", "if status in (503, 429, 408):", "if status in (503,):", "429/408 are the caller's"),
    M("_failover.py", "if status in (503, 429, 408):", "if status in (429, 408):", "503 is a host failure"),
    M("_failover.py", 'if status == 404 and "not found" in text:', "if status == 404:", "any 404 is a missing model"),
    M("_failover.py", 'if status == 404 and "not found" in text:', "if False:", "404 not found is the caller's"),
    M("_failover.py", "    if status == 500:\n", "    if status == 599:\n", "a 500's text ignored"),
    M("_failover.py", "    if status >= 500:\n        return \"server\"", "    if status > 500:\n        return \"server\"", "first 5xx",
      "500 is handled by the line above, so >= 500 and > 500 agree here"),
    M("_failover.py", "    \"must be of type\",\n", "", "option type error is the host's"),
    M("_failover.py", "    \"invalid format:\",\n", "", "format error is the host's"),
    M("_failover.py", "    \"error loading model\",\n", "", "load failure is the host's"),
    M("_failover.py", "    \"runner process has terminated\",\n", "", "dead runner is the host's"),
    M("_failover.py", 'return AttemptError("connect", server,', 'return AttemptError("reset", server,', "refused not marked down"),
    M("_failover.py", "(httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout, TimeoutError)", "(httpx.WriteTimeout, httpx.PoolTimeout)", "first-byte timeout not ours"),
    M("_failover.py", 'return AttemptError(kind, server, f"error mid-stream: {text}")', 'return AttemptError("server", server, f"error mid-stream: {text}")', "mid-stream model error is the host's"),
    M("_failover.py", "    if kind == \"client\":\n        # What Ollama", "    if False:\n        # What Ollama", "a bad-format error line is the host's"),
    M("_failover.py", "        if self._untried():\n            return 0.0\n", "", "backoff before trying the other servers"),
    M("_failover.py", "isinstance(e, AttemptError) and e.retryable", "isinstance(e, AttemptError)", "every attempt error retried",
      "the one kind not retried (client) is raised as OllamaResponseError, never as an AttemptError"),
    # -- the breakers (_breaker) ------------------------------------------------------------
    M("_breaker.py", "if self._consecutive >= p.failure_threshold:", "if self._consecutive > p.failure_threshold:", "threshold off by one"),
    M("_breaker.py", "self.failure_rate() >= p.failure_rate:", "self.failure_rate() > p.failure_rate:", "failure rate strict"),
    M("_breaker.py", "len(self._window) >= p.min_calls", "len(self._window) > p.min_calls", "min_calls off by one"),
    M("_breaker.py", "self._cooldown * p.cooldown_multiplier)", "self._cooldown)", "cooldown never grows"),
    M("_breaker.py", "min(p.cooldown_max_s, self._cooldown * p.cooldown_multiplier)", "self._cooldown * p.cooldown_multiplier", "cooldown uncapped"),
    M("_breaker.py", "and self._clock() >= self._opened_at + self._cooldown", "and self._clock() > self._opened_at + self._cooldown", "cooldown end strict"),
    M("_breaker.py", "and self._clock() >= self._opened_at + self._cooldown", "and self._clock() >= self._opened_at + 2 * self._cooldown", "cooldown doubled"),
    M("_breaker.py", "            return self._probes_out < self.policy.half_open_probes\n", "            return self._probes_out <= self.policy.half_open_probes\n", "one probe too many (can_admit)"),
    M("_breaker.py", "if state is HALF_OPEN and self._probes_out < self.policy.half_open_probes:", "if state is HALF_OPEN:", "unbounded probes (admit)"),
    M("_breaker.py", "        self._consecutive = 0\n        self._window.append(False)", "        self._window.append(False)", "success does not reset the count"),
    M("_breaker.py", "if permit.probe and permit.generation == self._generation and self._probes_out > 0:", "if False:", "released probe never returned"),
    M("_breaker.py", "    def record_failure(self, permit: Permit) -> None:\n        if permit.generation != self._generation:\n            return\n", "    def record_failure(self, permit: Permit) -> None:\n", "stale failures count"),
    M("_breaker.py", "        if self._state is OPEN:\n            self._move(HALF_OPEN, \"health probe succeeded\")", "        pass", "probe success ignored"),
    M("_breaker.py", "        elif state is HALF_OPEN:\n            self._trip(\"health probe failed\", repeated=True)", "", "probe failure in half-open ignored"),
    M("_breaker.py", "        self._cooldown = self.policy.cooldown_s\n        self._opened_at = None", "        self._opened_at = None", "cooldown not reset on close"),
    M("_breaker.py", "return br is None or br.can_admit()", "return True", "model breaker never refuses"),
    # -- eligibility (_balancer, _config) and the verdicts (_client) --------------------------
    M("_balancer.py", "            if not st.healthy:\n                continue\n", "", "unhealthy servers eligible"),
    M("_balancer.py", "            if br is not None and not br.can_admit():\n                continue\n", "", "open breaker ignored"),
    M("_balancer.py", "            if mb is not None and not mb.can_admit(st.server.name, req.model):\n                continue\n", "", "open model breaker ignored"),
    M("_balancer.py", "            if preferred or rule.required:", "            if preferred:", "required affinity not enforced"),
    M("_balancer.py", "            if preferred or rule.required:", "            if rule.required:", "preferred affinity ignored"),
    M("_balancer.py", "            if fresh:\n                up = fresh", "            if False:\n                up = fresh", "retry may go to a tried server"),
    M("_balancer.py", "capable = [st for st in self._state.servers() if req.model in st.models]", "capable = list(self._state.servers())", "servers without the model eligible"),
    M("_balancer.py", "    if isinstance(priority, bool):\n", "    if False:\n", "bool priority accepted"),
    M("_balancer.py", "                    del queue[i]\n                    self._fail(waiter, exc)\n                    continue", "                    raise", "a routing error escapes into release"),
    M("_balancer.py", "return self._in_use[name] < st.server.max_concurrency", "return self._in_use[name] <= st.server.max_concurrency", "one slot too many"),
    M("_balancer.py", "if all(st.models_known for st in states) and not any(", "if any(st.models_known for st in states) and not any(", "NoCapableServer before every list is known"),
    M("_config.py", "return self.min_priority is None or priority >= self.min_priority", "return self.min_priority is None or priority > self.min_priority", "min_priority strict"),
    M("_client.py", "(host, permit, isinstance(err, AttemptError) and err.breaker_failure),", "(host, permit, isinstance(err, AttemptError) and err.retryable),", "every retryable error counts against the host"),
    M("_client.py", "(model, mpermit, isinstance(err, AttemptError) and err.model_failure),", "(model, mpermit, False),", "model breaker never fed"),
    M("_client.py", "                and self._model_breakers.can_admit(st.server.name, model)\n", "", "untried ignores model breakers"),
]


def run_tests(tests: List[str], timeout: float) -> str:
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    return "survived" if proc.returncode == 0 else "killed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only mutants whose description contains this")
    parser.add_argument("--fast", action="store_true", help="skip the simulator tests")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    tests = [t for t in TESTS if not (args.fast and t.endswith("test_failover.py"))]
    if run_tests(tests, args.timeout) != "survived":
        print("the tests fail without any mutant: fix them first", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if args.k in m.what]
    results = []
    for m in chosen:
        path = PKG / m.file
        original = path.read_text(encoding="utf-8")
        if original.count(m.old) != 1:
            results.append((m, f"not applied ({original.count(m.old)} matches)"))
            print(f"{results[-1][1]:18}         {m.file:14} {m.what}", flush=True)
            continue
        backup = path.with_suffix(".py.orig")
        shutil.copyfile(path, backup)
        started = time.monotonic()
        try:
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            verdict = run_tests(tests, args.timeout)
        finally:
            path.write_text(original, encoding="utf-8")
            backup.unlink()
        results.append((m, verdict))
        print(f"{verdict:18} {time.monotonic() - started:5.1f}s  {m.file:14} {m.what}", flush=True)
    killed = sum(v.startswith("killed") for _, v in results)
    survived = [m for m, v in results if v == "survived"]
    missed = len(results) - killed - len(survived)
    print(f"\n{len(results)} mutants: {killed} killed, {len(survived)} survived, {missed} not applied")
    for m in survived:
        why = f" (equivalent: {m.equivalent})" if m.equivalent else ""
        print(f"  survived: {m.file}: {m.what}{why}")
    return 1 if missed or any(not m.equivalent for m in survived) else 0


if __name__ == "__main__":
    sys.exit(main())
