"""The ``coordination`` option: checked on construction, from a URL, a table or the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ollama_orchestra import ConfigError, Coordination, OrchestraConfig, Server

SERVERS = (Server("a", "http://127.0.0.1:1"),)
ONE = [{"name": "a", "url": "http://127.0.0.1:1"}]


class TestOption:
    """``None`` is the default; a Redis URL becomes a Coordination with the defaults."""

    def test_default_is_none(self) -> None:
        assert OrchestraConfig(servers=SERVERS).coordination is None

    @pytest.mark.parametrize(
        "url", ["redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///run/redis.sock"]
    )
    def test_url_string(self, url: str) -> None:
        c = OrchestraConfig(servers=SERVERS, coordination=url).coordination
        assert c == Coordination(url)
        assert isinstance(c, Coordination)
        assert (c.ttl_s, c.fallback_share) == (5.0, 0.5)

    def test_object_kept(self) -> None:
        coord = Coordination("redis://h", ttl_s=1, fallback_share=1)
        assert OrchestraConfig(servers=SERVERS, coordination=coord).coordination is coord


class TestBadValues:
    """A bad value is a ConfigError naming the field and value, without the URL's password."""

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ("http://user:s3cret@h:6379", "coordination"),
            ("redis://", "coordination"),
            (6379, "coordination"),
            (True, "coordination"),
            (b"redis://h", "coordination"),
        ],
    )
    def test_bad_option(self, value: Any, field: str) -> None:
        with pytest.raises(ConfigError) as info:
            OrchestraConfig(servers=SERVERS, coordination=value)
        assert info.value.field == field
        assert "s3cret" not in str(info.value)

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"url": "redis://h", "fallback_share": 0}, "coordination.fallback_share"),
            ({"url": "redis://h", "fallback_share": 1.5}, "coordination.fallback_share"),
            ({"url": "redis://h", "fallback_share": True}, "coordination.fallback_share"),
            ({"url": "redis://h", "ttl_s": -1}, "coordination.ttl_s"),
            ({"url": "redis://h", "timeout_s": float("nan")}, "coordination.timeout_s"),
            ({"url": "redis://h", "namespace": ""}, "coordination.namespace"),
            ({"url": "ftp://:s3cret@h"}, "coordination.url"),
        ],
    )
    def test_bad_field(self, kwargs: Any, field: str) -> None:
        with pytest.raises(ConfigError) as info:
            Coordination(**kwargs)
        assert info.value.field == field
        assert "s3cret" not in str(info.value)

    def test_repr_hides_password(self) -> None:
        config = OrchestraConfig(servers=SERVERS, coordination="redis://:s3cret@h:6379/0")
        assert "s3cret" not in repr(config)
        assert "s3cret" not in repr(config.coordination)
        assert "redis://<redacted>@h:6379/0" in repr(config.coordination)


class TestLoading:
    """The TOML ``[coordination]`` table and ``OLLAMA_ORCHESTRA_COORDINATION``."""

    def test_toml_table(self, tmp_path: Path) -> None:
        path = tmp_path / "fleet.toml"
        path.write_text(
            '[[servers]]\nname = "a"\nurl = "http://127.0.0.1:1"\n\n'
            '[coordination]\nurl = "redis://127.0.0.1:6379/0"\nttl_s = 2\nfallback_share = 0.25\n',
            encoding="utf-8",
        )
        assert OrchestraConfig.from_file(path).coordination == Coordination(
            "redis://127.0.0.1:6379/0", ttl_s=2, fallback_share=0.25
        )

    def test_mapping_url_string(self) -> None:
        config = OrchestraConfig.from_mapping({"servers": ONE, "coordination": "redis://h"})
        assert config.coordination == Coordination("redis://h")

    @pytest.mark.parametrize(
        ("table", "field"),
        [
            ({"url": "redis://h", "fallback_share": 2}, "config: coordination: "),
            ({"url": "redis://h", "ttl": 2}, "config: coordination.ttl"),
            ({"ttl_s": 2}, "config: coordination.url"),
            (["redis://h"], "config: coordination"),
        ],
    )
    def test_bad_table(self, table: Any, field: str) -> None:
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_mapping({"servers": ONE, "coordination": table})
        assert info.value.field.startswith(field)

    def test_env(self) -> None:
        env = {
            "OLLAMA_ORCHESTRA_SERVERS": "a=http://127.0.0.1:1",
            "OLLAMA_ORCHESTRA_COORDINATION": "redis://127.0.0.1:6379/1",
        }
        assert OrchestraConfig.from_env(env).coordination == Coordination(
            "redis://127.0.0.1:6379/1"
        )

    def test_env_unset_or_empty(self) -> None:
        env = {"OLLAMA_ORCHESTRA_SERVERS": "a=http://127.0.0.1:1"}
        assert OrchestraConfig.from_env(env).coordination is None
        env["OLLAMA_ORCHESTRA_COORDINATION"] = " "
        assert OrchestraConfig.from_env(env).coordination is None

    def test_env_bad(self) -> None:
        env = {
            "OLLAMA_ORCHESTRA_SERVERS": "a=http://127.0.0.1:1",
            "OLLAMA_ORCHESTRA_COORDINATION": "http://u:s3cret@h",
        }
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env(env)
        assert info.value.field == "OLLAMA_ORCHESTRA_COORDINATION"
        assert "s3cret" not in str(info.value)


class TestReadme:
    """The README's ``[coordination]`` example loads as written (with a server added)."""

    def test_scaling_out_table_loads(self, tmp_path: Path) -> None:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        section = readme.read_text(encoding="utf-8").split("## Scaling out", 1)[1]
        table = section.split("```toml\n", 1)[1].split("```", 1)[0]
        path = tmp_path / "fleet.toml"
        path.write_text('[[servers]]\nname = "a"\nurl = "http://h:1"\n\n' + table, "utf-8")
        assert OrchestraConfig.from_file(path).coordination == Coordination(
            "redis://redis.internal:6379/0", ttl_s=5, fallback_share=0.5, timeout_s=0.5
        )
