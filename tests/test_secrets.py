"""Secrets: URL credentials and header values work for requests, and are shown nowhere."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from ollama_orchestra import (
    ConfigError,
    HealthPolicy,
    Orchestra,
    OrchestraConfig,
    RequestFailed,
    RetryPolicy,
    Server,
)
from ollama_orchestra._secrets import redact_url

from .test_client_http import M, fleet_router, gen_stream

SECRET = "s3cr3t-pw"
TOKEN = "tok-hunter2"
URL = f"http://alice:{SECRET}@a.test:11434"


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "shown"),
        [
            ("http://u:p@h:1/x", "http://<redacted>@h:1/x"),
            ("https://token@h", "https://<redacted>@h"),
            ("http://h:1/a@b", "http://h:1/a@b"),
            ("a=http://u:p@h*3,b=http://x:y@z", "a=http://<redacted>@h*3,b=http://<redacted>@z"),
        ],
    )
    def test_userinfo_is_replaced(self, url: str, shown: str) -> None:
        """Userinfo is replaced wherever it is; the rest of the text is kept."""
        assert redact_url(url) == shown


class TestServerCredentials:
    def test_url_credentials_become_a_basic_header(self) -> None:
        """The URL loses its credentials; they are sent as Authorization: Basic."""
        s = Server("a", URL)
        assert s.url == "http://a.test:11434"
        expected = base64.b64encode(f"alice:{SECRET}".encode()).decode()
        assert s.headers["Authorization"] == f"Basic {expected}"
        for text in (repr(s), str(s), repr(OrchestraConfig(servers=(s,)))):
            assert SECRET not in text and expected not in text

    def test_percent_encoded_credentials_are_decoded(self) -> None:
        """``%40`` in a password is an '@', as httpx would send it."""
        s = Server("a", "http://bob:p%40ss@h:1")
        token = s.headers["Authorization"].split(" ", 1)[1]
        assert base64.b64decode(token) == b"bob:p@ss"

    def test_credentials_and_an_authorization_header_conflict(self) -> None:
        """Two credentials for one server are refused, showing neither."""
        with pytest.raises(ConfigError) as info:
            Server("a", URL, headers={"Authorization": f"Bearer {TOKEN}"})
        assert SECRET not in str(info.value) and TOKEN not in str(info.value)

    async def test_sent_and_never_shown(self, caplog: pytest.LogCaptureFixture) -> None:
        """Requests carry the credentials; reprs, snapshots, metrics, errors and logs do not."""
        caplog.set_level(logging.DEBUG)
        a = "http://a.test:11434"
        router = fleet_router({a: [M]})
        route = router.post(a + "/api/generate").respond(content=gen_stream(["ok"]))
        cfg = OrchestraConfig(
            servers=(Server("a", URL),),
            health=HealthPolicy(interval_s=3600),
            retry=RetryPolicy(attempts=1),
        )
        shown: List[str] = []
        async with Orchestra(cfg, transport=httpx.MockTransport(router.async_handler)) as orch:
            await orch.generate(M, "x")
            auth = route.calls.last.request.headers["authorization"]
            assert base64.b64decode(auth.split(" ", 1)[1]) == f"alice:{SECRET}".encode()
            route.respond(500, json={"error": "boom"})
            with pytest.raises(RequestFailed) as info:
                await orch.generate(M, "x")
            shown += [
                repr(orch),
                repr(orch.config),
                repr(orch.state()),
                json.dumps(orch.state().to_dict()),
                repr(orch.metrics()),
                orch.prometheus(),
                str(info.value),
                repr(info.value),
                repr(orch.breaker("a")),
            ]
        shown += [r.getMessage() for r in caplog.records]
        assert auth.split(" ", 1)[1] not in " ".join(shown)
        for text in shown:
            assert SECRET not in text, text


class TestConfigErrorsHideSecrets:
    def test_bad_url_with_credentials(self) -> None:
        """A bad URL is named in the error with its credentials redacted."""
        with pytest.raises(ConfigError) as info:
            Server("a", f"http://alice:{SECRET}@h:99999")
        assert SECRET not in str(info.value) and "<redacted>@h:99999" in str(info.value)
        assert SECRET not in repr(info.value.value)

    def test_env_server_with_credentials(self) -> None:
        """A malformed OLLAMA_ORCHESTRA_SERVERS entry is shown redacted."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_env({"OLLAMA_ORCHESTRA_SERVERS": f"a=http://u:{SECRET}@h:0"})
        assert "OLLAMA_ORCHESTRA_SERVERS[0]" in str(info.value)
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize(
        "table",
        [
            {"header": {"Authorization": f"Bearer {TOKEN}"}},  # a mistyped key
            {"headers": {"Authorization": 5, "X-Key": TOKEN}},
            {"headers": {"Authorization": f"Bearer {TOKEN}\r\nX-Evil: 1"}},
            {"headers": f"Authorization: Bearer {TOKEN}"},
        ],
        ids=["mistyped-key", "non-string-value", "newline", "not-a-table"],
    )
    def test_server_table_errors_never_show_header_values(
        self, table: Dict[str, Any], tmp_path: Path
    ) -> None:
        """Errors on a server table name the key, never a header's value."""
        data = {"servers": [{"name": "a", "url": "http://h:1", **table}]}
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_mapping(data)
        assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.value)
        assert "servers[0]" in info.value.field

    def test_header_value_of_wrong_type_names_the_key(self) -> None:
        """``headers = {X = 5}`` names servers[0].headers.X."""
        with pytest.raises(ConfigError) as info:
            OrchestraConfig.from_mapping(
                {"servers": [{"name": "a", "url": "http://h:1", "headers": {"X": 5}}]}
            )
        assert info.value.field.endswith("headers.X")
