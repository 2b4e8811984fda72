"""ollama_orchestra: spread LLM work across a fleet of Ollama servers.

Layering, bottom up: ``_errors`` and ``_config`` (plain data) → ``_state`` (the one shared
fleet state) ← ``_monitor`` (health probes) → ``_breaker`` and ``_balancer`` (who may serve,
and a slot on it) → ``_failover`` (tenacity retries across servers) → ``_client`` (the
``Orchestra`` facade) → ``_executor`` (DAGs). ``sim`` is the simulated Ollama fleet.
"""

from __future__ import annotations

from ._config import (
    AffinityRule,
    BreakerPolicy,
    HealthPolicy,
    OrchestraConfig,
    RetryPolicy,
    Server,
    Timeouts,
)
from ._errors import (
    Attempt,
    ConfigError,
    DagValidationError,
    NoCapableServer,
    NoHealthyServer,
    OllamaResponseError,
    OrchestraClosed,
    OrchestraError,
    RequestError,
    RequestFailed,
    SimConfigError,
    StreamInterrupted,
)
from ._types import (
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    GenerateChunk,
    GenerateResponse,
)
from ._version import __version__

__all__ = [
    "AffinityRule",
    "Attempt",
    "BreakerPolicy",
    "ChatChunk",
    "ChatResponse",
    "ConfigError",
    "DagValidationError",
    "EmbedResponse",
    "GenerateChunk",
    "GenerateResponse",
    "HealthPolicy",
    "NoCapableServer",
    "NoHealthyServer",
    "OllamaResponseError",
    "OrchestraClosed",
    "OrchestraConfig",
    "OrchestraError",
    "RequestError",
    "RequestFailed",
    "RetryPolicy",
    "Server",
    "SimConfigError",
    "StreamInterrupted",
    "Timeouts",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
