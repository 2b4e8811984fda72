"""The public calls of :class:`~._client.Orchestra`: ``generate``, ``chat``, ``embed`` and their
streamed forms, each a thin layer over the one request path (``RequestPath.send``): check the
arguments before any work, build Ollama's request body, shape Ollama's answer into the
response types. A base class of ``Orchestra``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ._arguments import (
    bad_type,
    check_call,
    check_embed_input,
    check_fields,
    check_logprobs,
    check_messages,
    check_tools,
)
from ._config import RetryPolicy
from ._sending import RequestPath
from ._stream import ResponseStream
from ._types import (
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
    Message,
    Think,
    logprobs_of,
    merge_logprobs,
    stats_from,
)

__all__ = ["Calls", "merge_messages"]


class Calls(RequestPath):
    """``generate``/``chat``/``embed`` and their streamed forms (see the module docstring)."""

    @staticmethod
    def _payload(base: Dict[str, Any], **optional: Any) -> Dict[str, Any]:
        for key, value in optional.items():
            if value is not None:
                base[key] = value
        return base

    def _generate_payload(
        self,
        model: str,
        prompt: str,
        images: Optional[Sequence[str]],
        options: Optional[Mapping[str, Any]],
        **fields: Any,
    ) -> Dict[str, Any]:
        if not isinstance(prompt, str):
            raise bad_type("prompt", prompt, "a str")
        check_fields(
            options=options,
            keep_alive=fields.get("keep_alive"),
            format=fields.get("format"),
            think=fields.get("think"),
            strings={k: fields.get(k) for k in ("system", "suffix", "template")},
            flags={"raw": fields.get("raw")},
            lists={"images": images},
        )
        if images is not None and not all(isinstance(i, str) for i in images):
            raise bad_type("images", images, "a list of base64 strings")
        check_logprobs(fields.get("logprobs"), fields.get("top_logprobs"))
        return self._payload(
            {"model": model, "prompt": prompt, "stream": True},
            images=list(images) if images is not None else None,
            options=dict(options) if options is not None else None,
            **fields,
        )

    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        images: Optional[Sequence[str]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        raw: Optional[bool] = None,
        suffix: Optional[str] = None,
        template: Optional[str] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> GenerateResponse:
        """``/api/generate`` on the best server; one answer.

        Args:
            model: a model name, or a role from ``config.roles``.
            prompt: the prompt; ``system``, ``images``, ``format``, ``options``, ``keep_alive``,
                ``think``, ``raw``, ``suffix``, ``template``: as in Ollama's API, passed through.
            logprobs: ask for each token's log probability (``top_logprobs``: with that many
                likeliest alternatives, 0 to 20); the answer's ``logprobs`` holds every
                token's, gathered across the streamed chunks as Ollama does.
            priority: higher waits less for a slot.
            timeout: bound on the whole request, all attempts included (default:
                ``config.timeouts.total_s``, off).
            retry: ``False`` for a single attempt, a :class:`RetryPolicy` to override the config.

        Raises:
            TypeError, ValueError: an argument of the wrong type or value (named), before
                anything is sent.
            RequestTimeout: ``timeout`` ran out.
        """
        check_call(model, priority, retry, timeout)
        resolved, role = self._resolve(model)
        payload = self._generate_payload(
            resolved,
            prompt,
            images,
            options,
            system=system,
            format=format,
            keep_alive=keep_alive,
            think=think,
            raw=raw,
            suffix=suffix,
            template=template,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
        objs, answer = await self._whole(
            "/api/generate", payload, resolved, role, priority, retry, timeout
        )
        final = objs[-1]
        # One pass over the chunks for the text, the thinking and the log probabilities
        # (as merge_logprobs gathers them).
        text: List[str] = []
        thinking: List[str] = []
        merged: List[Any] = []
        for o in objs:
            part = o.get("response")
            if part:
                text.append(str(part))
            part = o.get("thinking")
            if part:
                thinking.append(str(part))
            chunk = o.get("logprobs")
            if isinstance(chunk, list):
                merged.extend(chunk)
        context = final.get("context")
        return GenerateResponse(
            response="".join(text),
            thinking="".join(thinking) or None,
            context=tuple(context) if isinstance(context, list) else None,
            logprobs=merged or None,
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
            **stats_from(final),
        )

    def generate_stream(
        self,
        model: str,
        prompt: str = "",
        *,
        system: Optional[str] = None,
        images: Optional[Sequence[str]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        raw: Optional[bool] = None,
        suffix: Optional[str] = None,
        template: Optional[str] = None,
        priority: int = 0,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ResponseStream[GenerateChunk]:
        """``/api/generate``, streamed: an async iterator of :class:`GenerateChunk`.

        Failover before the first chunk is transparent; once text has been yielded, a broken
        stream is continued on another server with the partial answer as prefill (see
        ``RetryPolicy.mid_stream``), else raises :class:`StreamInterrupted` with it.
        """
        check_call(model, priority, retry)
        resolved, role = self._resolve(model)
        payload = self._generate_payload(
            resolved,
            prompt,
            images,
            options,
            system=system,
            format=format,
            keep_alive=keep_alive,
            think=think,
            raw=raw,
            suffix=suffix,
            template=template,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

        def make(obj: Dict[str, Any], server: str, n: int, queued: float) -> GenerateChunk:
            return GenerateChunk(
                response=str(obj.get("response") or ""),
                thinking=obj.get("thinking"),
                logprobs=logprobs_of(obj),
                server=server,
                attempts=n,
                queued_s=queued,
                **stats_from(obj),
            )

        return self._stream("/api/generate", payload, resolved, role, priority, retry, make)

    async def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ChatResponse:
        """``/api/chat`` on the best server; one answer (see :meth:`generate` for the knobs)."""
        check_call(model, priority, retry, timeout)
        resolved, role = self._resolve(model)
        payload = self._chat_payload(
            resolved, messages, tools, format, options, keep_alive, think, logprobs, top_logprobs
        )
        objs, answer = await self._whole(
            "/api/chat", payload, resolved, role, priority, retry, timeout
        )
        return ChatResponse(
            message=merge_messages(objs),
            logprobs=merge_logprobs(objs),
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
            **stats_from(objs[-1]),
        )

    def chat_stream(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        format: Optional[Union[str, Mapping[str, Any]]] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        think: Optional[Think] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        priority: int = 0,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> ResponseStream[ChatChunk]:
        """``/api/chat``, streamed: an async iterator of :class:`ChatChunk`."""
        check_call(model, priority, retry)
        resolved, role = self._resolve(model)
        payload = self._chat_payload(
            resolved, messages, tools, format, options, keep_alive, think, logprobs, top_logprobs
        )

        def make(obj: Dict[str, Any], server: str, n: int, queued: float) -> ChatChunk:
            message = obj.get("message")
            return ChatChunk(
                message=dict(message)
                if isinstance(message, dict)
                else {"role": "assistant", "content": ""},
                logprobs=logprobs_of(obj),
                server=server,
                attempts=n,
                queued_s=queued,
                **stats_from(obj),
            )

        return self._stream("/api/chat", payload, resolved, role, priority, retry, make)

    def _chat_payload(
        self,
        model: str,
        messages: Sequence[Message],
        tools: Optional[Sequence[Mapping[str, Any]]],
        format: Optional[Union[str, Mapping[str, Any]]],
        options: Optional[Mapping[str, Any]],
        keep_alive: Optional[Union[float, str]],
        think: Optional[Think],
        logprobs: Optional[bool],
        top_logprobs: Optional[int],
    ) -> Dict[str, Any]:
        check_messages(messages)
        check_tools(tools)
        check_fields(options=options, keep_alive=keep_alive, format=format, think=think)
        check_logprobs(logprobs, top_logprobs)
        return self._payload(
            {"model": model, "messages": [dict(m) for m in messages], "stream": True},
            tools=[dict(t) for t in tools] if tools is not None else None,
            format=format,
            options=dict(options) if options is not None else None,
            keep_alive=keep_alive,
            think=think,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    async def embed(
        self,
        model: str,
        input: Union[str, Sequence[str]],
        *,
        truncate: Optional[bool] = None,
        options: Optional[Mapping[str, Any]] = None,
        keep_alive: Optional[Union[float, str]] = None,
        dimensions: Optional[int] = None,
        priority: int = 0,
        timeout: Optional[float] = None,
        retry: Union[RetryPolicy, bool, None] = None,
    ) -> EmbedResponse:
        """``/api/embed`` on the best server."""
        check_call(model, priority, retry, timeout)
        check_embed_input(input, dimensions)
        check_fields(options=options, keep_alive=keep_alive, flags={"truncate": truncate})
        resolved, role = self._resolve(model)
        payload = self._payload(
            {"model": resolved, "input": input if isinstance(input, str) else list(input)},
            truncate=truncate,
            options=dict(options) if options is not None else None,
            keep_alive=keep_alive,
            dimensions=dimensions,
        )

        objs, answer = await self._whole(
            "/api/embed", payload, resolved, role, priority, retry, timeout
        )
        body = objs[0]
        return EmbedResponse(
            model=str(body.get("model") or resolved),
            embeddings=body["embeddings"],
            total_duration=body.get("total_duration"),
            load_duration=body.get("load_duration"),
            prompt_eval_count=body.get("prompt_eval_count"),
            server=str(answer.server),
            attempts=answer.attempts,
            queued_s=answer.queued_s,
        )


def merge_messages(objs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    content: List[str] = []
    thinking: List[str] = []
    tool_calls: List[Any] = []
    role = "assistant"
    for obj in objs:
        msg = obj.get("message")
        if not isinstance(msg, dict):
            continue
        role = str(msg.get("role") or role)
        content.append(str(msg.get("content") or ""))
        if msg.get("thinking"):
            thinking.append(str(msg["thinking"]))
        if msg.get("tool_calls"):
            tool_calls.extend(msg["tool_calls"])
    out: Dict[str, Any] = {"role": role, "content": "".join(content)}
    if thinking:
        out["thinking"] = "".join(thinking)
    if tool_calls:
        out["tool_calls"] = tool_calls
    return out
