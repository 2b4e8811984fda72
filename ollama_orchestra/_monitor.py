"""The health monitor: one probe loop per server, all in one task group.

Each probe asks ``/api/version``, ``/api/tags`` and ``/api/ps`` at once and writes the
answers into the shared :class:`FleetState`. ``N`` consecutive failures mark a server
unhealthy; one success brings it back. A server that is down is probed more often, and a
request that fails to connect asks for a probe at once (:meth:`HealthMonitor.poke`).

Every answer is validated where it is parsed (:func:`parse_version`, :func:`parse_tags`,
:func:`parse_ps`): a malformed one is a probe failure of that server with a one-line reason
(:class:`ProbeError`), like a refused connection. A bug in one server's loop is logged at
ERROR (once, with its traceback), marks that server stale, and never ends another loop.

Probe requests are logged by httpx at DEBUG, not INFO: the user's own httpx logging stays
as it is, but three GETs per host every few seconds are not worth an INFO line each.
"""

from __future__ import annotations

import contextvars
import json
import logging
import random
import socket
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional

import anyio
import httpx
from anyio.abc import TaskStatus

from ._breaker import CircuitBreaker
from ._config import HealthPolicy, Server
from ._state import FleetState, LoadedModel

__all__ = [
    "PROBE_PATHS",
    "HealthMonitor",
    "ProbeError",
    "describe_transport_error",
    "parse_json",
    "parse_ps",
    "parse_tags",
    "parse_version",
]

log = logging.getLogger("ollama_orchestra.monitor")

PROBE_PATHS = ("/api/version", "/api/tags", "/api/ps")

#: Set while a probe runs: the ``httpx`` logger's filter below demotes its lines to DEBUG.
_probing: contextvars.ContextVar[bool] = contextvars.ContextVar("ollama_orchestra_probing")


class _QuietProbes(logging.Filter):
    """On the ``httpx`` logger: the monitor's own requests are logged at DEBUG, not INFO.

    Only records made while a probe runs (a context variable, so concurrent user requests on
    the same event loop are untouched) are changed; the user's own httpx lines stay INFO.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _probing.get(False) or record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _install_quiet_probes() -> None:
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, _QuietProbes) for f in httpx_log.filters):
        httpx_log.addFilter(_QuietProbes())


_install_quiet_probes()


class ProbeError(Exception):
    """A probe failed; ``str(exc)`` is the one-line reason kept in the fleet state."""


def describe_transport_error(exc: BaseException) -> str:
    """A short reason for a failed probe request, never with the URL (it may hold a password)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        cause: Optional[BaseException] = exc
        while cause is not None:
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, socket.gaierror):
                return f"cannot resolve host: {cause.strerror or cause}"
            cause = cause.__cause__ or cause.__context__
        return f"cannot connect: {exc or type(exc).__name__}"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc or 'no detail'}"
    return f"{type(exc).__name__}: {exc}"


# The shapes below follow Ollama's own types (ollama/ollama v0.33.0-rc2): api/types.go
# ListResponse {models: []ListModelResponse{name, model, size int64, ...}}, ProcessResponse
# {models: []ProcessModelResponse{name, model, size, size_vram int64, expires_at time.Time,
# ...}}, ModelDetails (ignored here); server/routes.go answers /api/version with
# {"version": string}. ListHandler may encode an empty list as null. Unknown fields are
# ignored, missing optional ones take a default; a wrong type is a malformed answer.


def parse_json(path: str, content: bytes) -> Any:
    """Decode a probe answer's body; :class:`ProbeError` if it is not JSON."""
    try:
        return json.loads(content)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProbeError(f"malformed {path} answer: not JSON ({type(exc).__name__})") from exc


def _object(path: str, body: Any) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ProbeError(f"malformed {path} answer: a {_kind(body)}, not an object")
    return body


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list"}.get(
        type(value), type(value).__name__
    )


def _entries(path: str, body: Any) -> List[Mapping[str, Any]]:
    models = _object(path, body).get("models")
    if models is None:  # Go encodes an empty (nil) slice as null
        return []
    if not isinstance(models, list):
        raise ProbeError(f"malformed {path} answer: 'models' is a {_kind(models)}, not a list")
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise ProbeError(f"malformed {path} answer: models[{i}] is a {_kind(m)}, not an object")
    return models


def _name(path: str, i: int, m: Mapping[str, Any]) -> str:
    for key in ("name", "model"):
        value = m.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            raise ProbeError(
                f"malformed {path} answer: models[{i}].{key} is a {_kind(value)}, not a string"
            )
        return value
    raise ProbeError(f"malformed {path} answer: models[{i}] has no 'name'")


def _size(path: str, i: int, m: Mapping[str, Any], key: str) -> int:
    value = m.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProbeError(
            f"malformed {path} answer: models[{i}].{key} is {value!r:.40}, not a byte count"
        )
    return value


def parse_version(body: Any) -> Optional[str]:
    """``/api/version``: the version string (``None`` if the host does not say)."""
    version = _object("/api/version", body).get("version")
    if version is not None and not isinstance(version, str):
        raise ProbeError(
            f"malformed /api/version answer: 'version' is a {_kind(version)}, not a string"
        )
    return version or None


def parse_tags(body: Any) -> Dict[str, int]:
    """``/api/tags``: each installed model's name and size in bytes."""
    path = "/api/tags"
    return {
        _name(path, i, m): _size(path, i, m, "size") for i, m in enumerate(_entries(path, body))
    }


def parse_digests(body: Any) -> Dict[str, str]:
    """``/api/tags``: each installed model's ``digest``, where the answer gives one as a string
    (``ListModelResponse.Digest`` in Ollama's api/types.go, v0.33.0-rc2)."""
    path = "/api/tags"
    out: Dict[str, str] = {}
    for i, m in enumerate(_entries(path, body)):
        digest = m.get("digest")
        if isinstance(digest, str) and digest:
            out[_name(path, i, m)] = digest
    return out


def parse_ps(body: Any, wall_now: float, mono_now: float) -> List[LoadedModel]:
    """``/api/ps``: the loaded models, their expiry turned into the state's clock."""
    path = "/api/ps"
    loaded = []
    for i, m in enumerate(_entries(path, body)):
        expires = m.get("expires_at")
        if expires is not None and not isinstance(expires, str):
            raise ProbeError(
                f"malformed {path} answer: models[{i}].expires_at is a {_kind(expires)}, not a time"
            )
        loaded.append(
            LoadedModel(
                _name(path, i, m),
                _parse_expiry(expires, wall_now, mono_now),
                _size(path, i, m, "size_vram"),
            )
        )
    return loaded


def _parse_expiry(value: Any, wall_now: float, mono_now: float) -> Optional[float]:
    """Turn /api/ps ``expires_at`` (RFC 3339 wall time) into the state's clock."""
    if not isinstance(value, str) or not value:
        return None
    try:
        text = value.replace("Z", "+00:00")
        # Python < 3.11 cannot parse more than 6 fractional digits: trim Go's nanoseconds.
        if "." in text:
            head, _, tail = text.partition(".")
            rest = tail.lstrip("0123456789")  # the offset after the fraction
            digits = tail[: len(tail) - len(rest)]
            text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"  # 3.8-3.10: 3 or 6 digits
        when = datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):  # not a time, or one out of range
        return None
    if when - wall_now > 10 * 365 * 86400:  # "forever" (keep_alive < 0)
        return None
    return mono_now + (when - wall_now)


class HealthMonitor:
    """Probes every server in the background and keeps :class:`FleetState` current.

    Start it with ``await task_group.start(monitor.run)``: that returns once every server
    has answered (or failed) its first probe, bounded by ``policy.startup_timeout_s``.
    """

    def __init__(
        self,
        servers: List[Server],
        state: FleetState,
        client: httpx.AsyncClient,
        policy: HealthPolicy,
        *,
        breakers: Optional[Mapping[str, CircuitBreaker]] = None,
        wall_clock: Callable[[], float],
        rng: Optional[random.Random] = None,
    ) -> None:
        self._servers = servers
        self._state = state
        self._client = client
        self._policy = policy
        self._breakers = breakers or {}
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._wake: Dict[str, anyio.Event] = {s.name: anyio.Event() for s in servers}

    def poke(self, name: str) -> None:
        """Probe ``name`` now instead of at its next interval."""
        self._wake[name].set()

    async def probe_all(self) -> None:
        """One probe round over every server, concurrently."""
        async with anyio.create_task_group() as tg:
            for server in self._servers:
                tg.start_soon(self.probe, server)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe forever; report started after the first round (or the startup timeout).

        Should the monitor itself fail once started (a bug: each loop already survives its
        own), the failure is logged at ERROR with its traceback and every server is marked
        stale (out of rotation, the failure as its error) rather than trusted forever.
        """
        started = False
        first_round = {s.name: anyio.Event() for s in self._servers}
        try:
            async with anyio.create_task_group() as tg:
                for server in self._servers:
                    tg.start_soon(self._loop, server, first_round[server.name])
                with anyio.move_on_after(self._policy.startup_timeout_s):
                    for event in first_round.values():
                        await event.wait()
                task_status.started()
                started = True
        except Exception as exc:
            if not started:
                raise
            reason = f"health monitor stopped: {_describe_bug(exc)}"
            log.error("%s; the fleet state is stale from now on", reason, exc_info=exc)
            for server in self._servers:
                self._state.monitor_failed(server.name, reason)

    async def _loop(self, server: Server, first: anyio.Event) -> None:
        failing = False
        while True:
            try:
                await self.probe(server)
            except Exception as exc:  # a bug: it must end neither this loop nor another's
                reason = f"health monitor failed: {_describe_bug(exc)}"
                if not failing:
                    log.error(
                        "probing %s failed (a bug); it is out of rotation until a probe"
                        " succeeds: %s",
                        server.name,
                        reason,
                        exc_info=exc,
                    )
                failing = True
                try:
                    self._state.monitor_failed(server.name, reason)
                except Exception:  # the same bug, in a state listener: already logged
                    log.debug("marking %s stale failed too", server.name, exc_info=True)
            else:
                if failing:
                    log.info("probing %s works again", server.name)
                failing = False
            first.set()
            st = self._state[server.name]
            healthy = st.healthy and not failing
            interval = self._policy.interval_s if healthy else self._policy.down_interval_s
            jitter = self._policy.jitter
            interval *= 1.0 + self._rng.uniform(-jitter, jitter)
            self._wake[server.name] = event = anyio.Event()
            with anyio.move_on_after(interval):
                await event.wait()

    async def probe(self, server: Server) -> None:
        """Probe one server and write the outcome into the state.

        A failed or malformed answer is recorded as a probe failure; only a bug (including
        one in a state listener) raises.
        """
        breaker = self._breakers.get(server.name)
        try:
            bodies = await self._fetch(server)
            mono_now, wall_now = self._state.now(), self._wall()
            version = parse_version(parse_json("/api/version", bodies["/api/version"]))
            tags = parse_json("/api/tags", bodies["/api/tags"])
            models = parse_tags(tags)
            digests = parse_digests(tags)
            loaded = parse_ps(parse_json("/api/ps", bodies["/api/ps"]), wall_now, mono_now)
        except ProbeError as exc:
            self._state.probe_failed(
                server.name, str(exc), unhealthy_after=self._policy.unhealthy_after
            )
            if breaker is not None:
                breaker.record_probe_failure(str(exc))
            return
        self._state.probe_succeeded(
            server.name, version=version, models=models, loaded=loaded, digests=digests
        )
        if breaker is not None:
            breaker.record_probe_success()

    async def _fetch(self, server: Server) -> Dict[str, bytes]:
        """The three answers' bodies by path; :class:`ProbeError` with the first failure."""
        bodies: Dict[str, bytes] = {}
        failures: Dict[str, str] = {}

        async def get(path: str) -> None:
            try:
                response = await self._client.get(server.url + path, headers=dict(server.headers))
            except Exception as exc:  # httpx's errors, or anything a custom transport raises
                failures[path] = describe_transport_error(exc)
                return
            if not response.is_success:
                failures[path] = f"{path} answered HTTP {response.status_code}"
            else:
                bodies[path] = response.content

        token = _probing.set(True)
        try:
            with anyio.move_on_after(self._policy.timeout_s) as scope:
                async with anyio.create_task_group() as tg:
                    for path in PROBE_PATHS:
                        tg.start_soon(get, path)
        finally:
            _probing.reset(token)
        for path in PROBE_PATHS:
            if path in failures:
                raise ProbeError(failures[path])
        if scope.cancelled_caught:
            raise ProbeError(f"probe timed out after {self._policy.timeout_s}s")
        return bodies


def _describe_bug(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an ExceptionGroup from a task group
    if inner:
        exc = inner[0]
    return f"{type(exc).__name__}: {exc}"
