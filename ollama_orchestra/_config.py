"""Configuration: servers, policies and the fleet config, validated on construction.

Every invalid value raises :class:`ConfigError` naming the field and the value, before any
task starts or socket opens.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
)
from urllib.parse import unquote, urlsplit, urlunsplit

from ._coordconfig import Coordination, coordination_option
from ._errors import ConfigError
from ._secrets import redact_headers
from ._validate import (
    boolean,
    header_table,
    is_integer,
    optional_str,
    positive,
    positive_int,
    string_list,
    string_table,
)

if TYPE_CHECKING:  # the balancer imports this module: no import at run time
    from ._strategies import Strategy

__all__ = [
    "STRATEGIES",
    "AffinityRule",
    "BreakerPolicy",
    "HealthPolicy",
    "OrchestraConfig",
    "RetryPolicy",
    "Server",
    "Timeouts",
    "normalize_model",
]

#: Names accepted by ``OrchestraConfig.strategy``.
STRATEGIES = ("round_robin", "least_loaded", "weighted", "model_aware", "hybrid")


def normalize_model(name: str) -> str:
    """Ollama's model names: ``llama3`` means ``llama3:latest``."""
    if not isinstance(name, str):
        raise TypeError(f"a model name must be a str, got {name!r}")
    name = name.strip()
    if name and ":" not in name.rsplit("/", 1)[-1]:
        return name + ":latest"
    return name


def _split_credentials(url: str) -> Tuple[str, Optional[str]]:
    """``url`` without its ``user:password@``, and those credentials as an ``Authorization:
    Basic`` value (``None`` without). httpx would send them the same way from the URL; taking
    them out here keeps them out of every repr, snapshot, log line and error message."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return clean, f"Basic {token}"


@dataclass(frozen=True)
class Server:
    """One Ollama host.

    Args:
        name: unique name, used in logs, metrics and affinity rules.
        url: base URL, e.g. ``http://ollama01:11434``.
        max_concurrency: slots: requests sent at once (match the host's ``OLLAMA_NUM_PARALLEL``).
        weight: relative capacity for the ``weighted`` strategy and the fair-share arithmetic.
        models: a static model list; ``None`` means discover it from ``/api/tags``.
        labels: free-form labels that affinity rules can match (``gpu = "a100"``).
        headers: extra HTTP headers (``Authorization``): sent, never logged or shown in a repr.
        lookahead: requests the orchestra may send ahead into the host's own queue while all
            its slots are busy and one is predicted to free soon (so the host starts the next
            request the moment a slot frees, with no round trip between); each is taken back
            if another host can start it sooner, a higher-priority request or a retry waits,
            or a request fails on any host. Unset: on (1) under ``hybrid`` only, whose rule
            (where it finishes first) it places by; ``0`` off. Off under ``coordination``.

    Credentials in the URL (``http://user:password@host``) are taken out of ``url`` and sent
    as an ``Authorization: Basic`` header, so they are never shown anywhere.
    """

    name: str
    url: str
    max_concurrency: int = 1
    weight: float = 1.0
    models: Optional[Tuple[str, ...]] = None
    labels: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    lookahead: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("Server.name", self.name, "must be a non-empty string")
        owner = f"Server({self.name!r})"
        if not isinstance(self.url, str):
            raise ConfigError(f"{owner}.url", self.url, "must be a string")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:  # a bad port, or a malformed IPv6 host
            raise ConfigError(f"{owner}.url", self.url, f"bad URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{owner}.url", self.url, "must be an http:// or https:// URL with a host"
            )
        if port == 0 or any(c.isspace() for c in self.url):
            raise ConfigError(f"{owner}.url", self.url, "bad URL: port 0 or white space")
        url, auth = _split_credentials(self.url.rstrip("/"))
        object.__setattr__(self, "url", url)
        positive_int(owner, "max_concurrency", self.max_concurrency)
        positive(owner, "weight", self.weight)
        if self.lookahead is not None:
            positive_int(owner, "lookahead", self.lookahead, minimum=0)
        if self.models is not None:
            models = string_list(owner, "models", self.models)
            object.__setattr__(self, "models", tuple(normalize_model(m) for m in models))
        object.__setattr__(self, "labels", string_table(owner, "labels", self.labels))
        headers = header_table(owner, self.headers)
        if auth is not None:
            if any(k.lower() == "authorization" for k in headers):
                raise ConfigError(
                    f"{owner}.url",
                    self.url,
                    "has credentials and headers has an Authorization too: give one",
                )
            headers["Authorization"] = auth
        object.__setattr__(self, "headers", headers)

    def __repr__(self) -> str:
        extra = f", headers={redact_headers(self.headers)!r}" if self.headers else ""
        look = f", lookahead={self.lookahead}" if self.lookahead is not None else ""
        return (
            f"Server(name={self.name!r}, url={self.url!r}, max_concurrency={self.max_concurrency}, "
            f"weight={self.weight}, models={self.models!r}, labels={dict(self.labels)!r}"
            f"{look}{extra})"
        )


@dataclass(frozen=True)
class Timeouts:
    """Per-request timeouts in seconds.

    ``first_byte_s`` bounds the wait for the first streamed chunk (it catches a hung host and
    covers queueing inside Ollama, a cold load and prompt evaluation); ``read_s`` bounds the
    silence between two chunks; ``total_s`` bounds a whole request and is off by default, so
    a slow but alive host is never cut off mid-answer.
    """

    connect_s: float = 3.0
    first_byte_s: float = 120.0
    read_s: float = 60.0
    total_s: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_byte_s", "read_s"):
            positive("Timeouts", name, getattr(self, name))
        if self.total_s is not None:
            positive("Timeouts", "total_s", self.total_s)


@dataclass(frozen=True)
class HealthPolicy:
    """How the health monitor probes each server.

    A server is marked unhealthy after ``unhealthy_after`` consecutive failed probes (or at
    once on a refused connection from a request) and healthy again after one success. While
    it is down it is probed every ``down_interval_s``.
    """

    interval_s: float = 5.0
    down_interval_s: float = 0.5
    timeout_s: float = 2.0
    jitter: float = 0.1
    unhealthy_after: int = 2
    startup_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "down_interval_s", "timeout_s", "startup_timeout_s"):
            positive("HealthPolicy", name, getattr(self, name))
        positive("HealthPolicy", "jitter", self.jitter, allow_zero=True)
        if self.jitter >= 1:
            raise ConfigError("HealthPolicy.jitter", self.jitter, "must be < 1 (a fraction)")
        positive_int("HealthPolicy", "unhealthy_after", self.unhealthy_after)


@dataclass(frozen=True)
class RetryPolicy:
    """Failover: how many attempts, how long, and the backoff once every server has failed.

    A failed attempt goes at once to a server not yet tried for the request; the exponential,
    jittered backoff (``backoff_base_s * 2**n``, capped at ``backoff_max_s``) applies only
    when every eligible server has already failed it.

    ``mid_stream`` says what a stream that breaks after text was yielded does:
    ``"continue"`` (the default) re-sends it to another host serving the model with the
    partial answer as prefill, at most ``continuations`` times, and the caller's stream goes
    on; ``"raise"`` raises :class:`StreamInterrupted` with the partial text.
    """

    attempts: int = 3
    deadline_s: Optional[float] = None
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    jitter: bool = True
    mid_stream: str = "continue"
    continuations: int = 2

    def __post_init__(self) -> None:
        positive_int("RetryPolicy", "attempts", self.attempts)
        if self.deadline_s is not None:
            positive("RetryPolicy", "deadline_s", self.deadline_s)
        positive("RetryPolicy", "backoff_base_s", self.backoff_base_s, allow_zero=True)
        positive("RetryPolicy", "backoff_max_s", self.backoff_max_s, allow_zero=True)
        boolean("RetryPolicy", "jitter", self.jitter)
        if self.mid_stream not in ("continue", "raise"):
            raise ConfigError(
                "RetryPolicy.mid_stream", self.mid_stream, 'must be "continue" or "raise"'
            )
        positive_int("RetryPolicy", "continuations", self.continuations, minimum=0)


@dataclass(frozen=True)
class BreakerPolicy:
    """When a server's circuit breaker opens, how long it stays open, how it probes.

    Opens after ``failure_threshold`` consecutive failures, or when the failure rate over
    the last ``window`` outcomes (at least ``min_calls`` of them) reaches ``failure_rate``.
    Stays open ``cooldown_s``, multiplied by ``cooldown_multiplier`` on each repeated trip,
    capped at ``cooldown_max_s``; then half-open admits ``half_open_probes`` requests at once.
    """

    failure_threshold: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    cooldown_s: float = 2.0
    cooldown_multiplier: float = 2.0
    cooldown_max_s: float = 60.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        positive_int("BreakerPolicy", "failure_threshold", self.failure_threshold)
        positive_int("BreakerPolicy", "window", self.window)
        positive_int("BreakerPolicy", "min_calls", self.min_calls)
        positive_int("BreakerPolicy", "half_open_probes", self.half_open_probes)
        positive("BreakerPolicy", "failure_rate", self.failure_rate)
        if self.failure_rate > 1:
            raise ConfigError("BreakerPolicy.failure_rate", self.failure_rate, "must be in (0, 1]")
        if self.min_calls > self.window:
            raise ConfigError("BreakerPolicy.min_calls", self.min_calls, "must be <= window")
        positive("BreakerPolicy", "cooldown_s", self.cooldown_s)
        positive("BreakerPolicy", "cooldown_max_s", self.cooldown_max_s)
        positive("BreakerPolicy", "cooldown_multiplier", self.cooldown_multiplier)
        if self.cooldown_multiplier < 1:
            raise ConfigError(
                "BreakerPolicy.cooldown_multiplier", self.cooldown_multiplier, "must be >= 1"
            )
        if self.cooldown_max_s < self.cooldown_s:
            raise ConfigError(
                "BreakerPolicy.cooldown_max_s", self.cooldown_max_s, "must be >= cooldown_s"
            )


@dataclass(frozen=True)
class AffinityRule:
    """Routing preference as data: requests that match go to (or avoid) matching servers.

    A rule matches a request when every given selector matches: ``model`` (exact name, or a
    glob such as ``"*:32b"``), ``role`` and ``min_priority``. It then restricts or orders the
    candidates: ``servers`` (names) and ``labels`` (all must match). With ``required=False``
    (the default) matching servers are preferred and the others used only when none of the
    preferred is eligible; with ``required=True`` the others are never used.
    """

    model: Optional[str] = None
    role: Optional[str] = None
    min_priority: Optional[int] = None
    servers: Tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    required: bool = False

    def __post_init__(self) -> None:
        optional_str("AffinityRule", "model", self.model)
        optional_str("AffinityRule", "role", self.role)
        if self.min_priority is not None and not is_integer(self.min_priority):
            raise ConfigError("AffinityRule.min_priority", self.min_priority, "must be an integer")
        object.__setattr__(
            self, "servers", string_list("AffinityRule", "servers", cast(Any, self.servers))
        )
        object.__setattr__(self, "labels", string_table("AffinityRule", "labels", self.labels))
        boolean("AffinityRule", "required", self.required)
        if not self.servers and not self.labels:
            raise ConfigError("AffinityRule", self, "needs 'servers' or 'labels' to route to")

    def matches_request(self, model: str, role: Optional[str], priority: int) -> bool:
        from fnmatch import fnmatchcase

        if self.model is not None and not (
            fnmatchcase(model, self.model) or fnmatchcase(model, normalize_model(self.model))
        ):
            return False
        if self.role is not None and role != self.role:
            return False
        return self.min_priority is None or priority >= self.min_priority

    def matches_server(self, server: Server) -> bool:
        if self.servers and server.name not in self.servers:
            return False
        return all(server.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class OrchestraConfig:
    """The whole fleet: servers, strategy, roles, affinity and policies.

    Args:
        servers: the Ollama hosts (at least one, unique names).
        strategy: one of :data:`STRATEGIES`, or a :class:`Strategy` object (anything with a
            ``choose(request, candidates)`` method); ``hybrid`` (the default) picks the
            server with the least expected completion time.
        roles: pipeline roles to models, e.g. ``{"coding": "qwen2.5-coder:32b"}``; a role name
            is accepted wherever a model name is.
        affinity: routing rules, applied before the strategy.
        wait_for_healthy_s: how long a request waits for a capable server to come back
            before raising :class:`NoHealthyServer`.
        coordination: ``None`` (slots kept in this process), or a Redis URL or a
            :class:`Coordination` to share the slots with other processes (normalised to a
            :class:`Coordination`).
    """

    servers: Sequence[Server]
    strategy: Union[str, Strategy] = "hybrid"
    roles: Mapping[str, str] = field(default_factory=dict)
    affinity: Tuple[AffinityRule, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    health: HealthPolicy = field(default_factory=HealthPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    wait_for_healthy_s: float = 10.0
    coordination: Union[str, Coordination, None] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "coordination", coordination_option(self.coordination))
        raw_servers: Any = self.servers
        if isinstance(raw_servers, (str, bytes, Server, Mapping)) or not isinstance(
            raw_servers, Iterable
        ):
            raise ConfigError("servers", raw_servers, "must be a sequence of Server")
        servers = tuple(raw_servers)
        object.__setattr__(self, "servers", servers)
        if not servers:
            raise ConfigError("servers", list(servers), "at least one server is required")
        seen: Dict[str, int] = {}
        for i, s in enumerate(servers):
            if not isinstance(s, Server):
                raise ConfigError(f"servers[{i}]", s, "must be a Server")
            if s.name in seen:
                raise ConfigError(
                    f"servers[{i}].name",
                    s.name,
                    f"duplicate server name (also servers[{seen[s.name]}])",
                )
            seen[s.name] = i
        if isinstance(self.strategy, str):
            if self.strategy not in STRATEGIES:
                raise ConfigError(
                    "strategy",
                    self.strategy,
                    f"unknown strategy; expected one of {', '.join(STRATEGIES)}",
                )
        elif not callable(getattr(self.strategy, "choose", None)):
            raise ConfigError(
                "strategy",
                self.strategy,
                f"must be one of {', '.join(STRATEGIES)} or an object with a choose() method",
            )
        if not isinstance(self.roles, Mapping):
            raise ConfigError("roles", self.roles, "must be a mapping of role to model")
        roles: Dict[str, str] = {}
        for role, raw_model in self.roles.items():
            if not isinstance(role, str) or not role.strip():
                raise ConfigError("roles", role, "role names must be non-empty strings")
            if not isinstance(raw_model, str):
                raise ConfigError(f"roles.{role}", raw_model, "must be a model name (a string)")
            model = normalize_model(raw_model)
            if not model or model == ":latest":
                raise ConfigError(f"roles.{role}", raw_model, "must name a model")
            roles[role] = model
        for role, model in roles.items():
            static = [s for s in servers if s.models is not None]
            if (
                static
                and len(static) == len(servers)
                and not any(model in (s.models or ()) for s in servers)
            ):
                raise ConfigError(f"roles.{role}", model, "no configured server lists this model")
        object.__setattr__(self, "roles", roles)
        raw_affinity: Any = self.affinity
        if isinstance(raw_affinity, (str, bytes, AffinityRule)) or not isinstance(
            raw_affinity, Iterable
        ):
            raise ConfigError("affinity", raw_affinity, "must be a sequence of AffinityRule")
        affinity = tuple(raw_affinity)
        for i, rule in enumerate(affinity):
            if not isinstance(rule, AffinityRule):
                raise ConfigError(f"affinity[{i}]", rule, "must be an AffinityRule")
            for name in rule.servers:
                if name not in seen:
                    raise ConfigError(f"affinity[{i}].servers", name, "names no configured server")
            if rule.role is not None and rule.role not in roles:
                raise ConfigError(f"affinity[{i}].role", rule.role, "names no configured role")
        object.__setattr__(self, "affinity", affinity)
        for name, kind in (
            ("timeouts", Timeouts),
            ("health", HealthPolicy),
            ("retry", RetryPolicy),
            ("breaker", BreakerPolicy),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, getattr(self, name), f"must be a {kind.__name__}")
        positive("OrchestraConfig", "wait_for_healthy_s", self.wait_for_healthy_s, allow_zero=True)

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def resolve_model(self, model_or_role: str) -> Tuple[str, Optional[str]]:
        """Return ``(model, role)``: a role name resolves to its model.

        Raises:
            ConfigError: ``model_or_role`` is not a non-empty string (field ``model``).
        """
        if not isinstance(model_or_role, str):
            raise ConfigError("model", model_or_role, "must be a model or role name (a string)")
        if model_or_role in self.roles:
            return self.roles[model_or_role], model_or_role
        if not isinstance(model_or_role, str) or not model_or_role.strip():
            raise ConfigError("model", model_or_role, "must be a model or role name")
        return normalize_model(model_or_role), None

    def replace(self, **changes: Any) -> OrchestraConfig:
        return replace(self, **changes)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "config") -> OrchestraConfig:
        """Build a config from plain data (the shape of the TOML file)."""
        from ._configload import config_from_mapping

        return config_from_mapping(cls, data, source=source)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike[str]]) -> OrchestraConfig:
        """Load a TOML config file (see the README for its shape)."""
        from ._configload import config_from_file

        return config_from_file(cls, path)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> OrchestraConfig:
        """Build a config from ``OLLAMA_ORCHESTRA_*`` environment variables.

        ``OLLAMA_ORCHESTRA_SERVERS`` is ``name=url[,name=url...]`` (a ``name=url*slots`` suffix
        sets ``max_concurrency``); ``OLLAMA_ORCHESTRA_STRATEGY`` a strategy name;
        ``OLLAMA_ORCHESTRA_ROLES`` is ``role=model[,role=model...]``;
        ``OLLAMA_ORCHESTRA_COORDINATION`` a Redis URL to share slots through;
        ``OLLAMA_ORCHESTRA_CONFIG`` a TOML file to load instead.
        """
        from ._configload import config_from_env

        return config_from_env(cls, environ)
