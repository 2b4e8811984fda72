"""Learned prompt/decode rates count Ollama's tokens over the orchestra's own observed times."""

from __future__ import annotations

import pytest

from ollama_orchestra._rates import DEFAULT_CHARS_PER_TOKEN, Rates


class TestRates:
    """Rates and chars-per-token ratios are learned from observed exchanges."""

    def test_prompt_rate_uses_the_evaluated_share_and_observed_ttft(self) -> None:
        rates = Rates()
        rates.observe(
            "a",
            "m",
            prompt_chars=4000,
            prompt_tokens=1000,
            evaluated_share=0.5,
            ttft_s=1.0,
            decode_tokens=11,
            decode_s=0.5,
        )
        assert rates.prompt_tps("a", "m") == pytest.approx(500.0)
        assert rates.decode_tps("a", "m") == pytest.approx(20.0)
        assert rates.prompt_tps("b", "m") is None

    def test_chars_per_token_is_learned_per_model(self) -> None:
        rates = Rates()
        assert rates.tokens("m", 400) == pytest.approx(400 / DEFAULT_CHARS_PER_TOKEN)
        rates.observe(
            "a",
            "m",
            prompt_chars=3000,
            prompt_tokens=1000,
            evaluated_share=1.0,
            ttft_s=1.0,
            decode_tokens=0,
            decode_s=0.0,
        )
        assert rates.tokens("m", 300) == pytest.approx(100.0)

    def test_prefill_counts_only_the_uncached_part(self) -> None:
        rates = Rates()
        rates.observe(
            "a",
            "m",
            prompt_chars=4000,
            prompt_tokens=1000,
            evaluated_share=1.0,
            ttft_s=2.0,
            decode_tokens=0,
            decode_s=0.0,
        )
        assert rates.prefill_s("a", "m", 4000, 0) == pytest.approx(2.0)
        assert rates.prefill_s("a", "m", 4000, 3000) == pytest.approx(0.5)
        assert rates.prefill_s("b", "m", 4000, 0) == 0.0

    def test_same_observed_times_give_same_rates_whatever_the_reported_unit(self) -> None:
        # A simulator at time_scale 0.05 reports durations 20x longer; only their ratio is used.
        slow, fast = Rates(), Rates()
        for rates, scale in ((slow, 1.0), (fast, 20.0)):
            share = (0.4 * scale) / (0.8 * scale)
            rates.observe(
                "a",
                "m",
                prompt_chars=800,
                prompt_tokens=200,
                evaluated_share=share,
                ttft_s=0.2,
                decode_tokens=5,
                decode_s=0.1,
            )
        assert slow.prompt_tps("a", "m") == fast.prompt_tps("a", "m")
