"""Pytest fixtures for suites that talk to Ollama: a simulated server and fleet.

Installed as a pytest plugin (the ``pytest11`` entry point), so an async test can just ask
for them::

    async def test_my_pipeline(sim_fleet):
        async with Orchestra(OrchestraConfig(servers=sim_fleet.server_configs())) as orch:
            ...

``sim_server`` is one small fast in-process host serving ``tiny:latest`` (completion) and
``tiny-embed:latest`` (embedding); ``sim_fleet`` is the two-host preset (``ollama01``,
``ollama02``) at ``time_scale=0.01``. Build your own with :class:`~ollama_orchestra.sim.SimServer`
and :class:`~ollama_orchestra.sim.SimFleet`, or :func:`tiny_profile`.

What they need:

- the ``sim`` extra (``pip install 'ollama-orchestra[sim]'``: uvicorn serves the hosts);
- an async test runner on **asyncio**: pytest-asyncio (``asyncio_mode = "auto"``, or
  ``@pytest.mark.asyncio`` tests in strict mode) or anyio's pytest plugin
  (``@pytest.mark.anyio`` tests with the ``asyncio`` backend). The fixtures follow whichever
  runs the test (but not anyio tests beside pytest-asyncio's auto mode, which then runs every
  async fixture on its own loop). On trio they fail with one
  :class:`~ollama_orchestra.AsyncioOnly` error: the in-process simulator runs on asyncio only.

Scope: both are function-scoped, a fresh host (or fleet) per test. Loop-scope caveat: a host
serves from the event loop it was started on, so it must be the test's. Under pytest-asyncio
they start on the loop of ``asyncio_default_fixture_loop_scope`` (``function`` unless you set
it); a test that runs on a wider loop (``@pytest.mark.asyncio(loop_scope="module")``) needs
that option set to the same scope, or its own ``SimServer`` started inside the test.

Loading this plugin needs neither pytest-asyncio nor uvicorn: a project that has neither and
never asks for these fixtures is not affected by the plugin.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, NoReturn, cast

import pytest

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


def _host() -> SimServer:
    return SimServer(tiny_profile(), time_scale=0.01)


def _fleet() -> SimFleet:
    return SimFleet.preset(time_scale=0.01)


# Two variants of each fixture: in strict mode pytest-asyncio runs only the async fixtures
# marked as its own, while anyio's plugin runs the unmarked ones of tests that use
# `anyio_backend`. The public fixture picks the variant of the plugin that runs the test.
try:
    import pytest_asyncio
except ImportError:  # tested in a subprocess (tests/test_testing_plugin.py)

    @pytest.fixture(name="_ollama_orchestra_sim_server_asyncio")
    def _sim_server_no_runner() -> SimServer:
        _no_async_runner()

    @pytest.fixture(name="_ollama_orchestra_sim_fleet_asyncio")
    def _sim_fleet_no_runner() -> SimFleet:
        _no_async_runner()

else:

    @pytest_asyncio.fixture(name="_ollama_orchestra_sim_server_asyncio")
    async def _sim_server_asyncio() -> AsyncIterator[SimServer]:
        async with _host() as server:
            yield server

    @pytest_asyncio.fixture(name="_ollama_orchestra_sim_fleet_asyncio")
    async def _sim_fleet_asyncio() -> AsyncIterator[SimFleet]:
        async with _fleet() as fleet:
            yield fleet


def _no_async_runner() -> NoReturn:
    pytest.fail(
        "ollama_orchestra's sim_server and sim_fleet fixtures are async: they need "
        "pytest-asyncio (pip install pytest-asyncio) or anyio's pytest plugin "
        "(@pytest.mark.anyio)",
        pytrace=False,
    )


@pytest.fixture(name="_ollama_orchestra_sim_server_anyio")
async def _sim_server_anyio() -> AsyncIterator[SimServer]:
    async with _host() as server:
        yield server


@pytest.fixture(name="_ollama_orchestra_sim_fleet_anyio")
async def _sim_fleet_anyio() -> AsyncIterator[SimFleet]:
    async with _fleet() as fleet:
        yield fleet


def _variant(request: pytest.FixtureRequest, name: str) -> Any:
    runner = "anyio" if "anyio_backend" in request.fixturenames else "asyncio"
    return request.getfixturevalue(f"_ollama_orchestra_{name}_{runner}")


@pytest.fixture
def sim_server(request: pytest.FixtureRequest) -> SimServer:
    """One in-process simulated host (``tiny_profile()``), ``time_scale=0.01``, per test."""
    return cast(SimServer, _variant(request, "sim_server"))


@pytest.fixture
def sim_fleet(request: pytest.FixtureRequest) -> SimFleet:
    """The two-host preset fleet, in-process, ``time_scale=0.01``, per test."""
    return cast(SimFleet, _variant(request, "sim_fleet"))
