"""What a prompt costs on each server, in the orchestra's own clock (issue 14).

:class:`PromptCosts` owns the two things routing needs to count prefill: the
:class:`~._prefix.PrefixIndex` (which prefixes each server's model likely holds cached) and
the rates learned from finished exchanges. It answers :meth:`PromptCosts.estimate` (how long
a request would spend evaluating its uncached prompt on a server, and how long the rest of
it takes) and learns from :meth:`PromptCosts.observe`.

**One unit of time.** Token counts come from Ollama's response fields (``prompt_eval_count``,
``eval_count``; ollama/ollama ``api/types.go`` ``Metrics``, v0.33.0-rc2); durations from what
the orchestra observes. Reported durations (``prompt_eval_duration``, ``load_duration``) are
converted with a per-server ratio of observed to reported time (the observed whole request
over the reported ``total_duration``): about 1 for a real host, ``time_scale`` for the
simulator, so a simulated fleet at any time scale and a real one lead to the same decisions.

**What is cached.** Ollama (since v0.33 on upstream llama-server) reports every prompt token in
``prompt_eval_count`` but only the evaluated part's time in ``prompt_eval_duration`` (see
``sim/_kvcache.py`` for the sources). So the evaluated tokens are the evaluated time times the
learned prompt rate; a response that evaluated far more than the index predicted drops the
chains that predicted it (a miss), and every success records its prompt as cached there.
Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ._prefix import BLOCK_CHARS, RAM_CHAINS, PrefixIndex, block_hashes, prompt_text

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "Estimate",
    "Observation",
    "Prompt",
    "PromptCosts",
]

#: Guess until a model's ratio is learned (about four characters per token for English text).
DEFAULT_CHARS_PER_TOKEN = 4.0
#: Weight of a new observation in the moving averages.
ALPHA = 0.3
#: A prompt rate is learned only from exchanges that evaluated at least this many tokens
#: (the time of a handful of tokens is mostly overhead).
MIN_RATE_TOKENS = 32
#: A response counts as a cache miss when it evaluated more than this share of the tokens
#: the index said were cached (on top of the uncached ones).
MISS_SHARE = 0.5
#: A response that evaluated (at the learned rate) under the tokens the index said were
#: uncached divided by this factor found more cached than the index knew (a slot it had
#: counted lost, or another conversation's): it says nothing of the rate, and is not
#: learned from (learning such samples can make the rate many times too fast, and every
#: move's prefill look free)...
SURPRISE_FACTOR = 1.5
#: ... unless this many such responses come in a row: then the host did become faster.
SURPRISE_STREAK = 3


def _ewma(old: Optional[float], new: float) -> float:
    return new if old is None else old + ALPHA * (new - old)


@dataclass(frozen=True)
class Prompt:
    """A request's prompt as routing sees it: its length and its chained block hashes, and
    the budget of its answer (``options.num_predict`` where the body sets a positive one:
    the rest of a request grows with the tokens it generates)."""

    chars: int
    chain: Tuple[bytes, ...]
    predict: Optional[int] = None


@dataclass(frozen=True)
class Estimate:
    """A request on one server: what is likely cached and what the rest costs (seconds).

    ``base_s`` is the expected time of the request apart from prefill and cold load (decode
    and overhead), ``None`` until learned there: the learned rest of a request there, scaled
    to this request's answer budget (:attr:`Prompt.predict`) once the tokens answers there
    have is known (see :meth:`PromptCosts.estimate`).
    """

    cached_chars: int
    prefill_s: float
    base_s: Optional[float]


@dataclass(frozen=True)
class Observation:
    """What one finished exchange showed: tokens as Ollama counts them, seconds observed."""

    prompt_tokens: int
    cached_tokens: int
    prefill_s: float
    #: ``True``/``False`` when the index predicted a cached prefix and the response confirmed
    #: or refuted it; ``None`` when nothing was predicted or no rate is known yet.
    hit: Optional[bool]


@dataclass
class _Pair:
    prompt_tps: Optional[float] = None
    base_s: Optional[float] = None
    tokens: Optional[float] = None  # the answers' tokens, averaged as base_s is
    fill: Optional[float] = None  # eval_count / num_predict of the answers that had a budget
    faster: int = 0  # surprisingly fast responses in a row


class PromptCosts:
    """Prefix index + learned rates: the prefill part of the cost model (see module doc)."""

    def __init__(self, block_chars: int = BLOCK_CHARS, ram_chains: int = RAM_CHAINS) -> None:
        self.index = PrefixIndex(block_chars, ram_chains)
        self._pairs: Dict[Tuple[str, str], _Pair] = {}
        self._chars_per_token: Dict[str, float] = {}
        # Per server: moving sums of observed and reported seconds (their ratio converts).
        self._observed: Dict[str, float] = {}
        self._reported: Dict[str, float] = {}

    # -- what routing asks -----------------------------------------------------------------------

    def prompt(self, model: str, body: Mapping[str, Any]) -> Optional[Prompt]:
        """The routing view of a request body (``None`` when it carries no prompt)."""
        text = prompt_text(body)
        if not text:
            return None
        options = body.get("options")
        n = options.get("num_predict") if isinstance(options, Mapping) else None
        predict = n if type(n) is int and n > 0 else None  # -1, -2: no limit (api/types.go)
        return Prompt(len(text), block_hashes(model, text, self.index.block_chars), predict)

    def tokens(self, model: str, chars: int) -> float:
        """Estimated prompt tokens of ``chars`` characters for ``model``."""
        return chars / self._chars_per_token.get(model, DEFAULT_CHARS_PER_TOKEN)

    def time_ratio(self, server: str) -> float:
        """Orchestra seconds per second a server reports (1.0 until observed)."""
        reported = self._reported.get(server)
        if not reported:
            return 1.0
        return self._observed[server] / reported

    def prompt_tps(self, server: str, model: str) -> Optional[float]:
        """Learned prompt-evaluation rate there, in tokens per orchestra second."""
        pair = self._pairs.get((server, model))
        return pair.prompt_tps if pair else None

    def estimate(
        self,
        server: str,
        model: str,
        prompt: Optional[Prompt],
        fleet: Sequence[str] = (),
    ) -> Estimate:
        """``prompt`` sent to ``server``: the likely cached characters, the seconds of
        evaluating the rest (at the rate learned there, else the mean of ``fleet``'s for the
        model, else 0: no basis), and the learned rest of the request.

        The rest is learned per request, whatever its answer's length, so it is scaled to
        the tokens this one is expected to generate: its budget times the share of their
        budget answers there used (``eval_count / num_predict``: a model that stops early
        uses less), over the tokens the answers it was learned from had. Until a budgeted
        answer was seen there, a budget only scales the rest down (a large ``num_predict``
        is often a ceiling the answer never reaches)."""
        pair = self._pairs.get((server, model))
        base = pair.base_s if pair else None
        if prompt is None:
            return Estimate(0, 0.0, base)
        if base is not None and prompt.predict is not None and pair is not None:
            base = _scaled_rest(base, pair, prompt.predict)
        cached = self.index.cached_chars(server, model, prompt.chain)
        rate = pair.prompt_tps if pair else None
        if rate is None:
            known = [r for r in (self.prompt_tps(s, model) for s in fleet) if r is not None]
            rate = sum(known) / len(known) if known else None
        prefill = self.tokens(model, max(0, prompt.chars - cached)) / rate if rate else 0.0
        return Estimate(cached, prefill, base)

    # -- what responses teach --------------------------------------------------------------------

    def observe(
        self,
        server: str,
        model: str,
        prompt: Optional[Prompt],
        final: Mapping[str, Any],
        *,
        observed_s: float,
        slots: int,
        predicted_cached_chars: int = 0,
    ) -> Observation:
        """One successful exchange: ``final`` is Ollama's last object, ``observed_s`` the
        attempt's time (orchestra clock); ``predicted_cached_chars`` what :meth:`estimate` said
        when the request was routed there. Decoding is learned as part of the rest of a
        request (``base_s``), which is what routing compares."""
        total_ns = _count(final, "total_duration")
        if total_ns > 0 and observed_s > 0:
            self._observed[server] = _ewma(self._observed.get(server), observed_s)
            self._reported[server] = _ewma(self._reported.get(server), total_ns / 1e9)
        ratio = self.time_ratio(server)
        prefill = _count(final, "prompt_eval_duration") / 1e9 * ratio
        load = _count(final, "load_duration") / 1e9 * ratio
        n = _count(final, "prompt_eval_count")
        pair = self._pairs.get((server, model))
        if pair is None:  # (setdefault would build a _Pair on every call)
            pair = self._pairs[(server, model)] = _Pair()
        if observed_s > 0:
            pair.base_s = _ewma(pair.base_s, max(0.0, observed_s - prefill - load))
            answered = _count(final, "eval_count")
            pair.tokens = _ewma(pair.tokens, float(answered))
            if prompt is not None and prompt.predict is not None:
                pair.fill = _ewma(pair.fill, min(1.0, answered / prompt.predict))
        if prompt is None or n <= 0:
            return Observation(n, 0, prefill, None)
        self._chars_per_token[model] = _ewma(self._chars_per_token.get(model), prompt.chars / n)
        predicted = min(n, self.tokens(model, predicted_cached_chars))
        uncached = n - predicted
        hit: Optional[bool] = None
        if pair.prompt_tps is not None:
            evaluated = min(float(n), prefill * pair.prompt_tps)
            if predicted > 0:
                hit = evaluated <= uncached + MISS_SHARE * predicted
        else:
            evaluated = uncached
        if hit is False:
            # The host no longer held what the index said: drop the chains that said so.
            self.index.forget_prefix(
                server, model, prompt.chain[: predicted_cached_chars // self.index.block_chars]
            )
        elif uncached >= MIN_RATE_TOKENS and prefill > 0:
            # The mirror of a miss: far fewer evaluated than the index said were uncached.
            pair.faster = pair.faster + 1 if SURPRISE_FACTOR * evaluated < uncached else 0
            if pair.faster == 0 or pair.faster >= SURPRISE_STREAK:
                pair.prompt_tps = _ewma(pair.prompt_tps, uncached / prefill)
        self.index.record(server, model, prompt.chain, slots)
        cached = round(max(0.0, n - max(1.0, evaluated)))
        return Observation(n, cached, prefill, hit)

    def unloaded(self, server: str, model: str) -> None:
        """The model left the server's memory: its prompt caches are gone."""
        self.index.unloaded(server, model)

    def loaded_models(self, server: str, models: Sequence[str]) -> None:
        """The server's loaded models as ``/api/ps`` lists them: caches of the others are gone."""
        self.index.loaded_models(server, models)


def _scaled_rest(base: float, pair: _Pair, predict: int) -> float:
    """The learned rest of a request there, for an answer budget of ``predict`` tokens (see
    :meth:`PromptCosts.estimate`); unchanged while the answers' tokens are unknown (or
    under one: answers without ``eval_count``, as embeddings')."""
    if pair.tokens is None or pair.tokens < 1.0:
        return base
    expected = predict * pair.fill if pair.fill is not None else min(predict, pair.tokens)
    return base * expected / pair.tokens


def _count(final: Mapping[str, Any], key: str) -> int:
    """A non-negative integer field of Ollama's final object (0 when absent or malformed)."""
    value = final.get(key)
    if type(value) is int:  # what json gives: the common case, checked first
        return value if value > 0 else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return max(0, int(value))
