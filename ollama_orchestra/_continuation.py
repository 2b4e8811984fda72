"""A stream that breaks mid-answer continues on another host, the partial answer as prefill.

What Ollama does with a partial answer (the facts this module relies on):

- ``/api/chat`` with a final ``assistant`` message: ``server/prompt.go`` ``chatPrompt`` ->
  ``renderPrompt`` renders the messages with the model's template, and
  ``template/template.go`` ``Execute`` (ollama/ollama, commit 0097ef5f, 2025) leaves the last
  assistant message open: for legacy templates the tree is cut after ``{{ .Response }}`` with
  the last message's content as the response; ``.Messages`` templates close a message only
  ``if not $last``. The model continues that text and the answer holds the new text only.
  A caller's own trailing assistant message is a prefill the same way, so a continuation
  extends it rather than adding a second one (Ollama's ``collate`` would merge two).
- ``/api/generate`` with ``raw: true`` (``docs/api.md``: "no formatting will be applied to
  the prompt") evaluates the prompt as given: the prompt plus the partial answer continues it.
  A generate request that is not raw is rendered here and continued raw, when the template
  (the request's ``template``, else ``/api/show``'s) is simple: text, ``{{ .System }}``,
  ``{{ .Prompt }}``, ``{{ if .System }}``/``{{ if .Prompt }}`` ... ``{{ else }}`` ...
  ``{{ end }}``, trim markers, and a ``{{ .Response }}`` outside any block, where the
  rendering stops (as Ollama's legacy-template path in ``template.go`` ``Execute`` cuts the
  tree at ``.Response``; the system is the request's, else the model's). Any other template
  (``.Messages``, ``range``, functions) is not rendered: such a stream raises
  :class:`StreamInterrupted` as before.

The partial is cut at a chunk boundary: the whole chunks already yielded to the caller
(Ollama streams about one token a chunk). A stream is not continued while it is inside
``thinking`` (no answer text yet), after a tool call, with a ``format`` (the grammar would
restart inside the JSON), with a generate ``suffix`` or ``context``, or more than
``RetryPolicy.continuations`` times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["MID_STREAM", "Continuation", "Resume", "continuations_of", "render_simple"]

#: The values of ``RetryPolicy.mid_stream``: continue elsewhere, or raise StreamInterrupted.
MID_STREAM = ("continue", "raise")

_SUMMED = ("eval_count", "eval_duration", "total_duration")


@dataclass(frozen=True)
class Continuation:
    """One continuation of a streamed answer."""

    #: the server whose stream broke.
    broken: str
    #: the server that continued it.
    server: str
    #: answer tokens (chunks) yielded before the break.
    at_token: int
    #: answer characters yielded before the break.
    at_char: int
    #: seconds from the break to the continuation's first chunk.
    lost_s: float
    #: why the stream broke.
    reason: str

    def as_dict(self) -> Dict[str, Any]:
        return {
            "broken": self.broken,
            "server": self.server,
            "at_token": self.at_token,
            "at_char": self.at_char,
            "lost_s": round(self.lost_s, 6),
            "reason": self.reason,
        }


class Resume:
    """What a stream has yielded so far, and the request that continues it."""

    def __init__(self, path: str, payload: Mapping[str, Any], limit: int) -> None:
        self.path = path
        self.payload = payload
        self.limit = limit
        self.text: List[str] = []
        self.thinking: List[str] = []
        #: answer chunks yielded in all parts (the tokens salvaged at each break).
        self.tokens = 0
        self.tool_call = False
        self.continuations: List[Continuation] = []
        # Statistics of the broken parts, added to the final chunk's.
        self._prior: Dict[str, int] = dict.fromkeys(_SUMMED, 0)
        self._part_tokens = 0
        self._part_first: Optional[float] = None
        self._part_last: Optional[float] = None
        #: a generate request's template and the model's system prompt (``/api/show``).
        self.template: Optional[str] = None
        self.model_system: str = ""

    def needs_template(self) -> bool:
        """A generate request that is not raw, with no template of its own: the caller
        fetches the model's (``/api/show``) into :attr:`template` before :meth:`why_not`."""
        p = self.payload
        return (
            self.path == "/api/generate"
            and p.get("raw") is not True
            and not p.get("template")
            and self.template is None
        )

    def _rendered(self) -> Optional[str]:
        p = self.payload
        template = p.get("template") or self.template
        if not isinstance(template, str):
            return None
        system = p.get("system")
        return render_simple(
            template,
            {
                "System": system if isinstance(system, str) and system else self.model_system,
                "Prompt": str(p.get("prompt") or ""),
            },
        )

    def seen(self, obj: Mapping[str, Any], now: float) -> None:
        """``obj`` (not the final chunk) was yielded to the caller at ``now``."""
        message = obj.get("message")
        source: Mapping[str, Any] = message if isinstance(message, dict) else obj
        text = str(source.get("content" if isinstance(message, dict) else "response") or "")
        thinking = str(source.get("thinking") or "")
        if source.get("tool_calls"):
            self.tool_call = True
        if text:
            self.text.append(text)
        if thinking:
            self.thinking.append(thinking)
        if text or thinking:
            self.tokens += 1
            self._part_tokens += 1
            if self._part_first is None:
                self._part_first = now
            self._part_last = now

    def why_not(self) -> Optional[str]:
        """Why this stream cannot be continued (``None``: it can)."""
        p = self.payload
        if len(self.continuations) >= self.limit:
            return f"continued {len(self.continuations)} times already (continuations limit)"
        if self.tool_call:
            return "broke after a tool call"
        if not self.text:
            return "broke inside thinking" if self.thinking else "broke before any text"
        if p.get("format"):
            return "structured output (format) is not continued"
        if self.path == "/api/generate":
            if p.get("suffix") or p.get("context"):
                return "generate with suffix or context is not continued"
            if p.get("raw") is not True:
                if p.get("images"):
                    return "generate with images is not continued"
                if self._rendered() is None:
                    return "generate without raw: the template is not simple enough to render"
            if self.thinking:
                return "raw generate with thinking is not continued"
        elif self.path != "/api/chat":
            return f"{self.path} is not continued"
        return None

    def request(self) -> Dict[str, Any]:
        """The continuing request: the original one with the partial answer as prefill."""
        partial = "".join(self.text)
        out = dict(self.payload)
        if self.path == "/api/chat":
            messages = [dict(m) for m in self.payload.get("messages") or []]
            if messages and messages[-1].get("role") == "assistant":
                last = messages.pop()
                prefill = dict(last, content=str(last.get("content") or "") + partial)
            else:
                prefill = {"role": "assistant", "content": partial}
            if self.thinking:
                prefill["thinking"] = str(prefill.get("thinking") or "") + "".join(self.thinking)
            out["messages"] = [*messages, prefill]
        elif self.payload.get("raw") is True:
            out["prompt"] = str(self.payload.get("prompt") or "") + partial
        else:
            out["prompt"] = (self._rendered() or "") + partial
            out["raw"] = True
            out.pop("system", None)
            out.pop("template", None)
        options = self.payload.get("options")
        if isinstance(options, dict):
            limit = options.get("num_predict")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                out["options"] = dict(options, num_predict=max(1, limit - self.tokens))
        return out

    def broke(self, started: float, now: float) -> None:
        """The current part broke at ``now`` (it started at ``started``)."""
        self._prior["eval_count"] += self._part_tokens
        if self._part_first is not None and self._part_last is not None:
            self._prior["eval_duration"] += int((self._part_last - self._part_first) * 1e9)
        self._prior["total_duration"] += int(max(0.0, now - started) * 1e9)
        self._part_tokens = 0
        self._part_first = self._part_last = None

    def continued(self, record: Continuation) -> None:
        self.continuations.append(record)

    def final(self, obj: Mapping[str, Any]) -> Dict[str, Any]:
        """The final chunk, its statistics adding up every part, saying it was continued."""
        if not self.continuations:
            return dict(obj)
        out = dict(obj)
        for key in _SUMMED:
            out[key] = int(out.get(key) or 0) + self._prior[key]
        out["continuations"] = [c.as_dict() for c in self.continuations]
        return out


def continuations_of(final: Mapping[str, Any]) -> Tuple[Continuation, ...]:
    """The :class:`Continuation` records a final chunk carries (``()``: none)."""
    raw = final.get("continuations")
    if not isinstance(raw, list):
        return ()
    out = []
    for c in raw:
        if isinstance(c, dict):
            out.append(
                Continuation(
                    broken=str(c.get("broken", "")),
                    server=str(c.get("server", "")),
                    at_token=int(c.get("at_token") or 0),
                    at_char=int(c.get("at_char") or 0),
                    lost_s=float(c.get("lost_s") or 0.0),
                    reason=str(c.get("reason", "")),
                )
            )
    return tuple(out)


_ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)
_FIELDS = {".System": "System", ".Prompt": "Prompt"}


def render_simple(template: str, values: Mapping[str, str]) -> Optional[str]:
    """A Go template of the simple kind (see the module docstring) rendered with ``values``
    up to ``{{ .Response }}``; ``None`` when the template is not of that kind."""
    out: List[str] = []
    stack: List[bool] = []  # the conditions of the open blocks
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        if all(stack):
            out.append(text)
        trim_next = bool(m.group(3))
        pos = m.end()
        action = " ".join(m.group(2).split())
        if action in _FIELDS:
            if all(stack):
                out.append(values.get(_FIELDS[action], ""))
        elif action == ".Response":
            return "".join(out) if not stack else None
        elif action.startswith("if ") and action[3:] in _FIELDS:
            stack.append(bool(values.get(_FIELDS[action[3:]], "")))
        elif action == "else" and stack:
            stack[-1] = not stack[-1]
        elif action == "end" and stack:
            stack.pop()
        else:
            return None
    if stack:
        return None
    tail = template[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)
