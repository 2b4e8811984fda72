"""The approximate prefix index: hits on a shared prefix, a slot-bounded LRU, unloads and misses."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from ollama_orchestra._prefix import PrefixIndex, block_hashes, prompt_text

M = "m:latest"
CONTEXT = "repository context line\n" * 200  # ~4800 chars


def chat(*turns: str) -> Dict[str, Any]:
    messages: List[Dict[str, str]] = [{"role": "system", "content": CONTEXT}]
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return {"model": M, "messages": messages}


class TestHashing:
    """Hashes chain fixed blocks of the prompt, seeded by the model name."""

    def test_follow_up_turn_extends_the_chain(self) -> None:
        index = PrefixIndex()
        first = index.hashes(M, chat("question one " * 30))
        second = index.hashes(M, chat("question one " * 30, "answer " * 50, "next " * 40))
        assert len(second) > len(first)
        assert second[: len(first)] == first

    def test_model_name_seeds_the_chain(self) -> None:
        text = prompt_text(chat("q"))
        assert block_hashes("a", text)[0] != block_hashes("b", text)[0]

    def test_generate_body_uses_system_and_prompt(self) -> None:
        assert prompt_text({"system": "S", "prompt": "P"}) == "system\x00S\x01prompt\x00P"

    def test_short_prompt_has_no_blocks(self) -> None:
        assert block_hashes(M, "short") == ()


class TestLookup:
    """The server that was sent a prefix is credited with it; others are not."""

    def test_hit_on_the_server_holding_the_prefix(self) -> None:
        index = PrefixIndex()
        first = index.hashes(M, chat("q1 " * 100))
        index.record("a", M, first, slots=1)
        follow = index.hashes(M, chat("q1 " * 100, "a1 " * 100, "q2 " * 100))
        assert index.cached_chars("a", M, follow) == len(first) * index.block_chars
        assert index.cached_chars("b", M, follow) == 0
        assert index.cached_chars("a", "other", follow) == 0

    def test_slot_bound_evicts_least_recently_used(self) -> None:
        index = PrefixIndex(ram_chains=0)
        chains = [index.hashes(M, {"prompt": f"conversation {i} " * 100}) for i in range(3)]
        for chain in chains:
            index.record("a", M, chain, slots=2)
        assert index.chains("a", M) == 2
        assert index.cached_chars("a", M, chains[0]) == 0
        assert index.cached_chars("a", M, chains[2]) > 0

    def test_ram_allowance_extends_the_bound(self) -> None:
        index = PrefixIndex(ram_chains=1)
        for i in range(4):
            index.record("a", M, index.hashes(M, {"prompt": f"c{i} " * 200}), slots=2)
        assert index.chains("a", M) == 3

    def test_growing_conversation_keeps_one_chain(self) -> None:
        index = PrefixIndex()
        index.record("a", M, index.hashes(M, chat("q1 " * 100)), slots=1)
        index.record("a", M, index.hashes(M, chat("q1 " * 100, "a1 " * 100)), slots=1)
        assert index.chains("a", M) == 1


class TestCorrections:
    """Unloads and observed misses drop what the index believed."""

    def test_unload_clears_the_pair(self) -> None:
        index = PrefixIndex()
        chain = index.hashes(M, chat("q " * 200))
        index.record("a", M, chain, slots=1)
        index.loaded_models("a", ["other:latest"])
        assert index.cached_chars("a", M, chain) == 0

    def test_unloaded_clears_one_pair(self) -> None:
        index = PrefixIndex()
        chain = index.hashes(M, chat("q " * 200))
        index.record("a", M, chain, slots=1)
        index.record("b", M, chain, slots=1)
        index.unloaded("a", M)
        assert index.cached_chars("a", M, chain) == 0
        assert index.cached_chars("b", M, chain) > 0

    def test_forget_prefix_drops_only_chains_starting_with_it(self) -> None:
        index = PrefixIndex()
        one = index.hashes(M, chat("q " * 200))
        other = index.hashes(M, chat("r " * 200))
        index.record("a", M, one, slots=2)
        index.record("a", M, other, slots=2)
        index.forget_prefix("a", M, one)
        shared = next(i for i, (x, y) in enumerate(zip(one, other)) if x != y)
        # What is left of ``one`` is only the context it shares with ``other``.
        assert index.cached_chars("a", M, one) == shared * index.block_chars
        assert index.cached_chars("a", M, other) == len(other) * index.block_chars

    def test_bad_block_size_is_refused(self) -> None:
        with pytest.raises(ValueError, match="block_chars"):
            PrefixIndex(block_chars=0)
