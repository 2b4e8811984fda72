"""Config from files, mappings and the environment: each bad value is named with its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from ollama_orchestra import (
    AffinityRule,
    BreakerPolicy,
    ConfigError,
    OrchestraConfig,
    Server,
)

ONE = [{"name": "a", "url": "http://127.0.0.1:1"}]


def mapping(**extra: Any) -> Dict[str, Any]:
    return {"servers": ONE, **extra}


class TestFromMapping:
    """The TOML shape: each table and value is checked where it is."""

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ({"servers": {"a": "http://h:1"}}, "config: servers"),
            ({"servers": ["http://h:1"]}, "config: servers[0]"),
            (
                {"servers": [{"name": "a", "url": "http://h:1", "slots": 2}]},
                "config: servers[0].slots",
            ),
            ({"servers": [{"url": "http://h:1"}]}, "config: servers[0].name=None: is required"),
            (mapping(roles=["qwen2.5:14b"]), "config: roles"),
            (mapping(affinity={"model": "*"}), "config: affinity"),
            (mapping(affinity=[{"model": "*", "servers": ["nobody"]}]), "affinity[0].servers"),
            (mapping(affinity=[{"role": "qa", "servers": ["a"]}]), "affinity[0].role"),
            (mapping(health=7), "config: health"),
            (mapping(roles={"qa": ""}), "roles.qa"),
        ],
    )
    def test_bad_value_named(self, data: Dict[str, Any], field: str) -> None:
        """ConfigError's message starts with the place of the bad value."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_mapping(data)
        assert str(info.value).startswith(field), str(info.value)

    def test_affinity_rules_and_policies_are_built(self) -> None:
        """[[affinity]] tables become rules; server lists become tuples; policies are typed."""
        config = OrchestraConfig.from_mapping(
            mapping(
                roles={"qa": "qwen2.5:14b"},
                affinity=[{"role": "qa", "servers": ["a"], "required": True}],
                breaker={"failure_threshold": 3},
            )
        )
        assert config.affinity == (AffinityRule(role="qa", servers=("a",), required=True),)
        assert config.breaker == BreakerPolicy(failure_threshold=3)


class TestFromEnv:
    """OLLAMA_ORCHESTRA_* variables, or the file they point to."""

    def test_config_file_variable(self, tmp_path: Path) -> None:
        """OLLAMA_ORCHESTRA_CONFIG loads that file instead of the other variables."""
        path = tmp_path / "o.toml"
        path.write_text('[[servers]]\nname = "f"\nurl = "http://127.0.0.1:2"\n', encoding="utf-8")
        config = OrchestraConfig.from_env(
            {"OLLAMA_ORCHESTRA_CONFIG": str(path), "OLLAMA_ORCHESTRA_SERVERS": "e=http://h:1"}
        )
        assert [s.name for s in config.servers] == ["f"]

    def test_strategy_and_roles(self) -> None:
        """Strategy and roles come from their variables; blank roles are none."""
        env = {
            "OLLAMA_ORCHESTRA_SERVERS": "a=http://127.0.0.1:1*3",
            "OLLAMA_ORCHESTRA_STRATEGY": "least_loaded",
            "OLLAMA_ORCHESTRA_ROLES": " qa = qwen2.5:14b ",
        }
        config = OrchestraConfig.from_env(env)
        assert config.strategy == "least_loaded"
        assert config.servers[0].max_concurrency == 3
        assert dict(config.roles) == {"qa": "qwen2.5:14b"}
        blank = OrchestraConfig.from_env({**env, "OLLAMA_ORCHESTRA_ROLES": "  "})
        assert dict(blank.roles) == {}

    def test_bad_role_item(self) -> None:
        """A roles item without '=' is named."""
        env = {"OLLAMA_ORCHESTRA_SERVERS": "a=http://h:1", "OLLAMA_ORCHESTRA_ROLES": "qa"}
        with pytest.raises(ConfigError, match=r"^OLLAMA_ORCHESTRA_ROLES='qa': expected ROLE=MODEL"):
            OrchestraConfig.from_env(env)


class TestConstructors:
    """Python-side construction rejects what the type hints do not allow."""

    def test_server_entries_must_be_servers(self) -> None:
        """A URL string in servers is named by its index."""
        with pytest.raises(ConfigError, match=r"^servers\[1\]='http://h:2': must be a Server"):
            OrchestraConfig(servers=[Server("a", "http://h:1"), "http://h:2"])  # type: ignore[list-item]

    def test_server_url_must_be_a_string(self) -> None:
        """A non-string URL is named with its server."""
        with pytest.raises(ConfigError, match=r"url=7: must be a string"):
            Server("a", 7)  # type: ignore[arg-type]

    def test_affinity_servers_must_be_a_list(self) -> None:
        """A bare string for AffinityRule.servers is refused, not split into letters."""
        with pytest.raises(ConfigError, match=r"^AffinityRule.servers='a'"):
            AffinityRule(servers="a")  # type: ignore[arg-type]

    def test_breaker_cooldown_max_below_cooldown(self) -> None:
        """cooldown_max_s below cooldown_s is refused, naming both."""
        with pytest.raises(ConfigError, match=r"cooldown_max_s=1: must be >= cooldown_s"):
            BreakerPolicy(cooldown_s=2, cooldown_max_s=1)

    def test_resolve_model(self) -> None:
        """A role resolves to its model; a model is normalised; an empty name is refused."""
        config = OrchestraConfig(servers=[Server("a", "http://h:1")], roles={"qa": "m"})
        assert config.resolve_model("qa") == ("m:latest", "qa")
        assert config.resolve_model("other") == ("other:latest", None)
        with pytest.raises(ConfigError, match=r"^model=' ': must be a model or role name"):
            config.resolve_model(" ")
        assert config.server("a").name == "a"
        with pytest.raises(KeyError):
            config.server("b")
