"""Keeping secrets out of sight: URL credentials and header values are never shown.

One helper, :func:`redact_url`, is applied wherever a URL may be shown (reprs, snapshots,
error messages, logs); :class:`Server` also strips a URL's credentials at construction and
sends them as an ``Authorization: Basic`` header, so its ``url`` is safe to show anywhere.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Mapping

__all__ = ["REDACTED", "SECRET_HEADERS", "redact_headers", "redact_text", "redact_url"]

#: What a hidden value is shown as.
REDACTED = "<redacted>"
#: Header names (lower case) whose values are secrets.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})

# ``scheme://userinfo@``: the userinfo runs up to the last '@' before the host's end.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s@]*@)+")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``<redacted>@``; other text unchanged."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", url)


def redact_text(value: Any) -> Any:
    """``redact_url`` for a string; other values as they are (for error messages)."""
    return redact_url(value) if isinstance(value, str) else value


def redact_headers(headers: Mapping[str, Any]) -> Dict[str, Any]:
    """The headers with every secret header's value replaced by ``<redacted>``."""
    return {k: (REDACTED if str(k).lower() in SECRET_HEADERS else v) for k, v in headers.items()}
