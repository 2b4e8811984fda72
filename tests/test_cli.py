"""The command line, run in a subprocess against simulated fleets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import anyio
import pytest

from ollama_orchestra.sim import SimFleet
from ollama_orchestra.testing import tiny_profile


async def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a thread, so the in-process fleet keeps serving meanwhile."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ollama_orchestra", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "OLLAMA_ORCHESTRA_SERVERS": ""},
        )

    return await anyio.to_thread.run_sync(run)


def servers(fleet: SimFleet) -> List[str]:
    out: List[str] = []
    for s in fleet:
        out += ["--server", f"{s.name}={s.url}*{s.profile.num_parallel}"]
    return out


class TestStatus:
    async def test_table(self) -> None:
        """status prints one row per server with health, version and models."""
        async with SimFleet([tiny_profile("h1"), tiny_profile("h2")], time_scale=0.01) as fleet:
            r = await cli("status", *servers(fleet))
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split()[:3] == ["server", "health", "version"]
        rows = {line.split()[0]: line for line in lines[2:]}
        assert set(rows) == {"h1", "h2"}
        assert all(" up " in row and "tiny:latest" in row for row in rows.values())

    async def test_json(self) -> None:
        """status --json is machine-readable."""
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as fleet:
            r = await cli("status", "--json", *servers(fleet))
        data = json.loads(r.stdout)
        assert data["h1"]["healthy"] is True and "tiny:latest" in data["h1"]["models"]

    async def test_unreachable(self) -> None:
        """No reachable server: the table shows DOWN, then one error line and exit 1."""
        r = await cli("status", "--server", "gone=http://127.0.0.1:9")
        assert r.returncode == 1
        assert "DOWN" in r.stdout
        assert (
            r.stderr.count("\n") == 1
            and "no server is reachable" in r.stderr
            and "Traceback" not in r.stderr
        )


class TestRun:
    async def test_run_dag_file(self, tmp_path: Path) -> None:
        """run FILE runs the DAG, then prints a per-server summary and the makespan."""
        dag = tmp_path / "dag.toml"
        dag.write_text(
            '[inputs]\ngoal = "a game"\n'
            '[[task]]\nid = "plan"\nmodel = "tiny"\nprompt = "Plan {goal}"\n'
            + "".join(
                f'[[task]]\nid = "c{i}"\nmodel = "tiny"\nprompt = "Code {{plan}}"\ndepends_on = ["plan"]\n'
                for i in range(4)
            ),
            encoding="utf-8",
        )
        async with SimFleet([tiny_profile("h1"), tiny_profile("h2")], time_scale=0.01) as fleet:
            r = await cli("run", str(dag), *servers(fleet))
        assert r.returncode == 0, r.stderr
        assert "finished  plan" in r.stdout  # plain progress lines when not a terminal
        assert "5/5 tasks ok" in r.stdout and "makespan" in r.stdout
        assert "h1" in r.stdout and "h2" in r.stdout

    async def test_failed_task_exits_non_zero(self, tmp_path: Path) -> None:
        """A task that fails makes the exit code non-zero and is listed."""
        dag = tmp_path / "dag.json"
        dag.write_text(
            json.dumps({"tasks": [{"id": "x", "model": "tiny", "prompt": "hi"}]}), encoding="utf-8"
        )
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as fleet:
            await fleet["h1"].set_faults(
                __import__("ollama_orchestra.sim", fromlist=["Faults"]).Faults(error_rate=1.0)
            )
            r = await cli("run", str(dag), *servers(fleet))
        assert r.returncode == 1
        assert "failed: x:" in r.stdout

    @pytest.mark.parametrize(
        ("args", "needle"),
        [
            (
                ["run", "/nonexistent/dag.toml", "--server", "a=http://127.0.0.1:9"],
                "cannot be read",
            ),
            (["status", "--server", "a=ftp://x"], "url"),
            (["status", "--server", "nourl"], "expected NAME=URL"),
            (["status", "--server", "a=http://127.0.0.1:9", "--strategy", "fastest"], "strategy"),
            (["status"], "OLLAMA_ORCHESTRA_SERVERS"),
        ],
    )
    async def test_bad_input_one_line(self, args: List[str], needle: str) -> None:
        """Bad flags and files: one clear line on stderr, non-zero exit, no traceback."""
        r = await cli(*args)
        assert r.returncode == 2
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

    async def test_bad_dag_file(self, tmp_path: Path) -> None:
        """A DAG with a cycle is refused before anything runs, naming the file."""
        dag = tmp_path / "cycle.toml"
        dag.write_text(
            '[[task]]\nid = "a"\nmodel = "m"\nprompt = "x"\ndepends_on = ["a"]\n', encoding="utf-8"
        )
        r = await cli("run", str(dag), "--server", "a=http://127.0.0.1:9")
        assert r.returncode == 2 and str(dag) in r.stderr and "itself" in r.stderr


class TestSimAndDemo:
    async def test_sim_delegates(self) -> None:
        """'sim' is the simulator's CLI: bad input there is reported the same way."""
        r = await cli("sim", "--time-scale", "0")
        assert r.returncode == 2 and "--time-scale" in r.stderr

    @pytest.mark.slow
    async def test_demo(self) -> None:
        """The demo runs on ollama02 alone, then on both hosts, and prints the speed-up."""
        r = await cli("demo", "--time-scale", "0.01", timeout=120)
        assert r.returncode == 0, r.stderr
        assert "speed-up over ollama02 alone:" in r.stdout
        util = r.stdout.split("utilization:")[-1]
        for host in ("ollama01", "ollama02"):
            pct = int(util.split(host)[1].split("%")[0])
            assert pct > 0
