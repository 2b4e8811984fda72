"""The README's quick start runs as written, against the simulated fleet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import pytest

import ollama_orchestra
from ollama_orchestra.sim import SimFleet

README = Path(__file__).resolve().parent.parent / "README.md"


def quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the quick start"
    return match.group(1)


async def test_quick_start_runs(sim_fleet: SimFleet, capsys: pytest.CaptureFixture[str]) -> None:
    """The quick-start block runs unchanged; only the host names point at simulated hosts."""
    urls = sim_fleet.urls

    def server(name: str, url: str, **kw: Any) -> ollama_orchestra.Server:
        assert url.startswith(f"http://{name}.thiscluster.net:11434")
        return ollama_orchestra.Server(name, urls[name], **kw)

    mains: List[Callable[[], Awaitable[None]]] = []
    namespace: Dict[str, Any] = {}
    code = quick_start()
    code = code.replace(
        "from ollama_orchestra import Orchestra, OrchestraConfig, Server",
        "from ollama_orchestra import Orchestra, OrchestraConfig",
    )
    namespace["Server"] = server
    namespace["anyio"] = type("anyio", (), {"run": staticmethod(mains.append)})
    exec(compile(code.replace("import anyio\n", ""), str(README), "exec"), namespace)
    assert len(mains) == 1
    await mains[0]()
    out = capsys.readouterr().out
    assert "ollama0" in out  # the server that answered is printed
    assert "FleetSnapshot" in out
