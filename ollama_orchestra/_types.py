"""Response types: Ollama's own field names, plus where and how the request ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from ._continuation import Continuation, continuations_of

__all__ = [
    "ChatChunk",
    "ChatResponse",
    "EmbedResponse",
    "GenerateChunk",
    "GenerateResponse",
    "Message",
    "Think",
    "logprobs_of",
    "merge_logprobs",
    "stats_from",
    "text_of",
]

#: A chat message as Ollama's API takes it: ``{"role": "user", "content": "..."}``.
Message = Mapping[str, Any]

#: ``think`` as Ollama types it (``api.ThinkValue`` in ``api/types.go``, v0.33): on/off, or a
#: level for the models that take one.
Think = Union[bool, Literal["high", "medium", "low", "max"]]

#: One entry of Ollama's ``logprobs`` (``api.Logprob``): ``token``, ``logprob``, ``bytes``,
#: and ``top_logprobs`` (a list of ``{"token", "logprob", "bytes"}``) when asked for.
Logprob = Dict[str, Any]


@dataclass(frozen=True)
class _Stats:
    model: str = ""
    created_at: str = ""
    done: bool = False
    done_reason: Optional[str] = None
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None
    #: the server that answered.
    server: str = ""
    #: how many attempts the request took (1 when the first server answered).
    attempts: int = 1
    #: seconds spent waiting in the orchestra for a free slot.
    queued_s: float = 0.0
    #: set on the final chunk or answer of a stream that broke mid-answer and was continued
    #: on another server: one record per break (which servers, at which token).
    continuations: Tuple[Continuation, ...] = ()


@dataclass(frozen=True)
class GenerateResponse(_Stats):
    """The answer of ``/api/generate`` (``stream: false`` shape)."""

    response: str = ""
    thinking: Optional[str] = None
    context: Optional[Tuple[int, ...]] = None
    #: every token's log probability, when asked for with ``logprobs=True``.
    logprobs: Optional[List[Logprob]] = None

    @property
    def text(self) -> str:
        return self.response


@dataclass(frozen=True)
class GenerateChunk(_Stats):
    """One streamed chunk of ``/api/generate``; the last has ``done=True`` and the statistics."""

    response: str = ""
    thinking: Optional[str] = None
    #: this chunk's tokens' log probabilities, when asked for with ``logprobs=True``.
    logprobs: Optional[List[Logprob]] = None

    @property
    def text(self) -> str:
        return self.response


@dataclass(frozen=True)
class ChatResponse(_Stats):
    """The answer of ``/api/chat`` (``stream: false`` shape)."""

    message: Dict[str, Any] = field(default_factory=dict)
    #: every token's log probability, when asked for with ``logprobs=True``.
    logprobs: Optional[List[Logprob]] = None

    @property
    def text(self) -> str:
        return str(self.message.get("content", ""))


@dataclass(frozen=True)
class ChatChunk(_Stats):
    """One streamed chunk of ``/api/chat``."""

    message: Dict[str, Any] = field(default_factory=dict)
    #: this chunk's tokens' log probabilities, when asked for with ``logprobs=True``.
    logprobs: Optional[List[Logprob]] = None

    @property
    def text(self) -> str:
        return str(self.message.get("content", ""))


@dataclass(frozen=True)
class EmbedResponse:
    """The answer of ``/api/embed``."""

    model: str
    embeddings: List[List[float]]
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    server: str = ""
    attempts: int = 1
    queued_s: float = 0.0


_STAT_KEYS = (
    "model",
    "created_at",
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def stats_from(data: Mapping[str, Any]) -> Dict[str, Any]:
    out = {k: data[k] for k in _STAT_KEYS if k in data}
    if "continuations" in data:
        out["continuations"] = continuations_of(data)
    return out


def merge_logprobs(objs: Sequence[Mapping[str, Any]]) -> Optional[List[Logprob]]:
    """Every chunk's ``logprobs``, in order, as Ollama's handlers gather them for a
    ``"stream": false`` answer (``server/routes.go``, v0.33: ``allLogprobs = append(...)``);
    ``None`` when no chunk has any."""
    merged: List[Logprob] = []
    for obj in objs:
        chunk = obj.get("logprobs")
        if isinstance(chunk, list):
            merged.extend(chunk)
    return merged or None


# ``_client.py`` still imports the old name until the core branch merges; the lead drops it.


def logprobs_of(obj: Mapping[str, Any]) -> Optional[List[Logprob]]:
    chunk = obj.get("logprobs")
    return list(chunk) if isinstance(chunk, list) and chunk else None


def text_of(obj: Mapping[str, Any]) -> str:
    """The text one chunk of ``/api/generate`` or ``/api/chat`` carries."""
    message = obj.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(obj.get("response") or "")
