"""Where a config comes from: plain data (a TOML file's shape), a TOML file, the environment,
and the ``NAME=URL*SLOTS`` / ``ROLE=MODEL`` shorthand the environment and the CLI share.

:class:`OrchestraConfig`'s ``from_mapping``, ``from_file`` and ``from_env`` call these.
"""

from __future__ import annotations

import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Type, Union

from ._config import (
    AffinityRule,
    BreakerPolicy,
    HealthPolicy,
    OrchestraConfig,
    RetryPolicy,
    Server,
    Timeouts,
)
from ._coordconfig import Coordination
from ._errors import ConfigError
from ._secrets import redact_url
from ._validate import reject_unknown_keys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.8 matrix run
    import tomli as tomllib

__all__ = [
    "config_from_env",
    "config_from_file",
    "config_from_mapping",
    "env_options",
    "parse_role_specs",
    "parse_server_spec",
]


def config_from_mapping(
    cls: Type[OrchestraConfig], data: Mapping[str, Any], *, source: str = "config"
) -> OrchestraConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(source, data, "must be a table")
    reject_unknown_keys(data, (f.name for f in fields(cls)), f"{source}: ")
    raw_servers = data.get("servers")
    if not isinstance(raw_servers, list):
        raise ConfigError(f"{source}: servers", raw_servers, "must be a list of [[servers]] tables")
    servers = []
    for i, raw in enumerate(raw_servers):
        servers.append(_build(Server, raw, f"{source}: servers[{i}]"))
    kwargs: Dict[str, Any] = {"servers": tuple(servers)}
    for key in ("strategy", "wait_for_healthy_s"):
        if key in data:
            kwargs[key] = data[key]
    if "roles" in data:
        if not isinstance(data["roles"], Mapping):
            raise ConfigError(f"{source}: roles", data["roles"], "must be a table of role = model")
        for role, model in data["roles"].items():
            if not isinstance(model, str):
                raise ConfigError(
                    f"{source}: roles.{role}", model, "must be a model name (a string)"
                )
        kwargs["roles"] = dict(data["roles"])
    if "affinity" in data:
        rules = data["affinity"]
        if not isinstance(rules, list):
            raise ConfigError(f"{source}: affinity", rules, "must be a list of [[affinity]] tables")
        kwargs["affinity"] = tuple(
            _build(AffinityRule, r, f"{source}: affinity[{i}]") for i, r in enumerate(rules)
        )
    for key, policy in (
        ("timeouts", Timeouts),
        ("health", HealthPolicy),
        ("retry", RetryPolicy),
        ("breaker", BreakerPolicy),
    ):
        if key in data:
            kwargs[key] = _build(policy, data[key], f"{source}: {key}")
    if "coordination" in data:
        raw = data["coordination"]
        if isinstance(raw, str):  # ``coordination = "redis://..."``: the URL alone
            raw = {"url": raw}
        kwargs["coordination"] = _build(Coordination, raw, f"{source}: coordination")
    return cls(**kwargs)


def config_from_file(
    cls: Type[OrchestraConfig], path: Union[str, os.PathLike[str]]
) -> OrchestraConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config file", str(p), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config file", str(p), f"is not valid TOML: {exc}") from exc
    return config_from_mapping(cls, data, source=str(p))


def config_from_env(
    cls: Type[OrchestraConfig], environ: Optional[Mapping[str, str]] = None
) -> OrchestraConfig:
    env = os.environ if environ is None else environ
    if env.get("OLLAMA_ORCHESTRA_CONFIG"):
        return config_from_file(cls, env["OLLAMA_ORCHESTRA_CONFIG"])
    raw = env.get("OLLAMA_ORCHESTRA_SERVERS", "")
    if not raw.strip():
        raise ConfigError(
            "OLLAMA_ORCHESTRA_SERVERS", raw, "is not set; expected name=url[,name=url...]"
        )
    servers = tuple(
        parse_server_spec(item, field=f"OLLAMA_ORCHESTRA_SERVERS[{i}]")
        for i, item in enumerate(raw.split(","))
    )
    return cls(servers=servers, **env_options(env))


def env_options(env: Mapping[str, str]) -> Dict[str, Any]:
    """``strategy``, ``roles`` and ``coordination`` from ``OLLAMA_ORCHESTRA_STRATEGY``,
    ``_ROLES`` and ``_COORDINATION`` (those set), for the environment's config and for the CLI's
    ``--server`` fleets alike."""
    options: Dict[str, Any] = {}
    coordination = env.get("OLLAMA_ORCHESTRA_COORDINATION", "").strip()
    if coordination:
        try:
            options["coordination"] = Coordination(coordination)
        except ConfigError as exc:
            raise ConfigError("OLLAMA_ORCHESTRA_COORDINATION", coordination, exc.reason) from None
    if env.get("OLLAMA_ORCHESTRA_STRATEGY"):
        options["strategy"] = env["OLLAMA_ORCHESTRA_STRATEGY"]
    roles_raw = env.get("OLLAMA_ORCHESTRA_ROLES", "")
    if roles_raw.strip():
        options["roles"] = parse_role_specs(roles_raw.split(","), field="OLLAMA_ORCHESTRA_ROLES")
    return options


# The environment's and the command line's shorthand for servers and roles: one parser each,
# so ``OLLAMA_ORCHESTRA_SERVERS`` and ``--server`` (``_ROLES`` and ``--role``) cannot drift.


def parse_server_spec(item: str, *, field: str, default_name: Optional[str] = None) -> Server:
    """``NAME=URL[*SLOTS]`` to a :class:`Server` (``*SLOTS`` sets ``max_concurrency``).

    Every malformed value, whatever part of it is wrong, raises :class:`ConfigError` naming
    ``field`` (credentials in the URL are not shown). An empty ``NAME`` takes
    ``default_name`` when one is given.
    """
    shown = redact_url(item)
    name, sep, rest = item.strip().partition("=")
    name = name.strip() or (default_name or "")
    if not sep or not name or not rest.strip():
        raise ConfigError(field, shown, "expected NAME=URL[*SLOTS]")
    url, star, slots = rest.strip().partition("*")
    conc = 1
    if star:
        try:
            conc = int(slots)
        except ValueError:
            raise ConfigError(field, shown, "slots after '*' must be an integer") from None
    try:
        return Server(name, url.strip(), max_concurrency=conc)
    except ConfigError as exc:  # name the entry, then the Server field
        raise ConfigError(field, shown, f"{exc.field}: {exc.reason}") from None
    except (ValueError, TypeError) as exc:  # e.g. urlsplit's "Invalid IPv6 URL"
        raise ConfigError(field, shown, str(exc)) from exc


def parse_role_specs(items: Iterable[str], *, field: str) -> Dict[str, str]:
    """``ROLE=MODEL`` items to a roles mapping (a later item overrides an earlier one)."""
    roles: Dict[str, str] = {}
    for item in items:
        role, sep, model = item.strip().partition("=")
        if not sep or not role.strip() or not model.strip():
            raise ConfigError(field, item, "expected ROLE=MODEL")
        roles[role.strip()] = model.strip()
    return roles


def _build(kind: Any, raw: Any, where: str) -> Any:
    """One dataclass from one table; errors name ``where`` and the field, never the whole
    table (it may hold a header value)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(where, raw, "must be a table", secret=True)
    reject_unknown_keys(raw, (f.name for f in fields(kind)), f"{where}.")
    for f in fields(kind):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in raw:
            raise ConfigError(f"{where}.{f.name}", None, "is required")
    values = dict(raw)
    for key in ("models", "servers"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    try:
        return kind(**values)
    except ConfigError as exc:
        # Name the place in the file too: "config.toml: servers[1]: Server('a').url=...".
        raise ConfigError(
            f"{where}: {exc.field}", exc.value, exc.reason, secret=exc.secret
        ) from None
