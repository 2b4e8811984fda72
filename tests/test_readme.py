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
from ollama_orchestra.sim import SimFleet, SimServer

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


def blocks(language: str) -> List[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


class TestReadmeBlocks:
    """Every example in the README is valid as written, for the type checker and the loaders."""

    def test_python_blocks_pass_mypy_strict(self, tmp_path: Path) -> None:
        """Each python block, as its own module, passes mypy --strict."""
        from mypy import api

        files = []
        for i, code in enumerate(blocks("python")):
            path = tmp_path / f"readme_block_{i}.py"
            path.write_text(code, encoding="utf-8")
            files.append(str(path))
        assert len(files) >= 4
        (tmp_path / "mypy.ini").write_text("[mypy]\n", encoding="utf-8")
        cache = README.parent / ".mypy_cache" / "readme"
        out, err, status = api.run(
            [
                "--strict",
                "--config-file",
                str(tmp_path / "mypy.ini"),
                "--cache-dir",
                str(cache),
                "--no-error-summary",
                *files,
            ]
        )
        assert status == 0, out + err

    def test_toml_config_block_loads(self, tmp_path: Path) -> None:
        """The Configuration section's TOML file loads, with every role the examples use."""
        (toml,) = [b for b in blocks("toml") if "[[servers]]" in b]
        path = tmp_path / "orchestra.toml"
        path.write_text(toml, encoding="utf-8")
        config = ollama_orchestra.OrchestraConfig.from_file(path)
        assert [s.name for s in config.servers] == ["ollama01", "ollama02"]
        assert set(config.roles) == {"planning", "coding", "qa"}
        assert config.servers[1].weight == 2.0

    def test_environment_block_loads(self) -> None:
        """The environment variables shown (bar the file switch) make the same fleet and roles."""
        (sh,) = [b for b in blocks("sh") if "OLLAMA_ORCHESTRA_SERVERS=" in b]
        environ: Dict[str, str] = {}
        for line in sh.splitlines():
            name, _, value = line.split("#")[0].strip().partition("=")
            if name and name != "OLLAMA_ORCHESTRA_CONFIG":
                environ[name] = value.strip('"')
        config = ollama_orchestra.OrchestraConfig.from_env(environ)
        assert [(s.name, s.max_concurrency) for s in config.servers] == [
            ("ollama01", 2),
            ("ollama02", 4),
        ]
        assert set(config.roles) == {"planning", "coding", "qa"}

    def test_dag_example_uses_only_configured_roles(self) -> None:
        """Every model the DAG example names is a role of the quick start's config."""
        dag = next(b for b in blocks("python") if "orch.run(" in b)
        quick = quick_start()
        for model in set(re.findall(r'model="([^"]+)"', dag)):
            assert f'"{model}":' in quick, model

    @staticmethod
    def load_block(marker: str) -> Dict[str, Any]:
        (code,) = [b for b in blocks("python") if marker in b]
        namespace: Dict[str, Any] = {}
        exec(compile(code, str(README), "exec"), namespace)
        return namespace

    async def test_dag_and_drop_in_blocks_run(
        self, sim_server: SimServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The DAG and drop-in examples run on a fleet whose roles map to a simulated model."""
        roles = {"planning": "tiny", "coding": "tiny", "qa": "tiny"}
        config = ollama_orchestra.OrchestraConfig(
            servers=[ollama_orchestra.Server("sim", sim_server.url)], roles=roles
        )
        async with ollama_orchestra.Orchestra(config) as orch:
            await self.load_block("orch.run(")["build"](orch)
        assert capsys.readouterr().out.startswith("True ")
        await self.load_block("OrchestraTransport(orch)")["main"](config)
        assert capsys.readouterr().out.strip()

    async def test_simulator_block_runs(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The simulator example runs as written and ends with the fleet state printed."""
        await self.load_block("SimFleet.preset(")["main"]()
        assert "FleetSnapshot" in capsys.readouterr().out
