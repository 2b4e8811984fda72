"""The health monitor: probe answers validated where parsed, loops that never die, quiet logs."""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta, timezone
from typing import Any, Callable, Dict, List

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ollama_orchestra._monitor as monitor_mod
from ollama_orchestra import (
    HealthPolicy,
    NoHealthyServer,
    Orchestra,
    OrchestraConfig,
    Server,
)
from ollama_orchestra._monitor import (
    HealthMonitor,
    ProbeError,
    describe_transport_error,
    parse_digests,
    parse_json,
    parse_ps,
    parse_tags,
    parse_version,
)
from ollama_orchestra.sim import SimFleet
from ollama_orchestra.testing import tiny_profile

from .conftest import TINY, config_for

QUICK = HealthPolicy(
    interval_s=0.02, down_interval_s=0.01, timeout_s=1.0, unhealthy_after=1, startup_timeout_s=2
)

# What Ollama answers (api/types.go ListResponse / ProcessResponse, v0.33.0-rc2), trimmed.
TAGS: Dict[str, Any] = {
    "models": [
        {
            "name": "m:latest",
            "model": "m:latest",
            "modified_at": "2024-06-01T10:00:00.123456789+02:00",
            "size": 4_000_000_000,
            "digest": "abc",
            "details": {"family": "llama", "families": None, "parameter_size": "8B"},
        }
    ]
}
PS: Dict[str, Any] = {
    "models": [
        {
            "name": "m:latest",
            "model": "m:latest",
            "size": 5_000_000_000,
            "size_vram": 5_000_000_000,
            "expires_at": "2025-06-15T00:00:00.123456789Z",
            "context_length": 4096,
        }
    ]
}
VERSION: Dict[str, Any] = {"version": "0.33.0"}


class FakeHosts:
    """Hosts behind an httpx.MockTransport; each path's answer can be swapped at any time."""

    def __init__(self, *names: str) -> None:
        self.answers: Dict[str, Dict[str, Any]] = {
            n: {"/api/version": VERSION, "/api/tags": TAGS, "/api/ps": PS} for n in names
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[request.url.host][request.url.path]
        if isinstance(answer, bytes):
            return httpx.Response(200, content=answer)
        return httpx.Response(200, json=answer)

    def config(self, **kwargs: Any) -> OrchestraConfig:
        servers = tuple(Server(n, f"http://{n}") for n in self.answers)
        kwargs.setdefault("health", QUICK)
        return OrchestraConfig(servers=servers, **kwargs)

    def orchestra(self, **kwargs: Any) -> Orchestra:
        return Orchestra(self.config(**kwargs), transport=httpx.MockTransport(self.handler))


def with_model(name: str) -> Dict[str, Any]:
    return {"models": [*TAGS["models"], {"name": name, "size": 1}]}


MALFORMED = [
    ("/api/tags", [1], "malformed /api/tags answer: a list, not an object"),
    ("/api/tags", {"models": 5}, "malformed /api/tags answer: 'models' is a number, not a list"),
    ("/api/tags", {"models": [{"name": "m", "size": "4GB"}]}, "models[0].size is '4GB'"),
    ("/api/tags", {"models": [{"size": 1}]}, "malformed /api/tags answer: models[0] has no 'name'"),
    ("/api/tags", {"models": ["m:latest"]}, "models[0] is a string, not an object"),
    ("/api/tags", b"<html>proxy error</html>", "malformed /api/tags answer: not JSON"),
    ("/api/version", ["0.33.0"], "malformed /api/version answer: a list, not an object"),
    ("/api/version", {"version": 33}, "'version' is a number, not a string"),
    ("/api/ps", {"models": [{"name": "m", "expires_at": 5}]}, "expires_at is a number"),
    ("/api/ps", {"models": [{"name": "m", "size_vram": -1}]}, "models[0].size_vram is -1"),
]


class TestProbeParsers:
    def test_ollama_answers_parse(self) -> None:
        """Ollama's own shapes give the models, their sizes, the loaded ones and the version."""
        assert parse_tags(TAGS) == {"m:latest": 4_000_000_000}
        assert parse_version(VERSION) == "0.33.0"
        (lm,) = parse_ps(PS, wall_now=1.749e9, mono_now=50.0)
        assert lm.name == "m:latest" and lm.size_vram == 5_000_000_000
        assert lm.expires_at is not None and lm.expires_at > 50.0

    def test_digests(self) -> None:
        """Each model's digest, where /api/tags gives one as a non-empty string."""
        assert parse_digests(TAGS) == {"m:latest": "abc"}
        odd = {"models": [{"name": "a", "digest": 5}, {"name": "b", "digest": ""}, {"name": "c"}]}
        assert parse_digests(odd) == {}

    def test_optional_and_unknown_fields_are_lenient(self) -> None:
        """Extra fields are ignored; null models, a missing size or version take defaults."""
        assert parse_tags({"models": None, "extra": 1}) == {}
        assert parse_tags({}) == {}
        assert parse_tags({"models": [{"model": "m:latest"}]}) == {"m:latest": 0}
        assert parse_version({}) is None
        assert (
            parse_ps({"models": [{"name": "m", "expires_at": "not a time"}]}, 0.0, 0.0)[
                0
            ].expires_at
            is None
        )

    @pytest.mark.parametrize(("path", "body", "reason"), MALFORMED)
    def test_malformed_answers_are_probe_errors(self, path: str, body: Any, reason: str) -> None:
        """Each wrongly shaped answer is a ProbeError whose message says what is wrong."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        parse: Dict[str, Callable[[Any], Any]] = {
            "/api/tags": parse_tags,
            "/api/version": parse_version,
            "/api/ps": lambda b: parse_ps(b, 0.0, 0.0),
        }
        with pytest.raises(ProbeError) as info:
            parse[path](parse_json(path, raw))
        assert reason in str(info.value)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["models", "name", "model", "size", "size_vram", "expires_at", "version"]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


class TestProbeParserProperties:
    @settings(max_examples=300, deadline=None)
    @given(JSON)
    def test_any_json_is_parsed_or_a_probe_error(self, body: Any) -> None:
        """Any JSON value gives each parser a result or a ProbeError, never anything else."""
        for parse in (parse_tags, parse_version, lambda b: parse_ps(b, 1.7e9, 10.0)):
            try:
                parse(body)
            except ProbeError:
                pass

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=10).filter(str.strip)},
                optional={
                    "size": st.integers(min_value=0),
                    "size_vram": st.integers(min_value=0),
                    "expires_at": st.datetimes(
                        # Fixed offsets: st.timezones() needs zoneinfo (not in Python 3.8).
                        timezones=st.builds(
                            timezone,
                            st.timedeltas(
                                min_value=timedelta(hours=-23), max_value=timedelta(hours=23)
                            ),
                        )
                    ).map(lambda d: d.isoformat())
                    | st.text(max_size=30),
                },
            ),
            max_size=4,
        )
    )
    def test_model_entries_with_any_times_parse(self, models: List[Dict[str, Any]]) -> None:
        """Well-typed entries always parse, whatever their timestamps say."""
        body = {"models": models}
        assert set(parse_tags(body)) == {m["name"] for m in models}
        assert len(parse_ps(body, 1.7e9, 10.0)) == len(models)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
    def test_any_bytes_decode_or_are_a_probe_error(self, raw: bytes) -> None:
        """Any bytes decode to JSON or give a ProbeError."""
        try:
            body = parse_json("/api/tags", raw)
        except ProbeError:
            return
        try:
            parse_tags(body)
        except ProbeError:
            pass

    def test_deep_nesting_is_a_probe_error(self) -> None:
        """A body nested past the recursion limit is not JSON to the monitor, not a crash."""
        with pytest.raises(ProbeError):
            parse_json("/api/tags", b"[" * 100_000 + b"]" * 100_000)


class TestTransportFailures:
    @pytest.mark.parametrize(
        ("failure", "reason"),
        [
            (httpx.Response(500, json={"error": "boom"}), "/api/ps answered HTTP 500"),
            (httpx.ReadTimeout("slow"), "timed out (ReadTimeout)"),
            (httpx.RemoteProtocolError("bad"), "RemoteProtocolError: bad"),
            (RuntimeError("transport bug"), "RuntimeError: transport bug"),
        ],
    )
    async def test_failed_probe_request_has_a_reason(self, failure: Any, reason: str) -> None:
        """An error status or any exception from the transport is that host's probe failure."""
        hosts = FakeHosts("h")

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/api/ps":
                if isinstance(failure, httpx.Response):
                    return failure
                raise failure
            return hosts.handler(request)

        async with Orchestra(hosts.config(), transport=httpx.MockTransport(handler)) as orch:
            snap = orch.state()
        assert snap["h"].probe_error == reason and not snap["h"].healthy

    async def test_hung_probe_times_out(self) -> None:
        """A host that never answers fails its probe after timeout_s."""
        hosts = FakeHosts("h")

        async def handler(request: httpx.Request) -> httpx.Response:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        policy = HealthPolicy(timeout_s=0.05, startup_timeout_s=2, unhealthy_after=1)
        config = hosts.config(health=policy)
        async with Orchestra(config, transport=httpx.MockTransport(handler)) as orch:
            snap = orch.state()
        assert snap["h"].probe_error == "probe timed out after 0.05s"

    def test_unresolvable_host(self) -> None:
        """A name that does not resolve says so (and a plain ConnectError says it cannot connect)."""
        exc = httpx.ConnectError("[Errno -2] Name or service not known")
        exc.__cause__ = socket.gaierror(-2, "Name or service not known")
        assert describe_transport_error(exc) == "cannot resolve host: Name or service not known"
        assert describe_transport_error(httpx.ConnectError("nope")) == "cannot connect: nope"


class TestMalformedAnswers:
    @pytest.mark.parametrize(("path", "body", "reason"), MALFORMED)
    async def test_host_is_down_with_a_reason_and_comes_back(
        self, path: str, body: Any, reason: str
    ) -> None:
        """A malformed answer makes that host down with the reason; the other host's loop keeps
        running, and the host is healthy again once it answers correctly."""
        hosts = FakeHosts("bad", "good")
        async with hosts.orchestra() as orch:
            hosts.answers["bad"][path] = body
            with anyio.fail_after(5):
                snap = await orch.wait_for_state(
                    lambda s: reason in (s["bad"].probe_error or "") and not s["bad"].healthy
                )
            assert reason in (snap["bad"].last_error or "")
            hosts.answers["good"]["/api/tags"] = with_model("new:latest")
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: "new:latest" in s["good"].models)
            hosts.answers["bad"][path] = {
                "/api/version": VERSION,
                "/api/tags": TAGS,
                "/api/ps": PS,
            }[path]
            with anyio.fail_after(5):
                snap = await orch.wait_for_state(lambda s: s["bad"].healthy)
            assert snap["bad"].probe_error is None and snap["bad"].models == ("m:latest",)

    async def test_malformed_from_the_start(self) -> None:
        """A host that answers garbage from the start is down, and the orchestra still enters."""
        hosts = FakeHosts("bad", "good")
        hosts.answers["bad"]["/api/tags"] = {"models": 5}
        async with hosts.orchestra() as orch:
            snap = orch.state()
        assert not snap["bad"].healthy and snap["good"].healthy
        assert "'models' is a number" in (snap["bad"].probe_error or "")
        assert snap.to_dict()["servers"]["bad"]["probe_error"] == snap["bad"].probe_error


@pytest.fixture
def crash_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_ps raises a bug (RuntimeError) for answers carrying "boom": a stand-in for any bug."""
    real = monitor_mod.parse_ps

    def parse_ps_with_bug(body: Any, wall_now: float, mono_now: float) -> Any:
        if isinstance(body, dict) and body.get("boom"):
            raise RuntimeError("boom")
        return real(body, wall_now, mono_now)

    monkeypatch.setattr(monitor_mod, "parse_ps", parse_ps_with_bug)


class TestMonitorBugs:
    async def test_a_bug_in_one_loop_is_logged_once_and_ends_no_loop(
        self, crash_ps: None, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A bug while probing one host: ERROR once with the traceback, that host out of
        rotation with the bug as its error, the other host still probed, and back after."""
        caplog.set_level(logging.INFO, logger="ollama_orchestra")
        hosts = FakeHosts("bad", "good")
        hosts.answers["bad"]["/api/tags"] = with_model("solo:latest")
        async with hosts.orchestra(wait_for_healthy_s=0) as orch:
            hosts.answers["bad"]["/api/ps"] = {"models": [], "boom": True}
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["bad"].consecutive_failures >= 3)
            snap = orch.state()
            assert not snap["bad"].healthy
            assert snap["bad"].probe_error == "health monitor failed: RuntimeError: boom"
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and errors[0].exc_info is not None
            assert "bad" in errors[0].getMessage()
            hosts.answers["good"]["/api/tags"] = with_model("new:latest")
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: "new:latest" in s["good"].models)
            with pytest.raises(NoHealthyServer) as info:
                await orch.generate("solo", "x", retry=False)
            assert info.value.errors == {"bad": "health monitor failed: RuntimeError: boom"}
            assert info.value.errors["bad"] == "health monitor failed: RuntimeError: boom"
            hosts.answers["bad"]["/api/ps"] = PS
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["bad"].healthy)

    async def test_a_dead_monitor_marks_the_state_stale(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Should the whole monitor die, it is logged at ERROR, every server is marked stale
        with the cause, and the next request says so instead of routing on stale state."""
        crash = anyio.Event()

        async def loop_with_bug(self: HealthMonitor, server: Server, first: anyio.Event) -> None:
            await self.probe(server)
            first.set()
            await crash.wait()
            raise RuntimeError("monitor bug")

        monkeypatch.setattr(HealthMonitor, "_loop", loop_with_bug)
        caplog.set_level(logging.INFO, logger="ollama_orchestra")
        hosts = FakeHosts("a")
        async with hosts.orchestra(wait_for_healthy_s=0) as orch:
            assert orch.state()["a"].healthy
            crash.set()
            with anyio.fail_after(5):
                snap = await orch.wait_for_state(lambda s: not s["a"].healthy)
            assert "health monitor stopped: RuntimeError: monitor bug" in (
                snap["a"].probe_error or ""
            )
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and errors[0].exc_info is not None
            with pytest.raises(NoHealthyServer, match="health monitor stopped"):
                await orch.generate("m", "x", retry=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class TestLogging:
    def test_library_logger_has_a_null_handler(self) -> None:
        """The package's logger has a NullHandler: no output unless the application asks."""
        handlers = logging.getLogger("ollama_orchestra").handlers
        assert any(isinstance(h, logging.NullHandler) for h in handlers)

    async def test_probes_do_not_log_at_info(self, caplog: pytest.LogCaptureFixture) -> None:
        """httpx's INFO line per request is kept for the user's own client, not for probes."""
        caplog.set_level(logging.INFO)
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim:
            url = sim["h1"].url
            async with Orchestra(config_for(sim)) as orch:
                for _ in range(3):
                    await orch.refresh()
            async with httpx.AsyncClient() as client:
                await client.get(url + "/api/version")
        httpx_info = [
            r.getMessage()
            for r in caplog.records
            if r.name == "httpx" and r.levelno >= logging.INFO
        ]
        assert len(httpx_info) == 1 and "/api/version" in httpx_info[0]

    async def test_down_and_up_are_one_line_each(self, caplog: pytest.LogCaptureFixture) -> None:
        """A host going down is one WARNING with the cause, coming back one INFO, however
        many probes fail in between."""
        caplog.set_level(logging.INFO, logger="ollama_orchestra")
        profiles = [tiny_profile("h1"), tiny_profile("h2")]
        async with SimFleet(profiles, time_scale=0.01) as sim, Orchestra(config_for(sim)) as orch:
            caplog.clear()
            await sim["h1"].kill()
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["h1"].consecutive_failures >= 4)
            await sim["h1"].restart()
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["h1"].healthy)
        lines = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "ollama_orchestra.health" and "h1" in r.getMessage()
        ]
        assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
        assert "is down: connection refused" in lines[0][1]
        assert "is up" in lines[1][1]

    async def test_host_down_from_the_start_is_one_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A host unreachable from the start gets its WARNING, with the cause, once."""
        caplog.set_level(logging.INFO, logger="ollama_orchestra")
        port = free_port()
        config = OrchestraConfig(
            servers=(Server("ollama01", f"http://user:secret@127.0.0.1:{port}"),), health=QUICK
        )
        async with Orchestra(config) as orch:
            with anyio.fail_after(5):
                await orch.wait_for_state(lambda s: s["ollama01"].consecutive_failures >= 3)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"server ollama01 (http://127.0.0.1:{port}) is down: connection refused"
        ]


class TestNoHealthyServer:
    async def test_unreachable_host_names_itself_and_its_error(self) -> None:
        """A host down from the start gives NoHealthyServer naming it, its URL (no password)
        and its last error, not NoCapableServer with empty model lists."""
        port = free_port()
        config = OrchestraConfig(
            servers=(Server("ollama01", f"http://user:secret@127.0.0.1:{port}"),),
            health=QUICK,
            wait_for_healthy_s=0.05,
        )
        async with Orchestra(config) as orch:
            with pytest.raises(NoHealthyServer) as info:
                await orch.generate("llama3", "x")
            snap = orch.state()
        assert info.value.errors == {"ollama01": "connection refused"}
        assert info.value.servers == ("ollama01",)
        message = str(info.value)
        assert f"ollama01 (http://127.0.0.1:{port}): connection refused" in message
        assert "secret" not in message
        assert snap["ollama01"].probe_error == "connection refused"

    async def test_only_unknown_hosts_can_have_a_missing_model(self) -> None:
        """With one host known (lacking the model) and one never reached, the request names
        the unreachable host: it may have the model."""
        port = free_port()
        async with SimFleet([tiny_profile("h1")], time_scale=0.01) as sim:
            servers = (
                Server("h1", sim["h1"].url),
                Server("gone", f"http://127.0.0.1:{port}"),
            )
            config = OrchestraConfig(servers=servers, health=QUICK, wait_for_healthy_s=0.05)
            async with Orchestra(config) as orch:
                with pytest.raises(NoHealthyServer) as info:
                    await orch.generate("llama3", "x")
                assert (await orch.generate(TINY, "x")).server == "h1"
        assert info.value.servers == ("gone",)
        assert info.value.errors == {"gone": "connection refused"}
