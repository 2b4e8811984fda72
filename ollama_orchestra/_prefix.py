"""An approximate, bounded index of the prompt prefixes each server's model likely holds cached.

Issue 14, build item 2 (first part). A request's prompt as the orchestra sees it (for chat:
the system prompt, tools and each message's role and content in order; for generate: system
and prompt) is cut into fixed-size character blocks and hashed as a chain seeded by the model
name, as llm-d's approximate prefix scorer and SGLang's router keep it. Each (server, model)
keeps at most ``slots`` live chains plus a bounded allowance for the host-RAM prompt cache
(llama-server keeps evicted prompts there), least recently used first out. An unload seen in
``/api/ps`` clears the pair; a response that shows the host evaluated what the index said was
cached drops the chains that said so (``_rates.PromptCosts.observe``). Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = ["BLOCK_CHARS", "RAM_CHAINS", "PrefixIndex", "block_hashes", "prompt_text"]

#: Characters per hashed block: coarse enough that hashing is cheap, fine enough for turns.
BLOCK_CHARS = 256
#: Extra chains per (server, model) for the host-RAM prompt cache, beyond its slots.
RAM_CHAINS = 4


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as the orchestra sees it, in the order a chat template renders it."""
    parts: List[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append("system\x00" + system)
    tools = body.get("tools")
    if tools:
        parts.append("tools\x00" + json.dumps(tools, sort_keys=True, default=str))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                parts.append(f"{message.get('role', '')}\x00{message.get('content', '')}")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append("prompt\x00" + prompt)
    return "\x01".join(parts)


def block_hashes(model: str, text: str, block_chars: int = BLOCK_CHARS) -> Tuple[bytes, ...]:
    """Chained hashes of the full ``block_chars`` blocks of ``text`` (a partial tail is skipped)."""
    out: List[bytes] = []
    digest = hashlib.blake2b(model.encode("utf-8"), digest_size=8).digest()
    for start in range(0, len(text) - block_chars + 1, block_chars):
        chunk = text[start : start + block_chars].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(digest + chunk, digest_size=8).digest()
        out.append(digest)
    return tuple(out)


class PrefixIndex:
    """Per (server, model): the block-hash chains most recently sent there, bounded by slots."""

    def __init__(self, block_chars: int = BLOCK_CHARS, ram_chains: int = RAM_CHAINS) -> None:
        if block_chars < 1:
            raise ValueError(f"block_chars must be >= 1, got {block_chars!r}")
        if ram_chains < 0:
            raise ValueError(f"ram_chains must be >= 0, got {ram_chains!r}")
        self.block_chars = block_chars
        self.ram_chains = ram_chains
        # (server, model) -> chains (tuple of hashes) in LRU order, most recent last.
        self._chains: Dict[Tuple[str, str], OrderedDict[Tuple[bytes, ...], None]] = {}

    def hashes(self, model: str, body: Mapping[str, Any]) -> Tuple[bytes, ...]:
        """Hash a request once; pass the result to :meth:`cached_chars` and :meth:`record`."""
        return block_hashes(model, prompt_text(body), self.block_chars)

    def cached_chars(self, server: str, model: str, chain: Sequence[bytes]) -> int:
        """Characters of ``chain``'s prefix the server likely holds (longest common prefix)."""
        best = 0
        for held in self._chains.get((server, model), ()):
            n = 0
            for a, b in zip(held, chain):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best * self.block_chars

    def record(self, server: str, model: str, chain: Tuple[bytes, ...], slots: int) -> None:
        """The request was sent to ``server``: its prefix is now cached there."""
        if not chain:
            return
        held = self._chains.setdefault((server, model), OrderedDict())
        # A chain that extends a held one replaces it (the slot grew), as a follow-up turn does.
        for old in list(held):
            if len(old) <= len(chain) and chain[: len(old)] == old:
                del held[old]
        held[chain] = None
        held.move_to_end(chain)
        bound = max(1, slots) + self.ram_chains
        while len(held) > bound:
            held.popitem(last=False)

    def forget_prefix(self, server: str, model: str, prefix: Sequence[bytes]) -> None:
        """A response showed the host had not kept ``prefix``: drop the chains starting with it."""
        held = self._chains.get((server, model))
        if not held or not prefix:
            return
        start = tuple(prefix)
        for old in [c for c in held if c[: len(start)] == start]:
            del held[old]

    def unloaded(self, server: str, model: str) -> None:
        """The model left the server's memory (seen in ``/api/ps``): its caches are gone."""
        self._chains.pop((server, model), None)

    def loaded_models(self, server: str, models: Sequence[str]) -> None:
        """Keep only the entries of ``server`` whose model is among those loaded now."""
        keep = set(models)
        for key in [k for k in self._chains if k[0] == server and k[1] not in keep]:
            del self._chains[key]

    def chains(self, server: str, model: str) -> int:
        """How many chains the index holds for (server, model)."""
        return len(self._chains.get((server, model), ()))
