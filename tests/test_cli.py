"""The command line against simulated fleets: in a subprocess, and in-process (``orchestra_cli.main``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence, Tuple

import anyio
import pytest
import pytest_asyncio

import ollama_orchestra.cli as orchestra_cli
from ollama_orchestra import ConfigError
from ollama_orchestra.sim import Faults, SimFleet
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
            # Generation fails, probes do not: the task fails at once (status=500 would take
            # the host down and make the task wait wait_for_healthy_s first).
            await fleet["h1"].set_faults(Faults(error_rate=1.0))
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
        """The demo runs on ollama02 alone, then on both hosts, and prints the speed-up and the
        prefill time the hosts' prompt caches saved."""
        r = await cli("demo", "--time-scale", "0.01", timeout=120)
        assert r.returncode == 0, r.stderr
        assert "speed-up over ollama02 alone:" in r.stdout
        # The best possible makespan: a lower bound, which the run cannot beat.
        run = r.stdout.split("2) the orchestra")[1]
        achieved = float(run.split("makespan ")[1].split("s,")[0].replace(",", ""))
        floor = float(run.split("best possible makespan >= ")[1].split("s ")[0].replace(",", ""))
        assert 0 < floor <= achieved
        saved = r.stdout.split("prefill time saved:")[1].split("\n")[0]
        assert float(saved.split("s (")[0].replace(",", "")) > 0  # the shared context is cached
        assert "prompt tokens evaluated" in saved
        util = r.stdout.split("utilization:")[-1]
        for host in ("ollama01", "ollama02"):
            pct = int(util.split(host)[1].split("%")[0])
            assert pct > 0


# -- in-process: orchestra_cli.main in a worker thread, so the in-process simulator keeps serving ----------


@dataclass
class Outcome:
    code: int
    out: str
    err: str


async def main_in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """``orchestra_cli.main(args)`` (its own event loop, in a thread) with stdout and stderr captured."""
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(orchestra_cli.main, list(args))
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def main_here(capsys: pytest.CaptureFixture[str], *args: str) -> Outcome:
    """``orchestra_cli.main(args)`` from a synchronous test, captured."""
    capsys.readouterr()
    code = orchestra_cli.main(list(args))
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def one_error_line(result: Outcome) -> str:
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("ollama-orchestra: ") and "Traceback" not in result.err
    return lines[0]


@pytest.fixture(autouse=True)
def no_fleet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell says, the tests choose the fleet."""
    for name in (
        "OLLAMA_ORCHESTRA_SERVERS",
        "OLLAMA_ORCHESTRA_STRATEGY",
        "OLLAMA_ORCHESTRA_ROLES",
        "OLLAMA_ORCHESTRA_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)


def write_dag(path: Path, tasks: Sequence[Mapping[str, Any]], **top: Any) -> Path:
    path.write_text(json.dumps({"tasks": tasks, **top}), encoding="utf-8")
    return path


PIPELINE: List[Dict[str, Any]] = [
    {"id": "plan", "model": "tiny", "prompt": "Plan {goal}"},
    {"id": "code_a", "model": "tiny", "prompt": "Code A of {plan}", "depends_on": ["plan"]},
    {"id": "code_b", "model": "tiny", "prompt": "Code B of {plan}", "depends_on": ["plan"]},
]


@pytest_asyncio.fixture
async def two_hosts() -> AsyncIterator[SimFleet]:
    async with SimFleet([tiny_profile("h1"), tiny_profile("h2")], time_scale=0.01) as fleet:
        yield fleet


class TestRunJson:
    """run --json: one JSON document on stdout, progress on stderr."""

    async def test_every_task_in_the_document(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each task's id, status, output, server, attempts and timings; makespan; servers."""
        dag = write_dag(tmp_path / "dag.json", PIPELINE, inputs={"goal": "a game"})
        r = await main_in_thread(capsys, "run", str(dag), "--json", *servers(two_hosts))
        assert r.code == 0, r.err
        doc = json.loads(r.out)  # stdout is the document and nothing else
        assert doc["ok"] is True
        tasks = {t["id"]: t for t in doc["tasks"]}
        assert [t["id"] for t in doc["tasks"]] == ["plan", "code_a", "code_b"]
        for t in tasks.values():
            assert t["status"] == "ok" and t["error"] is None
            assert isinstance(t["output"], str) and t["output"]
            assert t["server"] in ("h1", "h2") and t["attempts"] >= 1
            assert 0 <= t["started_s"] <= t["finished_s"] <= doc["makespan_s"] + 0.01
            assert t["run_s"] == pytest.approx(t["finished_s"] - t["started_s"], abs=1e-5)
        assert tasks["code_a"]["started_s"] >= tasks["plan"]["finished_s"]
        assert doc["makespan_s"] > 0
        assert set(doc["servers"]) == {"h1", "h2"}
        assert sum(s["tasks"] for s in doc["servers"].values()) == 3
        assert {"utilization", "share", "fair_share", "tokens_per_s"} <= set(doc["servers"]["h1"])
        assert "finished  plan" in r.err  # progress went to stderr

    async def test_failures_in_the_document_and_exit_code(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failed task and its skipped dependent carry their errors; the exit code is 1."""
        dag = write_dag(
            tmp_path / "dag.json",
            [
                {"id": "good", "model": "tiny", "prompt": "hi"},
                # Passes the pre-flight (the model exists) but fails on the host: an embedding
                # model cannot generate (HTTP 400, not retried).
                {"id": "bad", "model": "tiny-embed", "prompt": "hi"},
                {"id": "after", "model": "tiny", "prompt": "{bad}", "depends_on": ["bad"]},
            ],
        )
        r = await main_in_thread(capsys, "run", str(dag), "--json", *servers(two_hosts))
        assert r.code == 1
        doc = json.loads(r.out)
        status = {t["id"]: (t["status"], t["error"]) for t in doc["tasks"]}
        assert doc["ok"] is False
        assert status["good"] == ("ok", None)
        assert status["bad"][0] == "failed" and "tiny-embed" in status["bad"][1]
        assert status["after"][0] == "skipped" and "'bad'" in status["after"][1]
        assert "failed: bad:" in r.err

    async def test_json_and_print_outputs_exclusive(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json and --print-outputs cannot be combined (exit 2, before anything runs)."""
        dag = write_dag(tmp_path / "dag.json", PIPELINE[:1])
        r = main_here(
            capsys, "run", str(dag), "--json", "--print-outputs", "--server", "a=http://127.0.0.1:9"
        )
        assert r.code == 2 and "not allowed with" in r.err


class TestRunOutputs:
    """run --output DIR and --print-outputs."""

    async def test_output_dir_files(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--output writes DIR/<id>.txt per successful task (DIR created), equal to the JSON."""
        dag = write_dag(tmp_path / "dag.json", PIPELINE, inputs={"goal": "a game"})
        outdir = tmp_path / "out" / "nested"
        r = await main_in_thread(
            capsys, "run", str(dag), "--json", "--output", str(outdir), *servers(two_hosts)
        )
        assert r.code == 0, r.err
        outputs = {t["id"]: t["output"] for t in json.loads(r.out)["tasks"]}
        assert sorted(p.name for p in outdir.iterdir()) == ["code_a.txt", "code_b.txt", "plan.txt"]
        for tid, text in outputs.items():
            assert (outdir / f"{tid}.txt").read_text(encoding="utf-8") == text

    async def test_output_dir_skips_failed_tasks(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A failed task has no output file; the others do."""
        dag = write_dag(
            tmp_path / "dag.json",
            [
                {"id": "good", "model": "tiny", "prompt": "hi"},
                # Passes the pre-flight (the model exists) but fails on the host: an embedding
                # model cannot generate (HTTP 400, not retried).
                {"id": "bad", "model": "tiny-embed", "prompt": "hi"},
            ],
        )
        r = await main_in_thread(
            capsys, "run", str(dag), "--output", str(tmp_path / "out"), *servers(two_hosts)
        )
        assert r.code == 1
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.txt"]

    def test_output_dir_not_creatable(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An --output that cannot be a directory: one line, exit 2, before anything runs."""
        dag = write_dag(tmp_path / "dag.json", PIPELINE[:1], inputs={"goal": "x"})
        blocker = tmp_path / "file"
        blocker.write_text("", encoding="utf-8")
        r = main_here(
            capsys, "run", str(dag), "--output", str(blocker), "--server", "a=http://127.0.0.1:9"
        )
        assert r.code == 2
        assert "--output" in one_error_line(r)

    async def test_print_outputs(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--print-outputs prints each task's output under its id and server, then the summary."""
        dag = write_dag(tmp_path / "dag.json", PIPELINE, inputs={"goal": "a game"})
        outdir = tmp_path / "out"
        r = await main_in_thread(
            capsys,
            "run",
            str(dag),
            "--print-outputs",
            "--output",
            str(outdir),
            *servers(two_hosts),
        )
        assert r.code == 0, r.err
        for tid in ("plan", "code_a", "code_b"):
            text = (outdir / f"{tid}.txt").read_text(encoding="utf-8")
            header = next(line for line in r.out.splitlines() if line.startswith(f"== {tid} ("))
            assert header.endswith(("(h1) ==", "(h2) =="))
            assert text.strip() in r.out.split(header, 1)[1]
        assert r.out.index("== code_b") < r.out.index("3/3 tasks ok")


class TestRoles:
    """Roles with --server: --role flags, OLLAMA_ORCHESTRA_ROLES, flags over the environment."""

    ROLE_DAG: List[Dict[str, Any]] = [
        {"id": "plan", "model": "planner", "prompt": "Plan"},
        {"id": "code", "model": "coder", "prompt": "Code {plan}", "depends_on": ["plan"]},
    ]

    async def run_roles(
        self, fleet: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str
    ) -> Dict[str, Tuple[str, Optional[str]]]:
        dag = write_dag(tmp_path / "dag.json", self.ROLE_DAG)
        r = await main_in_thread(capsys, "run", str(dag), "--json", *servers(fleet), *flags)
        return {t["id"]: (t["status"], t["error"]) for t in json.loads(r.out)["tasks"]}

    async def test_role_flags(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--role ROLE=MODEL (repeatable) resolves the DAG's roles."""
        got = await self.run_roles(
            two_hosts, tmp_path, capsys, "--role", "planner=tiny", "--role", "coder=tiny"
        )
        assert got == {"plan": ("ok", None), "code": ("ok", None)}

    async def test_env_roles_with_server(
        self,
        two_hosts: SimFleet,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """OLLAMA_ORCHESTRA_ROLES is honoured when the servers come from --server."""
        monkeypatch.setenv("OLLAMA_ORCHESTRA_ROLES", "planner=tiny,coder=tiny")
        got = await self.run_roles(two_hosts, tmp_path, capsys)
        assert got == {"plan": ("ok", None), "code": ("ok", None)}

    async def test_flag_overrides_env(
        self,
        two_hosts: SimFleet,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A --role flag wins over the same role in the environment; the others stay."""
        monkeypatch.setenv("OLLAMA_ORCHESTRA_ROLES", "planner=tiny,coder=absent-model")
        got = await self.run_roles(two_hosts, tmp_path, capsys, "--role", "coder=tiny")
        assert got == {"plan": ("ok", None), "code": ("ok", None)}

    async def test_env_alone_is_used(
        self,
        two_hosts: SimFleet,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without the flag, the environment's role is the one used: here a missing model,
        which the pre-flight refuses before any task runs (exit 2, the role and model named)."""
        monkeypatch.setenv("OLLAMA_ORCHESTRA_ROLES", "planner=tiny,coder=absent-model")
        dag = write_dag(tmp_path / "dag.json", self.ROLE_DAG)
        r = await main_in_thread(capsys, "run", str(dag), "--json", *servers(two_hosts))
        assert r.code == 2 and r.out == ""
        assert "'code'" in r.err and "absent-model" in r.err
        assert all(two_hosts[h].state().requests == 0 for h in ("h1", "h2"))

    async def test_role_flag_over_config_file(
        self, two_hosts: SimFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--role also overrides a --config file's [roles]."""
        config = tmp_path / "orchestra.toml"
        config.write_text(
            '[roles]\nplanner = "tiny"\ncoder = "absent-model"\n'
            + "".join(
                f'[[servers]]\nname = "{s.name}"\nurl = "{s.url}"\nmax_concurrency = 2\n'
                for s in two_hosts
            ),
            encoding="utf-8",
        )
        dag = write_dag(tmp_path / "dag.json", self.ROLE_DAG)
        r = await main_in_thread(
            capsys, "run", str(dag), "--json", "--config", str(config), "--role", "coder=tiny"
        )
        assert r.code == 0, r.err
        assert all(t["status"] == "ok" for t in json.loads(r.out)["tasks"])

    async def test_role_flags_over_env_servers(
        self,
        two_hosts: SimFleet,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With the servers from OLLAMA_ORCHESTRA_SERVERS, --role overrides its _ROLES."""
        monkeypatch.setenv(
            "OLLAMA_ORCHESTRA_SERVERS", ",".join(f"{s.name}={s.url}*2" for s in two_hosts)
        )
        monkeypatch.setenv("OLLAMA_ORCHESTRA_ROLES", "planner=tiny,coder=absent-model")
        dag = write_dag(tmp_path / "dag.json", self.ROLE_DAG)
        r = await main_in_thread(capsys, "run", str(dag), "--json", "--role", "coder=tiny")
        assert r.code == 0, r.err
        assert {t["server"] for t in json.loads(r.out)["tasks"]} <= {"h1", "h2"}

    def test_env_strategy_with_server(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OLLAMA_ORCHESTRA_STRATEGY applies with --server too (here a bad one: exit 2)."""
        monkeypatch.setenv("OLLAMA_ORCHESTRA_STRATEGY", "fastest")
        r = main_here(capsys, "status", "--server", "a=http://127.0.0.1:9")
        assert r.code == 2 and "strategy" in one_error_line(r)

    async def test_strategy_flag_over_env(
        self,
        two_hosts: SimFleet,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """--strategy overrides the environment's."""
        monkeypatch.setenv("OLLAMA_ORCHESTRA_STRATEGY", "fastest")
        r = await main_in_thread(
            capsys, "status", *servers(two_hosts), "--strategy", "least_loaded"
        )
        assert r.code == 0, r.err

    @pytest.mark.parametrize("role", ["coder", "=tiny", "coder="])
    def test_bad_role_flag(
        self, role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A malformed --role is one line naming it, exit 2."""
        r = main_here(capsys, "status", "--server", "a=http://127.0.0.1:9", "--role", role)
        assert r.code == 2 and "--role" in one_error_line(r)


class TestStatusCause:
    """status shows why a host is down in the table's output, not only in --json."""

    async def test_down_host_line(
        self, two_hosts: SimFleet, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A down host gets a line with its last error; an up host gets none; exit 0."""
        r = await main_in_thread(
            capsys, "status", *servers(two_hosts), "--server", "gone=http://127.0.0.1:9"
        )
        assert r.code == 0, r.err
        causes = [line for line in r.out.splitlines() if " is down: " in line]
        assert len(causes) == 1 and causes[0].startswith("gone is down: ")
        assert len(causes[0]) > len("gone is down: ") + 3  # an actual reason

    def test_all_down(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No host up: each one's cause in the output, then one line on stderr, exit 1."""
        r = main_here(
            capsys,
            "status",
            "--server",
            "a=http://127.0.0.1:9",
            "--server",
            "b=http://127.0.0.1:9",
        )
        assert r.code == 1
        assert {
            line.split(" is down: ")[0] for line in r.out.splitlines() if " is down: " in line
        } == {
            "a",
            "b",
        }
        assert "no server is reachable" in one_error_line(r)


class TestOneLineErrors:
    """Expected failures end in one line on stderr and a non-zero exit; bugs keep tracebacks."""

    @pytest.mark.parametrize(
        "server",
        [
            "a=notaurl",
            "=x",
            "a=http://h:99999",
            "a=http://[::1",
            "a=http://h*x",
            "a=http://h*0",
            "nourl",
            "a=",
        ],
    )
    def test_malformed_server(self, server: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed --server value: one line, exit 2."""
        r = main_here(capsys, "status", "--server", server)
        assert r.code == 2
        line = one_error_line(r)
        assert "--server" in line or "url" in line or "max_concurrency" in line

    def test_server_credentials_not_shown(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A --server error does not print the URL's password."""
        r = main_here(capsys, "status", "--server", "a=http://user:s3cret@h*x")
        assert r.code == 2 and "s3cret" not in one_error_line(r)

    def test_port_in_use(self, capsys: pytest.CaptureFixture[str]) -> None:
        """proxy --listen on a port in use: one line (anyio's exception group unwrapped)."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            r = main_here(
                capsys, "proxy", "--listen", f"127.0.0.1:{port}", "--server", "a=http://127.0.0.1:9"
            )
        assert r.code != 0
        assert str(port) in one_error_line(r)

    def test_empty_token(self, capsys: pytest.CaptureFixture[str]) -> None:
        """proxy --token ' ': one line naming the token, no exception group."""
        r = main_here(capsys, "proxy", "--token", " ", "--server", "a=http://127.0.0.1:9")
        assert r.code == 2 and "token" in one_error_line(r)

    def test_group_of_expected_errors(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A group of expected errors is reported by its first, counting the others."""

        async def two_failures(args: Any, out: Any) -> int:
            async def fail(exc: Exception) -> None:
                raise exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(fail, ConfigError("servers[0].url", "x", "bad"))
                await anyio.sleep(0)  # noqa: ASYNC115 - orders the two failures
                tg.start_soon(fail, OSError("disk full"))
            return 0

        monkeypatch.setattr(orchestra_cli, "cmd_status", two_failures)
        r = main_here(capsys, "status")
        assert r.code == 2
        assert one_error_line(r) == "ollama-orchestra: servers[0].url='x': bad (and 1 more)"

    def test_bug_keeps_its_traceback(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unexpected exception propagates (alone or in a group with an expected one)."""

        async def bug(args: Any, out: Any) -> int:
            raise RuntimeError("a bug")

        async def mixed(args: Any, out: Any) -> int:
            async def fail(exc: Exception) -> None:
                raise exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(fail, ConfigError("f", 1, "bad"))
                tg.start_soon(fail, RuntimeError("a bug"))
            return 0

        monkeypatch.setattr(orchestra_cli, "cmd_status", bug)
        with pytest.raises(RuntimeError, match="a bug"):
            orchestra_cli.main(["status"])
        monkeypatch.setattr(orchestra_cli, "cmd_status", mixed)
        with pytest.raises(Exception, match="unhandled errors") as info:
            orchestra_cli.main(["status"])
        inner = getattr(info.value, "exceptions", ())
        assert any(isinstance(e, RuntimeError) for e in inner)

    def test_interrupt(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Ctrl-C: exit 130, nothing printed."""

        async def interrupted(args: Any, out: Any) -> int:
            raise KeyboardInterrupt

        monkeypatch.setattr(orchestra_cli, "cmd_status", interrupted)
        r = main_here(capsys, "status")
        assert (r.code, r.err) == (130, "")

    @pytest.mark.parametrize(
        ("server_extra", "field"),
        [
            ("headers = { X = 5 }", "headers"),
            ("models = [5]", "models"),
        ],
    )
    def test_config_wrong_types(
        self, server_extra: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config value of the wrong type: one line naming the field, exit 2."""
        config = tmp_path / "orchestra.toml"
        config.write_text(
            f'[[servers]]\nname = "a"\nurl = "http://127.0.0.1:9"\n{server_extra}\n',
            encoding="utf-8",
        )
        r = main_here(capsys, "status", "--config", str(config))
        assert r.code == 2 and field in one_error_line(r)

    @pytest.mark.parametrize(
        ("task_extra", "field"),
        [
            ("prompt = 5", "prompt"),
            ('messages = "hello"', "messages"),
            ('prompt = "x"\nestimate = nan', "estimate"),
            ('prompt = "x"\npriority = "high"', "priority"),
        ],
    )
    def test_dag_wrong_types(
        self, task_extra: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A DAG task field of the wrong type: one line naming the field, exit 2."""
        dag = tmp_path / "dag.toml"
        dag.write_text(f'[[task]]\nid = "t"\nmodel = "m"\n{task_extra}\n', encoding="utf-8")
        # Should the loader let it through, the run must end quickly: no host, no waiting.
        config = tmp_path / "orchestra.toml"
        config.write_text(
            'wait_for_healthy_s = 0\n[[servers]]\nname = "a"\nurl = "http://127.0.0.1:9"\n',
            encoding="utf-8",
        )
        r = main_here(capsys, "run", str(dag), "--config", str(config))
        assert r.code == 2 and field in one_error_line(r)
