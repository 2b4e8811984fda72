"""What a simulated host evaluates: the rendered prompt, as a list of tokens.

Ollama renders a chat request with the model's template (``server/prompt.go``
``chatPrompt`` -> ``renderPrompt``; a generate request with ``raw: true`` skips it), then
llama-server tokenises the text. Prompt caching is prefix matching on those tokens, so the
simulator does the same two steps, deterministically:

- :func:`render_chat` / :func:`render_generate`: a ChatML template (the family of the preset
  qwen2.5 models): system (with the tools as JSON, as qwen2.5's template puts them), then
  each message, then the open assistant header. A final assistant message is left open,
  as Ollama's templates do for a continuation.
- :func:`tokenize`: words in pieces of at most five characters with their leading space,
  punctuation in runs of at most three, newline runs, other whitespace runs; about four
  characters a token on English text. It is not a model's tokenizer, but it has the
  property prefix caching depends on: text that extends a prompt at a clean boundary (the
  template's newlines) tokenises to an extension of the prompt's tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

__all__ = [
    "CONTEXT_EXCEEDED",
    "GENERATE_TEMPLATE",
    "RenderedPrompt",
    "Token",
    "fit_chat",
    "render_chat",
    "render_generate",
    "shift_truncate",
    "tokenize",
]

#: llama-server's error when a prompt does not fit its slot and Ollama did not truncate it.
CONTEXT_EXCEEDED = "the request exceeds the available context size, try increasing it"

#: a token is its text piece; equal pieces are equal tokens.
Token = str


@dataclass(frozen=True)
class RenderedPrompt:
    """A request's prompt as the model sees it: text (seeds the answer), tokens, context.

    ``overhead_s`` is the real time the simulator spent rendering and tokenising it: the
    prompt's evaluation absorbs it, so that the simulator's own work does not show up as
    simulated time (it would, scaled by ``1/time_scale``).
    """

    text: str
    tokens: List[Token]
    num_ctx: int
    overhead_s: float = 0.0


_PIECES = re.compile(r" ?\w{1,5}| ?[^\w\s]{1,3}|\n+|[^\S\n]+")


def tokenize(text: str) -> List[Token]:
    """Split ``text`` into tokens, deterministically (about four characters each)."""
    return _PIECES.findall(text)


def _start(role: str) -> str:
    return f"<|im_start|>{role}\n"


_END = "<|im_end|>\n"


def _content(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else ("" if content is None else str(content))
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        text += "".join(
            f"\n<tool_call>\n{json.dumps(c, sort_keys=True)}\n</tool_call>" for c in calls
        )
    return text


def _system_block(system: str, tools: Optional[Sequence[Any]]) -> str:
    if not tools:
        return _start("system") + system + _END
    listed = "\n".join(json.dumps(t, sort_keys=True) for t in tools)
    return (
        _start("system")
        + system
        + "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n"
        + f"<tools>\n{listed}\n</tools>"
        + _END
    )


def render_chat(messages: Sequence[Mapping[str, Any]], tools: Optional[Sequence[Any]]) -> str:
    """The prompt text of an ``/api/chat`` request (ChatML, as qwen2.5's template)."""
    out: List[str] = []
    msgs = list(messages)
    if tools and not (msgs and msgs[0].get("role") == "system"):
        out.append(_system_block("", tools))
    for i, m in enumerate(msgs):
        role = str(m.get("role", ""))
        if role == "system" and i == 0:
            out.append(_system_block(_content(m), tools))
            continue
        last = i == len(msgs) - 1
        if role == "assistant" and last:
            out.append(_start("assistant") + _content(m))  # continued, not closed
            return "".join(out)
        out.append(_start(role) + _content(m) + _END)
    out.append(_start("assistant"))
    return "".join(out)


#: What ``/api/show`` says the template is: the Go template (Ollama's legacy kind) that
#: renders a generate request as :func:`render_generate` does.
GENERATE_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def render_generate(prompt: str, system: str, *, raw: bool) -> str:
    """The prompt text of an ``/api/generate`` request; ``raw`` uses the prompt as is."""
    if raw:
        return prompt
    head = _start("system") + system + _END if system else ""
    return head + _start("user") + prompt + _END + _start("assistant")


def fit_chat(
    messages: Sequence[Mapping[str, Any]],
    tools: Optional[Sequence[Any]],
    num_ctx: int,
    *,
    truncate: bool,
) -> List[Token]:
    """The chat prompt's tokens, dropping the oldest messages until it fits ``num_ctx``.

    As Ollama's ``chatPrompt`` (``server/prompt.go``) with ``truncate`` (the default):
    messages are dropped from the front, keeping every system message among them and
    always the last message, until the rendered prompt has at most ``num_ctx`` tokens.
    """
    msgs = list(messages)
    if truncate:
        for i in range(len(msgs)):
            system = [m for m in msgs[:i] if m.get("role") == "system"]
            tokens = tokenize(render_chat(system + msgs[i:], tools))
            if len(tokens) <= num_ctx or i == len(msgs) - 1:
                return tokens
    return tokenize(render_chat(msgs, tools))


def shift_truncate(tokens: List[Token], num_ctx: int, num_keep: int) -> List[Token]:
    """Cut a prompt longer than the context as Ollama does before sending it to llama-server.

    ``llm/llama_server.go`` ``completionPromptForRequest`` (with ``truncate`` and context
    shift, Ollama's defaults): a prompt of more than ``num_ctx - 1`` tokens keeps its first
    ``num_keep`` tokens and its end, ``num_ctx - max((num_ctx - num_keep) // 2, 1)`` tokens
    in all (the old runners' first context shift).
    """
    if num_ctx <= 1 or len(tokens) <= num_ctx - 1:
        return tokens
    keep = max(0, min(num_keep if num_keep >= 0 else len(tokens), num_ctx - 1))
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    discard = len(tokens) - limit
    return tokens[:keep] + tokens[keep + discard :]
