"""Property: whatever a client sends, the proxy answers as Ollama would, never with a 500."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import anyio
import anyio.to_thread
import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ollama_orchestra import Orchestra, ProxyLimits, serve_proxy

from .conftest import TINY, config_for, fleet, tiny_profile

EMBED = "tiny-embed:latest"
VALID = json.dumps({"model": TINY, "prompt": "x", "options": {"num_predict": 2}}).encode()
PATHS = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/api/tags",
    "/api/version",
    "/",
    "/api/pull",
    "/nope",
]
FIELDS = [
    "model",
    "prompt",
    "messages",
    "stream",
    "options",
    "keep_alive",
    "format",
    "think",
    "logprobs",
    "top_logprobs",
    "input",
    "images",
    "context",
    "tools",
    "system",
    "raw",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# A request-shaped object: known fields with any values, a real model most of the time.
request_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).flatmap(
    lambda d: st.sampled_from([TINY, EMBED, "nope", None]).map(lambda m: _with_model(d, m))
)
bodies = (
    request_objects.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=64)
    # Deep nesting (a RecursionError in Python's parser: deeper than any recursion limit a
    # test runner may set), bytes that are not UTF-8, and a body over the limit (413).
    | st.sampled_from([1, 50, 100_000]).map(lambda n: b"[" * n + b"]" * n)
    | st.sampled_from([b'{"a":' * 50_000, b"\xff\xfe{}", b'{"model": "\xc3"}', b" " * 300_000])
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24).map(
    str.strip
)
headers = st.dictionaries(
    st.sampled_from(["content-type", "authorization", "accept", "x-anything", "content-encoding"]),
    header_values,
    max_size=3,
)


def _with_model(body: Dict[str, Any], model: Optional[str]) -> Dict[str, Any]:
    if model is not None:
        body["model"] = model
    # Keep answers short: a random num_predict could ask for a million tokens.
    options = body.get("options")
    if isinstance(options, dict):
        options["num_predict"] = 2
    elif options is None:
        body["options"] = {"num_predict": 2}
    return body


def well_formed(r: httpx.Response) -> bool:
    """An answer Ollama could give: a JSON object, NDJSON objects, or its plain-text 404/405
    and root; errors as ``{"error": "..."}``."""
    if r.status_code in (404, 405) and r.headers["content-type"].startswith("text/plain"):
        return r.text in ("404 page not found", "405 method not allowed")
    if r.status_code == 200 and r.headers["content-type"].startswith("text/plain"):
        return r.text == "Ollama is running"
    lines: List[Any] = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    if not lines or not all(isinstance(obj, dict) for obj in lines):
        return False
    if r.status_code != 200:
        return len(lines) == 1 and isinstance(lines[0].get("error"), str)
    return len(lines) == 1 or lines[-1].get("done") is True


class TestProxyParsing:
    async def test_any_request_gets_an_ollama_answer_never_a_500(self) -> None:
        """Random paths, methods, headers and bodies (JSON, request-shaped objects with values
        of any type, random bytes, deep nesting): a well-formed 2xx or an Ollama-style 4xx."""
        limits = ProxyLimits(max_body_bytes=256 * 1024)
        async with fleet([tiny_profile("h1", num_parallel=4)]) as sim, Orchestra(
            config_for(sim)
        ) as orch, anyio.create_task_group() as tg:
            url = await tg.start(
                lambda task_status: serve_proxy(
                    orch, "127.0.0.1", 0, limits=limits, task_status=task_status
                )
            )
            seen: List[int] = []

            @settings(
                max_examples=150,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(
                method=st.sampled_from(["POST", "POST", "GET", "PUT"]),
                path=st.sampled_from(PATHS),
                body=bodies,
                extra=headers,
            )
            # The hostile bodies found by hand, always tried (random ones rarely pair a deep body
            # with a path that parses it).
            @example(method="POST", path="/api/generate", body=b"[" * 100_000, extra={})
            @example(method="POST", path="/api/chat", body=b'{"a":' * 50_000, extra={})
            @example(method="POST", path="/api/chat", body=b" " * 300_000, extra={})
            @example(method="POST", path="/api/generate", body=VALID, extra={})
            @example(method="POST", path="/api/embed", body=b'{"model": "\xff"}', extra={})
            @example(method="POST", path="/api/chat", body=b'{"options": [1]}', extra={})
            @example(
                method="POST",
                path="/api/generate",
                body=b'{"model": "tiny:latest", "options": {"num_predict": 1e999}}',
                extra={},
            )
            @example(method="POST", path="/api/generate", body=b'{"top_p": NaN}', extra={})
            def check(method: str, path: str, body: bytes, extra: Dict[str, str]) -> None:
                r = client.request(method, path, content=body, headers=extra)
                seen.append(r.status_code)
                assert r.status_code < 500, (r.status_code, r.text)
                assert well_formed(r), (r.status_code, r.text)

            with httpx.Client(base_url=url, timeout=30) as client:
                await anyio.to_thread.run_sync(check)
            tg.cancel_scope.cancel()
        assert {200, 400, 413} <= set(
            seen
        )  # the examples reach each at least  # both kinds were reached
        assert orch.state()["h1"].in_flight == 0
