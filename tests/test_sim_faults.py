"""Each simulated fault, as a client sees it, and the servers' kill/restart."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Set

import anyio
import httpx
import ollama
import pytest

from ollama_orchestra.sim import Faults, SimFleet, SimServer
from ollama_orchestra.testing import tiny_profile

TINY = "tiny:latest"
BODY: Dict[str, Any] = {"model": TINY, "prompt": "x", "options": {"num_predict": 20}}


def is_alive(server: SimServer) -> bool:
    return server.alive


async def lines_of(http: httpx.AsyncClient, body: Dict[str, Any] = BODY) -> List[Dict[str, Any]]:
    out = []
    async with http.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.strip():
                out.append(json.loads(line))
    return out


class TestFaults:
    async def test_refuse(self, sim_server: SimServer) -> None:
        """'refuse' closes the port: connections are refused; clearing it serves again."""
        await sim_server.set_faults(Faults(refuse=True))
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/")
        await sim_server.clear_faults()
        with anyio.fail_after(5):
            while not is_alive(sim_server):  # the restart is scheduled; wait for its effect
                await anyio.lowlevel.checkpoint()
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            assert (await http.get("/")).status_code == 200

    async def test_hang(self, sim_server: SimServer) -> None:
        """'hang' accepts and reads, but never answers: the client times out."""
        await sim_server.set_faults(Faults(hang=True))
        async with httpx.AsyncClient(
            base_url=sim_server.url, timeout=httpx.Timeout(5.0, read=0.2)
        ) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/api/generate", json=BODY)

    async def test_reset_mid_stream(self, sim_server: SimServer) -> None:
        """'reset_after_chunks' breaks the connection after some chunks."""
        await sim_server.set_faults(Faults(reset_after_chunks=3))
        got: List[Dict[str, Any]] = []

        async def read(http: httpx.AsyncClient) -> None:
            async with http.stream("POST", "/api/generate", json=BODY) as r:
                async for line in r.aiter_lines():
                    got.append(json.loads(line))

        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await read(http)
        assert len(got) == 3 and not any(x["done"] for x in got)

    async def test_reset_gives_the_slot_back_without_gc(self, sim_server: SimServer) -> None:
        """A reset generation frees its slot before the connection breaks, not when a GC pass
        finds its suspended generator (which stalled the host's queue on Python 3.8)."""
        await sim_server.set_faults(Faults(reset_after_chunks=2))
        assert sim_server.sim is not None
        gc.disable()
        try:
            async with httpx.AsyncClient(base_url=sim_server.url) as http:
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                    await lines_of(http)
                assert sim_server.sim.state().in_flight == 0
        finally:
            gc.enable()

    async def test_client_gone_gives_the_slot_back_without_gc(self, sim_server: SimServer) -> None:
        """A client that leaves mid-stream frees its slot with GC off: the generation is
        closed by the server, not by the garbage collector."""
        assert sim_server.sim is not None
        body = {**BODY, "options": {"num_predict": 10_000}}
        gc.disable()
        try:
            async with httpx.AsyncClient(base_url=sim_server.url) as http:
                async with http.stream("POST", "/api/generate", json=body) as r:
                    async for _ in r.aiter_lines():
                        break
                assert sim_server.sim.state().in_flight == 1
            with anyio.fail_after(5):  # the server sees the close on its own schedule
                while sim_server.sim.state().in_flight:
                    await anyio.lowlevel.checkpoint()
        finally:
            gc.enable()

    @pytest.mark.parametrize("status", [500, 503])
    async def test_status(self, sim_server: SimServer, status: int) -> None:
        """'status' answers API calls with that status and an Ollama error body."""
        await sim_server.set_faults(Faults(status=status))
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            r = await http.post("/api/generate", json=BODY)
            assert (await http.get("/")).status_code == 200  # the process is up
        assert r.status_code == status and "error" in r.json()

    async def test_error_rate(self, sim_server: SimServer) -> None:
        """'error_rate' fails that share of requests with a 500."""
        await sim_server.set_faults(Faults(error_rate=1.0))
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            assert (await http.post("/api/generate", json=BODY)).status_code == 500
            await sim_server.set_faults(Faults(error_rate=0.5))
            codes = [
                (
                    await http.post("/api/generate", json={**BODY, "options": {"num_predict": 1}})
                ).status_code
                for _ in range(40)
            ]
        assert 8 <= codes.count(500) <= 32 and set(codes) == {200, 500}

    async def test_error_line_mid_stream(self, sim_server: SimServer) -> None:
        """'stream_error_after_chunks' keeps status 200 and ends the stream with an error line."""
        await sim_server.set_faults(Faults(stream_error_after_chunks=2))
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            got = await lines_of(http)
        assert len(got) == 3 and "error" in got[-1]

    async def test_slow(self, sim_server: SimServer) -> None:
        """'slow' divides the speed: decoding takes that much longer."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            normal = (await lines_of(http))[-1]
            await sim_server.set_faults(Faults(slow=3.0))
            slow = (await lines_of(http))[-1]
        assert slow["eval_duration"] / normal["eval_duration"] == pytest.approx(3.0, rel=0.2)

    async def test_flapping(self, sim_server: SimServer) -> None:
        """'flap_period_s' alternates refusing and serving."""
        await sim_server.set_faults(Faults(flap_period_s=0.1))
        seen: Set[str] = set()
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            with anyio.fail_after(5):
                while seen != {"up", "down"}:
                    try:
                        await http.get("/")
                        seen.add("up")
                    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                        # Refused, or a kept-alive connection aborted as the port went down.
                        seen.add("down")
                    await anyio.sleep(0.01)  # a client polling a flapping host
        await sim_server.clear_faults()

    async def test_admin_route_sets_faults(self, sim_server: SimServer) -> None:
        """POST /_sim/faults switches faults at run time; bad faults get a 400."""
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            r = await http.post("/_sim/faults", json={"status": 500})
            assert (
                r.status_code == 200
                and sim_server.sim is not None
                and sim_server.sim.faults.status == 500
            )
            bad = await http.post("/_sim/faults", json={"bogus": 1})
        assert bad.status_code == 400 and "bogus" in bad.json()["error"]


class TestKillRestart:
    async def test_inprocess_kill_and_restart(self, sim_server: SimServer) -> None:
        """A killed host refuses connections and breaks open ones; restarted, it serves again."""
        port = sim_server.port
        sim_server.pause()
        async with httpx.AsyncClient(base_url=sim_server.url) as http:
            async with anyio.create_task_group() as tg:
                errors: List[BaseException] = []

                async def in_flight() -> None:
                    try:
                        await http.post("/api/generate", json=BODY)
                    except httpx.HTTPError as exc:
                        errors.append(exc)

                tg.start_soon(in_flight)
                await sim_server.wait_until(lambda st: st.in_flight == 1)
                await sim_server.kill()
            assert errors and isinstance(errors[0], (httpx.RemoteProtocolError, httpx.ReadError))
            with pytest.raises(httpx.ConnectError):
                await http.get("/")
            await sim_server.restart()
            assert sim_server.port == port
            assert (await http.get("/")).status_code == 200

    async def test_kill_logs_no_traceback(self, sim_server: SimServer) -> None:
        """Killing a host under a streaming request cuts it quietly: uvicorn logs no
        "Exception in ASGI application" traceback for the request the host stopped under."""
        records: List[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Keep(level=logging.ERROR)
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addHandler(handler)
        try:
            async with httpx.AsyncClient(base_url=sim_server.url) as http:
                errors: List[BaseException] = []
                body = {**BODY, "options": {"num_predict": 100_000}}
                async with anyio.create_task_group() as tg:

                    async def streaming() -> None:
                        try:
                            await lines_of(http, body)
                        except httpx.HTTPError as exc:
                            errors.append(exc)

                    tg.start_soon(streaming)
                    await sim_server.wait_until(lambda st: st.in_flight == 1)
                    await sim_server.kill()
                assert errors  # the stream was cut
        finally:
            uvicorn_log.removeHandler(handler)
        assert [r.getMessage() for r in records] == []

    @pytest.mark.slow
    async def test_subprocess_kill_and_restart(self) -> None:
        """A subprocess host serves the official client; killed it refuses; restarted it serves."""
        async with SimServer(tiny_profile("sub"), time_scale=0.01, mode="subprocess") as srv:
            async with ollama.AsyncClient(host=srv.url) as client:
                r = await client.generate(model=TINY, prompt="x", options={"num_predict": 3})
                assert r.eval_count == 3
                await srv.kill()
                with pytest.raises(ConnectionError):
                    await client.generate(model=TINY, prompt="x")
                await srv.restart()
                r = await client.generate(model=TINY, prompt="x", options={"num_predict": 2})
                assert r.eval_count == 2
            await srv.set_faults(Faults(status=503))
            state = await srv.fetch_state()
            assert state["requests"] >= 1

    async def test_fleet_hosts_all_answer(self, sim_fleet: SimFleet) -> None:
        """Both hosts of the preset fleet answer the official client."""
        for server in sim_fleet:
            async with ollama.AsyncClient(host=server.url) as client:
                r = await client.generate(
                    model="qwen2.5:14b", prompt="x", options={"num_predict": 2}
                )
                assert r.eval_count == 2
        assert set(sim_fleet.urls) == {"ollama01", "ollama02"}


class TestCli:
    def run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ollama_orchestra.sim", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @pytest.mark.slow
    async def test_preset_prints_hosts_and_stops_on_sigterm(self) -> None:
        """No arguments: the preset fleet, one 'NAME URL' line per host; SIGTERM stops it cleanly."""
        proc = subprocess.Popen(  # noqa: ASYNC220 - starting a child does not block
            [sys.executable, "-m", "ollama_orchestra.sim", "--time-scale", "0.01"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            lines = [await anyio.to_thread.run_sync(proc.stdout.readline) for _ in range(2)]
            names = [line.split()[0] for line in lines]
            urls = [line.split()[1] for line in lines]
            assert names == ["ollama01", "ollama02"]
            async with httpx.AsyncClient() as http:
                for url in urls:
                    assert (await http.get(url + "/")).text == "Ollama is running"
            proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10))
            assert code == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    @pytest.mark.parametrize(
        ("args", "needle"),
        [
            (["--time-scale", "-1"], "--time-scale"),
            (["--port-base", "70000"], "--port-base"),
            (["--config", "/nonexistent.toml"], "cannot be read"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(self, args: List[str], needle: str) -> None:
        """Bad flags or files: one clear line on stderr, exit code 2, no traceback."""
        r = self.run(*args)
        assert r.returncode == 2
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1

    def test_bad_config_names_the_field(self, tmp_path: Path) -> None:
        """A bad host in a config file is named by file, host and field."""
        p = tmp_path / "fleet.toml"
        p.write_text(
            '[[hosts]]\nname = "h"\nnum_parallel = 0\n[[hosts.models]]\nname = "m"\n',
            encoding="utf-8",
        )
        r = self.run("--config", str(p))
        assert r.returncode == 2 and "num_parallel" in r.stderr and "Traceback" not in r.stderr


class TestAddresses:
    async def test_one_loopback_address_per_host(self) -> None:
        """addresses="loopback" puts host i on 127.0.0.(i+1), each answering on its own address."""
        async with SimFleet(
            [tiny_profile("a"), tiny_profile("b")], time_scale=0.01, addresses="loopback"
        ) as fleet:
            assert [s.host for s in fleet] == ["127.0.0.1", "127.0.0.2"]
            async with httpx.AsyncClient() as http:
                for s in fleet:
                    assert (await http.get(s.url + "/api/version")).status_code == 200
