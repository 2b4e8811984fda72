"""Property tests: the config and DAG loaders and the request arguments, fed random data, end
in success or a typed error (ConfigError, DagValidationError, TypeError, ValueError), never
anything else."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Dict

import anyio
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ollama_orchestra import (
    ConfigError,
    DagSpec,
    DagValidationError,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    RequestError,
    RetryPolicy,
    Server,
    load_dag,
)

from .test_client_http import A, M, fleet_router, gen_stream

PROPS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["http://h:1", "http://u:p@h:2", "https://h", "round_robin", "m:latest"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def table_of(keys: Any) -> Any:
    """A table whose keys are mostly the known ones, with random values."""
    return st.dictionaries(
        st.one_of(st.sampled_from(keys), st.text(max_size=6)), values, max_size=6
    )


SERVER_KEYS = ["name", "url", "max_concurrency", "weight", "models", "labels", "headers"]
server_tables = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b"]),
            "url": st.sampled_from(["http://h:1", "http://u:p@h"]),
        },
        optional=dict.fromkeys(SERVER_KEYS[2:], values),
    ),
    table_of(SERVER_KEYS),
    values,
)
POLICY_KEYS = [
    "connect_s",
    "first_byte_s",
    "read_s",
    "total_s",
    "interval_s",
    "jitter",
    "unhealthy_after",
    "attempts",
    "deadline_s",
    "backoff_base_s",
    "failure_threshold",
    "failure_rate",
    "window",
    "min_calls",
    "cooldown_s",
    "cooldown_multiplier",
    "half_open_probes",
]
config_tables = st.fixed_dictionaries(
    {"servers": st.one_of(st.lists(server_tables, max_size=3), values)},
    optional={
        "strategy": st.one_of(st.sampled_from(["hybrid", "weighted"]), values),
        "roles": st.one_of(st.dictionaries(st.text(max_size=4), values, max_size=2), values),
        "affinity": st.one_of(
            st.lists(table_of(["model", "role", "min_priority", "servers", "labels", "required"])),
            values,
        ),
        "timeouts": st.one_of(table_of(POLICY_KEYS), values),
        "health": st.one_of(table_of(POLICY_KEYS), values),
        "retry": st.one_of(table_of([*POLICY_KEYS, "jitter"]), values),
        "breaker": st.one_of(table_of(POLICY_KEYS), values),
        "wait_for_healthy_s": values,
    },
)


class TestConfigProperties:
    @PROPS
    @given(config_tables)
    def test_config_tables(self, data: Dict[str, Any]) -> None:
        """Any table loads or raises ConfigError."""
        try:
            cfg = OrchestraConfig.from_mapping(data)
        except ConfigError:
            return
        assert isinstance(cfg, OrchestraConfig)
        for s in cfg.servers:
            assert "u:p@" not in repr(s)

    @PROPS
    @given(
        st.dictionaries(
            st.sampled_from(
                ["OLLAMA_ORCHESTRA_SERVERS", "OLLAMA_ORCHESTRA_STRATEGY", "OLLAMA_ORCHESTRA_ROLES"]
            ),
            st.one_of(
                st.text(max_size=40),
                st.from_regex(r"[a-z]{1,3}=https?://[a-z0-9:@.\[\]-]{0,12}(\*-?[0-9x]{0,3})?"),
            ),
        )
    )
    def test_environment(self, env: Dict[str, str]) -> None:
        """Any environment loads or raises ConfigError."""
        try:
            OrchestraConfig.from_env(env)
        except ConfigError:
            pass


TASK_KEYS = [
    "id",
    "model",
    "prompt",
    "messages",
    "depends_on",
    "priority",
    "options",
    "timeout",
    "system",
    "estimate",
]
task_tables = st.one_of(
    st.fixed_dictionaries(
        {"id": st.sampled_from(["a", "b", "c"]), "model": st.just("m")},
        optional=dict.fromkeys(TASK_KEYS[2:], values),
    ),
    table_of(TASK_KEYS),
    values,
)
dag_files = st.fixed_dictionaries(
    {"tasks": st.one_of(st.lists(task_tables, max_size=4), values)},
    optional={"inputs": values, "schedule": st.one_of(st.just("waves"), values)},
)


class TestDagProperties:
    @PROPS
    @given(dag_files)
    def test_dag_files(self, data: Dict[str, Any]) -> None:
        """Any JSON DAG file loads or raises DagValidationError."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dag.json"
            path.write_text(json.dumps(data), encoding="utf-8")
            try:
                spec = load_dag(path)
            except DagValidationError:
                return
        assert isinstance(spec, DagSpec)


GENERATE_ARGS = [
    "prompt",
    "system",
    "images",
    "format",
    "options",
    "keep_alive",
    "think",
    "raw",
    "suffix",
    "template",
    "priority",
    "timeout",
    "retry",
]
CHAT_ARGS = ["messages", "tools", "format", "options", "keep_alive", "think", "priority", "retry"]
EMBED_ARGS = ["input", "truncate", "options", "keep_alive", "dimensions", "priority", "timeout"]


def _orchestra() -> Orchestra:
    router = fleet_router({A: [M]})
    router.post(A + "/api/generate").respond(content=gen_stream(["ok"]))
    router.post(A + "/api/chat").respond(
        content=b'{"model":"m","message":{"role":"assistant","content":"hi"},"done":true}\n'
    )
    router.post(A + "/api/embed").respond(json={"model": M, "embeddings": [[0.5]]})
    cfg = OrchestraConfig(
        servers=(Server("a", A, max_concurrency=4),),
        health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
        retry=RetryPolicy(attempts=1),
        wait_for_healthy_s=0,
    )
    return Orchestra(cfg, transport=httpx.MockTransport(router.async_handler))


async def _call(method: str, args: Dict[str, Any]) -> None:
    async with _orchestra() as orch:
        try:
            if method == "generate":
                await orch.generate(**args)
            elif method == "chat":
                await orch.chat(**args)
            else:
                await orch.embed(**args)
        except (TypeError, ValueError, RequestError):
            pass  # RequestError: a random model no server has, or a tiny timeout
        assert orch.balancer.waiting == 0 and orch.balancer.in_use("a") == 0


def _arguments(names: Any, required: Dict[str, Any]) -> Any:
    return st.builds(
        lambda base, extra: {**base, **extra},
        st.fixed_dictionaries(required),
        st.dictionaries(st.sampled_from(names), values, max_size=3),
    )


models = st.one_of(st.just(M), st.just("m"), scalars)


class TestRequestArgumentProperties:
    @settings(PROPS, max_examples=80)
    @given(_arguments(GENERATE_ARGS, {"model": models, "prompt": st.just("x")}))
    def test_generate(self, args: Dict[str, Any]) -> None:
        """Random generate arguments: success or TypeError/ValueError, nothing leaked."""
        anyio.run(_call, "generate", args)

    @settings(PROPS, max_examples=60)
    @given(
        _arguments(
            CHAT_ARGS, {"model": models, "messages": st.just([{"role": "user", "content": "x"}])}
        )
    )
    def test_chat(self, args: Dict[str, Any]) -> None:
        """Random chat arguments: success or TypeError/ValueError, nothing leaked."""
        anyio.run(_call, "chat", args)

    @settings(PROPS, max_examples=60)
    @given(_arguments(EMBED_ARGS, {"model": models, "input": st.just("x")}))
    def test_embed(self, args: Dict[str, Any]) -> None:
        """Random embed arguments: success or TypeError/ValueError, nothing leaked."""
        anyio.run(_call, "embed", args)
