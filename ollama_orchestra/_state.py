"""The one shared state object: what the orchestra knows about each server.

Written only through methods, by the health monitor (probes) and by request outcomes
(passive health); read by the balancer. ``snapshot()`` returns frozen copies, never the live
objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from ._clock import now as clock_now
from ._config import Server, normalize_model
from ._secrets import redact_url

__all__ = ["FleetSnapshot", "FleetState", "LoadedModel", "ServerSnapshot", "ServerState"]

log = logging.getLogger("ollama_orchestra.health")

#: Weight of the newest sample in the moving averages.
EWMA_ALPHA = 0.3


def _ewma(old: Optional[float], sample: float) -> float:
    return sample if old is None else old + EWMA_ALPHA * (sample - old)


@dataclass(frozen=True)
class LoadedModel:
    """A model resident on a server (from ``/api/ps``), with its keep-alive expiry."""

    name: str
    expires_at: Optional[float]  # clock time (the state's clock); None = never expires
    size_vram: int = 0


@dataclass(frozen=True)
class ServerSnapshot:
    """A frozen view of one server, as ``orch.state()`` returns it.

    ``last_error`` is the latest failure seen on the server, by a probe or a request (it
    says why a server is down); ``probe_error`` is why its latest health probe failed
    (``connection refused``, ``malformed /api/tags answer: ...``, or the health monitor's
    own failure), ``None`` once a probe succeeds.
    """

    name: str
    url: str
    healthy: bool
    probed: bool
    consecutive_failures: int
    version: Optional[str]
    models: Tuple[str, ...]
    loaded: Tuple[LoadedModel, ...]
    slots: int
    in_flight: int
    latency_s: Mapping[str, float]
    tokens_per_s: Mapping[str, float]
    requests: int
    errors: int
    error_rate: float
    last_error: Optional[str]
    breaker: str
    probe_error: Optional[str] = None

    def has_model(self, model: str) -> bool:
        return normalize_model(model) in self.models


@dataclass(frozen=True)
class FleetSnapshot:
    """A frozen view of the whole fleet.

    ``coordination``: how slots are shared with other processes: ``None`` (not shared, the
    default), ``"redis"`` (through Redis) or ``"local-fallback"`` (Redis unreachable: this
    process uses its share of each server's slots until Redis answers again).
    """

    servers: Mapping[str, ServerSnapshot]
    taken_at: float
    coordination: Optional[str] = None

    @property
    def healthy(self) -> Tuple[str, ...]:
        return tuple(n for n, s in self.servers.items() if s.healthy)

    def __getitem__(self, name: str) -> ServerSnapshot:
        return self.servers[name]

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data (``ollama-orchestra status --json``, the proxy's ``/status``)."""
        return {
            "taken_at": self.taken_at,
            "healthy": list(self.healthy),
            "coordination": self.coordination,
            "servers": {
                name: {
                    "url": s.url,
                    "healthy": s.healthy,
                    "version": s.version,
                    "models": list(s.models),
                    "loaded": [m.name for m in s.loaded],
                    "slots": s.slots,
                    "in_flight": s.in_flight,
                    "requests": s.requests,
                    "errors": s.errors,
                    "error_rate": s.error_rate,
                    "latency_s": dict(s.latency_s),
                    "tokens_per_s": dict(s.tokens_per_s),
                    "consecutive_failures": s.consecutive_failures,
                    "last_error": s.last_error,
                    "probe_error": s.probe_error,
                    "breaker": s.breaker,
                }
                for name, s in self.servers.items()
            },
        }


@dataclass
class ServerState:
    """Live state of one server. Mutate it only through :class:`FleetState`."""

    server: Server
    healthy: bool = False
    probed: bool = False
    consecutive_failures: int = 0
    version: Optional[str] = None
    models: FrozenSet[str] = frozenset()
    model_sizes: Dict[str, int] = field(default_factory=dict)
    #: each installed model's digest, as ``/api/tags`` last gave it (where it gives one).
    model_digests: Dict[str, str] = field(default_factory=dict)
    loaded: Dict[str, LoadedModel] = field(default_factory=dict)
    latency_s: Dict[str, float] = field(default_factory=dict)
    tokens_per_s: Dict[str, float] = field(default_factory=dict)
    load_s: Dict[str, float] = field(default_factory=dict)
    requests: int = 0
    errors: int = 0
    error_ewma: float = 0.0
    last_error: Optional[str] = None
    probe_error: Optional[str] = None
    #: The health last logged: None before the first verdict (one line per change).
    reported: Optional[bool] = None

    @property
    def models_known(self) -> bool:
        return self.server.models is not None or self.probed

    def is_loaded(self, model: str, now: float) -> bool:
        lm = self.loaded.get(model)
        return lm is not None and (lm.expires_at is None or lm.expires_at > now)

    def loaded_at(self, now: float) -> FrozenSet[str]:
        """The models loaded here at ``now`` (:meth:`is_loaded` of each)."""
        return frozenset(m for m in self.loaded if self.is_loaded(m, now))


class FleetState:
    """Everything known about every server; one instance per :class:`Orchestra`.

    Listeners registered with :meth:`subscribe` are called (synchronously) after every change
    that can make a server eligible or not, so the balancer can hand out slots at once.
    """

    def __init__(
        self, servers: Iterable[Server], *, clock: Callable[[], float] = clock_now
    ) -> None:
        self._clock = clock
        self._servers: Dict[str, ServerState] = {}
        for s in servers:
            st = ServerState(server=s)
            if s.models is not None:
                st.models = frozenset(s.models)
            self._servers[s.name] = st
        self._listeners: List[Callable[[], None]] = []
        self._breaker_state: Callable[[str], str] = lambda name: "closed"
        # In-flight counts are not kept here: the balancer's slot store owns them (its open
        # leases), and snapshots read them through this (attached by the balancer).
        self._in_flight: Callable[[str], int] = lambda name: 0
        self._coordination: Callable[[], Optional[str]] = lambda: None
        # Told each up/down verdict this process reached itself (shared health: _shared_health).
        self._verdicts: Callable[[str, bool, str], None] = lambda name, up, cause: None

    # -- reading ---------------------------------------------------------------------------

    def __getitem__(self, name: str) -> ServerState:
        return self._servers[name]

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._servers)

    def servers(self) -> List[ServerState]:
        return list(self._servers.values())

    def now(self) -> float:
        return self._clock()

    def snapshot(self) -> FleetSnapshot:
        now = self._clock()
        out: Dict[str, ServerSnapshot] = {}
        for name, st in self._servers.items():
            loaded = tuple(
                sorted(
                    (
                        lm
                        for lm in st.loaded.values()
                        if lm.expires_at is None or lm.expires_at > now
                    ),
                    key=lambda lm: lm.name,
                )
            )
            out[name] = ServerSnapshot(
                name=name,
                url=st.server.url,
                healthy=st.healthy,
                probed=st.probed,
                consecutive_failures=st.consecutive_failures,
                version=st.version,
                models=tuple(sorted(st.models)),
                loaded=loaded,
                slots=st.server.max_concurrency,
                in_flight=self._in_flight(name),
                latency_s=dict(st.latency_s),
                tokens_per_s=dict(st.tokens_per_s),
                requests=st.requests,
                errors=st.errors,
                error_rate=st.error_ewma,
                last_error=st.last_error,
                breaker=self._breaker_state(name),
                probe_error=st.probe_error,
            )
        return FleetSnapshot(servers=out, taken_at=now, coordination=self._coordination())

    # -- writing ---------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _report(self, st: ServerState, cause: str) -> None:
        """Log a server going down or coming up: one line per change, with its cause (and
        tell the verdict feed, see :meth:`attach_verdicts`)."""
        where = f"{st.server.name} ({redact_url(st.server.url)})"
        if st.healthy and st.reported is not True:
            st.reported = True
            log.info("server %s is up: %s", where, cause)
            self._verdicts(st.server.name, True, cause)
        elif not st.healthy and st.reported is not False and st.consecutive_failures > 0:
            # Down after being up, or never up since the start (a host down from the
            # start, a mistyped URL) once its first probe fails.
            st.reported = False
            log.warning("server %s is down: %s", where, cause)
            self._verdicts(st.server.name, False, cause)

    def seen_down_elsewhere(self, name: str, cause: str) -> None:
        """Another process found ``name`` down (shared health): out of rotation here too,
        until a probe or a request of this process succeeds there. Not a verdict of this
        process (not passed to the feed)."""
        st = self._servers[name]
        st.last_error = cause
        if st.healthy:
            st.healthy = False
            st.loaded = {}
            st.reported = False
            log.warning("server %s (%s) is down: %s", name, redact_url(st.server.url), cause)
            self._changed()

    def probe_succeeded(
        self,
        name: str,
        *,
        version: Optional[str],
        models: Mapping[str, int],
        loaded: Iterable[LoadedModel],
        digests: Optional[Mapping[str, str]] = None,
    ) -> None:
        """A health probe answered: the server is up; refresh what it has and has loaded."""
        st = self._servers[name]
        was = st.healthy
        st.healthy = True
        st.probed = True
        st.consecutive_failures = 0
        if version:
            st.version = version
        if st.server.models is None:
            st.models = frozenset(normalize_model(m) for m in models)
        st.model_sizes = {normalize_model(m): size for m, size in models.items()}
        st.model_digests = {normalize_model(m): d for m, d in (digests or {}).items()}
        st.loaded = {normalize_model(lm.name): lm for lm in loaded}
        st.probe_error = None
        if not was:
            st.last_error = None
        self._report(st, f"version {st.version or 'unknown'}, {len(models)} models")
        self._changed()

    def probe_failed(self, name: str, error: str, *, unhealthy_after: int) -> None:
        """A health probe failed; after ``unhealthy_after`` in a row the server is down."""
        st = self._servers[name]
        st.consecutive_failures += 1
        st.last_error = error
        st.probe_error = error
        if st.consecutive_failures >= unhealthy_after and st.healthy:
            st.healthy = False
            st.loaded = {}
        self._report(st, error)
        self._changed()

    def monitor_failed(self, name: str, error: str) -> None:
        """The health monitor itself failed for this server (a bug, logged at ERROR where it
        happened): what is known about it is stale, so it is out of rotation until a probe
        succeeds, and ``error`` is what requests and ``status`` are told."""
        st = self._servers[name]
        st.consecutive_failures += 1
        st.last_error = error
        st.probe_error = error
        st.reported = False  # already logged, at ERROR
        if st.healthy:
            st.healthy = False
            st.loaded = {}
        self._changed()

    def mark_down(self, name: str, error: str) -> None:
        """A request could not even connect: the server is down now, not after N probes."""
        st = self._servers[name]
        st.consecutive_failures += 1
        st.last_error = error
        if st.healthy:
            st.healthy = False
            st.loaded = {}
            self._report(st, error)
            self._changed()

    def forget_model(self, name: str, model: str) -> None:
        """The server answered 404 for ``model``: it does not have it (any more)."""
        st = self._servers[name]
        model = normalize_model(model)
        # The server's own answer wins over a static list in the config.
        if model in st.models:
            st.models = st.models - {model}
        st.loaded.pop(model, None)
        self._changed()

    def attach_breakers(self, states: Callable[[str], str]) -> None:
        """Where snapshots read each server's breaker state from."""
        self._breaker_state = states

    def attach_coordination(self, mode: Callable[[], Optional[str]]) -> None:
        """Where snapshots read the slot sharing mode from (see :class:`FleetSnapshot`)."""
        self._coordination = mode

    def attach_verdicts(self, feed: Callable[[str, bool, str], None]) -> None:
        """Call ``feed(name, up, cause)`` for each up/down change this process's own probes
        and requests find (one per logged change; not for :meth:`seen_down_elsewhere`)."""
        self._verdicts = feed

    def attach_in_flight(self, count: Callable[[str], int]) -> None:
        """Where snapshots read each server's in-flight count from (its open leases)."""
        self._in_flight = count

    def record_success(
        self,
        name: str,
        model: str,
        *,
        latency_s: float,
        eval_count: int = 0,
        eval_duration_ns: int = 0,
        load_duration_ns: int = 0,
        keep_alive_s: float = 300.0,
        time_ratio: float = 1.0,
    ) -> None:
        """A request succeeded: feed latency and speed, and note the model is now loaded there.

        ``time_ratio`` converts the durations the server reports (``load_duration``, its
        keep-alive) into the orchestra's clock: see ``_rates.PromptCosts.time_ratio``.
        """
        st = self._servers[name]
        model = normalize_model(model)
        st.requests += 1
        st.error_ewma = _ewma(st.error_ewma, 0.0)
        st.latency_s[model] = _ewma(st.latency_s.get(model), latency_s)
        if eval_count > 0 and eval_duration_ns > 0:
            st.tokens_per_s[model] = _ewma(
                st.tokens_per_s.get(model), eval_count / (eval_duration_ns / 1e9)
            )
        was_loaded = st.is_loaded(model, self._clock())
        if load_duration_ns > 0 and (not was_loaded or load_duration_ns > 1e9):
            # A cold load: the model was not loaded there as far as we knew, or the load took
            # over a second (a warm request reports a few milliseconds of load time).
            load_s = load_duration_ns / 1e9 * time_ratio
            st.load_s[model] = _ewma(st.load_s.get(model), load_s)
        if not was_loaded:
            size = st.model_sizes.get(model, 0)
            expires = self._clock() + keep_alive_s * time_ratio
            st.loaded[model] = LoadedModel(model, expires, size)
        if not st.healthy:
            st.healthy = True
            st.consecutive_failures = 0
            self._report(st, "a request succeeded")
            self._changed()

    def record_failure(self, name: str, error: str) -> None:
        """A request failed on this server (after it connected): counts toward its error rate."""
        st = self._servers[name]
        st.requests += 1
        st.errors += 1
        st.error_ewma = _ewma(st.error_ewma, 1.0)
        st.last_error = error
