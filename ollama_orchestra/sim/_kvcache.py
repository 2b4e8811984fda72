"""The prompt cache of one loaded model: its slots' KV caches and llama-server's RAM cache.

Followed: Ollama v0.33.0-rc2 (2026-08-21), which runs GGML models on upstream llama-server
only (PR #16031, "runner: Remove CGO engines, use llama-server exclusively"; the old
``runner/ollamarunner/cache.go`` with its own longest-common-prefix slot choice is gone);
``llm/llama_server.go`` starts it with ``-c num_ctx*numParallel -np numParallel`` and
``-b/-ub 512`` (``num_batch``), passes no ``--cache-ram`` flag, and sends every completion
with ``cache_prompt: true``. Ollama pins llama.cpp ``b10488`` (``LLAMA_CPP_VERSION``); read
in llama.cpp ``tools/server/server-context.cpp`` (as stored at commit 001d906) and the
``server_prompt_cache`` of PR #16391:

- A slot keeps the tokens of its last request: prompt plus generated tokens (the last
  sampled token is not evaluated, so it is not kept when generation stops at a limit).
- Slot choice (``get_available_slot``): among idle slots holding tokens, the one whose
  longest common prefix with the new prompt is the largest fraction of the new prompt,
  if above ``--slot-prompt-similarity`` (default 0.1); else the least recently used idle
  slot (ties: the last one). If the slot was chosen by LRU, or would keep under half of
  its tokens (``f_keep < 0.5``), its tokens are first saved to the RAM cache, and the
  cached prompt that keeps the most of the new prompt (keeping at least a quarter of its
  own tokens) is restored into the slot and leaves the cache.
- RAM cache (``--cache-ram``, default 8192 MiB, per llama-server, so per loaded model):
  whole sequence states, oldest dropped first over the size limit (at least one is kept);
  a prompt already contained in an entry is not saved again, and entries contained in the
  saved prompt are dropped. Saving and restoring copies the KV state between host and
  device: the simulator charges ``bytes / host_to_device_gbps`` for it, outside
  ``prompt_eval_duration`` (llama-server starts its prompt timer after the slot is set up).
- Prompt evaluation: the slot's tokens are cut to the common prefix with the new prompt
  (``n_past``); at least one token is evaluated, so a fully cached prompt re-evaluates its
  last token. llama-server reports ``cache_n`` and ``prompt_n``; Ollama reports
  ``prompt_eval_count = cache_n + prompt_n`` (all prompt tokens) and
  ``prompt_eval_duration = prompt_ms`` (only the evaluated part).
- Unloading the model ends the llama-server process: slots and RAM cache are gone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Sequence, Tuple

from ._prompt import Token

__all__ = ["Admission", "PromptCache", "SlotView", "common_prefix"]

#: llama.cpp ``common_params.slot_prompt_similarity``.
SLOT_PROMPT_SIMILARITY = 0.1
#: The simulator keeps at most this many RAM cache entries (oldest dropped first), so that
#: scanning them stays cheap under a flood of short prompts. llama-server has no such count
#: limit, but its size limit binds long before it for agent-sized prompts (8 GiB holds about
#: 43k tokens of a 14B model's f16 KV cache).
MAX_RAM_ENTRIES = 64


def common_prefix(a: Sequence[Token], b: Sequence[Token]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share thousands of tokens.
    step = 256
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class SlotView:
    """One slot of a loaded model, as the simulator's state shows it."""

    slot: int
    busy: bool
    cached_tokens: int


@dataclass(frozen=True)
class Admission:
    """Where a prompt runs and how much of it is already evaluated.

    Attributes:
        slot: the slot chosen.
        cached: prompt tokens reused from the slot's KV cache (``cache_n``).
        evaluate: prompt tokens to evaluate (``prompt_n``).
        restored_tokens: tokens restored from the RAM cache into the slot (0 if none).
        copied_bytes: KV state copied between host and device (save plus restore).
    """

    slot: int
    cached: int
    evaluate: int
    restored_tokens: int
    copied_bytes: int


class _Slot:
    __slots__ = ("busy", "id", "last_used", "tokens")

    def __init__(self, slot_id: int) -> None:
        self.id = slot_id
        self.tokens: List[Token] = []
        self.busy = False
        self.last_used = -1


class PromptCache:
    """Slots and RAM cache of one llama-server (one loaded model).

    Args:
        slots: ``-np``.
        kv_bytes_per_token: the model's KV cache size per token.
        ram_bytes: the RAM cache limit (``--cache-ram``); 0 disables it.
        limit_tokens: the RAM cache's token limit (llama-server passes its total ``n_ctx``);
            raised to what the size limit holds.
        similarity: ``--slot-prompt-similarity``.
    """

    def __init__(
        self,
        slots: int,
        *,
        kv_bytes_per_token: int,
        ram_bytes: int,
        limit_tokens: int,
        similarity: float = SLOT_PROMPT_SIMILARITY,
    ) -> None:
        self._slots = [_Slot(i) for i in range(slots)]
        self._kv = max(0, int(kv_bytes_per_token))
        self._ram_limit = max(0, int(ram_bytes))
        self._limit_tokens = limit_tokens
        self._similarity = similarity
        self._ram: Deque[List[Token]] = deque()  # oldest first
        self._clock = 0

    # -- views ---------------------------------------------------------------------------

    def slots(self) -> Tuple[SlotView, ...]:
        return tuple(SlotView(s.id, s.busy, len(s.tokens)) for s in self._slots)

    def ram_entries(self) -> Tuple[int, ...]:
        """Token counts of the RAM cache's entries, oldest first."""
        return tuple(len(e) for e in self._ram)

    def ram_bytes(self) -> int:
        return sum(len(e) for e in self._ram) * self._kv

    # -- admission -----------------------------------------------------------------------

    def admit(self, prompt: Sequence[Token]) -> Admission:
        """Take an idle slot for ``prompt`` (the caller guarantees one is idle)."""
        slot, save = self._choose(prompt)
        copied = 0
        restored = 0
        if save and self._ram_limit > 0:
            copied += self._save(slot.tokens)
            entry = self._best_entry(slot.tokens, prompt)
            if entry is not None:
                self._ram.remove(entry)
                slot.tokens = entry
                restored = len(entry)
                copied += restored * self._kv
            self._trim()
        cached = common_prefix(slot.tokens, prompt)
        if cached >= len(prompt) and cached > 0:
            cached = len(prompt) - 1  # llama-server evaluates at least one token for logits
        del slot.tokens[cached:]
        slot.busy = True
        return Admission(slot.id, cached, len(prompt) - cached, restored, copied)

    def release(self, slot_id: int, tokens: Sequence[Token]) -> None:
        """The request on ``slot_id`` ended; the slot now holds ``tokens``."""
        slot = self._slots[slot_id]
        slot.tokens = list(tokens)
        slot.busy = False
        self._clock += 1
        slot.last_used = self._clock

    def _choose(self, prompt: Sequence[Token]) -> Tuple[_Slot, bool]:
        idle = [s for s in self._slots if not s.busy]
        best: Optional[_Slot] = None
        best_sim = 0.0
        if self._similarity != 0.0 and prompt:
            for s in idle:
                if not s.tokens:
                    continue
                sim = common_prefix(s.tokens, prompt) / len(prompt)
                if sim > best_sim and sim > self._similarity:
                    best, best_sim = s, sim
        if best is not None:
            keep = best_sim * len(prompt) / len(best.tokens)
            return best, keep < 0.5
        lru = idle[0]
        for s in idle:
            if s.last_used <= lru.last_used:
                lru = s
        return lru, True

    def _save(self, tokens: List[Token]) -> int:
        if not tokens:
            return 0
        n = len(tokens)
        kept: List[List[Token]] = []
        for e in self._ram:
            lcp = common_prefix(e, tokens)
            if lcp == n:
                return 0  # already held
            if lcp != len(e):
                kept.append(e)  # entries the saved prompt contains are dropped
        self._ram = deque(kept)
        if n * self._kv > self._ram_limit:
            return 0  # larger than the whole cache: dropped
        self._ram.append(list(tokens))
        return n * self._kv

    def _best_entry(
        self, current: Sequence[Token], prompt: Sequence[Token]
    ) -> Optional[List[Token]]:
        if not prompt:
            return None
        lcp = common_prefix(current, prompt)
        keep_best = lcp / len(current) if current else -1.0
        sim_best = lcp / len(prompt)
        best: Optional[List[Token]] = None
        for e in self._ram:
            cur = common_prefix(e, prompt)
            keep = cur / len(e)
            sim = cur / len(prompt)
            if keep < 0.25:
                continue
            if keep_best < keep and sim_best < sim:
                keep_best, sim_best, best = keep, sim, e
        return best

    def _trim(self) -> None:
        def size() -> int:
            return sum(len(e) for e in self._ram) * self._kv

        while len(self._ram) > 1 and (size() > self._ram_limit or len(self._ram) > MAX_RAM_ENTRIES):
            self._ram.popleft()
        n_tokens = sum(len(e) for e in self._ram)
        per_token = max(1.0, size() / max(1, n_tokens))
        limit = max(self._limit_tokens, int(self._ram_limit / per_token))
        while len(self._ram) > 1 and sum(len(e) for e in self._ram) > limit:
            self._ram.popleft()
