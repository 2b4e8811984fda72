"""Shared helpers for the integration tests: small simulated fleets and orchestras on them."""

from __future__ import annotations

from typing import Any, Dict, Sequence

from ollama_orchestra import HealthPolicy, OrchestraConfig, RetryPolicy, Server
from ollama_orchestra.sim import HostProfile, ModelSpec, SimFleet
from ollama_orchestra.testing import tiny_profile

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
