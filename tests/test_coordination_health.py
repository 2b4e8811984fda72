"""Health shared through a real Redis: a host one orchestra finds down leaves the others'
rotation within a second, one it finds back returns there as fast (each checks it with a
probe of its own), across processes too; with Redis down each monitors alone."""

from __future__ import annotations

import sys
from typing import Any, List

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ollama_orchestra import Coordination, HealthPolicy, Orchestra, OrchestraConfig
from ollama_orchestra.sim import SimFleet

from .conftest import TINY, config_for, fleet, tiny_profile
from .redis_fixture import RedisProcess, redis_server

__all__ = ["redis_server"]

#: Probes every 0.1 s: this orchestra finds a change itself.
WATCHFUL = HealthPolicy(interval_s=0.1, down_interval_s=0.05, timeout_s=1.0, startup_timeout_s=5)
#: Probes every minute: this orchestra learns a change only from Redis (or a request).
SLEEPY = HealthPolicy(interval_s=60.0, down_interval_s=60.0, timeout_s=1.0, startup_timeout_s=5)


def health_config(sim: SimFleet, url: str, health: HealthPolicy) -> OrchestraConfig:
    base = config_for(sim, strategy="round_robin", health=health)
    return base.replace(coordination=Coordination(url, timeout_s=0.5, ttl_s=1.5))


def two_hosts() -> SimFleet:
    return fleet([tiny_profile("x", num_parallel=2), tiny_profile("y", num_parallel=2)])


def _healthy(name: str) -> Any:
    return lambda snap: snap[name].healthy


def _down(name: str) -> Any:
    return lambda snap: not snap[name].healthy


class TestDownAndBack:
    """One orchestra finds x down: the other, which would not probe x for a minute, takes it
    out of rotation within a second, and back in as fast once x is up again."""

    async def test_down_then_back(self, redis_server: RedisProcess) -> None:
        url = redis_server.url
        async with two_hosts() as sim, Orchestra(health_config(sim, url, WATCHFUL)) as a, Orchestra(
            health_config(sim, url, SLEEPY)
        ) as b:
            assert b.state()["x"].healthy
            await sim["x"].kill()
            with anyio.fail_after(1.0 + 1.0):  # a's probes (0.1 s, twice) + Redis
                await a.wait_for_state(_down("x"))
            with anyio.fail_after(1.0):
                await b.wait_for_state(_down("x"))
            shared = b.balancer.shared_health  # type: ignore[attr-defined]
            assert shared.applied >= 1  # learned from a (its own probes are a minute apart)
            # b routes everything to y now, without trying x first.
            for i in range(4):
                assert (await b.generate(TINY, f"q{i}")).server == "y"

            await sim["x"].restart()
            with anyio.fail_after(2.0):
                await a.wait_for_state(_healthy("x"))
            with anyio.fail_after(1.0):
                await b.wait_for_state(_healthy("x"))
            served = {(await b.generate(TINY, f"r{i}")).server for i in range(4)}
            assert served == {"x", "y"}

    async def test_local_evidence_wins(self, redis_server: RedisProcess) -> None:
        """A host another process reports down but this one reaches stays in rotation here
        (its own probe, asked at once, finds it up)."""
        async with two_hosts() as sim, Orchestra(health_config(sim, redis_server.url, SLEEPY)) as b:
            shared = b.balancer.shared_health  # type: ignore[attr-defined]
            changes: List[bool] = []
            b._state.subscribe(lambda: changes.append(b.state()["x"].healthy))
            # The message another process's verdict publishes, as b's listener gets it.
            raw = '{"from": "elsewhere", "server": "x", "up": false, "cause": "refused"}'
            shared._apply({"data": raw})
            assert not b.state()["x"].healthy  # out at once...
            with anyio.fail_after(5):  # ...and back after its own probe
                await b.wait_for_state(_healthy("x"))
            assert False in changes and shared.applied == 1


class TestRedisDown:
    """Redis down: each orchestra monitors the hosts alone, as without coordination."""

    async def test_each_alone(self, redis_server: RedisProcess) -> None:
        url = redis_server.url
        async with two_hosts() as sim, Orchestra(health_config(sim, url, WATCHFUL)) as a, Orchestra(
            health_config(sim, url, SLEEPY)
        ) as b:
            redis_server.stop()
            await sim["x"].kill()
            with anyio.fail_after(2.0):
                await a.wait_for_state(_down("x"))
            assert b.state()["x"].healthy  # nobody told it; nothing raised
            # b finds out itself, from a request that cannot connect.
            for i in range(4):
                assert (await b.generate(TINY, f"q{i}")).server == "y"
            assert not b.state()["x"].healthy


# A worker process: an orchestra probing every 0.1 s, sharing health through Redis; prints
# "ready" once started, then each change of host x's health ("down" / "up").
WORKER = r"""
import sys

import anyio

from ollama_orchestra import Coordination, HealthPolicy, Orchestra, OrchestraConfig, Server


async def main(x: str, y: str, redis: str) -> None:
    config = OrchestraConfig(
        servers=(Server("x", x), Server("y", y)),
        coordination=Coordination(redis, timeout_s=0.5, ttl_s=1.5),
        health=HealthPolicy(interval_s=0.1, down_interval_s=0.05, startup_timeout_s=5),
    )
    async with Orchestra(config) as orch:
        print("ready", flush=True)
        healthy = True
        while True:
            snap = await orch.wait_for_state(lambda s: s["x"].healthy != healthy)
            healthy = snap["x"].healthy
            print("up" if healthy else "down", flush=True)


anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
"""


class TestAcrossProcesses:
    """A worker process finds x down and back: this process follows within a second each."""

    async def test_worker_finds_it(self, redis_server: RedisProcess) -> None:
        async with two_hosts() as sim, Orchestra(health_config(sim, redis_server.url, SLEEPY)) as b:
            proc = await anyio.open_process(
                [sys.executable, "-c", WORKER, sim["x"].url, sim["y"].url, redis_server.url],
                stderr=None,
            )
            try:
                assert proc.stdout is not None
                lines = BufferedByteReceiveStream(proc.stdout)

                async def line() -> bytes:
                    with anyio.fail_after(30):
                        return await lines.receive_until(b"\n", 100)

                assert await line() == b"ready"
                await sim["x"].kill()
                assert await line() == b"down"
                with anyio.fail_after(1.0):
                    await b.wait_for_state(_down("x"))
                await sim["x"].restart()
                assert await line() == b"up"
                with anyio.fail_after(1.0):
                    await b.wait_for_state(_healthy("x"))
            finally:
                proc.kill()
                await proc.wait()
