"""The prefill cost model counts Ollama's tokens over the orchestra's own observed time."""

from __future__ import annotations

from typing import Any, Dict, Optional

import pytest

from ollama_orchestra._rates import DEFAULT_CHARS_PER_TOKEN, Prompt, PromptCosts

M = "m"


def final(
    *,
    prompt_tokens: int,
    prompt_s: float,
    total_s: float,
    load_s: float = 0.0,
    eval_count: int = 0,
) -> Dict[str, Any]:
    """Ollama's last object, durations in the host's (reported) seconds."""
    return {
        "done": True,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": int(prompt_s * 1e9),
        "load_duration": int(load_s * 1e9),
        "total_duration": int(total_s * 1e9),
        "eval_count": eval_count,
    }


def body(text: str) -> Dict[str, Any]:
    return {"model": M, "messages": [{"role": "user", "content": text}]}


def observe(
    costs: PromptCosts,
    prompt: Optional[Prompt],
    *,
    tokens: int,
    prompt_s: float,
    total_s: float,
    scale: float = 1.0,
    predicted: int = 0,
    server: str = "a",
) -> Any:
    """One exchange observed on a host whose reported seconds are ``1/scale`` orchestra seconds."""
    return costs.observe(
        server,
        M,
        prompt,
        final(prompt_tokens=tokens, prompt_s=prompt_s / scale, total_s=total_s / scale),
        observed_s=total_s,
        slots=1,
        predicted_cached_chars=predicted,
    )


class TestLearning:
    """Rates, chars per token and the time ratio are learned from finished exchanges."""

    def test_prompt_rate_and_chars_per_token(self) -> None:
        costs = PromptCosts()
        prompt = costs.prompt(M, body("w" * 4000))
        assert prompt is not None
        assert costs.tokens(M, 400) == pytest.approx(400 / DEFAULT_CHARS_PER_TOKEN)
        observe(costs, prompt, tokens=1000, prompt_s=2.0, total_s=3.0)
        assert costs.tokens(M, prompt.chars) == pytest.approx(1000)
        assert costs.prompt_tps("a", M) == pytest.approx(500.0)
        assert costs.prompt_tps("b", M) is None

    def test_reported_durations_are_converted_to_the_orchestra_clock(self) -> None:
        # A simulator at time_scale 0.05 reports durations 20x longer than the orchestra sees.
        real, scaled = PromptCosts(), PromptCosts()
        for costs, scale in ((real, 1.0), (scaled, 0.05)):
            prompt = costs.prompt(M, body("w" * 4000))
            for _ in range(3):
                observe(costs, prompt, tokens=1000, prompt_s=2.0, total_s=3.0, scale=scale)
        assert scaled.time_ratio("a") == pytest.approx(0.05)
        assert real.time_ratio("a") == pytest.approx(1.0)
        assert scaled.prompt_tps("a", M) == pytest.approx(real.prompt_tps("a", M) or 0)
        one = real.prompt(M, body("v" * 8000))
        assert real.estimate("a", M, one) == scaled.estimate("a", M, one)

    def test_base_time_excludes_prefill_and_load(self) -> None:
        costs = PromptCosts()
        costs.observe(
            "a",
            M,
            None,
            final(prompt_tokens=10, prompt_s=0.5, total_s=4.0, load_s=1.5),
            observed_s=4.0,
            slots=1,
        )
        assert costs.estimate("a", M, None).base_s == pytest.approx(2.0)

    def test_malformed_fields_count_as_absent(self) -> None:
        costs = PromptCosts()
        bad = {"done": True, "prompt_eval_count": "many", "total_duration": float("nan")}
        seen = costs.observe("a", M, None, bad, observed_s=1.0, slots=1)
        assert seen.prompt_tokens == 0
        assert costs.time_ratio("a") == 1.0


class TestAnswerBudget:
    """The learned rest of a request is scaled to the tokens its answer is expected to have."""

    def answered(
        self, costs: PromptCosts, budget: Optional[int], tokens: int, rest_s: float
    ) -> None:
        """An exchange whose answer had ``tokens`` tokens and took ``rest_s`` beyond prefill."""
        options = {} if budget is None else {"options": {"num_predict": budget}}
        prompt = costs.prompt(M, {**body("w" * 400), **options})
        reply = final(prompt_tokens=100, prompt_s=0.1, total_s=0.1 + rest_s, eval_count=tokens)
        costs.observe("a", M, prompt, reply, observed_s=0.1 + rest_s, slots=1)

    def rest(self, costs: PromptCosts, budget: Optional[int]) -> Optional[float]:
        options = {} if budget is None else {"options": {"num_predict": budget}}
        return costs.estimate("a", M, costs.prompt(M, {**body("v" * 400), **options})).base_s

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(300, 300), (0, None), (-1, None), (-2, None), (True, None), (12.5, None), ("9", None)],
    )
    def test_the_budget_is_a_positive_num_predict(self, value: Any, expected: Any) -> None:
        costs = PromptCosts()
        prompt = costs.prompt(M, {**body("w"), "options": {"num_predict": value}})
        assert prompt is not None and prompt.predict == expected
        plain = costs.prompt(M, {**body("w"), "options": "not a mapping"})
        assert plain is not None and plain.predict is None

    def test_a_short_answer_is_expected_to_take_less(self) -> None:
        costs = PromptCosts()
        for _ in range(5):  # plans: 300 tokens in 3 s; reviews: 150 in 1.5 s
            self.answered(costs, 300, 300, 3.0)
            self.answered(costs, 150, 150, 1.5)
        assert self.rest(costs, 300) == pytest.approx(3.0, rel=0.05)
        assert self.rest(costs, 150) == pytest.approx(1.5, rel=0.05)
        # Without a budget: the learned rest of a request there, as before.
        unscaled = self.rest(costs, None)
        assert unscaled is not None and 1.5 < unscaled < 3.0

    def test_a_model_that_stops_early_is_expected_to_stop_early(self) -> None:
        costs = PromptCosts()
        for _ in range(8):  # budgets of 1,000 tokens, answers of about 100
            self.answered(costs, 1000, 100, 1.0)
        assert self.rest(costs, 1000) == pytest.approx(1.0, rel=0.05)
        assert self.rest(costs, 2000) == pytest.approx(2.0, rel=0.05)

    def test_before_a_budgeted_answer_a_budget_only_scales_down(self) -> None:
        costs = PromptCosts()
        for _ in range(4):
            self.answered(costs, None, 200, 2.0)
        assert self.rest(costs, 50) == pytest.approx(0.5, rel=0.05)
        assert self.rest(costs, 100_000) == pytest.approx(2.0, rel=0.05)

    def test_answers_without_tokens_leave_the_rest_unscaled(self) -> None:
        costs = PromptCosts()
        self.answered(costs, 64, 0, 0.2)  # an embedding-like answer: no eval_count
        assert self.rest(costs, 32) == pytest.approx(0.2)


class TestPrefill:
    """Estimates charge only the prompt the server likely does not hold, and learn from misses."""

    def learned(self) -> PromptCosts:
        costs = PromptCosts()
        first = costs.prompt(M, body("w" * 4000))
        observe(costs, first, tokens=1000, prompt_s=2.0, total_s=3.0)  # 500 tok/s, 4 chars/token
        return costs

    def test_a_follow_up_turn_pays_only_for_its_new_text(self) -> None:
        costs = self.learned()
        turn2 = costs.prompt(M, body("w" * 4000 + "x" * 2048))
        cold = costs.estimate("b", M, turn2, fleet=["a"])
        warm = costs.estimate("a", M, turn2, fleet=["a"])
        assert cold.cached_chars == 0
        assert cold.prefill_s == pytest.approx(6048 / 4 / 500, rel=0.01)
        assert warm.cached_chars >= 3840  # the blocks of the first turn
        assert warm.prefill_s < 0.4 * cold.prefill_s

    def test_no_rate_anywhere_means_no_prefill_basis(self) -> None:
        costs = PromptCosts()
        prompt = costs.prompt(M, body("w" * 4000))
        assert costs.estimate("a", M, prompt).prefill_s == 0.0

    def test_a_confirmed_hit_keeps_the_chain(self) -> None:
        costs = self.learned()
        turn2 = costs.prompt(M, body("w" * 4000 + "x" * 2048))
        assert turn2 is not None
        predicted = costs.estimate("a", M, turn2).cached_chars
        # The host evaluated only the new ~512 tokens: 1 s at 500 tok/s.
        seen = observe(costs, turn2, tokens=1512, prompt_s=1.05, total_s=2.0, predicted=predicted)
        assert seen.hit is True
        assert seen.cached_tokens == pytest.approx(1512 - 525, abs=5)
        assert costs.estimate("a", M, turn2).cached_chars == len(turn2.chain) * 256

    def test_a_miss_drops_the_prediction_and_leaves_the_rate(self) -> None:
        costs = PromptCosts()
        held = costs.prompt(M, body("w" * 4000 + "z" * 1024))
        observe(costs, held, tokens=1256, prompt_s=2.512, total_s=3.0)  # 500 tok/s
        turn = costs.prompt(M, body("w" * 4000 + "y" * 2048))
        assert turn is not None
        predicted = costs.estimate("a", M, turn).cached_chars
        assert predicted >= 3840  # the shared "w" blocks
        # The host evaluated all 1512 tokens (3 s at 500 tok/s): it had dropped that prefix.
        seen = observe(costs, turn, tokens=1512, prompt_s=3.02, total_s=4.0, predicted=predicted)
        assert seen.hit is False
        assert seen.cached_tokens < 10
        assert costs.prompt_tps("a", M) == pytest.approx(500.0, rel=0.01)
        # The prompt just evaluated is cached there now; the chain that mispredicted is gone.
        assert costs.estimate("a", M, turn).cached_chars == len(turn.chain) * 256
        assert costs.index.chains("a", M) == 1

    def test_a_surprise_hit_leaves_the_rate(self) -> None:
        """A host that held more of a prompt than the index knew (a slot the index counted
        lost) evaluates far fewer tokens than predicted: that exchange says nothing of the
        rate. Learned from, it can make the rate many times too fast, and every move's
        prefill look free. A host that did become faster is learned from once it answers so
        three times in a row."""
        costs = PromptCosts()
        first = costs.prompt(M, body("w" * 4000 + "z" * 1024))
        observe(costs, first, tokens=1256, prompt_s=2.512, total_s=3.0)  # 500 tok/s
        other = costs.prompt(M, body("v" * 6000))
        # The index predicts nothing cached; the host evaluated ~25 of 1,500 tokens.
        observe(costs, other, tokens=1500, prompt_s=0.05, total_s=1.0)
        assert costs.prompt_tps("a", M) == pytest.approx(500.0, rel=0.01)
        # A host that did become faster answers so every time: three in a row are learned.
        for i in range(3):
            again = costs.prompt(M, body(f"{i}" * 6000))
            observe(costs, again, tokens=1500, prompt_s=1.0, total_s=1.5)  # 1,500 tok/s
        faster = costs.prompt_tps("a", M)
        assert faster is not None and faster > 600.0

    def test_unload_clears_the_server_model_pair(self) -> None:
        costs = self.learned()
        again = costs.prompt(M, body("w" * 4000))
        costs.loaded_models("a", ["other"])
        assert costs.estimate("a", M, again).cached_chars == 0
