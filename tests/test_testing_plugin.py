"""The pytest plugin loads anywhere, and its fixtures run under each async test runner.

Each project below is run once by pytest in a subprocess, as a user's suite would be; the
tests read the outcome of each of its tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence

import pytest

pytestmark = pytest.mark.slow

CHECK = """
import httpx
import pytest


async def check(server, fleet):
    async with httpx.AsyncClient() as client:
        tags = (await client.get(server.url + "/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["tiny:latest", "tiny-embed:latest"]
    assert sorted(s.name for s in fleet) == ["ollama01", "ollama02"]
    assert all(s.alive for s in fleet)


def test_trivial():
    assert 1 + 1 == 2
"""

# Not beside pytest-asyncio's auto mode: that runs every async fixture (ours as any other) on
# its own loop, while anyio runs the test on another.
ANYIO = """
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.mark.anyio
async def test_anyio(sim_server, sim_fleet):
    await check(sim_server, sim_fleet)
"""

AUTO = """
async def test_auto(sim_server, sim_fleet):
    await check(sim_server, sim_fleet)
"""

STRICT = (
    ANYIO
    + """
@pytest.mark.asyncio
async def test_strict(sim_server, sim_fleet):
    await check(sim_server, sim_fleet)
"""
)

NO_RUNNER = (
    ANYIO
    + """
def test_sync_asks_for_a_fixture(sim_server):
    pass


def test_sync_asks_for_the_fleet(sim_fleet):
    pass
"""
)

LOOP_SCOPE = "asyncio_default_fixture_loop_scope = function\n"


class Run:
    """One pytest run of a small project: its output and each test's outcome."""

    def __init__(self, project: Path, tests: str, ini: str, without: Sequence[str] = ()) -> None:
        project.mkdir()
        (project / "test_user.py").write_text(CHECK + tests, encoding="utf-8")
        (project / "pytest.ini").write_text(
            "[pytest]\nfilterwarnings = error\n" + ini, encoding="utf-8"
        )
        args = ["-p", "no:asyncio"] if "pytest_asyncio" in without else []
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", *args],
            cwd=project,
            env=self.blocking(project, without),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.output = result.stdout + result.stderr

    @staticmethod
    def blocking(project: Path, modules: Sequence[str]) -> Dict[str, str]:
        """An environment in which ``modules`` fail to import, as if they were not installed."""
        shadow = project / "_not_installed"
        shadow.mkdir()
        for name in modules:
            message = f"No module named {name!r}"
            (shadow / f"{name}.py").write_text(
                f"raise ModuleNotFoundError({message!r}, name={name!r})\n", encoding="utf-8"
            )
        return {**os.environ, "PYTHONPATH": str(shadow)}

    def outcome(self, test: str) -> str:
        """PASSED, FAILED or ERROR for ``test`` (a name in test_user.py, with its params)."""
        for line in self.output.splitlines():
            word, _, rest = line.partition(" ")
            if rest.split(" ")[0] == f"test_user.py::{test}":
                return word
        raise AssertionError(f"{test} did not run:\n{self.output}")


@pytest.fixture(scope="module")
def auto(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(tmp_path_factory.mktemp("auto") / "p", AUTO, "asyncio_mode = auto\n" + LOOP_SCOPE)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return Run(
        tmp_path_factory.mktemp("strict") / "p", STRICT, "asyncio_mode = strict\n" + LOOP_SCOPE
    )


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A project in an environment without pytest-asyncio and without uvicorn."""
    return Run(
        tmp_path_factory.mktemp("bare") / "p",
        NO_RUNNER,
        "",
        without=["pytest_asyncio", "uvicorn"],
    )


class TestFixturesUnderEachRunner:
    """sim_server and sim_fleet serve from the loop of whichever plugin runs the test."""

    def test_pytest_asyncio_auto_mode(self, auto: Run) -> None:
        """Auto mode: a plain async test gets both fixtures."""
        assert auto.outcome("test_auto") == "PASSED", auto.output

    def test_pytest_asyncio_strict_mode(self, strict: Run) -> None:
        """Strict mode: an @pytest.mark.asyncio test gets both, with warnings as errors."""
        assert strict.outcome("test_strict") == "PASSED", strict.output

    def test_anyio_plugin_beside_pytest_asyncio(self, strict: Run) -> None:
        """anyio's plugin on asyncio, beside pytest-asyncio in strict mode: anyio runs them."""
        assert strict.outcome("test_anyio[asyncio]") == "PASSED", strict.output


class TestWhereTheFixturesCannotRun:
    """Outside asyncio, or with no async runner, one clear error names what is needed."""

    def test_trio_gives_one_clear_error(self, strict: Run) -> None:
        """On trio the fixture fails with AsyncioOnly, not 'no running event loop'."""
        pytest.importorskip("trio")
        assert strict.outcome("test_anyio[trio]") == "ERROR", strict.output
        assert (
            "AsyncioOnly: SimServer (in-process) runs on asyncio only, not on trio" in strict.output
        )
        assert "no running event loop" not in strict.output

    def test_no_async_runner_names_the_plugins(self, bare: Run) -> None:
        """With no async runner, a test asking for a fixture is told what to install."""
        assert bare.outcome("test_sync_asks_for_a_fixture") == "ERROR", bare.output
        assert bare.outcome("test_sync_asks_for_the_fleet") == "ERROR", bare.output
        assert "need pytest-asyncio (pip install pytest-asyncio) or anyio" in bare.output


class TestPluginLoadsAnywhere:
    """Installing the package never breaks the test suites of other projects."""

    def test_suite_without_pytest_asyncio_or_uvicorn(self, bare: Run) -> None:
        """With neither pytest-asyncio nor uvicorn the plugin loads and a plain test passes."""
        assert bare.outcome("test_trivial") == "PASSED", bare.output

    def test_anyio_alone_runs_the_fixtures(self, bare: Run) -> None:
        """anyio's plugin without pytest-asyncio runs the fixtures; without uvicorn, they say so."""
        assert bare.outcome("test_anyio[asyncio]") == "ERROR", bare.output
        assert (
            "MissingExtra: SimServer needs uvicorn, which is not installed: "
            "pip install 'ollama-orchestra[sim]'" in bare.output
        )

    def test_anyio_without_pytest_asyncio_serves(self, tmp_path: Path) -> None:
        """anyio's plugin alone (no pytest-asyncio) with uvicorn: the fixtures serve."""
        run = Run(tmp_path / "p", ANYIO, "", without=["pytest_asyncio"])
        assert run.outcome("test_anyio[asyncio]") == "PASSED", run.output
