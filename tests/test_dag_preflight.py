"""DAG pre-flight: models and roles are checked against the fleet before any task runs."""

from __future__ import annotations

import socket

import anyio
import pytest

from ollama_orchestra import (
    DagValidationError,
    HealthPolicy,
    NoCapableServer,
    NoHealthyServer,
    Orchestra,
    OrchestraConfig,
    Server,
    Task,
    run_dag,
)
from ollama_orchestra.sim import SimFleet
from ollama_orchestra.testing import tiny_profile

from .conftest import TINY, config_for

QUICK = HealthPolicy(
    interval_s=0.02, down_interval_s=0.01, timeout_s=1.0, unhealthy_after=1, startup_timeout_s=2
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def dag(bad_model: str) -> list[Task]:
    return [
        Task("plan", TINY, prompt="plan"),
        Task("review", bad_model, prompt="review {plan}", depends_on=["plan"]),
        Task("write", "coder", prompt="write {plan}", depends_on=["plan"]),
    ]


class TestPreflight:
    async def test_unknown_role_fails_before_any_request(self) -> None:
        """A task naming a role nobody defined fails the DAG before any request is sent."""
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim, Orchestra(
            config_for(sim, roles={"coder": TINY})
        ) as orch:
            with pytest.raises(DagValidationError) as info:
                await orch.run(dag("qa"))
            assert sim["h1"].state().requests == 0
        assert info.value.task_id == "review"
        message = str(info.value)
        assert "'qa'" in message and "coder=tiny:latest" in message and TINY in message
        assert isinstance(info.value.__cause__, NoCapableServer)

    async def test_role_of_a_missing_model_fails_too(self) -> None:
        """A role whose model no server has is named with its model."""
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim, Orchestra(
            config_for(sim, roles={"coder": TINY, "qa": "llama3:70b"})
        ) as orch:
            with pytest.raises(DagValidationError, match="role 'qa' is model 'llama3:70b'"):
                await run_dag(orch, dag("qa"))
            assert sim["h1"].state().requests == 0

    async def test_good_dag_runs(self) -> None:
        """Models and roles the fleet has pass the check, and the DAG runs."""
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim, Orchestra(
            config_for(sim, roles={"coder": TINY})
        ) as orch:
            result = await orch.run(dag("tiny"))
        assert result.ok

    async def test_static_model_lists_count(self) -> None:
        """A server's static models= list is known without a probe: an unknown model fails
        at once even though that server is unreachable."""
        config = OrchestraConfig(
            servers=(Server("s", f"http://127.0.0.1:{free_port()}", models=(TINY,)),),
            roles={"coder": TINY},
            health=QUICK,
            wait_for_healthy_s=30,
        )
        async with Orchestra(config) as orch:
            with anyio.fail_after(5), pytest.raises(DagValidationError, match="'review'"):
                await orch.run(dag("qa"))

    async def test_unreachable_fleet_is_no_healthy_server(self) -> None:
        """With the hosts unreachable from the start, the check reports them and their
        errors (NoHealthyServer), not an unknown model."""
        port = free_port()
        config = OrchestraConfig(
            servers=(Server("ollama01", f"http://127.0.0.1:{port}"),),
            roles={"coder": TINY},
            health=QUICK,
            wait_for_healthy_s=0.05,
        )
        async with Orchestra(config) as orch:
            with pytest.raises(NoHealthyServer) as info:
                await orch.run(dag("qa"))
        assert info.value.errors == {"ollama01": "connection refused"}

    async def test_waits_for_a_host_that_comes_up(self) -> None:
        """A host down at the start that comes up within wait_for_healthy_s is checked, and
        the DAG runs."""
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim:
            await sim["h1"].kill()
            config = config_for(sim, roles={"coder": TINY}, health=QUICK, wait_for_healthy_s=30)
            async with Orchestra(config) as orch, anyio.create_task_group() as tg:
                tg.start_soon(sim["h1"].restart)
                with anyio.fail_after(10):
                    result = await orch.run(dag("tiny"))
        assert result.ok
