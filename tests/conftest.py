"""Shared helpers for the integration tests: small simulated fleets and orchestras on them."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any, Dict, Sequence

import pytest

from ollama_orchestra import HealthPolicy, OrchestraConfig, RetryPolicy, Server
from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet
from ollama_orchestra.testing import tiny_profile


def pytest_configure(config: pytest.Config) -> None:
    """anyio before 4.16 leaks the connected socket when ``connect_tcp`` is cancelled just
    after the connection succeeded (its happy-eyeballs task group drops the stream); the
    socket is closed by garbage collection with a ResourceWarning. Python 3.8 is stuck on
    anyio 4.5, so the suite running there would fail at random on a cancellation that lands
    in that window. Only there, unclosed-transport warnings are not errors; the same tests
    keep checking for leaks on the newer Pythons.
    """
    major, minor = (int(part) for part in version("anyio").split(".")[:2])
    if (major, minor) < (4, 16):
        config.addinivalue_line(
            "filterwarnings",
            "ignore:Exception ignored in. <function _SelectorTransport.__del__"
            ":pytest.PytestUnraisableExceptionWarning",
        )


TINY = "tiny:latest"
OTHER = "other:latest"


def two_model_profile(
    name: str, *, speed: float = 1.0, num_parallel: int = 2, load_s: float = 20.0, **kw: Any
) -> HostProfile:
    """A host with two completion models that take long to load (in simulated time)."""
    models = (
        ModelSpec(TINY, size_gb=1, decode_tps=400.0, load_s=load_s, default_num_predict=8),
        ModelSpec(OTHER, size_gb=1, decode_tps=400.0, load_s=load_s, default_num_predict=8),
    )
    return HostProfile(name, models, speed=speed, num_parallel=num_parallel, **kw)


def fleet(profiles: Sequence[HostProfile], *, time_scale: float = 0.01) -> SimFleet:
    return SimFleet(profiles, time_scale=time_scale)


def config_for(sim: SimFleet, **kwargs: Any) -> OrchestraConfig:
    """An orchestra config for a simulated fleet: slots match, probes are quick."""
    extra: Dict[str, Any] = {
        "health": HealthPolicy(
            interval_s=0.2,
            down_interval_s=0.02,
            timeout_s=1.0,
            unhealthy_after=2,
            startup_timeout_s=5,
        ),
        "retry": RetryPolicy(attempts=3, backoff_base_s=0.01, backoff_max_s=0.05),
        "wait_for_healthy_s": 5.0,
    }
    extra.update(kwargs)
    servers = tuple(
        Server(s.name, s.url, max_concurrency=s.profile.num_parallel) for s in sim.servers
    )
    return OrchestraConfig(servers=servers, **extra)


__all__ = ["OTHER", "TINY", "config_for", "fleet", "tiny_profile", "two_model_profile"]
