"""Exchange.open's ``on_first``: called when the first object is in, before the rest is read."""

from __future__ import annotations

import json
from typing import AsyncIterator, List

import anyio
import httpx
import pytest

from ollama_orchestra import Server
from ollama_orchestra._clock import now
from ollama_orchestra._exchange import Exchange
from ollama_orchestra._failover import AttemptError


class _Gated(httpx.AsyncByteStream):
    """The first line, then the rest only once ``gate`` is set."""

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield json.dumps({"response": "a", "done": False}).encode() + b"\n"
        await self.gate.wait()
        yield json.dumps({"response": "b", "done": True}).encode() + b"\n"


async def _open(client: httpx.AsyncClient, on_first: object) -> Exchange:
    return await Exchange.open(
        client,
        Server("h", "http://127.0.0.9:11434"),
        "/api/generate",
        {"model": "m", "prompt": "p"},
        model="m",
        first_byte_s=5.0,
        read_s=5.0,
        connect_s=5.0,
        clock=now,
        whole=True,
        on_first=on_first,  # type: ignore[arg-type]
    )


class TestOnFirst:
    """A whole answer tells its first object's arrival before it waits for the rest."""

    async def test_called_before_the_rest(self) -> None:
        gate = anyio.Event()
        calls: List[int] = []

        def first() -> None:
            calls.append(1)
            gate.set()  # the rest comes only after this: called later, it would never end

        transport = httpx.MockTransport(lambda _: httpx.Response(200, stream=_Gated(gate)))
        async with httpx.AsyncClient(transport=transport) as client:
            with anyio.fail_after(5):
                exchange = await _open(client, first)
        assert calls == [1]
        assert [o["response"] for o in exchange.received] == ["a", "b"]

    async def test_not_called_when_nothing_came(self) -> None:
        calls: List[int] = []
        transport = httpx.MockTransport(lambda _: httpx.Response(500, json={"error": "boom"}))
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(AttemptError):
                await _open(client, lambda: calls.append(1))
        assert calls == []
