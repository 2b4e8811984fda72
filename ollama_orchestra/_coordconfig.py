"""The ``coordination`` option: where several orchestras (processes) share their servers' slots.

``OrchestraConfig(coordination=None)`` (the default) keeps every slot in this process.
A ``redis://``, ``rediss://`` or ``unix://`` URL string, or a :class:`Coordination` for the
tuning knobs, shares them through Redis (see ``_coordination``). The TOML file's
``[coordination]`` table and ``OLLAMA_ORCHESTRA_COORDINATION`` (a URL) set the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ._errors import ConfigError
from ._secrets import redact_url
from ._validate import positive

__all__ = ["Coordination", "coordination_option"]

#: The URL schemes the ``redis`` client accepts.
SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class Coordination:
    """Shared slots through Redis.

    Args:
        url: the Redis server (``redis://``, ``rediss://`` or ``unix://``); a password in it
            is never shown (reprs, errors, logs, ``state()``).
        ttl_s: how long a dead process's slots stay taken (its leases are renewed every
            ``ttl_s / 3`` while it lives).
        fallback_share: while Redis cannot be reached, each process uses at most
            ``ceil(fallback_share * max_concurrency)`` of each server's slots (0 < x <= 1).
        timeout_s: a Redis call slower than this counts as Redis being down.
        namespace: the prefix of every Redis key (orchestras share slots per namespace).
    """

    url: str
    ttl_s: float = 5.0
    fallback_share: float = 0.5
    timeout_s: float = 0.5
    namespace: str = "ollama-orchestra"

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(SCHEMES):
            raise ConfigError(
                "coordination.url", self.url, "expected a redis://, rediss:// or unix:// URL"
            )
        if not self.url.split("://", 1)[1].strip():
            raise ConfigError("coordination.url", self.url, "names no Redis server")
        for name in ("ttl_s", "fallback_share", "timeout_s"):
            positive("coordination", name, getattr(self, name))
        if self.fallback_share > 1:
            raise ConfigError(
                "coordination.fallback_share", self.fallback_share, "must be in (0, 1]"
            )
        if not isinstance(self.namespace, str) or not self.namespace.strip():
            raise ConfigError(
                "coordination.namespace", self.namespace, "must be a non-empty string"
            )

    def __repr__(self) -> str:
        return (
            f"Coordination(url={redact_url(self.url)!r}, ttl_s={self.ttl_s!r}, "
            f"fallback_share={self.fallback_share!r}, timeout_s={self.timeout_s!r}, "
            f"namespace={self.namespace!r})"
        )


def coordination_option(value: Any) -> Optional[Coordination]:
    """``OrchestraConfig.coordination`` normalised: ``None``, a URL string or a
    :class:`Coordination`; anything else is a :class:`ConfigError` naming ``coordination``."""
    if value is None or isinstance(value, Coordination):
        return value
    if isinstance(value, str):
        if not value.startswith(SCHEMES):
            raise ConfigError(
                "coordination", value, "expected a redis://, rediss:// or unix:// URL"
            )
        try:
            return Coordination(value)
        except ConfigError as exc:
            raise ConfigError("coordination", value, exc.reason) from None
    raise ConfigError(
        "coordination", value, "must be None, a redis:// URL string or a Coordination"
    )
