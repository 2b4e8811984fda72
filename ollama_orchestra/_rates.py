"""Prompt-eval and decode rates per (server, model), in the orchestra's own clock (issue 14).

Token counts come from Ollama's response fields (``prompt_eval_count``, ``eval_count``; see
ollama/ollama ``api/types.go``, ``Metrics``); times come from what the orchestra observes
(time to first token, time from first to last chunk), never from the reported durations
alone: the simulator reports them in simulated time, which at ``time_scale`` < 1 is not the
orchestra's clock. The reported ``prompt_eval_duration`` is used only as a share of the
reported ``total_duration`` (a ratio, so the unit cancels). Also a per-model chars-per-token
ratio from ``prompt_eval_count`` and the request's text length. Nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["DEFAULT_CHARS_PER_TOKEN", "Rates"]

#: Guess until a model's ratio is learned (about four characters per token for English text).
DEFAULT_CHARS_PER_TOKEN = 4.0
#: Weight of a new observation in the moving averages.
ALPHA = 0.3


def _ewma(old: Optional[float], new: float) -> float:
    return new if old is None else old + ALPHA * (new - old)


@dataclass
class _Pair:
    prompt_tps: Optional[float] = None
    decode_tps: Optional[float] = None


class Rates:
    """Moving averages of prompt and decode tokens per (orchestra) second, per (server, model)."""

    def __init__(self) -> None:
        self._pairs: Dict[Tuple[str, str], _Pair] = {}
        self._chars_per_token: Dict[str, float] = {}

    def observe(
        self,
        server: str,
        model: str,
        *,
        prompt_chars: int,
        prompt_tokens: int,
        evaluated_share: float,
        ttft_s: float,
        decode_tokens: int,
        decode_s: float,
    ) -> None:
        """One finished exchange: counts from Ollama, times from the orchestra's clock.

        ``evaluated_share`` is the reported ``prompt_eval_duration`` over the reported time
        to the first token's worth of work (unit-free); ``ttft_s`` is observed.
        """
        pair = self._pairs.setdefault((server, model), _Pair())
        if prompt_tokens > 0 and prompt_chars > 0:
            ratio = prompt_chars / prompt_tokens
            self._chars_per_token[model] = _ewma(self._chars_per_token.get(model), ratio)
        evaluated = prompt_tokens * min(1.0, max(0.0, evaluated_share))
        if evaluated >= 1 and ttft_s > 0:
            pair.prompt_tps = _ewma(pair.prompt_tps, evaluated / ttft_s)
        if decode_tokens > 1 and decode_s > 0:
            pair.decode_tps = _ewma(pair.decode_tps, (decode_tokens - 1) / decode_s)

    def prompt_tps(self, server: str, model: str) -> Optional[float]:
        pair = self._pairs.get((server, model))
        return pair.prompt_tps if pair else None

    def decode_tps(self, server: str, model: str) -> Optional[float]:
        pair = self._pairs.get((server, model))
        return pair.decode_tps if pair else None

    def tokens(self, model: str, chars: int) -> float:
        """Estimated prompt tokens of ``chars`` characters for ``model``."""
        return chars / self._chars_per_token.get(model, DEFAULT_CHARS_PER_TOKEN)

    def prefill_s(self, server: str, model: str, prompt_chars: int, cached_chars: int) -> float:
        """Expected seconds to evaluate the uncached part of a prompt (0 if no rate is known)."""
        rate = self.prompt_tps(server, model)
        if not rate:
            return 0.0
        return self.tokens(model, max(0, prompt_chars - cached_chars)) / rate
