"""The pytest plugin loads anywhere, and its fixtures run under each async test runner.

Each case runs pytest in a subprocess on a small project of its own, as a user's suite would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
"""

ANYIO = """
@pytest.fixture
def anyio_backend():
    return "{backend}"


@pytest.mark.anyio
async def test_fixtures(sim_server, sim_fleet):
    await check(sim_server, sim_fleet)
"""


def block(project: Path, modules: Sequence[str]) -> Dict[str, str]:
    """An environment in which ``modules`` fail to import, as if they were not installed."""
    shadow = project / "_not_installed"
    shadow.mkdir(exist_ok=True)
    for name in modules:
        (shadow / f"{name}.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n",
            encoding="utf-8",
        )
    return {**os.environ, "PYTHONPATH": str(shadow)}


def run_pytest(
    project: Path, test: str, ini: str, *args: str, without: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    (project / "test_user.py").write_text(CHECK + textwrap.dedent(test), encoding="utf-8")
    (project / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\n" + ini, encoding="utf-8"
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, "test_user.py"],
        cwd=project,
        env=block(project, without),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def passed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and " passed" in result.stdout


class TestFixturesUnderEachRunner:
    """sim_server and sim_fleet serve from the loop of whichever plugin runs the test."""

    def test_pytest_asyncio_auto_mode(self, tmp_path: Path) -> None:
        """Auto mode: a plain async test gets both fixtures."""
        test = "async def test_fixtures(sim_server, sim_fleet):\n    await check(sim_server, sim_fleet)\n"
        ini = "asyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        result = run_pytest(tmp_path, test, ini)
        assert passed(result), result.stdout + result.stderr

    def test_pytest_asyncio_strict_mode(self, tmp_path: Path) -> None:
        """Strict mode: an @pytest.mark.asyncio test gets both fixtures, without warnings."""
        test = (
            "@pytest.mark.asyncio\n"
            "async def test_fixtures(sim_server, sim_fleet):\n"
            "    await check(sim_server, sim_fleet)\n"
        )
        ini = "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        result = run_pytest(tmp_path, test, ini)
        assert passed(result), result.stdout + result.stderr

    def test_anyio_plugin_beside_pytest_asyncio(self, tmp_path: Path) -> None:
        """anyio's plugin on asyncio, pytest-asyncio installed (strict): the anyio runner wins."""
        ini = "asyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        result = run_pytest(tmp_path, ANYIO.format(backend="asyncio"), ini)
        assert passed(result), result.stdout + result.stderr

    def test_anyio_plugin_without_pytest_asyncio(self, tmp_path: Path) -> None:
        """anyio's plugin alone, pytest-asyncio not installed: the fixtures still work."""
        result = run_pytest(
            tmp_path,
            ANYIO.format(backend="asyncio"),
            "",
            "-p",
            "no:asyncio",
            without=["pytest_asyncio"],
        )
        assert passed(result), result.stdout + result.stderr


class TestWhereTheFixturesCannotRun:
    """Outside asyncio, or with no async runner, one clear error names what is needed."""

    def test_trio_gives_one_clear_error(self, tmp_path: Path) -> None:
        """On trio the fixture fails with AsyncioOnly, not 'no running event loop'."""
        pytest.importorskip("trio")
        ini = "asyncio_default_fixture_loop_scope = function\n"
        result = run_pytest(tmp_path, ANYIO.format(backend="trio"), ini)
        assert result.returncode == 1, result.stdout + result.stderr
        assert (
            "AsyncioOnly: SimServer (in-process) runs on asyncio only, not on trio" in result.stdout
        )
        assert "no running event loop" not in result.stdout

    def test_no_async_runner_names_the_plugins(self, tmp_path: Path) -> None:
        """Without pytest-asyncio and anyio's plugin, asking for a fixture says what to install."""
        test = "def test_fixture(sim_server):\n    pass\n"
        result = run_pytest(
            tmp_path,
            test,
            "",
            "-p",
            "no:asyncio",
            "-p",
            "no:anyio",
            without=["pytest_asyncio"],
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "need pytest-asyncio (pip install pytest-asyncio) or anyio" in result.stdout


class TestPluginLoadsAnywhere:
    """Installing the package never breaks the test suites of other projects."""

    def test_unrelated_suite_without_pytest_asyncio_or_uvicorn(self, tmp_path: Path) -> None:
        """With neither pytest-asyncio nor uvicorn, an unrelated suite loads the plugin and passes."""
        result = run_pytest(
            tmp_path,
            "def test_trivial():\n    assert 1 + 1 == 2\n",
            "",
            "-p",
            "no:asyncio",
            without=["pytest_asyncio", "uvicorn"],
        )
        assert passed(result), result.stdout + result.stderr
        assert "ollama_orchestra" in run_pytest(
            tmp_path,
            "",
            "",
            "-p",
            "no:asyncio",
            "--trace-config",
            "--co",
            without=["pytest_asyncio", "uvicorn"],
        ).stdout.replace("-", "_")
