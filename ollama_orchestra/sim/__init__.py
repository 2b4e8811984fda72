"""A faithful simulated Ollama server and fleet, on real loopback sockets.

``SimHost`` is one host's scheduler and HTTP API (an ASGI app); ``SimServer`` serves one on
loopback, in this process or as a child process; ``SimFleet`` starts several. See the
README's "The simulated Ollama server".
"""

from __future__ import annotations

from ._errors import SimConfigError
from ._host import SimHost
from ._records import RequestRecord, SimState
from ._serve import SimFleet, SimServer
from ._spec import (
    BATCH_AGGREGATE,
    Faults,
    HostProfile,
    ModelSpec,
    aggregate_speedup,
    preset_fleet,
    profile_from_dict,
    profile_to_dict,
)

__all__ = [
    "BATCH_AGGREGATE",
    "Faults",
    "HostProfile",
    "ModelSpec",
    "RequestRecord",
    "SimConfigError",
    "SimFleet",
    "SimHost",
    "SimServer",
    "SimState",
    "aggregate_speedup",
    "preset_fleet",
    "profile_from_dict",
    "profile_to_dict",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
