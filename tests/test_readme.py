"""The README's quick start and DAG file examples run as written, against the simulated fleet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import anyio
import pytest

import ollama_orchestra
import ollama_orchestra.cli as orchestra_cli
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


def dag_file_block(lang: str) -> str:
    section = README.read_text(encoding="utf-8").split("### DAG files", 1)[1]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"no {lang} block under 'DAG files'"
    return match.group(1)


class TestDagFileExamples:
    """The README's DAG file examples load as written, and the TOML one runs."""

    def test_toml_example_loads(self, tmp_path: Path) -> None:
        """Every documented field is in the example, and load_dag reads it as described."""
        path = tmp_path / "pipeline.toml"
        path.write_text(dag_file_block("toml"), encoding="utf-8")
        spec = ollama_orchestra.load_dag(path)
        assert spec.schedule == "eager" and spec.inputs == {"goal": "a todo app"}
        tasks = {t.id: t for t in spec.tasks}
        assert list(tasks) == ["plan", "code_ui", "code_db", "review"]
        assert tasks["plan"].options == {"num_predict": 300, "temperature": 0.2}
        assert tasks["code_ui"].prompt == "UI for:\n{plan}" and tasks["code_ui"].estimate == 2
        assert tasks["code_ui"].system is not None
        review = tasks["review"]
        assert review.depends_on == ("code_ui", "code_db")
        assert review.messages is not None and len(review.messages) == 3
        assert (review.priority, review.timeout) == (2000, 600)

    def test_json_example_loads(self, tmp_path: Path) -> None:
        """The JSON form loads to the same shape."""
        path = tmp_path / "pipeline.json"
        path.write_text(dag_file_block("json"), encoding="utf-8")
        spec = ollama_orchestra.load_dag(path)
        assert [t.id for t in spec.tasks] == ["plan", "code_ui"]
        assert spec.inputs == {"goal": "a todo app"}

    async def test_toml_example_runs(
        self,
        sim_fleet: SimFleet,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """ollama-orchestra run on the example, its roles given with --role: every task ok."""
        monkeypatch.delenv("OLLAMA_ORCHESTRA_ROLES", raising=False)
        monkeypatch.delenv("OLLAMA_ORCHESTRA_STRATEGY", raising=False)
        path = tmp_path / "pipeline.toml"
        path.write_text(dag_file_block("toml"), encoding="utf-8")
        args = ["run", str(path), "--json", "--role", "planning=qwen2.5:14b"]
        args += ["--role", "coding=qwen2.5-coder:32b"]
        for s in sim_fleet:
            args += ["--server", f"{s.name}={s.url}*{s.profile.num_parallel}"]
        capsys.readouterr()
        code = await anyio.to_thread.run_sync(orchestra_cli.main, args)
        out, err = capsys.readouterr()
        assert code == 0, err
        doc = json.loads(out)
        assert [t["status"] for t in doc["tasks"]] == ["ok"] * 4
