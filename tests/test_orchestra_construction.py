"""Building an Orchestra: the shortcuts, the one-at-a-time lifecycle, and bad chat input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_orchestra import Orchestra, OrchestraClosed
from ollama_orchestra.sim import SimServer

from .conftest import TINY


class TestShortcuts:
    """from_file, from_env and from_urls build the same fleet the long way would."""

    def test_from_file(self, tmp_path: Path) -> None:
        """A TOML file's servers and strategy."""
        path = tmp_path / "o.toml"
        path.write_text(
            'strategy = "round_robin"\n[[servers]]\nname = "a"\nurl = "http://127.0.0.1:1"\n',
            encoding="utf-8",
        )
        orch = Orchestra.from_file(path)
        assert repr(orch) == "<Orchestra [a] strategy='round_robin' stopped>"

    def test_from_env(self) -> None:
        """OLLAMA_ORCHESTRA_SERVERS, slots included."""
        orch = Orchestra.from_env({"OLLAMA_ORCHESTRA_SERVERS": "x=http://127.0.0.1:1*3"})
        assert [(s.name, s.max_concurrency) for s in orch.config.servers] == [("x", 3)]

    def test_from_urls(self) -> None:
        """Servers named by position, each with the given slots."""
        orch = Orchestra.from_urls("http://127.0.0.1:1", "http://127.0.0.1:2", max_concurrency=2)
        assert [(s.name, s.max_concurrency) for s in orch.config.servers] == [
            ("server0", 2),
            ("server1", 2),
        ]


class TestLifecycle:
    """One 'async with' at a time; running shows in the repr."""

    async def test_entering_twice_is_refused(self, sim_server: SimServer) -> None:
        """A second 'async with' on a running orchestra raises OrchestraClosed."""
        orch = Orchestra.from_urls(sim_server.url)
        async with orch:
            assert repr(orch).endswith(" running>")
            with pytest.raises(OrchestraClosed, match="already running"):
                await orch.__aenter__()
        assert repr(orch).endswith(" stopped>")


class TestChatInput:
    """chat() checks its messages before choosing a server."""

    @pytest.mark.parametrize("messages", ["hello", [("user", "hello")]])
    async def test_messages_must_be_mappings(self, sim_server: SimServer, messages: object) -> None:
        """A string, or pairs instead of mappings: TypeError, nothing sent."""
        async with Orchestra.from_urls(sim_server.url) as orch:
            with pytest.raises(TypeError, match=r"messages(\[0\])? must be a"):
                await orch.chat(TINY, messages)  # type: ignore[arg-type]
            assert orch.metrics().servers["server0"].requests == 0
