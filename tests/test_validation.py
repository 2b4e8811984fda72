"""Bad input at every boundary: a typed error naming the field or argument, before any work;
and one bad waiter never breaks another request, nor outlives the orchestra."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import anyio
import httpx
import pytest
from anyio import wait_all_tasks_blocked

from ollama_orchestra import (
    AffinityRule,
    BreakerPolicy,
    ConfigError,
    DagValidationError,
    HealthPolicy,
    NoCapableServer,
    OllamaResponseError,
    Orchestra,
    OrchestraClosed,
    OrchestraConfig,
    RequestError,
    RequestTimeout,
    RetryPolicy,
    Server,
    Task,
    Timeouts,
    load_dag,
)
from ollama_orchestra._balancer import Candidate, Choice, LoadBalancer, RouteRequest

from .conftest import TINY, config_for, fleet, tiny_profile
from .test_balancer import BIG, make
from .test_balancer import M as BM
from .test_client_http import A, B, M, fleet_router, gen_stream

NAN = float("nan")


def server_table(**extra: Any) -> Dict[str, Any]:
    return {"servers": [{"name": "a", "url": "http://h:1", **extra}]}


class TestConfigFields:
    @pytest.mark.parametrize(
        ("data", "field"),
        [
            (server_table(models=[5]), "models[0]"),
            (server_table(models="llama3"), "models"),
            (server_table(labels={"gpu": 3}), "labels.gpu"),
            (server_table(labels="gpu"), "labels"),
            (server_table(max_concurrency=True), "max_concurrency"),
            (server_table(weight=True), "weight"),
            (server_table(weight=NAN), "weight"),
            ({"servers": [{"name": "a"}]}, "servers[0].url"),
            ({"servers": [{"name": 5, "url": "http://h:1"}]}, "Server.name"),
            ({**server_table(), "retry": {"jitter": "no"}}, "RetryPolicy.jitter"),
            ({**server_table(), "retry": {"attempts": True}}, "RetryPolicy.attempts"),
            ({**server_table(), "breaker": {"cooldown_multiplier": NAN}}, "cooldown_multiplier"),
            ({**server_table(), "breaker": {"failure_rate": "high"}}, "failure_rate"),
            ({**server_table(), "breaker": {"failure_rate": NAN}}, "failure_rate"),
            ({**server_table(), "breaker": {"window": 2.5}}, "window"),
            ({**server_table(), "health": {"jitter": NAN}}, "HealthPolicy.jitter"),
            ({**server_table(), "health": {"unhealthy_after": True}}, "unhealthy_after"),
            ({**server_table(), "timeouts": {"connect_s": True}}, "connect_s"),
            ({**server_table(), "timeouts": {"read_s": math.inf}}, "read_s"),
            ({**server_table(), "wait_for_healthy_s": True}, "wait_for_healthy_s"),
            ({**server_table(), "strategy": 5}, "strategy"),
            ({**server_table(), "roles": {"qa": 7}}, "roles.qa"),
            ({**server_table(), "roles": {"qa": ["a", "b"]}}, "roles.qa"),
            ({**server_table(), "affinity": [{"model": 5, "servers": ["a"]}]}, "model"),
            ({**server_table(), "affinity": [{"servers": "a"}]}, "servers"),
            ({**server_table(), "affinity": [{"servers": [1]}]}, "servers[0]"),
            ({**server_table(), "affinity": [{"servers": ["a"], "required": "yes"}]}, "required"),
            ({**server_table(), "affinity": [{"servers": ["a"], "min_priority": 1.5}]}, "min_"),
            ({"servers": "http://h:1"}, "servers"),
            ([1, 2], "config"),
        ],
    )
    def test_from_mapping_names_the_field(self, data: Any, field: str) -> None:
        """Every field of the wrong type or value is a ConfigError naming it."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_mapping(data)
        assert field in info.value.field

    @pytest.mark.parametrize(
        ("factory", "field"),
        [
            (lambda: AffinityRule(model=5, servers=("a",)), "AffinityRule.model"),  # type: ignore[arg-type]
            (lambda: AffinityRule(role=[1], servers=("a",)), "AffinityRule.role"),  # type: ignore[arg-type]
            (lambda: RetryPolicy(jitter="no"), "RetryPolicy.jitter"),  # type: ignore[arg-type]
            (lambda: BreakerPolicy(cooldown_multiplier=NAN), "BreakerPolicy.cooldown_multiplier"),
            (lambda: BreakerPolicy(failure_rate="high"), "BreakerPolicy.failure_rate"),  # type: ignore[arg-type]
            (lambda: Server("a", "http://h:1", headers={"X": 5}), "Server('a').headers.X"),  # type: ignore[dict-item]
            (lambda: Server("a", "http://h:1", headers={"X Y": "v"}), "Server('a').headers"),
            (lambda: OrchestraConfig(servers=Server("a", "http://h:1")), "servers"),  # type: ignore[arg-type]
            (lambda: OrchestraConfig(servers=(5,)), "servers[0]"),  # type: ignore[arg-type]
            (
                lambda: OrchestraConfig(servers=(Server("a", "http://h:1"),), retry="x"),  # type: ignore[arg-type]
                "retry",
            ),
            (
                lambda: OrchestraConfig(servers=(Server("a", "http://h:1"),), roles={"qa": 7}),  # type: ignore[dict-item]
                "roles.qa",
            ),
            (
                lambda: OrchestraConfig(servers=(Server("a", "http://h:1"),), affinity=("x",)),  # type: ignore[arg-type]
                "affinity[0]",
            ),
        ],
    )
    def test_constructors_name_the_field(self, factory: Callable[[], Any], field: str) -> None:
        """The dataclasses check types as the file loader does."""
        with pytest.raises(ConfigError) as info:
            factory()
        assert info.value.field == field

    @pytest.mark.parametrize(
        "value",
        ["a=notaurl", "a=http://h:99999", "a=http://h:-1", "a=http://[::1", "a=http://h:1*0"],
    )
    def test_env_servers_name_the_entry(self, value: str) -> None:
        """A malformed OLLAMA_ORCHESTRA_SERVERS entry is a ConfigError naming it and its value."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env({"OLLAMA_ORCHESTRA_SERVERS": value})
        assert info.value.field == "OLLAMA_ORCHESTRA_SERVERS[0]"
        assert value in str(info.value)

    def test_failure_rate_message_names_the_field(self) -> None:
        """``failure_rate = "high"`` says which field is wrong (it used to name none)."""
        with pytest.raises(ConfigError, match="failure_rate"):
            OrchestraConfig.from_mapping({**server_table(), "breaker": {"failure_rate": "high"}})


class TestTaskFields:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"prompt": 5}, "prompt"),
            ({"messages": "hello"}, "messages"),
            ({"messages": [5]}, "messages[0]"),
            ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
            ({"prompt": "p", "estimate": NAN}, "estimate"),
            ({"prompt": "p", "estimate": True}, "estimate"),
            ({"prompt": "p", "estimate": -1}, "estimate"),
            ({"prompt": "p", "priority": "high"}, "priority"),
            ({"prompt": "p", "priority": True}, "priority"),
            ({"prompt": "p", "priority": 1.5}, "priority"),
            ({"prompt": "p", "timeout": True}, "timeout"),
            ({"prompt": "p", "timeout": math.inf}, "timeout"),
            ({"prompt": "p", "timeout": NAN}, "timeout"),
            ({"prompt": "p", "options": "fast"}, "options"),
            ({"prompt": "p", "options": [1]}, "options"),
            ({"prompt": "p", "options": {"temperature": NAN}}, "options"),
            ({"prompt": "p", "depends_on": [1]}, "depends_on"),
            ({"prompt": "p", "depends_on": "a"}, "depends_on"),
            ({"prompt": "p", "system": 5}, "system"),
            ({"prompt": "p", "model": 5}, "model"),
        ],
    )
    def test_task_names_the_field(self, kwargs: Dict[str, Any], field: str) -> None:
        """Each Task field of the wrong type or value is a DagValidationError naming it."""
        kwargs = {"model": "m", **kwargs}
        with pytest.raises(DagValidationError) as info:
            Task("t", **kwargs)
        assert f"{field} must be" in str(info.value)
        assert info.value.task_id == "t"

    @pytest.mark.parametrize(
        ("line", "field"),
        [
            ("prompt = 5", "prompt"),
            ('messages = "hello"', "messages"),
            ('prompt = "p"\nestimate = nan', "estimate"),
            ('prompt = "p"\npriority = "high"', "priority"),
            ('prompt = "p"\ntimeout = true', "timeout"),
            ('prompt = "p"\noptions = "fast"', "options"),
        ],
    )
    def test_dag_file_names_file_task_and_field(
        self, tmp_path: Path, line: str, field: str
    ) -> None:
        """A DAG file's bad field names the file, the task and the field."""
        path = tmp_path / "dag.toml"
        path.write_text(f'[[task]]\nid = "t"\nmodel = "m"\n{line}\n', encoding="utf-8")
        with pytest.raises(DagValidationError) as info:
            load_dag(path)
        assert str(path) in str(info.value) and "task[0]" in str(info.value)
        assert f"{field} must be" in str(info.value)

    def test_dag_file_task_without_id(self, tmp_path: Path) -> None:
        """A task table without an id says so."""
        path = tmp_path / "dag.toml"
        path.write_text('[[task]]\nmodel = "m"\nprompt = "p"\n', encoding="utf-8")
        with pytest.raises(DagValidationError, match="id is required"):
            load_dag(path)


def respx_orchestra(*, attempts: int = 1) -> Any:
    router = fleet_router({A: [M, "emb:latest"], B: []})
    route = router.post(A + "/api/generate").respond(content=gen_stream(["ok"]))
    cfg = OrchestraConfig(
        servers=(Server("a", A), Server("b", B)),
        health=HealthPolicy(interval_s=3600, startup_timeout_s=5),
        retry=RetryPolicy(attempts=attempts),
    )
    return Orchestra(cfg, transport=httpx.MockTransport(router.async_handler)), router, route


GENERATE_BAD: List[Any] = [
    ("model", 5, TypeError),
    ("model", "", ValueError),
    ("model", None, TypeError),
    ("prompt", 5, TypeError),
    ("system", 5, TypeError),
    ("suffix", b"x", TypeError),
    ("template", 1.0, TypeError),
    ("images", "abc", TypeError),
    ("images", [1], TypeError),
    ("format", 5, TypeError),
    ("format", {"type": NAN}, TypeError),
    ("options", [1], TypeError),
    ("options", "fast", TypeError),
    ("options", {1: 2}, TypeError),
    ("options", {"temperature": NAN}, TypeError),
    ("options", {"num_ctx": -math.inf}, TypeError),
    ("options", {"stop": ["\n", NAN]}, TypeError),
    ("options", {"x": object()}, TypeError),
    ("keep_alive", [1], TypeError),
    ("keep_alive", True, TypeError),
    ("keep_alive", NAN, ValueError),
    ("think", "deep", ValueError),  # "max" is a level since ollama v0.33 (api/types.go)
    ("think", 5, TypeError),
    ("raw", "yes", TypeError),
    ("priority", None, TypeError),
    ("priority", "high", TypeError),
    ("priority", True, TypeError),
    ("priority", 1.5, TypeError),
    ("timeout", "5", TypeError),
    ("timeout", 0, ValueError),
    ("timeout", -1, ValueError),
    ("timeout", NAN, ValueError),
    ("timeout", True, TypeError),
    ("retry", "no", TypeError),
    ("retry", 3, TypeError),
]


class TestRequestArguments:
    @pytest.mark.parametrize(
        ("name", "value", "error"), GENERATE_BAD, ids=[f"{n}={v!r}" for n, v, _ in GENERATE_BAD]
    )
    async def test_generate(self, name: str, value: Any, error: type) -> None:
        """Each bad argument of generate raises TypeError/ValueError naming it; nothing is sent."""
        orch, _, route = respx_orchestra()
        args: Dict[str, Any] = {"model": M, "prompt": "x", name: value}
        async with orch:
            with pytest.raises(error, match=name):
                await orch.generate(**args)
            if name != "timeout":
                with pytest.raises(error, match=name):
                    orch.generate_stream(**args)
            assert orch.balancer.waiting == 0 and orch.balancer.in_use("a") == 0
        assert route.call_count == 0

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("messages", "hello"),
            ("messages", [5]),
            ("messages", [{"role": 1, "content": "x"}]),
            ("messages", [{"role": "user", "content": 5}]),
            ("messages", {"role": "user"}),
            ("tools", "x"),
            ("tools", [5]),
            ("options", "fast"),
            ("format", 5),
            ("priority", None),
            ("keep_alive", {}),
        ],
    )
    async def test_chat(self, name: str, value: Any) -> None:
        """Each bad argument of chat raises TypeError naming it; nothing is sent."""
        orch, router, _ = respx_orchestra()
        route = router.post(A + "/api/chat").respond(content=b"")
        args: Dict[str, Any] = {"model": M, "messages": [{"role": "user", "content": "x"}]}
        args[name] = value
        async with orch:
            with pytest.raises(TypeError, match=name):
                await orch.chat(**args)
            with pytest.raises(TypeError, match=name):
                orch.chat_stream(**args)
        assert route.call_count == 0

    @pytest.mark.parametrize(
        ("name", "value", "error"),
        [
            ("input", 5, TypeError),
            ("input", [1], TypeError),
            ("input", b"x", TypeError),
            ("dimensions", 0, ValueError),
            ("dimensions", True, TypeError),
            ("dimensions", "3", TypeError),
            ("truncate", "yes", TypeError),
            ("priority", "1", TypeError),
            ("timeout", -2, ValueError),
        ],
    )
    async def test_embed(self, name: str, value: Any, error: type) -> None:
        """Each bad argument of embed raises TypeError/ValueError naming it; nothing is sent."""
        orch, router, _ = respx_orchestra()
        route = router.post(A + "/api/embed").respond(json={"embeddings": [[0.0]]})
        args: Dict[str, Any] = {"model": "emb", "input": "x", name: value}
        async with orch:
            with pytest.raises(error, match=name):
                await orch.embed(**args)
        assert route.call_count == 0

    async def test_valid_values_pass(self) -> None:
        """Values Ollama takes are all accepted (think levels, duration strings, schemas)."""
        orch, _, route = respx_orchestra()
        async with orch:
            r = await orch.generate(
                M,
                "x",
                think="high",
                keep_alive="5m",
                format={"type": "object"},
                options={"temperature": 0.5, "stop": ["\n"]},
                images=["aGk="],
                raw=False,
                priority=3,
                timeout=30,
                retry=False,
            )
        assert r.server == "a" and route.call_count == 1


class TestOrchestraArguments:
    def test_config_must_be_a_config(self) -> None:
        """Orchestra(config=...) of another type is a TypeError naming it."""
        with pytest.raises(TypeError, match="config"):
            Orchestra({"servers": []})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [
            ({"fail_fast": "yes"}, "fail_fast"),
            ({"inputs": {"a": 5}}, "inputs"),
            ({"inputs": "a=b"}, "inputs"),
            ({"schedule": "fastest"}, "schedule"),
        ],
    )
    async def test_run_arguments(self, kwargs: Dict[str, Any], name: str) -> None:
        """orch.run's arguments of the wrong type or value are refused before any task runs."""
        orch, _, route = respx_orchestra()
        async with orch:
            with pytest.raises((TypeError, ValueError), match=name):
                await orch.run([Task("t", model=M, prompt="x")], **kwargs)
        assert route.call_count == 0


class _Raising:
    """A strategy that raises for one model once ``armed``: a bug in routing one request."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.armed = False

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        if self.armed and request.model == self.model:
            raise RuntimeError("routing bug")
        free = [c for c in candidates if c.free]
        return Choice(free[0].name) if free else Choice()


class TestBalancerQueue:
    async def test_bad_priority_is_refused_before_queueing(self) -> None:
        """A priority that is not an int raises TypeError at once, and queued requests are
        still served when a slot frees (it used to hang every waiter)."""
        lb, _, _ = make((1,))
        held = await lb.acquire(BM)
        got: List[str] = []
        async with anyio.create_task_group() as tg:

            async def wait(priority: Any) -> None:
                got.append((await lb.acquire(BM, priority=priority)).name)

            tg.start_soon(wait, 0)
            await wait_all_tasks_blocked()
            bads: List[Any] = [None, "high", 1.5, True]
            for bad in bads:
                with pytest.raises(TypeError, match="priority"), anyio.fail_after(5):
                    await lb.acquire(BM, priority=bad)
            lb.release(held)
        assert got == ["s0"]

    async def test_a_waiter_whose_routing_fails_does_not_break_release(self) -> None:
        """If routing one waiter raises, that waiter gets the error; the release that woke
        the queue does not raise, and the other waiters are served."""
        lb, state, clock = make((1,))
        strategy = _Raising(BIG)
        lb = LoadBalancer(lb._config, state, clock=clock, strategy=strategy)
        held = await lb.acquire(BM)
        got: List[str] = []
        errors: List[BaseException] = []
        async with anyio.create_task_group() as tg:

            async def wait(model: str) -> None:
                try:
                    lease = await lb.acquire(model)
                except RuntimeError as exc:
                    errors.append(exc)
                    return
                got.append(model)
                lb.release(lease)

            tg.start_soon(wait, BIG)
            await wait_all_tasks_blocked()
            tg.start_soon(wait, BM)
            await wait_all_tasks_blocked()
            strategy.armed = True
            lb.release(held)  # must not raise
        assert got == [BM] and [str(e) for e in errors] == ["routing bug"]
        assert lb.waiting == 0 and lb.in_use("s0") == 0


class _Always:
    """A strategy that always names one server, free or not."""

    def __init__(self, name: str) -> None:
        self.name = name

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Choice:
        return Choice(self.name)


class TestEligibility:
    async def test_a_strategy_naming_a_busy_server_never_overfills_it(self) -> None:
        """A strategy that names a server with no free slot makes the request wait."""
        lb, state, clock = make((1, 1))
        lb = LoadBalancer(lb._config, state, clock=clock, strategy=_Always("s0"))
        held = await lb.acquire(BM)
        got: List[str] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                lease = await lb.acquire(BM)
                got.append(lease.name)
                assert lb.in_use("s0") == 1
                lb.release(lease)

            tg.start_soon(wait)
            await wait_all_tasks_blocked()
            assert lb.in_use("s0") == 1 and lb.waiting == 1
            lb.release(held)
        assert got == ["s0"]

    async def test_no_capable_server_only_once_every_list_is_known(self) -> None:
        """A model missing from the known lists is not refused while a server's list is
        still unknown (it may have it)."""
        lb, state, _ = make((1, 1), models={"s0": [BIG], "s1": [BIG]})
        fresh = type(state)([st.server for st in state.servers()], clock=lambda: 0.0)
        fresh.probe_succeeded("s0", version="0.12.0", models={BIG: 1}, loaded=[])
        lb = LoadBalancer(lb._config, fresh)
        lb.check_capable(BM)  # s1's list is unknown: no verdict yet
        fresh.probe_succeeded("s1", version="0.12.0", models={BIG: 1}, loaded=[])
        with pytest.raises(NoCapableServer):
            lb.check_capable(BM)


class _Gate(httpx.AsyncBaseTransport):
    """A transport that holds /api/generate until ``hold`` is set, and whose close waits for
    ``closed`` (the window in which the HTTP client is closed but the orchestra not yet)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.hold = anyio.Event()
        self.closing = anyio.Event()
        self.closed = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/generate":
            await self.hold.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closing.set()
        await self.closed.wait()


class TestClosing:
    async def test_waiting_and_running_requests_end_with_orchestra_closed(self) -> None:
        """Requests in flight and queued when the orchestra exits raise OrchestraClosed."""
        async with fleet([tiny_profile("h1", num_parallel=1)]) as sim:
            orch = Orchestra(config_for(sim, timeouts=Timeouts(first_byte_s=30)))
            outcomes: List[BaseException] = []

            async def one() -> None:
                try:
                    await orch.generate(TINY, "x")
                except BaseException as exc:
                    outcomes.append(exc)

            await orch.__aenter__()
            sim["h1"].pause()
            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                await sim["h1"].wait_until(lambda s: s.in_flight + s.queued >= 1)
                tg.start_soon(one)
                tg.start_soon(one)
                await wait_all_tasks_blocked()
                assert orch.balancer.waiting == 2
                await orch.__aexit__(None, None, None)
            sim["h1"].resume()
            with pytest.raises(OrchestraClosed):
                await orch.generate(TINY, "x")
        assert len(outcomes) == 3
        assert all(isinstance(e, OrchestraClosed) for e in outcomes), outcomes
        assert orch.balancer.waiting == 0

    async def test_a_request_granted_while_the_client_closes(self) -> None:
        """A queued request whose slot frees while the HTTP client is closing raises
        OrchestraClosed (it used to get httpx's raw RuntimeError from the closed client)."""
        router = fleet_router({A: [M]})
        router.post(A + "/api/generate").respond(content=gen_stream(["ok"]))
        gate = _Gate(httpx.MockTransport(router.async_handler))
        cfg = OrchestraConfig(
            servers=(Server("a", A),), health=HealthPolicy(interval_s=3600, startup_timeout_s=5)
        )
        orch = Orchestra(cfg, transport=gate)
        outcomes: List[Any] = []

        async def one() -> None:
            try:
                outcomes.append(await orch.generate(M, "x"))
            except Exception as exc:
                outcomes.append(exc)

        await orch.__aenter__()
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await wait_all_tasks_blocked()
            tg.start_soon(one)
            await wait_all_tasks_blocked()
            assert orch.balancer.waiting == 1
            tg.start_soon(orch.__aexit__, None, None, None)
            await gate.closing.wait()
            gate.hold.set()  # the request in flight ends; its slot frees
            await wait_all_tasks_blocked()
            gate.closed.set()
        assert [type(o).__name__ for o in outcomes] == ["OrchestraClosed", "GenerateResponse"]

    async def test_a_stream_cut_by_the_exit_ends_with_orchestra_closed(self) -> None:
        """A stream still being read when the orchestra exits raises OrchestraClosed."""
        async with fleet([tiny_profile("h1")]) as sim:
            orch = Orchestra(config_for(sim))
            await orch.__aenter__()
            stream = orch.generate_stream(TINY, "x", options={"num_predict": 10_000})
            first = await stream.__anext__()
            assert first.server == "h1"
            sim["h1"].pause()
            await orch.__aexit__(None, None, None)
            with pytest.raises(OrchestraClosed):
                async for _ in stream:
                    pass
            sim["h1"].resume()
        assert orch.balancer.in_use("h1") == 0

    async def test_reentered_orchestra_serves_again(self) -> None:
        """After an exit, entering again accepts requests."""
        orch, _, route = respx_orchestra()
        async with orch:
            await orch.generate(M, "x")
        async with orch:
            await orch.generate(M, "x")
        assert route.call_count == 2


class TestRequestTimeout:
    async def test_timeout_is_a_request_error_and_a_timeout_error(self) -> None:
        """``timeout=`` running out raises RequestTimeout: a RequestError and a TimeoutError."""
        async with fleet([tiny_profile("h1")]) as sim, Orchestra(config_for(sim)) as orch:
            sim["h1"].pause()
            with pytest.raises(RequestTimeout) as info:
                await orch.generate(TINY, "x", timeout=0.2)
            sim["h1"].resume()
        assert isinstance(info.value, RequestError) and isinstance(info.value, TimeoutError)
        assert info.value.timeout_s == 0.2 and "0.2s" in str(info.value)

    async def test_client_error_still_raises_ollama_response_error(self) -> None:
        """A caller's error inside a timeout is not turned into a timeout."""
        orch, _router, route = respx_orchestra()
        route.respond(400, json={"error": "nope"})
        async with orch:
            with pytest.raises(OllamaResponseError):
                await orch.generate(M, "x", timeout=5)
