"""The stream handed to callers: an async iterator with the answering server's details."""

from __future__ import annotations

from typing import AsyncGenerator, AsyncIterator, Callable, Generic, Optional, TypeVar

__all__ = ["ResponseStream"]

T = TypeVar("T")


class ResponseStream(Generic[T], AsyncIterator[T]):
    """Chunks of a streamed answer. Iterate it; use ``async with`` to stop early cleanly.

    ``async with orch.chat_stream(...) as stream: async for chunk in stream: ...`` releases
    the server's slot as soon as the block exits, even after a ``break``.
    """

    #: The server answering, once the first item is known (``None`` before).
    server: Optional[str]
    #: Attempts it took to get an answer (1: no failover), once the first item is known.
    attempts: int
    #: Seconds the request waited for a slot, once the first item is known.
    queued_s: float

    def __init__(self, agen: AsyncGenerator[T, None]) -> None:
        self._agen = agen
        self.server = None
        self.attempts = 0
        self.queued_s = 0.0

    @classmethod
    def of(cls, make: Callable[[ResponseStream[T]], AsyncGenerator[T, None]]) -> ResponseStream[T]:
        """A stream over ``make(stream)``: the generator can fill in the stream's details."""
        stream: ResponseStream[T] = cls.__new__(cls)
        cls.__init__(stream, make(stream))
        return stream

    def _settled(self, server: Optional[str], attempts: int, queued_s: float) -> None:
        self.server, self.attempts, self.queued_s = server, attempts, queued_s

    def __aiter__(self) -> ResponseStream[T]:
        return self

    async def __anext__(self) -> T:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        await self._agen.aclose()

    async def __aenter__(self) -> ResponseStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
