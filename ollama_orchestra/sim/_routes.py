"""Ollama's HTTP API on a simulated host: the routes' request checks and answers, in
Ollama's shapes (``server/routes.go``, ``api/types.go``, v0.12 to v0.33), over the
scheduler and timing of :class:`~._decode.Decoder`.

Prompts: a request's prompt is rendered and tokenised (``_prompt``), cut to its context
(``num_ctx``, as Ollama applies it per request); the loaded model's slots and RAM cache
(``_kvcache``) decide how much of it is already evaluated, and only the rest is charged.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from typing import Any, AsyncGenerator, Dict, List, Optional, Tuple

import anyio

from .._config import normalize_model
from .._serving import BadRequestBody, parse_json, read_body
from .._wire import RequestRejected, check_request, keep_alive_seconds, late_errors
from ._asgi import (
    HTTPError,
    Receive,
    Send,
    dumps,
    send_json,
    stream_ndjson,
    until_disconnect,
)
from ._decode import Decoder
from ._prompt import (
    CONTEXT_EXCEEDED,
    GENERATE_TEMPLATE,
    RenderedPrompt,
    Token,
    fit_chat,
    render_generate,
    shift_truncate,
    tokenize,
)
from ._records import RequestRecord, SimulatedReset
from ._spec import ModelSpec
from ._words import logprob_entry, text_rng, unit_vector

__all__ = ["OllamaRoutes"]

#: ``num_keep``: Ollama's default (``api.DefaultOptions``).
NUM_KEEP = 4


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class OllamaRoutes(Decoder):
    """The handlers of Ollama's native routes (``/api/*``)."""

    async def _version(self, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"version": self.profile.version})

    def _details(self, spec: ModelSpec) -> Dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": spec.family,
            "families": [spec.family],
            "parameter_size": spec.parameter_size,
            "quantization_level": spec.quantization_level,
        }

    async def _tags(self, receive: Receive, send: Send) -> None:
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": "2026-01-01T00:00:00Z",
                "size": m.size_bytes,
                "digest": m.digest,
                "details": self._details(m),
            }
            for m in self.profile.models
        ]
        await send_json(send, 200, {"models": models})

    async def _ps(self, receive: Receive, send: Send) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        rows = []
        for runner in self._runners.values():
            if runner.unloading:
                continue
            if runner.expires_at is None:
                # Busy (the timer stops while requests run) or kept forever.
                remaining = (
                    runner.keep_alive_s * self.time_scale
                    if runner.keep_alive_s != math.inf
                    else 10 * 365 * 86400 * 100
                )
            else:
                remaining = runner.expires_at - now_mono
            rows.append((remaining, runner))
        rows.sort(key=lambda x: -x[0])
        models = []
        for remaining, runner in rows:
            spec = runner.spec
            expires = datetime.fromtimestamp(
                now_wall + min(remaining, 10 * 365 * 86400 * 100), timezone.utc
            )
            models.append(
                {
                    "name": spec.name,
                    "model": spec.name,
                    "size": spec.size_bytes,
                    "digest": spec.digest,
                    "details": self._details(spec),
                    "expires_at": expires.isoformat().replace("+00:00", "Z"),
                    "size_vram": spec.size_bytes,
                    "context_length": runner.num_ctx,
                }
            )
        await send_json(send, 200, {"models": models})

    async def _json_body(self, receive: Receive, path: str = "") -> Dict[str, Any]:
        """The body as Ollama's handler for ``path`` decodes it: its 400s (see ``_wire``)."""
        try:
            body = parse_json(await read_body(receive))
            check_request(path, body)
        except BadRequestBody as exc:
            raise HTTPError(400, str(exc)) from None
        except RequestRejected as exc:
            raise HTTPError(exc.status, exc.message) from None
        if body is None:  # Go decodes `null` into an empty request
            return {}
        if not isinstance(body, dict):
            raise HTTPError(400, "invalid request body: expected a JSON object")
        return body

    @staticmethod
    def _check_think(body: Dict[str, Any], spec: ModelSpec) -> None:
        """Thinking asked of a model without the capability: Ollama's 400 (routes.go, v0.33)."""
        think = body.get("think")
        if think not in (None, False) and "thinking" not in spec.capabilities:
            raise HTTPError(400, f"{json.dumps(body.get('model'))} does not support thinking")

    def _late_errors(self, body: Dict[str, Any]) -> None:
        """What Ollama refuses once the model is scheduled, with a 500 (``_wire.late_errors``)."""
        error = late_errors(body)
        if error is not None:
            raise HTTPError(500, error)

    def _model_for(self, body: Dict[str, Any], capability: str, verb: str) -> ModelSpec:
        name = body.get("model")
        if not name or not isinstance(name, str):
            raise HTTPError(400, "model is required")
        spec = self.profile.model(name)
        if spec is None:
            raise HTTPError(404, f"model '{name}' not found")
        if capability not in spec.capabilities:
            raise HTTPError(400, f'"{name}" does not support {verb}')
        return spec

    async def _show(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive)
        name = body.get("model") or body.get("name")
        if not name:
            raise HTTPError(400, "model is required")
        spec = self.profile.model(str(name))
        if spec is None:
            raise HTTPError(404, f"model '{name}' not found")
        await send_json(
            send,
            200,
            {
                "license": "",
                "modelfile": f"FROM {spec.name}\n",
                "parameters": 'stop "<|im_end|>"',
                "template": GENERATE_TEMPLATE,
                "details": self._details(spec),
                "model_info": {
                    "general.architecture": spec.family,
                    "general.parameter_count": 0,
                    f"{spec.family}.context_length": spec.context_length,
                    f"{spec.family}.embedding_length": spec.embedding_length,
                },
                "capabilities": list(spec.capabilities),
                "modified_at": "2026-01-01T00:00:00Z",
            },
        )

    def _record(self, route: str, body: Dict[str, Any]) -> None:
        msgs = body.get("messages")
        self._requests.append(
            RequestRecord(
                route=route,
                model=normalize_model(str(body.get("model", ""))),
                prompt=body.get("prompt") if isinstance(body.get("prompt"), str) else None,
                messages=tuple(dict(m) for m in msgs if isinstance(m, dict))
                if isinstance(msgs, list)
                else None,
                options=dict(body.get("options") or {}),
                received_at=time.time(),
            )
        )
        self._requests_total += 1
        self._notify()

    def _keep_alive(self, body: Dict[str, Any]) -> float:
        try:
            return keep_alive_seconds(body.get("keep_alive"), self.profile.keep_alive_s)
        except RequestRejected as exc:  # checked with the body already; kept for safety
            raise HTTPError(400, exc.message) from None

    def _random_failure(self) -> None:
        if self.faults.error_rate and self._rng.random() < self.faults.error_rate:
            raise HTTPError(500, "llama runner process has terminated: simulated failure")

    async def _generate_route(self, receive: Receive, send: Send) -> None:
        t0 = time.monotonic()  # reading, rendering, tokenising: absorbed by the prefill
        body = await self._json_body(receive, "/api/generate")
        spec = self._model_for(body, "completion", "generate")
        self._check_think(body, spec)
        self._record("/api/generate", body)
        self._late_errors(body)
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        num_ctx = self._num_ctx(body, spec)
        text = render_generate(prompt, str(system), raw=body.get("raw") is True)
        rendered = self._fit(body, text, tokenize(text), num_ctx, t0)
        await self._complete(receive, send, body, spec, prompt, rendered, chat=False)

    async def _chat_route(self, receive: Receive, send: Send) -> None:
        t0 = time.monotonic()  # reading, rendering, tokenising: absorbed by the prefill
        body = await self._json_body(receive, "/api/chat")
        spec = self._model_for(body, "completion", "chat")
        self._check_think(body, spec)
        self._record("/api/chat", body)
        self._late_errors(body)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise HTTPError(400, "messages must be a list of objects")
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        num_ctx = self._num_ctx(body, spec)
        tokens = fit_chat(messages, tools, num_ctx, truncate=body.get("truncate") is not False)
        rendered = self._fit(body, "".join(tokens), tokens, num_ctx, t0)
        await self._complete(
            receive, send, body, spec, "" if not messages else rendered.text, rendered, chat=True
        )

    # -- num_ctx, as Ollama applies it per request -------------------------------------------

    def _num_ctx(self, body: Dict[str, Any], spec: ModelSpec) -> int:
        """The request's context: ``options.num_ctx`` or the host's default; at least 4 and
        at most the model's context length (``server/sched.go`` ``getRunner``,
        ``effectiveContext``)."""
        options = body.get("options")
        value = options.get("num_ctx") if isinstance(options, dict) else None
        if value is None:
            return self.profile.default_num_ctx(spec)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise HTTPError(400, f"invalid num_ctx {value!r}")
        return min(max(int(value), 4), spec.context_length)

    def _fit(
        self, body: Dict[str, Any], text: str, tokens: List[Token], num_ctx: int, t0: float
    ) -> RenderedPrompt:
        """Cut a prompt longer than its context as Ollama does (``truncate``, the default),
        or refuse it as llama-server does when ``truncate`` is false."""
        options = body.get("options")
        num_keep = options.get("num_keep", NUM_KEEP) if isinstance(options, dict) else NUM_KEEP
        if isinstance(num_keep, bool) or not isinstance(num_keep, int):
            raise HTTPError(400, f"invalid num_keep {num_keep!r}")
        if body.get("truncate") is not False:
            tokens = shift_truncate(tokens, num_ctx, num_keep)
        elif len(tokens) >= num_ctx:
            raise HTTPError(400, CONTEXT_EXCEEDED)
        return RenderedPrompt(text, tokens, num_ctx, time.monotonic() - t0)

    async def _complete(
        self,
        receive: Receive,
        send: Send,
        body: Dict[str, Any],
        spec: ModelSpec,
        prompt: str,
        rendered: RenderedPrompt,
        *,
        chat: bool,
    ) -> None:
        started = time.monotonic()
        keep_alive = self._keep_alive(body)
        stream = body.get("stream") is not False
        options = body.get("options") or {}
        given = options.get("num_predict")
        num_predict = int(given) if isinstance(given, (int, float)) else None  # checked: a number
        logprobs = body.get("logprobs") is True
        top_logprobs = int(body.get("top_logprobs") or 0)
        model_name = str(body.get("model"))

        def chunk(text: str, done: bool, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
            out: Dict[str, Any] = {"model": model_name, "created_at": now_rfc3339()}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            if extra:
                out.update(extra)
            return out

        if not prompt:
            await send_json(
                send,
                200,
                chunk("", True, await self._load_only(spec, keep_alive, started, rendered.num_ctx)),
            )
            return

        self._random_failure()
        stats: Dict[str, Any] = {}
        gen = self._generate(spec, rendered, num_predict, keep_alive, started, stats)

        # Closed here, not left to the garbage collector: a generation that ends early (a
        # reset, a client gone) must give its slot back at once. Left suspended, it held
        # the slot until a GC pass found it, and the host's queue stalled meanwhile.
        def token_logprobs(token: str, n: int) -> Dict[str, Any]:
            return {"logprobs": [self._logprob(spec, prompt, n, token, top_logprobs)]}

        try:
            if not stream:
                parts: List[str] = []

                async def collect() -> None:
                    async for batch in gen:
                        parts.extend(batch)

                await until_disconnect(receive, collect)
                final = chunk("".join(parts), True, self._final_stats(stats, started))
                if logprobs:  # every token's, as Ollama's handler gathers them
                    final["logprobs"] = [
                        self._logprob(spec, prompt, n, token, top_logprobs)
                        for n, token in enumerate(parts)
                    ]
                await send_json(send, 200, final)
                return

            async def lines() -> AsyncGenerator[bytes, None]:
                # One NDJSON line per token, as Ollama sends them; a tick's lines go out in one write.
                n = 0
                async for batch in gen:
                    buf: List[bytes] = []
                    for token in batch:
                        faults = self.faults
                        if faults.reset_after_chunks is not None and n >= faults.reset_after_chunks:
                            if buf:
                                yield b"".join(buf)
                            raise SimulatedReset(f"{self.name}: connection reset after {n} chunks")
                        if (
                            faults.stream_error_after_chunks is not None
                            and n >= faults.stream_error_after_chunks
                        ):
                            error = "an error was encountered while running the model: simulated"
                            buf.append(dumps({"error": error}).encode() + b"\n")
                            yield b"".join(buf)
                            return
                        extra = token_logprobs(token, n) if logprobs else None
                        buf.append(dumps(chunk(token, False, extra)).encode() + b"\n")
                        n += 1
                    if buf:
                        yield b"".join(buf)
                yield dumps(chunk("", True, self._final_stats(stats, started))).encode() + b"\n"

            await stream_ndjson(send, receive, lines())
        finally:
            with anyio.CancelScope(shield=True):
                await gen.aclose()

    def _logprob(
        self, spec: ModelSpec, prompt: str, n: int, token: str, top: int
    ) -> Dict[str, Any]:
        """The ``n``-th token's entry of ``logprobs`` (see ``_words.logprob_entry``). Derived
        from the seed, the model, the prompt and the position only, so every run gives the
        same."""
        rng = text_rng(self.seed, spec.name, f"{prompt}|logprob|{n}")
        return logprob_entry(rng, token, top)

    def _final_stats(self, stats: Dict[str, Any], started: float) -> Dict[str, Any]:
        return {
            "done_reason": stats.get("done_reason", "stop"),
            "total_duration": int(self._sim(time.monotonic() - started) * 1e9),
            "load_duration": stats.get("load_duration", 0),
            "prompt_eval_count": stats.get("prompt_eval_count", 0),
            "prompt_eval_duration": stats.get("prompt_eval_duration", 0),
            "eval_count": stats.get("eval_count", 0),
            "eval_duration": stats.get("eval_duration", 0),
        }

    def _vector(self, spec: ModelSpec, text: str) -> List[float]:
        return unit_vector(text_rng(self.seed, spec.name, text), spec.embedding_length)

    async def _embed_common(
        self, body: Dict[str, Any], texts: List[str], route: str
    ) -> Tuple[List[List[float]], Dict[str, Any]]:
        spec = self._model_for(body, "embedding", "embeddings")
        self._record(route, body)
        self._late_errors({"options": body.get("options")})
        self._random_failure()
        started = time.monotonic()
        keep_alive = self._keep_alive(body)
        num_ctx = self._num_ctx(body, spec)
        warm = self._is_warm(spec, num_ctx)
        runner = await self._acquire_runner(spec, num_ctx)
        load_ns = self._load_ns(started, warm)
        await self._take_slot(runner)
        epoch = self._epoch
        runner.keep_alive_s = keep_alive
        self._in_flight[spec.name] = self._in_flight.get(spec.name, 0) + 1
        self._notify()
        try:
            tokens = sum(max(1, len(tokenize(t))) for t in texts)
            await self._wait_running()
            await self._sleep_sim(
                tokens / (spec.prompt_rate * self.profile.speed / self.faults.slow)
            )
            vectors = [self._vector(spec, t) for t in texts]
            self._completed += 1
        finally:
            if epoch == self._epoch:
                self._in_flight[spec.name] -= 1
                self._leave(runner)
        return vectors, {
            "total_duration": int(self._sim(time.monotonic() - started) * 1e9),
            "load_duration": load_ns,
            "prompt_eval_count": tokens,
        }

    async def _embed_route(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive, "/api/embed")
        raw = body.get("input")
        # Checked by _json_body: a string or a list of strings, or absent.
        texts = ([raw] if raw else []) if isinstance(raw, str) else list(raw or [])
        if not texts:  # Ollama answers an empty input with no embeddings (EmbedHandler)
            self._model_for(body, "embedding", "embeddings")
            await send_json(send, 200, {"model": body.get("model"), "embeddings": []})
            return
        vectors, stats = await until_disconnect(
            receive, lambda: self._embed_common(body, texts, "/api/embed")
        )
        await send_json(send, 200, {"model": body.get("model"), "embeddings": vectors, **stats})

    async def _embeddings_route(self, receive: Receive, send: Send) -> None:
        body = await self._json_body(receive, "/api/embeddings")
        prompt = str(body.get("prompt") or "")
        vectors, _ = await until_disconnect(
            receive, lambda: self._embed_common(body, [prompt], "/api/embeddings")
        )
        await send_json(send, 200, {"embedding": vectors[0]})
