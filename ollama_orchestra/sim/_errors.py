"""The simulator's errors. ``SimConfigError`` is a :class:`ollama_orchestra.ConfigError`, so
code catching the library's configuration errors catches the simulator's too."""

from __future__ import annotations

from .._errors import ConfigError

__all__ = ["SimConfigError"]


class SimConfigError(ConfigError):
    """The simulator's own configuration or command line is invalid."""
