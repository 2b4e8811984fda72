"""The command line called in-process: ``main([...])``'s exit codes, its one-line errors, and
what each subcommand says when the extra it needs is missing."""

from __future__ import annotations

import io
import socket
import sys
from pathlib import Path
from typing import List

import pytest

import ollama_orchestra
from ollama_orchestra import MissingExtra, TaskEvent, TaskResult
from ollama_orchestra._report import Progress
from ollama_orchestra.cli import main


@pytest.fixture
def no_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn cannot be imported, as in a plain install."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


class TestVersionAndUsage:
    """--version and usage errors answer without starting anything."""

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the program and the package version, exit 0."""
        assert main(["--version"]) == 0
        assert capsys.readouterr().out == f"ollama-orchestra {ollama_orchestra.__version__}\n"

    def test_no_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No subcommand: argparse's usage message and exit 2."""
        assert main([]) == 2
        assert "usage: ollama-orchestra" in capsys.readouterr().err

    def test_sim_help_names_its_command(self, capsys: pytest.CaptureFixture[str]) -> None:
        """'ollama-orchestra sim --help' shows that command, not 'python -m ...'."""
        assert main(["sim", "--help"]) == 0
        assert capsys.readouterr().out.startswith("usage: ollama-orchestra sim")


class TestMissingExtra:
    """Without uvicorn, each command that needs it says which extra to install, in one line."""

    @pytest.mark.parametrize(
        ("argv", "extra"),
        [
            (["proxy", "--server", "a=http://127.0.0.1:9"], "proxy"),
            (["demo"], "sim"),
            (["sim"], "sim"),
        ],
    )
    def test_command_names_the_extra(
        self,
        no_uvicorn: None,
        capsys: pytest.CaptureFixture[str],
        argv: List[str],
        extra: str,
    ) -> None:
        """Exit 1 and one line: the command, the missing module and the pip command."""
        assert main(argv) == 1
        line = one_line(capsys)
        assert f"ollama-orchestra {argv[0]} needs uvicorn" in line
        assert line.endswith(f"pip install 'ollama-orchestra[{extra}]'")

    async def test_python_api_raises_missing_extra(self, no_uvicorn: None) -> None:
        """serve_proxy and SimServer raise MissingExtra, an ImportError naming the module."""
        config = ollama_orchestra.OrchestraConfig(
            servers=[ollama_orchestra.Server("a", "http://127.0.0.1:9")]
        )
        with pytest.raises(MissingExtra, match=r"\[proxy\]") as proxy_error:
            await ollama_orchestra.serve_proxy(config)
        assert isinstance(proxy_error.value, ImportError)
        assert proxy_error.value.name == "uvicorn" and proxy_error.value.extra == "proxy"
        from ollama_orchestra.testing import _host

        with pytest.raises(MissingExtra, match=r"SimServer needs uvicorn.*\[sim\]'$"):
            async with _host():
                pass


class TestBadFlags:
    """Bad flags end in one line on stderr and exit 2, before any connection is made."""

    @pytest.mark.parametrize(
        ("argv", "needle"),
        [
            (["status", "--server", "a=http://127.0.0.1:9*two"], "slots after '*'"),
            (["proxy", "--listen", "nowhere", "--server", "a=http://h:1"], "expected HOST:PORT"),
            (["proxy", "--listen", "127.0.0.1:99999", "--server", "a=http://h:1"], "HOST:PORT"),
            (["proxy", "--listen", "0.0.0.0:11435", "--server", "a=http://h:1"], "loopback"),
            (["demo", "--time-scale", "0"], "--time-scale 0.0: must be > 0"),
            (["run", "missing.toml", "--server", "a=http://127.0.0.1:9"], "cannot be read"),
        ],
    )
    def test_one_line_exit_2(
        self, capsys: pytest.CaptureFixture[str], argv: List[str], needle: str
    ) -> None:
        """The line names the flag and the bad value."""
        assert main(argv) == 2
        assert needle in one_line(capsys)


class TestStatusOfADownFleet:
    """status against a port that refuses: the table, then one line naming the host."""

    def test_config_file_and_strategy(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], unused_port: int
    ) -> None:
        """--strategy overrides the file's; the down host is named with its error; exit 1."""
        config = tmp_path / "orchestra.toml"
        config.write_text(
            f'strategy = "hybrid"\n[[servers]]\nname = "gone"\nurl = "http://127.0.0.1:{unused_port}"\n',
            encoding="utf-8",
        )
        code = main(["status", "--config", str(config), "--strategy", "round_robin", "--json"])
        out, err = capsys.readouterr()
        assert code == 1
        assert '"healthy": false' in out
        assert err.startswith("ollama-orchestra: no server is reachable: gone: ")
        assert len(err.splitlines()) == 1


class TestProgress:
    """The progress display: a bar on a terminal, one line per event otherwise."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def test_bar_on_a_terminal(self) -> None:
        """The bar counts done, running and failed tasks, and ends its line when all are done."""
        out = self.Tty()
        progress = Progress(2, out)
        progress(TaskEvent("queued", "a", 0.0))
        assert out.getvalue() == ""  # queued is not shown
        progress(TaskEvent("started", "a", 0.0))
        progress(TaskEvent("finished", "a", 1.0))
        progress(TaskEvent("skipped", "b", 1.0))
        frames = out.getvalue().split("\r")[1:]
        assert frames[0].endswith("0/2 done, 1 running, 0 not ok")
        assert frames[1].endswith("1/2 done, 0 running, 0 not ok")
        assert frames[2] == f"[{'#' * 30}] 2/2 done, 0 running, 1 not ok\n"

    def test_lines_otherwise(self) -> None:
        """Without a terminal each event is one line, with the server that ran the task."""
        out = io.StringIO()
        progress = Progress(1, out)
        result = TaskResult(id="a", status="ok", output="x", server="ollama01")
        progress(TaskEvent("started", "a", 0.0))
        progress(TaskEvent("finished", "a", 1.0, result))
        assert out.getvalue() == "started   a\nfinished  a on ollama01\n"
