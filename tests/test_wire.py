"""Malformed request bodies: the simulator answers as Ollama does, the proxy and the transport
refuse the same bodies before any server is asked, with the same status and message."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, AsyncIterator, List, Optional, Tuple

import anyio
import httpx
import pytest

from ollama_orchestra import Orchestra, OrchestraTransport, serve_proxy
from ollama_orchestra._serving import MAX_JSON_DEPTH, BadRequestBody, parse_json
from ollama_orchestra._wire import RequestRejected, check_request, late_errors
from ollama_orchestra.sim import SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile

EMBED = "tiny-embed:latest"
INT_OPTION = 'option "num_predict" must be of type integer'
BAD_FORMAT = 'invalid format: "5"; expected "json" or a valid JSON Schema object'

# (id, path, raw body, the simulator's (= Ollama's) status, the orchestra's status, error).
# Messages are Ollama's (v0.33.0-rc2: Go's encoding/json via gin's ShouldBindJSON, api/types.go
# decoders, server/routes.go checks). The two 500s are Ollama's answers once the model is
# scheduled; the orchestra refuses those bodies up front with 400 (see _wire's docstring).
CASES: List[Tuple[str, str, Any, int, int, str]] = [
    (
        "options-list",
        "/api/generate",
        {"model": TINY, "prompt": "x", "options": [1]},
        400,
        400,
        "json: cannot unmarshal array into Go struct field GenerateRequest.options of type "
        "map[string]interface {}",
    ),
    (
        "messages-string",
        "/api/chat",
        {"model": TINY, "messages": "hello"},
        400,
        400,
        "json: cannot unmarshal string into Go struct field ChatRequest.messages of type "
        "[]api.Message",
    ),
    (
        "message-role-number",
        "/api/chat",
        {"model": TINY, "messages": [{"role": 5, "content": "x"}]},
        400,
        400,
        "json: cannot unmarshal number into Go struct field Message.messages.role of type string",
    ),
    (
        "stream-string",
        "/api/generate",
        {"model": TINY, "prompt": "x", "stream": "false"},
        400,
        400,
        "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool",
    ),
    (
        "stream-zero",
        "/api/chat",
        {"model": TINY, "messages": [], "stream": 0},
        400,
        400,
        "json: cannot unmarshal number into Go struct field ChatRequest.stream of type bool",
    ),
    (
        "keep-alive-object",
        "/api/generate",
        {"model": TINY, "prompt": "x", "keep_alive": {}},
        400,
        400,
        "Unsupported type: 'map[string]interface {}'",
    ),
    (
        "keep-alive-wins-over-type-error",
        "/api/generate",
        {"model": TINY, "stream": "no", "keep_alive": "soon"},
        400,
        400,
        'time: invalid duration "soon"',
    ),
    (
        "prompt-number",
        "/api/generate",
        {"model": TINY, "prompt": 5},
        400,
        400,
        "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string",
    ),
    (
        "top-logprobs-range",
        "/api/generate",
        {"model": TINY, "prompt": "x", "logprobs": True, "top_logprobs": 21},
        400,
        400,
        "top_logprobs must be between 0 and 20",
    ),
    (
        "top-logprobs-float",
        "/api/chat",
        {"model": TINY, "messages": [], "top_logprobs": 1.5},
        400,
        400,
        "json: cannot unmarshal number 1.5 into Go struct field ChatRequest.top_logprobs of "
        "type int",
    ),
    (
        "think-level",
        "/api/generate",
        {"model": TINY, "prompt": "x", "think": "very"},
        400,
        400,
        'invalid think value: "very" (must be "high", "medium", "low", "max", true, or false)',
    ),
    (
        "not-an-object",
        "/api/generate",
        [1],
        400,
        400,
        "json: cannot unmarshal array into Go value of type api.GenerateRequest",
    ),
    ("embed-input", "/api/embed", {"model": EMBED, "input": [1]}, 400, 400, "invalid input type"),
    (
        "embeddings-prompt",
        "/api/embeddings",
        {"model": EMBED, "prompt": ["a"]},
        400,
        400,
        "json: cannot unmarshal array into Go struct field EmbeddingRequest.prompt of type string",
    ),
    (
        "num-predict-string",
        "/api/generate",
        {"model": TINY, "prompt": "x", "options": {"num_predict": "x"}},
        500,
        400,
        INT_OPTION,
    ),
    (
        "format-number",
        "/api/chat",
        {"model": TINY, "messages": [], "format": 5},
        500,
        400,
        BAD_FORMAT,
    ),
    ("deep", "/api/generate", b"[" * 100_000, 400, 400, "invalid JSON: exceeded max depth"),
    (
        "not-utf8",
        "/api/generate",
        b'{"model": "tiny", "prompt": "\xff"}',
        400,
        400,
        "invalid JSON: the body is not UTF-8",
    ),
    ("empty", "/api/chat", b"", 400, 400, "missing request body"),
    (
        "nan",
        "/api/generate",
        b'{"model": "tiny", "options": {"temperature": NaN}}',
        400,
        400,
        "invalid JSON: invalid character 'N' looking for beginning of value",
    ),
    (
        "huge-number",
        "/api/generate",
        b'{"model": "tiny", "options": {"num_predict": 1e999}}',
        400,
        400,
        "invalid JSON: number 1e999 out of range",
    ),
]


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


@contextlib.asynccontextmanager
async def setting() -> AsyncIterator[Tuple[SimFleet, Orchestra, str]]:
    async with fleet([tiny_profile("h1")]) as sim, Orchestra(
        config_for(sim)
    ) as orch, anyio.create_task_group() as tg:
        url: str = await tg.start(serve_proxy, orch, "127.0.0.1", 0)
        yield sim, orch, url
        tg.cancel_scope.cancel()


class _Errors(logging.Handler):
    """Collects records at ERROR or above (a traceback in the server's log)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class TestMalformedBodies:
    async def test_the_table_against_the_simulator_the_proxy_and_the_transport(self) -> None:
        """Each malformed body gets Ollama's status and message from the simulator; the proxy
        and the transport give the same message and never send the body upstream."""
        errors = _Errors()
        loggers = [logging.getLogger(n) for n in ("uvicorn.error", "ollama_orchestra", "")]
        async with setting() as (sim, orch, url), httpx.AsyncClient() as h:
            # Attached once the servers run: uvicorn's logging set-up replaces its handlers.
            for lg in loggers:
                lg.addHandler(errors)
            try:
                direct = sim["h1"].url
                via = httpx.AsyncClient(
                    transport=OrchestraTransport(orch), base_url="http://orchestra"
                )
                for case_id, path, body, sim_status, orch_status, error in CASES:
                    data = encode(body)
                    headers = {"content-type": "application/json"}
                    answers = [
                        (await h.post(direct + path, content=data, headers=headers), sim_status),
                        (await h.post(url + path, content=data, headers=headers), orch_status),
                        (await via.post(path, content=data, headers=headers), orch_status),
                    ]
                    for r, status in answers:
                        assert (case_id, r.status_code, r.json()) == (
                            case_id,
                            status,
                            {"error": error},
                        )
                await via.aclose()
                sent = [r for r in sim["h1"].requests if r.route != "/api/show"]
                # Only the simulator, asked directly, saw the two bodies Ollama answers late.
                assert len(sent) == 2
                assert orch.state()["h1"].healthy and str(orch.breaker("h1").state) == "closed"
            finally:
                for lg in loggers:
                    lg.removeHandler(errors)
        assert [r.getMessage() for r in errors.records] == []

    @pytest.mark.parametrize("stream", [None, True, False])
    async def test_null_and_bools_are_accepted(self, stream: Optional[bool]) -> None:
        """``null`` leaves a field unset (Go), so ``"stream": null`` streams; bools are fine."""
        async with setting() as (_, _orch, url), httpx.AsyncClient(base_url=url) as h:
            body = {"model": TINY, "prompt": "x", "stream": stream, "options": None}
            r = await h.post("/api/generate", json=body)
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.text.splitlines() if line]
        assert (len(lines) == 1) is (stream is False) and lines[-1]["done"]


class TestCheckRequest:
    def test_unknown_fields_and_paths_pass(self) -> None:
        """Fields Ollama does not know are ignored, as Go's decoder does; other paths pass."""
        check_request("/api/generate", {"model": "m", "whatever": [1, {"x": 2}]})
        check_request("/api/show", [1])

    def test_first_type_error_wins(self) -> None:
        """Go reports the first type error it saved."""
        with pytest.raises(RequestRejected, match=r"GenerateRequest\.raw of type bool"):
            check_request("/api/generate", {"raw": 1, "system": 2})

    @pytest.mark.parametrize(
        ("keep_alive", "ok"),
        [("5m", True), ("1h30m", True), ("-1", False), ("-1s", True), ("0", True), (7.5, True)],
    )
    def test_keep_alive_follows_go_durations(self, keep_alive: Any, ok: bool) -> None:
        """keep_alive: a number of seconds or a Go duration string with units."""
        body = {"model": "m", "keep_alive": keep_alive}
        if ok:
            check_request("/api/generate", body)
        else:
            with pytest.raises(RequestRejected, match="missing unit"):
                check_request("/api/generate", body)

    def test_late_errors(self) -> None:
        """Options of the wrong type and formats Ollama cannot use are named; others pass."""
        assert late_errors({"options": {"temperature": "hot"}}) == (
            'option "temperature" must be of type float32'
        )
        assert late_errors({"options": {"stop": ["a", 1]}}) == (
            'option "stop" must be of an array of strings'
        )
        assert late_errors({"options": {"unknown": "x", "seed": 1.0}, "format": "json"}) is None
        assert late_errors({"format": {"type": "object"}}) is None


class TestJsonDepth:
    """Nesting is bounded before parsing, whatever the process's recursion limit."""

    def test_depth_over_the_limit_is_refused_before_parsing(self) -> None:
        """One level past MAX_JSON_DEPTH is a 400, though Python's parser could read it."""
        deep = MAX_JSON_DEPTH + 1
        with pytest.raises(BadRequestBody, match="exceeded max depth"):
            parse_json(b"[" * deep + b"]" * deep)

    def test_depth_at_the_limit_and_brackets_in_strings_parse(self) -> None:
        """MAX_JSON_DEPTH levels parse; brackets inside strings are not nesting."""
        at = MAX_JSON_DEPTH
        assert parse_json(b"[" * at + b"]" * at) is not None
        assert parse_json(json.dumps({"prompt": "[{" * 5000}).encode()) == {"prompt": "[{" * 5000}
        wide = [[1, 2]] * 5000
        assert parse_json(json.dumps(wide).encode()) == wide
