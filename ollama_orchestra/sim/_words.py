"""The simulator's generated text: its words, and the seeded randomness behind answers,
log probabilities and embeddings (the same seed, model and prompt always give the same)."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any, Dict, List

__all__ = ["WORDS", "logprob_entry", "text_rng", "unit_vector"]

WORDS = [
    "the",
    "model",
    "plan",
    "code",
    "test",
    "async",
    "await",
    "server",
    "fleet",
    "slot",
    "queue",
    "load",
    "token",
    "stream",
    "answer",
    "function",
    "class",
    "module",
    "return",
    "value",
    "error",
    "retry",
    "balance",
    "task",
    "graph",
    "wave",
    "result",
    "python",
    "request",
    "response",
    "health",
    "check",
    "state",
    "metric",
    "latency",
    "throughput",
    "share",
    "worker",
    "batch",
    "cache",
    "memory",
    "device",
    "kernel",
    "tensor",
    "layer",
    "weight",
    "bias",
    "input",
    "output",
    "prompt",
    "context",
    "window",
    "first",
    "then",
    "next",
    "finally",
    "because",
    "therefore",
    "however",
    "also",
    "only",
    "each",
    "every",
    "some",
    "many",
    "few",
]


def text_rng(seed: int, model: str, prompt: str) -> random.Random:
    """The random source of one answer: derived from the seed, the model and the prompt."""
    digest = hashlib.sha256(f"{seed}|{model}|{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def logprob_entry(rng: random.Random, token: str, top: int) -> Dict[str, Any]:
    """A token's entry of ``logprobs``, in Ollama's shape (``api.Logprob``, built by
    ``server/logprob.go``): the token, its log probability and UTF-8 bytes, and with
    ``top_logprobs`` that many likeliest tokens, the chosen one first."""
    chosen = -round(rng.uniform(0.001, 1.5), 6)
    entry: Dict[str, Any] = {
        "token": token,
        "logprob": chosen,
        "bytes": list(token.encode()),
    }
    if top > 0:
        others = [" " + w for w in rng.sample(WORDS, min(top, len(WORDS))) if " " + w != token]
        alternatives = [(token, chosen)]
        level = chosen
        for word in others[: top - 1]:
            level = round(level - rng.uniform(0.05, 2.0), 6)
            alternatives.append((word, level))
        entry["top_logprobs"] = [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives
        ]
    return entry


def unit_vector(rng: random.Random, length: int) -> List[float]:
    """A random embedding of norm 1."""
    v = [rng.gauss(0.0, 1.0) for _ in range(length)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]
