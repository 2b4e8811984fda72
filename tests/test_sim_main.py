"""``python -m ollama_orchestra.sim``: its arguments and config files, called in-process, and
one fleet served from a file in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import anyio
import httpx
import pytest

from ollama_orchestra.sim.__main__ import main

HOST = '[[hosts]]\nname = "h"\n[[hosts.models]]\nname = "m"\nsize_gb = 1\ndecode_tps = 100\n'


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err.strip()


class TestConfigFile:
    """A bad --config file is refused before anything binds, in one line naming the problem."""

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("hosts = [", "is not valid TOML"),
            ('colour = "blue"\n' + HOST, "colour='blue': unknown key; expected 'hosts' or"),
            ("time_scale = 0.1\n", "hosts=None: must be a non-empty list of [[hosts]] tables"),
            ("hosts = []\n", "hosts=[]: must be a non-empty list"),
            ("time_scale = -1\n" + HOST, "--time-scale=-1: must be a number > 0"),
            ('time_scale = "fast"\n' + HOST, "--time-scale='fast': must be a number > 0"),
        ],
    )
    def test_bad_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
    ) -> None:
        """Exit 2; the line names the file (or the flag) and the bad value."""
        path = tmp_path / "fleet.toml"
        path.write_text(text, encoding="utf-8")
        assert main(["--config", str(path)]) == 2
        line = error_line(capsys)
        assert line.startswith("error: ") and needle in line

    def test_unreadable_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A directory given as the file: 'cannot be read', exit 2."""
        assert main(["--config", str(tmp_path)]) == 2
        assert "cannot be read" in error_line(capsys)


class TestFlags:
    """Flags are checked by the simulator's own parser; the prog name follows the caller."""

    @pytest.mark.parametrize(
        ("argv", "code"),
        [(["--help"], 0), (["--addresses", "everywhere"], 2), (["--seed", "x"], 2)],
    )
    def test_parser_exit_codes(
        self, capsys: pytest.CaptureFixture[str], argv: List[str], code: int
    ) -> None:
        """--help exits 0; a bad choice or type exits 2 with argparse's usage."""
        assert main(argv) == code
        assert "usage: python -m ollama_orchestra.sim" in capsys.readouterr()[code and 1]

    def test_port_base_out_of_range(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--port-base beyond 65535 is refused, naming the flag."""
        assert main(["--port-base", "65536"]) == 2
        assert "--port-base=65536: must be in 0..65535" in error_line(capsys)


@pytest.mark.slow
class TestServeFromFile:
    """A fleet from a file, on another loopback address, serves until SIGTERM."""

    async def test_file_fleet_on_another_address(self, tmp_path: Path) -> None:
        """--host 127.0.0.2 with a file's hosts: each host answers there; SIGTERM exits 0."""
        path = tmp_path / "fleet.toml"
        path.write_text("time_scale = 0.01\n" + HOST, encoding="utf-8")
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting a child does not block
            [
                sys.executable,
                "-m",
                "ollama_orchestra.sim",
                "--config",
                str(path),
                "--host",
                "127.0.0.2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            name, url = line.split()
            assert name == "h" and url.startswith("http://127.0.0.2:")
            async with httpx.AsyncClient() as http:
                tags = (await http.get(url + "/api/tags")).json()
            assert [m["name"] for m in tags["models"]] == ["m:latest"]
            proc.send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10)) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
