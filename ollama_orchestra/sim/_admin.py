"""The simulator's own admin API, ``/_sim/*``: faults, state, requests, pause, resume, reset.

It drives a host through its public controls only (:class:`~._host.SimHost`'s
``set_faults``, ``state``, ``requests``, ``pause``, ``resume``, ``aclose``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._serving import BadRequestBody, parse_json, read_body
from ._asgi import Receive, Send, send_json, send_text
from ._spec import Faults

if TYPE_CHECKING:
    from ._host import SimHost

__all__ = ["admin"]


async def admin(host: SimHost, method: str, path: str, receive: Receive, send: Send) -> None:
    """Answer one ``/_sim/*`` request for ``host``."""
    if path == "/_sim/faults" and method == "POST":
        try:
            raw = await read_body(receive)
            body = parse_json(raw) if raw.strip() else {}
            faults = Faults.from_mapping(body)
        except (BadRequestBody, ValueError, TypeError) as exc:
            await send_json(send, 400, {"error": str(exc)})
            return
        host.set_faults(faults)
        await send_json(send, 200, faults.to_dict())
    elif path == "/_sim/faults" and method == "GET":
        await send_json(send, 200, host.faults.to_dict())
    elif path == "/_sim/state" and method == "GET":
        st = host.state()
        body = {k: getattr(st, k) for k in st.__dataclass_fields__}
        body["queued"] = st.queued
        await send_json(send, 200, body)
    elif path == "/_sim/requests" and method == "GET":
        await send_json(
            send,
            200,
            {
                "requests": [
                    {
                        "route": r.route,
                        "model": r.model,
                        "prompt": r.prompt,
                        "messages": list(r.messages) if r.messages is not None else None,
                        "options": r.options,
                        "received_at": r.received_at,
                    }
                    for r in host.requests
                ]
            },
        )
    elif path == "/_sim/pause" and method == "POST":
        host.pause()
        await send_json(send, 200, {"paused": True})
    elif path == "/_sim/resume" and method == "POST":
        host.resume()
        await send_json(send, 200, {"paused": False})
    elif path == "/_sim/reset" and method == "POST":
        await host.aclose()
        await send_json(send, 200, {"reset": True})
    else:
        await send_text(send, 404, "404 page not found")
