"""The contenders: ways of sending the same workload to the same hosts.

* ``orchestra-<strategy>``: :class:`ollama_orchestra.Orchestra` with that strategy, slots =
  the hosts' ``num_parallel``;
* ``one-host``: every request on the first host, plain ``httpx`` (today's setup);
* ``round-robin``: a hand-written client cycling over the host URLs with plain ``httpx``, no
  slots: concurrency bounded only by the workload;
* ``litellm-shuffle``, ``litellm-least-busy``: LiteLLM's ``Router`` with
  ``routing_strategy="simple-shuffle"`` / ``"least-busy"``, its ``ollama/`` provider pointed at
  the same hosts (``api_base``), when LiteLLM is installed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Sequence

import httpx

from ollama_orchestra import HealthPolicy, Orchestra, OrchestraConfig, Server
from ollama_orchestra.sim import ModelSpec, SimFleet


@dataclass
class Workload:
    """What every request asks for. Simulated hosts serve the defaults; :func:`run_real
    <benchmarks.compare.cli.run_real>` sets a real host's model and longer answers."""

    model: str = "work:latest"
    other_model: str = "other:latest"  # the second model of scenario c
    tokens: int = 8


WORKLOAD = Workload()


@dataclass(frozen=True)
class Host:
    name: str
    url: str
    slots: int


def work_model(
    decode_tps: float = 20.0, *, name: str = WORKLOAD.model, load_s: float = 0.01
) -> ModelSpec:
    """The simulated model every scenario serves."""
    return ModelSpec(
        name, size_gb=1.0, decode_tps=decode_tps, load_s=load_s, default_num_predict=WORKLOAD.tokens
    )


def hosts_of(fleet: SimFleet) -> List[Host]:
    return [Host(s.name, s.url, s.profile.num_parallel) for s in fleet.servers]


def plain_client() -> httpx.AsyncClient:
    # No pool limit: concurrency is bounded only by the workload.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(600.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        trust_env=False,
    )


def generate_body(model: str, prompt: str, stream: bool = False) -> Dict[str, Any]:
    """The body of the ``/api/generate`` request the plain ``httpx`` contenders send."""
    return {
        "model": model,
        "prompt": prompt,
        "stream": stream,
        "options": {"num_predict": WORKLOAD.tokens},
    }


# -- LiteLLM, optional ----------------------------------------------------------------------

_LITELLM: Optional[Any] = None
_LITELLM_ERROR: Optional[str] = None


def litellm_router() -> Optional[Any]:
    """LiteLLM's ``Router`` class, imported offline and quiet; ``None`` if unavailable."""
    global _LITELLM, _LITELLM_ERROR
    if _LITELLM is not None or _LITELLM_ERROR is not None:
        return _LITELLM
    # Before the import: otherwise it fetches a price list from the network at import time.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    try:
        import litellm
        from litellm.router import Router
    except Exception as exc:  # pragma: no cover - depends on the environment
        _LITELLM_ERROR = f"import failed: {exc!r}"
        return None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.callbacks = []
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _LITELLM = Router
    return Router


def litellm_deployments(
    hosts: Sequence[Host],
    models: Sequence[str],
    *,
    provider: str = "ollama",
    group: Optional[str] = None,
    model_info: Optional[Dict[str, Any]] = None,
) -> List[Dict[str, Any]]:
    """LiteLLM ``model_list`` entries: each model on each host, its ``<provider>/`` pointed at the
    host (``api_base``), in the group named after the model (or ``group``). Each entry has its
    own ``model_info.id`` (``group@host``): LiteLLM derives ids from the parameters otherwise,
    which two groups on the same host would share."""
    return [
        {
            "model_name": group or m,
            "litellm_params": {"model": f"{provider}/{m}", "api_base": h.url},
            "model_info": {"id": f"{group or m}@{h.name}", **(model_info or {})},
        }
        for m in models
        for h in hosts
    ]


def litellm_status() -> str:
    """``"ok"``, or why LiteLLM could not be imported (for the report)."""
    litellm_router()
    return "ok" if _LITELLM_ERROR is None else _LITELLM_ERROR


# -- contenders -----------------------------------------------------------------------------

Send = Callable[[str, str], Awaitable[str]]  # (model, prompt) -> the name of the host that answered


class Contender:
    """One way of sending the workload: ``async with c.open(hosts) as send``."""

    name = "?"
    #: The open orchestra, for contenders that have one (its metrics are read).
    orchestra: Optional[Orchestra] = None

    def open(self, hosts: Sequence[Host]) -> contextlib.AbstractAsyncContextManager[Send]:
        raise NotImplementedError


class OrchestraContender(Contender):
    """The orchestra with ``strategy``; ``+nolookahead``: each server's ``lookahead = 0``
    (the handoff lookahead off; on by default under hybrid: what it buys)."""

    def __init__(self, strategy: str) -> None:
        self.strategy, plus, option = strategy.partition("+")
        if plus and option != "nolookahead":
            raise ValueError(f"unknown contender option: {strategy!r}")
        self.lookahead: Optional[int] = 0 if plus else None  # None: the library's default
        self.name = f"orchestra-{strategy}"

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        cfg = OrchestraConfig(
            servers=tuple(
                Server(h.name, h.url, max_concurrency=h.slots, lookahead=self.lookahead)
                for h in hosts
            ),
            strategy=self.strategy,
            health=HealthPolicy(interval_s=5.0),
        )
        async with Orchestra(cfg) as orch:
            self.orchestra = orch

            async def send(model: str, prompt: str) -> str:
                r = await orch.generate(model, prompt, options={"num_predict": WORKLOAD.tokens})
                return r.server

            try:
                yield send
            finally:
                self.orchestra = None


class _PlainHttpx(Contender):
    """Plain ``httpx`` posts; :meth:`pick` chooses each request's host."""

    def pick(self, hosts: Sequence[Host]) -> Callable[[], Host]:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        pick = self.pick(hosts)
        async with plain_client() as client:

            async def send(model: str, prompt: str) -> str:
                host = pick()
                r = await client.post(host.url + "/api/generate", json=generate_body(model, prompt))
                r.raise_for_status()
                return host.name

            yield send


class OneHost(_PlainHttpx):
    name = "one-host"

    def pick(self, hosts: Sequence[Host]) -> Callable[[], Host]:
        first = hosts[0]
        return lambda: first


class RoundRobin(_PlainHttpx):
    name = "round-robin"

    def pick(self, hosts: Sequence[Host]) -> Callable[[], Host]:
        return itertools.cycle(hosts).__next__


class LiteLLMContender(Contender):
    def __init__(self, strategy: str) -> None:
        self.strategy = strategy
        self.name = "litellm-" + ("shuffle" if strategy == "simple-shuffle" else strategy)

    @contextlib.asynccontextmanager
    async def open(self, hosts: Sequence[Host]) -> AsyncIterator[Send]:
        router_cls = litellm_router()
        assert router_cls is not None
        by_base = {h.url.rstrip("/"): h.name for h in hosts}
        model_list = litellm_deployments(hosts, sorted({WORKLOAD.model, WORKLOAD.other_model}))
        router = router_cls(
            model_list=model_list, routing_strategy=self.strategy, num_retries=0, timeout=600
        )

        async def send(model: str, prompt: str) -> str:
            r = await router.acompletion(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=WORKLOAD.tokens,
            )
            base = str(getattr(r, "_hidden_params", {}).get("api_base") or "").rstrip("/")
            return by_base.get(base, base or "?")

        yield send


def contenders_for(
    strategies: Sequence[str], *, one_host: bool = True, litellm: bool = True
) -> List[Contender]:
    """The orchestra with each strategy, then the alternatives (LiteLLM's if installed)."""
    out: List[Contender] = [OrchestraContender(s) for s in strategies]
    if one_host:
        out.append(OneHost())
    out.append(RoundRobin())
    if litellm and litellm_router() is not None:
        out += [LiteLLMContender("simple-shuffle"), LiteLLMContender("least-busy")]
    return out
