"""What a simulated host is: its models, its GPU's speed, its scheduler limits, its faults."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from .._config import normalize_model
from .._validate import positive, positive_int
from .._validate import reject_unknown_keys as _reject_unknown
from ._errors import SimConfigError

__all__ = [
    "BATCH_AGGREGATE",
    "Faults",
    "HostProfile",
    "ModelSpec",
    "aggregate_speedup",
    "check_int",
    "check_positive",
    "preset_fleet",
    "profile_from_dict",
    "profile_to_dict",
    "reject_unknown_keys",
]

#: llama.cpp batched-bench: aggregate decode throughput at 1, 2, 4, 8 parallel sequences,
#: relative to one (41.6 -> 50.9 -> 74.4 -> 139 tok/s).
BATCH_AGGREGATE: Tuple[Tuple[int, float], ...] = (
    (1, 1.0),
    (2, 50.9 / 41.6),
    (4, 74.4 / 41.6),
    (8, 139.0 / 41.6),
)


def aggregate_speedup(n: int) -> float:
    """Aggregate throughput multiplier with ``n`` requests decoding at once on one GPU."""
    if n <= 1:
        return 1.0
    pts = BATCH_AGGREGATE
    for (n0, a0), (n1, a1) in zip(pts, pts[1:]):
        if n <= n1:
            return a0 + (a1 - a0) * (n - n0) / (n1 - n0)
    (n0, a0), (n1, a1) = pts[-2], pts[-1]
    return a1 + (a1 - a0) * (n - n1) / (n1 - n0)


# -- the simulator's field checks ------------------------------------------------------------
# Their own, small copies so the simulator imports no private helper of the core; the same
# messages as the core's config checks (the shared validators module may replace them).


def check_positive(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """:class:`SimConfigError` naming ``owner.name`` unless ``value`` is a finite number > 0
    (or >= 0 with ``allow_zero``)."""
    positive(owner, name, value, allow_zero=allow_zero, error=SimConfigError)


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    """:class:`SimConfigError` naming ``owner.name`` unless ``value`` is an integer >= ``minimum``."""
    positive_int(owner, name, value, minimum=minimum, error=SimConfigError)


def reject_unknown_keys(
    data: Mapping[str, Any], allowed: Iterable[str], prefix: str, *, what: str = "key"
) -> None:
    """:class:`SimConfigError` for the first key of ``data`` not in ``allowed`` (its field is
    ``prefix + key``; the value is not shown)."""
    _reject_unknown(data, allowed, prefix, error=SimConfigError, what=what)


@dataclass(frozen=True)
class ModelSpec:
    """One model a simulated host serves.

    Args:
        name: Ollama's name, e.g. ``qwen2.5:14b``.
        size_gb: size in VRAM (GB); also sets the default cold-load time.
        decode_tps: decode speed of one request alone, tokens/s, on a ``speed=1`` host.
        prompt_tps: prompt evaluation speed (default 25x decode).
        load_s: cold-load time in seconds (default: 0.5 s + 1 s per 1.5 GB).
        capabilities: ``("completion",)`` or ``("embedding",)`` (plus e.g. ``"tools"``).
        default_num_predict: answer length in tokens when the request sets none.
        kv_bytes_per_token: the KV cache's size per token (default: 16 KiB per GB of
            weights); sizes the RAM prompt cache's entries and their copy time.
        revision: another build under the same name (a re-pulled or re-quantised model):
            changes the ``digest`` that ``/api/tags`` reports.
    """

    name: str
    size_gb: float = 9.0
    decode_tps: float = 40.0
    prompt_tps: Optional[float] = None
    load_s: Optional[float] = None
    capabilities: Tuple[str, ...] = ("completion",)
    family: str = "qwen2"
    parameter_size: str = "14.8B"
    quantization_level: str = "Q4_K_M"
    context_length: int = 32768
    default_num_predict: int = 128
    embedding_length: int = 768
    kv_bytes_per_token: Optional[int] = None
    revision: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SimConfigError("ModelSpec.name", self.name, "must be a non-empty model name")
        object.__setattr__(self, "name", normalize_model(self.name))
        owner = f"ModelSpec({self.name!r})"
        check_positive(owner, "size_gb", self.size_gb)
        check_positive(owner, "decode_tps", self.decode_tps)
        if self.prompt_tps is not None:
            check_positive(owner, "prompt_tps", self.prompt_tps)
        if self.load_s is not None:
            check_positive(owner, "load_s", self.load_s, allow_zero=True)
        check_int(owner, "default_num_predict", self.default_num_predict)
        check_int(owner, "context_length", self.context_length)
        check_int(owner, "embedding_length", self.embedding_length)
        if self.kv_bytes_per_token is not None:
            check_int(owner, "kv_bytes_per_token", self.kv_bytes_per_token, minimum=0)
        caps = tuple(self.capabilities)
        if not caps or not ({"completion", "embedding"} & set(caps)):
            raise SimConfigError(
                f"{owner}.capabilities", self.capabilities, "needs 'completion' or 'embedding'"
            )
        object.__setattr__(self, "capabilities", caps)
        if not isinstance(self.revision, str):
            raise SimConfigError(f"{owner}.revision", self.revision, "must be a string")

    @property
    def prompt_rate(self) -> float:
        return self.prompt_tps if self.prompt_tps is not None else 25.0 * self.decode_tps

    @property
    def kv_bytes(self) -> int:
        """KV cache bytes per token."""
        if self.kv_bytes_per_token is not None:
            return self.kv_bytes_per_token
        return int(self.size_gb * 16384)

    @property
    def cold_load_s(self) -> float:
        return self.load_s if self.load_s is not None else 0.5 + self.size_gb / 1.5

    @property
    def size_bytes(self) -> int:
        return int(self.size_gb * 1e9)

    @property
    def digest(self) -> str:
        key = self.name if not self.revision else f"{self.name}@{self.revision}"
        return hashlib.sha256(key.encode()).hexdigest()

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities


@dataclass(frozen=True)
class HostProfile:
    """A simulated Ollama host: its GPU (``speed``, ``vram_gb``) and its scheduler settings.

    ``num_parallel``, ``max_loaded_models``, ``max_queue``, ``keep_alive_s`` and ``num_ctx``
    mirror ``OLLAMA_NUM_PARALLEL``, ``OLLAMA_MAX_LOADED_MODELS``, ``OLLAMA_MAX_QUEUE``,
    ``OLLAMA_KEEP_ALIVE`` and ``OLLAMA_CONTEXT_LENGTH``. Without ``num_ctx``, the default
    context follows the VRAM as Ollama's does (``server/routes.go``): 262144 from 47 GB,
    32768 from 23 GB, else 4096 (and at most the model's context length).
    ``cache_ram_mib`` is llama-server's ``--cache-ram`` (its default; Ollama sets none);
    ``host_to_device_gbps`` is the speed of copying KV state between RAM and VRAM.
    """

    name: str
    models: Tuple[ModelSpec, ...]
    speed: float = 1.0
    num_parallel: int = 1
    max_loaded_models: int = 3
    max_queue: int = 512
    vram_gb: Optional[float] = None
    keep_alive_s: float = 300.0
    version: str = "0.12.0"
    num_ctx: Optional[int] = None
    cache_ram_mib: int = 8192
    host_to_device_gbps: float = 12.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SimConfigError("HostProfile.name", self.name, "must be a non-empty host name")
        owner = f"HostProfile({self.name!r})"
        models = tuple(self.models)
        if not models:
            raise SimConfigError(f"{owner}.models", list(models), "a host needs at least one model")
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SimConfigError(f"{owner}.models", dupes, "duplicate model names")
        object.__setattr__(self, "models", models)
        check_positive(owner, "speed", self.speed)
        check_int(owner, "num_parallel", self.num_parallel)
        check_int(owner, "max_loaded_models", self.max_loaded_models)
        check_int(owner, "max_queue", self.max_queue, minimum=0)
        check_positive(owner, "keep_alive_s", self.keep_alive_s, allow_zero=True)
        if self.num_ctx is not None:
            check_int(owner, "num_ctx", self.num_ctx)
        check_int(owner, "cache_ram_mib", self.cache_ram_mib, minimum=0)
        check_positive(owner, "host_to_device_gbps", self.host_to_device_gbps)
        if self.vram_gb is not None:
            check_positive(owner, "vram_gb", self.vram_gb)
            too_big = [m.name for m in models if m.size_gb > self.vram_gb]
            if too_big:
                raise SimConfigError(
                    f"{owner}.vram_gb", self.vram_gb, f"smaller than model(s) {', '.join(too_big)}"
                )

    def model(self, name: str) -> Optional[ModelSpec]:
        name = normalize_model(name)
        for m in self.models:
            if m.name == name:
                return m
        return None

    def default_num_ctx(self, spec: ModelSpec) -> int:
        """The context a request gets when it sets no ``num_ctx``."""
        if self.num_ctx is not None:
            ctx = self.num_ctx
        elif self.vram_gb is not None and self.vram_gb >= 47:
            ctx = 262144
        elif self.vram_gb is not None and self.vram_gb >= 23:
            ctx = 32768
        else:
            ctx = 4096
        return min(ctx, spec.context_length)

    def replace(self, **changes: Any) -> HostProfile:
        return replace(self, **changes)


@dataclass(frozen=True)
class Faults:
    """Faults a simulated host shows, each only as a real failing Ollama would show it.

    Attributes:
        refuse: the port is closed: connections are refused.
        hang: connections are accepted and requests read, but never answered.
        reset_after_chunks: a stream's connection breaks after this many chunks.
        status: every API request is answered with this HTTP status (500, 503, ...).
        slow: every speed is divided by this factor.
        error_rate: each generate/chat/embed fails with a 500 with this probability.
        flap_period_s: alternately serving and refusing, each for half this period (real s).
        stream_error_after_chunks: a stream ends with an ``{"error": ...}`` line after this many chunks.
    """

    refuse: bool = False
    hang: bool = False
    reset_after_chunks: Optional[int] = None
    status: Optional[int] = None
    slow: float = 1.0
    error_rate: float = 0.0
    flap_period_s: Optional[float] = None
    stream_error_after_chunks: Optional[int] = None

    def __post_init__(self) -> None:
        if self.reset_after_chunks is not None:
            check_int("Faults", "reset_after_chunks", self.reset_after_chunks, minimum=0)
        if self.stream_error_after_chunks is not None:
            check_int(
                "Faults", "stream_error_after_chunks", self.stream_error_after_chunks, minimum=0
            )
        if self.status is not None and (
            not isinstance(self.status, int) or not 400 <= self.status <= 599
        ):
            raise SimConfigError(
                "Faults.status", self.status, "must be an HTTP error status (400-599)"
            )
        check_positive("Faults", "slow", self.slow)
        if not isinstance(self.error_rate, (int, float)) or not 0 <= self.error_rate <= 1:
            raise SimConfigError(
                "Faults.error_rate", self.error_rate, "must be a probability in [0, 1]"
            )
        if self.flap_period_s is not None:
            check_positive("Faults", "flap_period_s", self.flap_period_s)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Faults:
        if not isinstance(data, Mapping):
            raise SimConfigError("faults", data, "must be a JSON object")
        reject_unknown_keys(data, (f.name for f in fields(cls)), "faults.", what="fault")
        try:
            return cls(**dict(data))
        except TypeError as exc:  # pragma: no cover - guarded by the key check
            raise SimConfigError("faults", dict(data), str(exc)) from exc

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def any(self) -> bool:
        return self != Faults()


# Prompt evaluation defaults to 25x decode: 875 tok/s for the 32b and 1,750 tok/s for the
# 14b on the 24 GB-class host (700-1,000 tok/s is what a 32B Q4 gets there). KV bytes per
# token, f16: 2 (K, V) x layers x KV heads x head dim x 2 bytes (qwen2.5-14b: 48 x 8 x 128;
# qwen2.5-32b: 64 x 8 x 128).
QWEN14 = ModelSpec(
    "qwen2.5:14b",
    size_gb=9.0,
    decode_tps=70.0,
    parameter_size="14.8B",
    family="qwen2",
    kv_bytes_per_token=196_608,
)
CODER32 = ModelSpec(
    "qwen2.5-coder:32b",
    size_gb=20.0,
    decode_tps=35.0,
    parameter_size="32.8B",
    family="qwen2",
    kv_bytes_per_token=262_144,
)
EMBED = ModelSpec(
    "nomic-embed-text:latest",
    size_gb=0.3,
    decode_tps=1000.0,
    prompt_tps=4000.0,
    capabilities=("embedding",),
    family="nomic-bert",
    parameter_size="137M",
    quantization_level="F16",
    context_length=2048,
    default_num_predict=1,
)


def preset_fleet() -> Tuple[HostProfile, HostProfile]:
    """The user's two hosts.

    ``ollama01``: a 24 GB-class GPU (RTX 3090-like): room for one large model at a time (so
    switching between the 14b and the 32b costs a cold load), 2 parallel slots.
    ``ollama02``: an 80 GB-class GPU (A100-like): 1.5x as fast per request, everything stays
    loaded, 4 parallel slots.
    """
    models = (QWEN14, CODER32, EMBED)
    return (
        HostProfile(
            "ollama01", models, speed=1.0, num_parallel=2, max_loaded_models=3, vram_gb=24.0
        ),
        HostProfile(
            "ollama02", models, speed=1.5, num_parallel=4, max_loaded_models=3, vram_gb=80.0
        ),
    )


def profile_to_dict(profile: HostProfile) -> Dict[str, Any]:
    """A JSON-able form of a profile (for the child process and TOML files)."""
    return asdict(profile)


def profile_from_dict(data: Mapping[str, Any], *, where: str = "host") -> HostProfile:
    """Build a :class:`HostProfile` from plain data, with errors naming the field."""
    if not isinstance(data, Mapping):
        raise SimConfigError(where, data, "must be a table")
    reject_unknown_keys(data, HostProfile.__dataclass_fields__, f"{where}.")
    raw_models = data.get("models")
    if not isinstance(raw_models, list):
        raise SimConfigError(f"{where}.models", raw_models, "must be a list of model tables")
    models = []
    model_keys = set(ModelSpec.__dataclass_fields__)
    for i, m in enumerate(raw_models):
        if not isinstance(m, Mapping):
            raise SimConfigError(f"{where}.models[{i}]", m, "must be a table")
        reject_unknown_keys(m, model_keys, f"{where}.models[{i}].")
        values = dict(m)
        if isinstance(values.get("capabilities"), list):
            values["capabilities"] = tuple(values["capabilities"])
        models.append(ModelSpec(**values))
    values = {k: v for k, v in data.items() if k != "models"}
    return HostProfile(models=tuple(models), **values)
