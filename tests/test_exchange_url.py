"""Exchange's parsed-URL cache: one parse per URL text, bounded."""

from __future__ import annotations

import httpx
import pytest

from ollama_orchestra import _exchange


class TestUrlCache:
    """A server's URL is parsed once, and the cache never grows past its bound."""

    def test_same_text_same_parsed_url(self) -> None:
        a = _exchange._url("http://127.0.0.9:11434/api/generate")
        assert a is _exchange._url("http://127.0.0.9:11434/api/generate")
        assert a == httpx.URL("http://127.0.0.9:11434/api/generate")

    def test_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_exchange, "_URLS", {})
        monkeypatch.setattr(_exchange, "_URLS_MAX", 3)
        for i in range(10):
            url = _exchange._url(f"http://h{i}:11434/api/chat")
            assert url.host == f"h{i}"
            assert len(_exchange._URLS) <= 3
