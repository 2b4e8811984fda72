"""Exchange reads NDJSON lines: one JSON object a line, blank lines skipped, anything else an error."""

from __future__ import annotations

from typing import List

import httpx
import pytest

from ollama_orchestra import Server
from ollama_orchestra._clock import now
from ollama_orchestra._exchange import Exchange
from ollama_orchestra._failover import AttemptError


async def _read(body: bytes) -> List[object]:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    async with httpx.AsyncClient(transport=transport) as client:
        exchange = await Exchange.open(
            client,
            Server("h", "http://127.0.0.9:11434"),
            "/api/generate",
            {"model": "m", "prompt": "p"},
            model="m",
            first_byte_s=5.0,
            read_s=5.0,
            connect_s=5.0,
            clock=now,
        )
        try:
            return list(await exchange.read_all())
        finally:
            await exchange.aclose()


class TestLines:
    """Each line is judged as ``json.loads`` judges it."""

    async def test_blank_and_padded_lines(self) -> None:
        """Blank lines are skipped; whitespace around an object is allowed."""
        body = b'{"response": "a", "done": false}\n\n   \n {"response": "b", "done": false} \r\n'
        body += b'\t{"done": true}\t\n'
        assert await _read(body) == [
            {"response": "a", "done": False},
            {"response": "b", "done": False},
            {"done": True},
        ]

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            (b'{"done": true}x', "bad JSON line"),
            (b'{"done": true} {"done": true}', "bad JSON line"),
            (b'{"done": ', "bad JSON line"),
            (b"[1, 2]", "unexpected line"),
            (b"NaN", "unexpected line"),
            (b'{"error": "boom"}', "boom"),
        ],
    )
    async def test_bad_lines(self, line: bytes, message: str) -> None:
        """A line that is not one JSON object (or is an error object) fails the attempt."""
        with pytest.raises(AttemptError, match=message):
            await _read(b'{"response": "a", "done": false}\n' + line + b"\n")
