"""A real ``redis-server`` on loopback for the shared-slots tests: started per test on a free
port, without persistence, and stopped (or killed and restarted by the test) afterwards.

The binary comes from ``PATH`` (Debian's ``redis-server`` package; ``make test`` installs it).
Without it the tests fail, unless ``OLLAMA_ORCHESTRA_SKIP_REDIS=1`` allows skipping them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Callable, Iterator, List, Optional

import anyio
import pytest

__all__ = ["RedisProcess", "redis_server", "until"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """One redis-server process the test owns: ``url``, ``stop()``, ``start()``."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        args: List[str] = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # readiness: the port accepts a connection and answers PING
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)  # polling a child process's readiness, not test synchronisation

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a slow Redis)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait()
            self._proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("OLLAMA_ORCHESTRA_SKIP_REDIS") == "1":
            pytest.skip("redis-server not found (OLLAMA_ORCHESTRA_SKIP_REDIS=1)")
        raise RuntimeError("redis-server not found: `make redis` installs it")
    server = RedisProcess(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds, for state that changes with Redis' answers on other
    connections, which no event reports (polled, as ``test_redis_slots`` polls Redis' queue)."""
    for _ in range(1500):
        if check():
            return
        await anyio.sleep(0.01)
    pytest.fail(f"timed out waiting: {what}")
