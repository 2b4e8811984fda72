"""Config: validation names the field and the value; TOML and environment loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from ollama_orchestra import (
    AffinityRule,
    BreakerPolicy,
    ConfigError,
    HealthPolicy,
    OrchestraConfig,
    RetryPolicy,
    Server,
    Timeouts,
)


def two() -> tuple:  # type: ignore[type-arg]
    return (Server("a", "http://127.0.0.1:1"), Server("b", "http://127.0.0.1:2"))


class TestServer:
    def test_valid_server_normalises(self) -> None:
        """A trailing slash is dropped and bare model names get ':latest'."""
        s = Server("a", "http://host:11434/", models=("llama3", "qwen2.5:14b"))
        assert s.url == "http://host:11434"
        assert s.models == ("llama3:latest", "qwen2.5:14b")

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"name": "", "url": "http://h:1"}, "Server.name"),
            ({"name": "a", "url": "ftp://h"}, "Server('a').url"),
            ({"name": "a", "url": "not a url"}, "Server('a').url"),
            ({"name": "a", "url": "http://h:99999"}, "Server('a').url"),
            (
                {"name": "a", "url": "http://h:1", "max_concurrency": 0},
                "Server('a').max_concurrency",
            ),
            (
                {"name": "a", "url": "http://h:1", "max_concurrency": 1.5},
                "Server('a').max_concurrency",
            ),
            ({"name": "a", "url": "http://h:1", "weight": -1}, "Server('a').weight"),
            ({"name": "a", "url": "http://h:1", "models": "llama3"}, "Server('a').models"),
        ],
    )
    def test_invalid_server_names_field_and_value(self, kwargs: Dict[str, Any], field: str) -> None:
        """Each bad value raises ConfigError naming the field and the value."""
        with pytest.raises(ConfigError) as info:
            Server(**kwargs)
        assert info.value.field == field
        assert repr(info.value.value) in str(info.value)

    def test_secrets_never_in_repr(self) -> None:
        """An Authorization header is sent but never shown."""
        s = Server("a", "http://h:1", headers={"Authorization": "Bearer hunter2", "X-Trace": "t"})
        assert "hunter2" not in repr(s)
        assert "hunter2" not in str(s)
        assert "<redacted>" in repr(s)
        assert "t" in repr(s)
        assert s.headers["Authorization"] == "Bearer hunter2"


class TestPolicies:
    @pytest.mark.parametrize(
        ("factory", "field"),
        [
            (lambda: Timeouts(connect_s=0), "Timeouts.connect_s"),
            (lambda: Timeouts(total_s=-1), "Timeouts.total_s"),
            (lambda: HealthPolicy(unhealthy_after=0), "HealthPolicy.unhealthy_after"),
            (lambda: HealthPolicy(jitter=1.5), "HealthPolicy.jitter"),
            (lambda: RetryPolicy(attempts=0), "RetryPolicy.attempts"),
            (lambda: RetryPolicy(deadline_s=float("nan")), "RetryPolicy.deadline_s"),
            (lambda: BreakerPolicy(failure_rate=0), "BreakerPolicy.failure_rate"),
            (lambda: BreakerPolicy(min_calls=30, window=20), "BreakerPolicy.min_calls"),
            (
                lambda: BreakerPolicy(cooldown_s=10, cooldown_max_s=5),
                "BreakerPolicy.cooldown_max_s",
            ),
        ],
    )
    def test_invalid_policy(self, factory: Any, field: str) -> None:
        """Policies validate on construction and name the field."""
        with pytest.raises(ConfigError) as info:
            factory()
        assert info.value.field == field


class TestOrchestraConfig:
    def test_no_servers(self) -> None:
        """An empty fleet is refused."""
        with pytest.raises(ConfigError, match="at least one server"):
            OrchestraConfig(servers=())

    def test_duplicate_names(self) -> None:
        """Two servers with one name are refused, naming both positions."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig(servers=(Server("a", "http://h:1"), Server("a", "http://h:2")))
        assert info.value.field == "servers[1].name"
        assert "servers[0]" in str(info.value)

    def test_unknown_strategy(self) -> None:
        """A strategy that does not exist is refused, listing the ones that do."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig(servers=two(), strategy="fastest")
        assert info.value.value == "fastest"
        assert "least_loaded" in str(info.value)

    def test_role_pointing_nowhere(self) -> None:
        """With static model lists, a role whose model no server lists is refused."""
        servers = (Server("a", "http://h:1", models=("qwen2.5:14b",)),)
        with pytest.raises(ConfigError) as info:
            OrchestraConfig(servers=servers, roles={"coding": "qwen2.5-coder:32b"})
        assert info.value.field == "roles.coding"

    def test_roles_resolve(self) -> None:
        """A role name resolves to its model; a model name resolves to itself."""
        cfg = OrchestraConfig(servers=two(), roles={"planning": "qwen2.5:14b"})
        assert cfg.resolve_model("planning") == ("qwen2.5:14b", "planning")
        assert cfg.resolve_model("llama3") == ("llama3:latest", None)

    def test_affinity_naming_unknown_server(self) -> None:
        """An affinity rule that names no configured server is refused."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig(
                servers=two(), affinity=(AffinityRule(model="*:32b", servers=("ollama09",)),)
            )
        assert info.value.field == "affinity[0].servers"
        assert info.value.value == "ollama09"

    def test_affinity_needs_a_target(self) -> None:
        """A rule that routes nowhere is refused."""
        with pytest.raises(ConfigError):
            AffinityRule(model="x")

    def test_affinity_matching(self) -> None:
        """Rules match by model glob, role and priority; servers by name and labels."""
        rule = AffinityRule(model="*:32b", labels={"gpu": "a100"}, min_priority=5)
        assert rule.matches_request("qwen2.5-coder:32b", None, 5)
        assert not rule.matches_request("qwen2.5-coder:32b", None, 4)
        assert not rule.matches_request("qwen2.5:14b", None, 9)
        assert rule.matches_server(Server("x", "http://h:1", labels={"gpu": "a100"}))
        assert not rule.matches_server(Server("y", "http://h:1", labels={"gpu": "3090"}))


class TestLoading:
    def test_from_file(self, tmp_path: Path) -> None:
        """A TOML file gives the same config as Python."""
        path = tmp_path / "orchestra.toml"
        path.write_text(
            """
strategy = "least_loaded"
[roles]
planning = "qwen2.5:14b"
[[servers]]
name = "ollama01"
url = "http://127.0.0.1:11434"
max_concurrency = 2
labels = { gpu = "3090" }
[[servers]]
name = "ollama02"
url = "http://127.0.0.1:11435"
max_concurrency = 4
weight = 2.0
[[affinity]]
model = "*:32b"
servers = ["ollama02"]
[retry]
attempts = 4
[timeouts]
first_byte_s = 30
""",
            encoding="utf-8",
        )
        cfg = OrchestraConfig.from_file(path)
        assert [s.name for s in cfg.servers] == ["ollama01", "ollama02"]
        assert cfg.servers[1].max_concurrency == 4
        assert cfg.servers[1].weight == 2.0
        assert cfg.servers[0].labels == {"gpu": "3090"}
        assert cfg.strategy == "least_loaded"
        assert cfg.roles == {"planning": "qwen2.5:14b"}
        assert cfg.affinity[0].servers == ("ollama02",)
        assert cfg.retry.attempts == 4
        assert cfg.timeouts.first_byte_s == 30

    def test_file_errors_name_the_file_and_key(self, tmp_path: Path) -> None:
        """An unknown key, a bad table or bad TOML names the file and the place."""
        path = tmp_path / "bad.toml"
        path.write_text(
            '[[servers]]\nname = "a"\nurl = "http://h:1"\nslots = 3\n', encoding="utf-8"
        )
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_file(path)
        assert str(path) in info.value.field
        assert "servers[0].slots" in info.value.field
        path.write_text("servers = [", encoding="utf-8")
        with pytest.raises(ConfigError, match="not valid TOML"):
            OrchestraConfig.from_file(path)
        with pytest.raises(ConfigError, match="cannot be read"):
            OrchestraConfig.from_file(tmp_path / "missing.toml")

    def test_from_env(self) -> None:
        """OLLAMA_ORCHESTRA_SERVERS, _STRATEGY and _ROLES build a config."""
        cfg = OrchestraConfig.from_env(
            {
                "OLLAMA_ORCHESTRA_SERVERS": "ollama01=http://127.0.0.1:1*2, ollama02=http://127.0.0.1:2",
                "OLLAMA_ORCHESTRA_STRATEGY": "weighted",
                "OLLAMA_ORCHESTRA_ROLES": "coding=qwen2.5-coder:32b",
            }
        )
        assert [(s.name, s.max_concurrency) for s in cfg.servers] == [
            ("ollama01", 2),
            ("ollama02", 1),
        ]
        assert cfg.strategy == "weighted"
        assert cfg.roles == {"coding": "qwen2.5-coder:32b"}

    @pytest.mark.parametrize(
        "value", ["", "ollama01", "=http://h:1", "a=http://h:1*two", "a=gopher://h"]
    )
    def test_from_env_errors(self, value: str) -> None:
        """A malformed OLLAMA_ORCHESTRA_SERVERS gives a ConfigError naming it."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env({"OLLAMA_ORCHESTRA_SERVERS": value})
        assert "OLLAMA_ORCHESTRA_SERVERS" in str(info.value) or "url" in info.value.field


class TestServerAndRoleSpecs:
    """NAME=URL[*SLOTS] and ROLE=MODEL: one parser for the environment and the CLI's flags."""

    @pytest.mark.parametrize("value", ["a=http://[::1", "a=http://h:99999", "a=http://h*0"])
    def test_every_malformed_server_is_a_config_error(self, value: str) -> None:
        """Whatever part is wrong (urlsplit's own ValueError included): ConfigError."""
        with pytest.raises(ConfigError):
            OrchestraConfig.from_env({"OLLAMA_ORCHESTRA_SERVERS": value})

    def test_url_password_not_in_error(self) -> None:
        """The message of a malformed item does not show the URL's credentials."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env({"OLLAMA_ORCHESTRA_SERVERS": "a=http://u:s3cret@h*x"})
        assert "s3cret" not in str(info.value)
        assert info.value.field == "OLLAMA_ORCHESTRA_SERVERS[0]"

    @pytest.mark.parametrize("value", ["coding", "=m", "coding=", "a=b,"])
    def test_malformed_roles(self, value: str) -> None:
        """A malformed OLLAMA_ORCHESTRA_ROLES item names the variable."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env(
                {"OLLAMA_ORCHESTRA_SERVERS": "a=http://h:1", "OLLAMA_ORCHESTRA_ROLES": value}
            )
        assert info.value.field == "OLLAMA_ORCHESTRA_ROLES"


class TestServersAnySequence:
    """OrchestraConfig takes servers as any sequence and keeps them as a tuple."""

    def test_list_is_normalised_to_a_tuple(self) -> None:
        """A list of servers gives the same config as a tuple, holding a tuple."""
        a, b = Server("a", "http://127.0.0.1:1"), Server("b", "http://127.0.0.1:2")
        config = OrchestraConfig(servers=[a, b])
        assert type(config.servers) is tuple
        assert config.servers == (a, b)
        assert config == OrchestraConfig(servers=(a, b))
