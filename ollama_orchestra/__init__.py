"""ollama_orchestra: spread LLM work across a fleet of Ollama servers.

Layering, bottom up: ``_secrets`` (redaction), ``_errors`` and ``_config`` (plain data) → ``_state`` (the one shared
fleet state) ← ``_monitor`` (health probes) → ``_breaker`` and ``_balancer`` (who may serve,
and a slot on it) → ``_failover`` (tenacity retries across servers) → ``_client`` (the
``Orchestra`` facade) → ``_executor`` (DAGs);
``_transport`` (Ollama's HTTP API served from an ``Orchestra``) → ``_proxy`` (the same over ASGI). ``sim`` is the simulated Ollama fleet.
"""

from __future__ import annotations

import logging as _logging

from ._balancer import Candidate, Choice, Lease, LoadBalancer, RouteRequest, Strategy
from ._breaker import (
    BreakerEvent,
    BreakerOpen,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    ModelBreakers,
)
from ._client import Orchestra
from ._config import (
    AffinityRule,
    BreakerPolicy,
    HealthPolicy,
    OrchestraConfig,
    RetryPolicy,
    Server,
    Timeouts,
)
from ._continuation import Continuation
from ._coordconfig import Coordination
from ._errors import (
    AsyncioOnly,
    Attempt,
    ConfigError,
    DagValidationError,
    MissingExtra,
    NoCapableServer,
    NoHealthyServer,
    OllamaResponseError,
    OrchestraClosed,
    OrchestraError,
    RequestError,
    RequestFailed,
    RequestTimeout,
    StreamInterrupted,
)
from ._executor import (
    ColdLoads,
    DagResult,
    DagSpec,
    Task,
    TaskEvent,
    TaskResult,
    load_dag,
    run_dag,
)
from ._metrics import LatencyStats, Metrics, MetricsSnapshot, ServerMetrics
from ._proxy import ProxyLimits, proxy_app, serve_proxy
from ._state import FleetSnapshot, LoadedModel, ServerSnapshot
from ._stream import ResponseStream
from ._transport import OrchestraTransport
from ._types import (
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
)
from ._version import __version__

# The simulator owns its error; importing it loads the simulator package (no uvicorn).
from .sim._errors import SimConfigError

__all__ = [
    "AffinityRule",
    "AsyncioOnly",
    "Attempt",
    "BreakerEvent",
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "Candidate",
    "ChatChunk",
    "ChatResponse",
    "Choice",
    "CircuitBreaker",
    "ColdLoads",
    "ConfigError",
    "Continuation",
    "Coordination",
    "DagResult",
    "DagSpec",
    "DagValidationError",
    "EmbedResponse",
    "FleetSnapshot",
    "GenerateChunk",
    "GenerateResponse",
    "HealthPolicy",
    "LatencyStats",
    "Lease",
    "LoadBalancer",
    "LoadedModel",
    "Metrics",
    "MetricsSnapshot",
    "MissingExtra",
    "ModelBreakers",
    "NoCapableServer",
    "NoHealthyServer",
    "OllamaResponseError",
    "Orchestra",
    "OrchestraClosed",
    "OrchestraConfig",
    "OrchestraError",
    "OrchestraTransport",
    "ProxyLimits",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "ResponseStream",
    "RetryPolicy",
    "RouteRequest",
    "Server",
    "ServerMetrics",
    "ServerSnapshot",
    "SimConfigError",
    "Strategy",
    "StreamInterrupted",
    "Task",
    "TaskEvent",
    "TaskResult",
    "Timeouts",
    "__version__",
    "load_dag",
    "proxy_app",
    "run_dag",
    "serve_proxy",
]

# A library configures no logging: without this, Python's last-resort handler would print
# our warnings (a host going down, a breaker opening) on the stderr of programs that never
# asked for logs. Applications opt in with logging.basicConfig() or their own handlers.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
