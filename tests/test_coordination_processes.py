"""Orchestras in separate processes sharing one Redis: together they never exceed a host's
slots, and a SIGKILLed process's slot frees within the lease TTL."""

from __future__ import annotations

import signal
import sys
from typing import Any, List

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ollama_orchestra import Coordination, Orchestra, Server
from ollama_orchestra.sim import SimFleet, SimState

from .conftest import TINY, config_for, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server, until

__all__ = ["redis_server"]

# One worker process: an orchestra on host ``h`` (``slots`` slots, shared through Redis) sends
# ``n`` requests, prints "ready" once all of them are in its balancer (waiting or holding a
# slot), then "done" when all are answered.
WORKER = r"""
import sys

import anyio

from ollama_orchestra import Coordination, HealthPolicy, Orchestra, OrchestraConfig, Server


async def main(url: str, redis: str, n: int, slots: int, ttl: float) -> None:
    config = OrchestraConfig(
        servers=(Server("h", url, max_concurrency=slots),),
        coordination=Coordination(redis, ttl_s=ttl),
        health=HealthPolicy(interval_s=0.2, down_interval_s=0.02, startup_timeout_s=5),
    )
    async with Orchestra(config) as orch:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(orch.generate, "tiny:latest", f"q{i}")
            for _ in range(3000):  # its requests reach the balancer (polled in the worker)
                if orch.balancer.waiting + orch.balancer.in_use("h") == n:
                    break
                await anyio.sleep(0.01)
            print("ready", flush=True)
    print("done", flush=True)


anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
"""


async def _worker(sim: SimFleet, redis: str, n: int, slots: int, ttl: float = 5.0) -> Any:
    return await anyio.open_process(
        [sys.executable, "-c", WORKER, sim["h"].url, redis, str(n), str(slots), str(ttl)],
        stderr=None,
    )


async def _line(proc: anyio.abc.Process) -> bytes:
    assert proc.stdout is not None
    with anyio.fail_after(60):
        return await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)


class _Peak:
    """The most requests host ``h`` ever ran at once (the simulator's count, every change)."""

    def __init__(self) -> None:
        self.value = 0

    def see(self, st: SimState) -> bool:
        self.value = max(self.value, st.in_flight)
        return False


class TestProcesses:
    """Two worker processes, one Redis, one host with 2 slots: never more than 2 at once."""

    async def test_two_processes_share_two_slots(self, redis_server: RedisProcess) -> None:
        peak = _Peak()
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            sim["h"].pause()
            procs: List[anyio.abc.Process] = []
            try:
                async with anyio.create_task_group() as watch:
                    watch.start_soon(sim["h"].wait_until, peak.see)
                    for _ in range(2):
                        procs.append(await _worker(sim, redis_server.url, 3, 2))
                    for proc in procs:
                        assert await _line(proc) == b"ready"
                    await sim["h"].wait_until(lambda st: st.in_flight == 2)
                    sim["h"].resume()
                    for proc in procs:
                        assert await _line(proc) == b"done"
                        with anyio.fail_after(30):
                            assert await proc.wait() == 0
                    watch.cancel_scope.cancel()
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            assert sim["h"].state().completed == 6
        assert peak.value == 2


class TestKilledHolder:
    """A SIGKILLed process's slot is free again within the lease TTL (1 s here)."""

    async def test_slot_frees_after_sigkill(self, redis_server: RedisProcess) -> None:
        ttl = 1.0
        async with fleet([tiny_profile("h", num_parallel=4)]) as sim:
            sim["h"].pause()
            proc = await _worker(sim, redis_server.url, 1, 1, ttl)
            try:
                assert await _line(proc) == b"ready"
                await sim["h"].wait_until(lambda st: st.in_flight == 1)
                base = config_for(sim)
                config = base.replace(
                    servers=(Server("h", sim["h"].url, max_concurrency=1),),
                    coordination=Coordination(redis_server.url, ttl_s=ttl),
                )
                async with Orchestra(config) as orch, anyio.create_task_group() as tg:
                    answers: List[str] = []

                    async def one() -> None:
                        answers.append((await orch.generate(TINY, "mine")).response)

                    tg.start_soon(one)
                    # The worker holds the one slot: this request waits.
                    await until(lambda: orch.balancer.waiting == 1, "mine queued")
                    assert orch.balancer.in_use("h") == 0
                    proc.send_signal(signal.SIGKILL)
                    assert await proc.wait() == -signal.SIGKILL
                    killed_at = anyio.current_time()
                    sim["h"].resume()
                freed_after = anyio.current_time() - killed_at
                assert answers and all(answers)
                # Free within the TTL (+ one periodic read, ttl / 3, + a loaded machine's slack).
                assert freed_after < ttl * 2 + 1.0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
