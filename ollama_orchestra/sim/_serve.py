"""Serving simulated hosts on loopback: one :class:`SimServer` per host, a :class:`SimFleet`.

A server runs either in this process (tests: same event loop, direct controls such as
``pause()`` and ``wait_until()``) or as a child process (benchmarks: the orchestrator's event
loop is not shared with the servers; controls go through the ``/_sim/*`` admin routes).
``kill()`` makes the port refuse connections and breaks every open one, as a dead host
would; ``restart()`` serves again on the same port with a fresh scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import anyio
import anyio.lowlevel
import httpx

from .._config import Server
from .._extras import require_asyncio, require_extra
from .._serving import bind_socket, embedded_uvicorn
from ._errors import SimConfigError
from ._host import SimHost
from ._records import SimState, SimulatedReset
from ._spec import Faults, HostProfile, preset_fleet, profile_to_dict

__all__ = ["SimFleet", "SimServer"]

log = logging.getLogger("ollama_orchestra.sim")


class _QuietResets(logging.Filter):
    """Uvicorn logs an app exception with a traceback; a simulated reset is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, SimulatedReset):
                return False
            inner = getattr(exc, "exceptions", None)
            exc = inner[0] if inner else exc.__cause__ or exc.__context__
        return True


logging.getLogger("uvicorn.error").addFilter(_QuietResets())


def _bind(host: str, port: int) -> socket.socket:
    return bind_socket(host, port, field="port", error=SimConfigError)


class SimServer:
    """One simulated Ollama host served on loopback.

    Args:
        profile: the host's models, speed and scheduler limits.
        host: the loopback address to bind (``127.0.0.1``, ``127.0.0.2``, ...).
        port: the port; 0 picks a free one (kept across :meth:`restart`).
        time_scale: real seconds per simulated second.
        seed: seeds the answers and random faults.
        faults: faults to start with.
        mode: ``"inprocess"`` or ``"subprocess"``.
    """

    def __init__(
        self,
        profile: HostProfile,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        seed: int = 0,
        faults: Optional[Faults] = None,
        mode: str = "inprocess",
    ) -> None:
        if mode not in ("inprocess", "subprocess"):
            raise SimConfigError("mode", mode, "must be 'inprocess' or 'subprocess'")
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise SimConfigError("host", host, "simulated servers bind to loopback only")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise SimConfigError("port", port, "must be an integer in 0..65535")
        self.profile = profile
        self.name = profile.name
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.seed = seed
        self.mode = mode
        self._initial_faults = faults or Faults()
        self.sim = (
            SimHost(profile, time_scale=time_scale, seed=seed, faults=self._initial_faults)
            if mode == "inprocess"
            else None
        )
        self._server: Optional[Any] = None
        self._sock: Optional[socket.socket] = None
        self._tasks: List[asyncio.Task[Any]] = []
        self._serve_task: Optional[asyncio.Task[Any]] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._alive = False
        self._flap_scope: Optional[anyio.CancelScope] = None
        if self.sim is not None:
            self.sim.on_faults_changed.append(self._faults_changed)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._alive

    def __repr__(self) -> str:
        return f"<SimServer {self.name} {self.url} {self.mode} {'up' if self._alive else 'down'}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> SimServer:
        require_extra("sim", "SimServer")
        # Plain asyncio tasks, not an anyio task group: uvicorn is asyncio-only anyway, and a
        # pytest-asyncio fixture enters and exits this in two different tasks.
        if self.mode == "inprocess":
            require_asyncio(
                "SimServer (in-process)",
                "run it under asyncio (anyio's default backend), or pass mode='subprocess'",
            )
            await self._start_inprocess()
        else:
            await self._start_subprocess()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _spawn(self, coro: Any) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    async def _start_inprocess(self) -> None:
        assert self.sim is not None
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        server = embedded_uvicorn(self.sim, graceful_shutdown_s=1)
        self._server, self._sock = server, sock

        async def serve() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()

        task = asyncio.get_running_loop().create_task(serve())
        self._tasks.append(task)
        self._serve_task = task
        # Uvicorn flags `started` once its listener is up; it offers no event to wait on.
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise SimConfigError("server", self.name, "stopped before it started")
            await anyio.sleep(0.001)
        self._alive = True
        self._faults_changed(self.sim.faults)

    def _abort_connections(self) -> None:
        if self._server is not None:
            self._abort_connections_of(self._server)
        if self._sock is not None:
            self._sock.close()

    async def _stop_inprocess(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._alive = False
        self._abort_connections_of(server)
        server.should_exit = True
        server.force_exit = True
        assert self.sim is not None
        await self.sim.aclose()
        # Uvicorn notices should_exit on its next tick; a connection accepted while the
        # door was closing may only show up by then. Wait for the server to stop, then abort
        # the stragglers too: a dead host leaves no socket open behind it.
        task, self._serve_task = self._serve_task, None
        if task is not None and not task.done():
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await asyncio.shield(task)
        self._abort_connections_of(server)
        # A connection the listener accepted just before it closed gets its protocol a few
        # loop iterations later (asyncio's accept task, then connection_made): let those run,
        # then break it too, so no socket of the dead host is left for the garbage collector.
        with anyio.CancelScope(shield=True):
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
        self._abort_connections_of(server)

    @staticmethod
    def _abort_connections_of(server: Any) -> None:
        """Close ``server``'s listeners and break its open connections, as a dying host would."""
        # Already-closed sockets may be met here (Python 3.8's selectors then raise).
        for listener in getattr(server, "servers", []):
            with contextlib.suppress(OSError, ValueError):
                listener.close()
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                with contextlib.suppress(OSError, ValueError):
                    transport.abort()

    async def _stop(self) -> None:
        if self._flap_scope is not None:
            self._flap_scope.cancel()
            self._flap_scope = None
        if self.mode == "inprocess":
            await self._stop_inprocess()
        else:
            self._kill_process()

    async def kill(self) -> None:
        """Die like a host losing power: the port refuses, open connections break."""
        if self.mode == "inprocess":
            await self._stop_inprocess()
        else:
            self._kill_process()

    async def restart(self) -> None:
        """Serve again on the same port, with a fresh scheduler (a rebooted host)."""
        if self._alive:
            await self.kill()
        if self.mode == "inprocess":
            assert self.sim is not None
            self.sim.reset()
            await self._start_inprocess()
        else:
            await self._start_subprocess()

    # -- faults and controls -------------------------------------------------------------------

    async def set_faults(self, faults: Faults) -> None:
        """Switch faults at run time (see :class:`Faults`)."""
        if self.mode == "inprocess":
            assert self.sim is not None
            self.sim.set_faults(faults)
            return
        if faults.refuse:
            self._kill_process()
            self._initial_faults = faults
            return
        if not self._alive:
            self._initial_faults = faults
            await self._start_subprocess()
            return
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(self.url + "/_sim/faults", json=faults.to_dict())
            response.raise_for_status()

    async def clear_faults(self) -> None:
        await self.set_faults(Faults())

    def _faults_changed(self, faults: Faults) -> None:
        if self.mode != "inprocess":
            return
        if self._flap_scope is not None:
            self._flap_scope.cancel()
            self._flap_scope = None
        if faults.flap_period_s is not None:
            self._spawn(self._flap(faults.flap_period_s))
            return
        if faults.refuse and self._alive:
            self._abort_connections()  # the port closes at once
            self._alive = False
            self._spawn(self._stop_inprocess())
        elif not faults.refuse and not self._alive and self._server is None:
            self._spawn(self._start_inprocess())

    async def _flap(self, period: float) -> None:
        with anyio.CancelScope() as scope:
            self._flap_scope = scope
            while True:
                if not self._alive:
                    await self._start_inprocess()
                await anyio.sleep(period / 2)
                await self._stop_inprocess()
                await anyio.sleep(period / 2)

    def _require_inprocess(self) -> SimHost:
        if self.sim is None:
            raise RuntimeError(f"{self.name} runs as a subprocess: use the /_sim/* admin routes")
        return self.sim

    def state(self) -> SimState:
        return self._require_inprocess().state()

    async def wait_until(self, predicate: Any) -> SimState:
        return await self._require_inprocess().wait_until(predicate)

    def pause(self) -> None:
        self._require_inprocess().pause()

    def resume(self) -> None:
        self._require_inprocess().resume()

    @property
    def requests(self) -> Any:
        return self._require_inprocess().requests

    async def fetch_state(self) -> Dict[str, Any]:
        """The host's scheduler state over HTTP (works in both modes)."""
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(self.url + "/_sim/state")
            response.raise_for_status()
            data: Dict[str, Any] = response.json()
            return data

    # -- subprocess mode -----------------------------------------------------------------------

    async def _start_subprocess(self) -> None:
        if self.port == 0:
            probe = _bind(self.host, 0)
            self.port = probe.getsockname()[1]
            probe.close()
        spec = {
            "profile": profile_to_dict(self.profile),
            "host": self.host,
            "port": self.port,
            "time_scale": self.time_scale,
            "seed": self.seed,
            "faults": self._initial_faults.to_dict(),
        }
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - starting a child does not block
            [sys.executable, "-m", "ollama_orchestra.sim", "_serve-one", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        # Readiness: poll the child's port (a child process gives no event to wait on).
        with anyio.fail_after(30):
            while True:
                if self._proc.poll() is not None:
                    err = (
                        self._proc.stderr.read().decode(errors="replace")
                        if self._proc.stderr
                        else ""
                    )
                    raise SimConfigError(
                        "subprocess",
                        self.name,
                        f"exited with {self._proc.returncode}: {err.strip()[-500:]}",
                    )
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        break
                except OSError:
                    await anyio.sleep(0.02)
        self._alive = True

    def _kill_process(self) -> None:
        proc, self._proc = self._proc, None
        self._alive = False
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


class SimFleet:
    """Several simulated hosts, started and stopped together.

    Args:
        profiles: one :class:`HostProfile` per host (default: the two-host preset).
        time_scale: real seconds per simulated second, for every host.
        mode: ``"inprocess"`` or ``"subprocess"``.
        addresses: ``"ports"`` (all on 127.0.0.1) or ``"loopback"`` (host i on 127.0.0.(i+1)).
        port_base: first port (0: any free ones).
    """

    def __init__(
        self,
        profiles: Optional[Sequence[HostProfile]] = None,
        *,
        time_scale: float = 1.0,
        mode: str = "inprocess",
        seed: int = 0,
        addresses: str = "ports",
        port_base: int = 0,
        faults: Optional[Mapping[str, Faults]] = None,
    ) -> None:
        profiles = tuple(profiles) if profiles is not None else preset_fleet()
        if not profiles:
            raise SimConfigError("profiles", [], "a fleet needs at least one host")
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise SimConfigError("profiles", names, "host names must be unique")
        if addresses not in ("ports", "loopback"):
            raise SimConfigError("addresses", addresses, "must be 'ports' or 'loopback'")
        self.servers: Tuple[SimServer, ...] = tuple(
            SimServer(
                p,
                host=f"127.0.0.{i + 1}" if addresses == "loopback" else "127.0.0.1",
                port=(port_base + i) if port_base else 0,
                time_scale=time_scale,
                seed=seed + i,
                faults=(faults or {}).get(p.name),
                mode=mode,
            )
            for i, p in enumerate(profiles)
        )
        self._stack: Optional[contextlib.AsyncExitStack] = None

    @classmethod
    def preset(cls, **kwargs: Any) -> SimFleet:
        """The user's two hosts: ``ollama01`` (smaller, slower) and ``ollama02``."""
        return cls(preset_fleet(), **kwargs)

    def __getitem__(self, name: str) -> SimServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def __iter__(self) -> Iterator[SimServer]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    @property
    def urls(self) -> Dict[str, str]:
        return {s.name: s.url for s in self.servers}

    def server_configs(self, **kwargs: Any) -> List[Server]:
        """``Server`` entries for an ``OrchestraConfig``, slots matching each host's."""
        return [
            Server(s.name, s.url, max_concurrency=s.profile.num_parallel, **kwargs)
            for s in self.servers
        ]

    async def __aenter__(self) -> SimFleet:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            for server in self.servers:
                await stack.enter_async_context(server)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        return self

    async def __aexit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(None, None, None)
