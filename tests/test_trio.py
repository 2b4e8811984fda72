"""On trio: the orchestra works; what is asyncio-only says so in one clear error."""

from __future__ import annotations

import anyio
import pytest

from ollama_orchestra import AsyncioOnly, Orchestra, OrchestraConfig, Server, serve_proxy
from ollama_orchestra.sim import SimServer
from ollama_orchestra.testing import tiny_profile

pytest.importorskip("trio")


class TestOrchestraOnTrio:
    """The core library is anyio-native: it runs under trio as under asyncio."""

    @pytest.mark.slow
    def test_generate_against_a_subprocess_host(self) -> None:
        """A simulated host in a subprocess serves an orchestra running on trio."""

        async def main() -> None:
            async with SimServer(tiny_profile("h"), time_scale=0.01, mode="subprocess") as host:
                config = OrchestraConfig(servers=[Server("h", host.url, max_concurrency=2)])
                async with Orchestra(config) as orch:
                    response = await orch.generate("tiny", "hello")
                    assert response.server == "h" and response.response
                    assert orch.state().servers["h"].healthy
                    async with anyio.create_task_group() as tg:
                        for _ in range(4):
                            tg.start_soon(orch.generate, "tiny", "again")
                    assert orch.metrics().servers["h"].successes == 5

        anyio.run(main, backend="trio")


class TestAsyncioOnlyOnTrio:
    """The in-process simulator and the proxy refuse trio at once, saying why."""

    def test_in_process_simulator(self) -> None:
        """SimServer (in-process) raises AsyncioOnly, pointing to mode='subprocess'."""

        async def main() -> None:
            async with SimServer(tiny_profile()):
                pass

        with pytest.raises(AsyncioOnly, match=r"not on trio: .*mode='subprocess'") as info:
            anyio.run(main, backend="trio")
        assert info.value.feature == "SimServer (in-process)" and info.value.backend == "trio"

    def test_proxy(self) -> None:
        """serve_proxy raises AsyncioOnly before binding anything."""
        config = OrchestraConfig(servers=[Server("a", "http://127.0.0.1:9")])
        with pytest.raises(AsyncioOnly, match=r"^serve_proxy runs on asyncio only, not on trio"):
            anyio.run(serve_proxy, config, backend="trio")
