"""The library's one clock (``_clock.now``): the running event loop's, on each backend."""

from __future__ import annotations

import asyncio
import time

import anyio
import trio
import trio.testing

from ollama_orchestra._clock import now, reader


class _ShiftedLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock runs an hour ahead of ``time.monotonic``."""

    def time(self) -> float:
        return super().time() + 3600.0


class TestNow:
    """``now`` reads the clock anyio reads, whatever the loop."""

    def test_asyncio_reads_the_running_loops_clock(self) -> None:
        async def read() -> tuple[float, float]:
            return now(), anyio.current_time()

        loop = _ShiftedLoop()
        try:
            ours, anyios = loop.run_until_complete(read())
        finally:
            loop.close()
        assert abs(ours - anyios) < 1.0
        assert ours > time.monotonic() + 3000.0

    def test_under_anyio_run_reads_the_loops_clock(self) -> None:
        async def read() -> None:
            loop = asyncio.get_running_loop()
            before = loop.time()
            assert before <= now() <= loop.time()

        anyio.run(read, backend="asyncio")

    def test_trio_reads_trios_clock(self) -> None:
        clock = trio.testing.MockClock()

        async def read() -> float:
            await trio.sleep(1000.0)  # virtual: the mock clock jumps
            assert now() == trio.current_time()
            return now()

        clock.autojump_threshold = 0
        assert trio.run(read, clock=clock) >= 1000.0

    def test_outside_a_loop_is_monotonic(self) -> None:
        before = time.monotonic()
        assert before <= now() <= time.monotonic()


class TestReader:
    """``reader()`` returns a clock that reads what ``now`` reads, on each backend."""

    def test_asyncio_reads_the_running_loops_clock(self) -> None:
        async def read() -> tuple[float, float]:
            return reader()(), anyio.current_time()

        loop = _ShiftedLoop()
        try:
            ours, anyios = loop.run_until_complete(read())
        finally:
            loop.close()
        assert abs(ours - anyios) < 1.0
        assert ours > time.monotonic() + 3000.0

    def test_trio_reads_trios_clock(self) -> None:
        clock = trio.testing.MockClock()

        async def read() -> float:
            read_now = reader()
            await trio.sleep(1000.0)  # virtual: the mock clock jumps
            assert read_now() == trio.current_time()
            return read_now()

        clock.autojump_threshold = 0
        assert trio.run(read, clock=clock) >= 1000.0

    def test_outside_a_loop_is_monotonic(self) -> None:
        before = time.monotonic()
        assert before <= reader()() <= time.monotonic()
