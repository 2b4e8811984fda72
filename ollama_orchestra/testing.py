"""Pytest fixtures for suites that talk to Ollama: a simulated server and fleet.

Installed as a pytest plugin (the ``pytest11`` entry point), so a pytest-asyncio suite can
just ask for them::

    async def test_my_pipeline(sim_fleet):
        async with Orchestra(OrchestraConfig(servers=sim_fleet.server_configs())) as orch:
            ...

``sim_server`` is one small fast in-process host serving ``tiny:latest`` (completion) and
``tiny-embed:latest`` (embedding); ``sim_fleet`` is the two-host preset (``ollama01``,
``ollama02``) at ``time_scale=0.01``. Build your own with :class:`~ollama_orchestra.sim.SimServer`
and :class:`~ollama_orchestra.sim.SimFleet`, or :func:`tiny_profile`.
"""

from __future__ import annotations

from typing import AsyncIterator

import pytest_asyncio

from .sim import HostProfile, ModelSpec, SimFleet, SimServer

__all__ = ["sim_fleet", "sim_server", "tiny_profile"]


def tiny_profile(
    name: str = "sim", *, num_parallel: int = 2, speed: float = 1.0, **kwargs: object
) -> HostProfile:
    """A host with two small, fast models: quick to load, quick to answer."""
    models = (
        ModelSpec("tiny:latest", size_gb=0.5, decode_tps=400.0, load_s=0.2, default_num_predict=16),
        ModelSpec(
            "tiny-embed:latest",
            size_gb=0.1,
            decode_tps=1000.0,
            load_s=0.05,
            capabilities=("embedding",),
            default_num_predict=1,
            embedding_length=32,
        ),
    )
    return HostProfile(name, models, num_parallel=num_parallel, speed=speed, **kwargs)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def sim_server() -> AsyncIterator[SimServer]:
    """One in-process simulated host (``tiny_profile()``), ``time_scale=0.01``."""
    async with SimServer(tiny_profile(), time_scale=0.01) as server:
        yield server


@pytest_asyncio.fixture
async def sim_fleet() -> AsyncIterator[SimFleet]:
    """The two-host preset fleet, in-process, ``time_scale=0.01``."""
    async with SimFleet.preset(time_scale=0.01) as fleet:
        yield fleet
