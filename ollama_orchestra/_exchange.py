"""One HTTP exchange with one server: send, first-byte deadline, read, close.

Every request the orchestra sends upstream (``generate``, ``chat``, ``embed``, their
streamed forms, the transport and the proxy) goes through :meth:`Exchange.open`: the send
and the wait for the first JSON object sit under one cancel scope with a ``first_byte_s``
deadline, so a hung host is caught by that deadline, and the httpx read timeout bounds only
the silence between two chunks afterwards. (The old path mutated the request's
``extensions["timeout"]`` after sending and relied on httpcore reading it lazily.)

Streamed answers (``/api/generate``, ``/api/chat``) are read as NDJSON, one object a line;
unstreamed ones (``/api/embed``, ``/api/embeddings``) as one JSON object. Errors come out as
:class:`AttemptError` (see ``_failover``); :meth:`Exchange.aclose` is the one close path.
"""

from __future__ import annotations

import contextlib
import json
from json.scanner import make_scanner
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Tuple

import anyio
import httpx

from ._clock import now as loop_now
from ._clock import reader as loop_reader
from ._config import Server
from ._failover import AttemptError, classify, from_status, mid_stream_error

__all__ = ["UNSTREAMED_PATHS", "Exchange"]

#: Ollama endpoints that answer with one JSON object, never NDJSON (``docs/api.md``).
UNSTREAMED_PATHS = frozenset({"/api/embed", "/api/embeddings"})

_ANSWER_KEY = {"/api/embed": "embeddings", "/api/embeddings": "embedding"}


#: Parsed URLs by their text: httpx parses a URL given as text on every request (about
#: 10 us, a quarter of building the request); a parsed one is taken as it is. Bounded: a
#: fleet has a few servers and paths, and it is cleared if it ever fills.
_URLS: Dict[str, httpx.URL] = {}
_URLS_MAX = 1024


def _url(text: str) -> httpx.URL:
    url = _URLS.get(text)
    if url is None:
        if len(_URLS) >= _URLS_MAX:
            _URLS.clear()
        url = _URLS[text] = httpx.URL(text)
    return url


#: httpx timeouts by ``(connect_s, write_s)``: one object for every request of a config
#: instead of one built per request (httpx only reads it). Bounded as ``_URLS`` is.
_TIMEOUTS: Dict[Tuple[float, float], httpx.Timeout] = {}


def _timeout(connect_s: float, write_s: float) -> httpx.Timeout:
    key = (connect_s, write_s)
    timeout = _TIMEOUTS.get(key)
    if timeout is None:
        if len(_TIMEOUTS) >= _URLS_MAX:
            _TIMEOUTS.clear()
        timeout = _TIMEOUTS[key] = httpx.Timeout(
            connect=connect_s, read=None, write=write_s, pool=None
        )
    return timeout


#: One JSON value from the start of a line: ``json.loads`` less its checks around the same
#: scanner (the decoder's defaults; 1.26 -> 0.56 us on an Ollama chunk). A line that is not
#: exactly one value goes to ``json.loads``, which judges it as before.
_scan: Callable[[str, int], Tuple[Any, int]] = make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed names the class, not its argument
)


class Exchange:
    """One open answer from one server; :meth:`aclose` it (idempotent)."""

    __slots__ = (
        "_closed",
        "_lines",
        "_read_s",
        "_streamed",
        "broken",
        "first",
        "received",
        "response",
        "server",
        "started",
    )

    def __init__(
        self, server: str, response: httpx.Response, started: float, streamed: bool
    ) -> None:
        #: The server's name.
        self.server = server
        #: The open httpx response.
        self.response = response
        #: When the attempt started (after the slot was granted): service time counts from it.
        self.started = started
        #: The first JSON object of the answer (set by :meth:`open`).
        self.first: Optional[Dict[str, Any]] = None
        #: the objects :meth:`read_all` has read so far (what a broken answer salvages).
        self.received: List[Dict[str, Any]] = []
        #: Opened ``whole``: the failure that cut the answer after its first object.
        self.broken: Optional[AttemptError] = None
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self._streamed = streamed
        self._closed = False
        # No per-read deadline while ``open`` waits under the first-byte deadline.
        self._read_s: Optional[float] = None

    @classmethod
    async def open(
        cls,
        client: httpx.AsyncClient,
        server: Server,
        path: str,
        payload: Mapping[str, Any],
        *,
        model: str,
        first_byte_s: float,
        read_s: float,
        connect_s: float,
        clock: Callable[[], float],
        whole: bool = False,
        on_first: Optional[Callable[[], None]] = None,
    ) -> Exchange:
        """Send ``payload`` to ``server`` and wait for the first JSON object of the answer
        (``on_first`` is called when it is in, before the rest is read with ``whole``).

        With ``whole``, the rest of a streamed answer is read too (as :meth:`read_all` does)
        under the same cancel scope as the first byte, its deadline moved to the silence
        bound once the first object is in (one deadline scope a request instead of two: each
        cost about 15 us on asyncio), and the answer drained. A failure after the first
        object is then not raised but kept in :attr:`broken`, the objects read before it in
        :attr:`received`, for the caller to salvage.

        Raises:
            AttemptError: the server failed (connect, timeout, status, bad answer) before
                the first object.
        """
        started = clock()
        streamed = path not in UNSTREAMED_PATHS
        # httpx's read timeout is off: the first byte is bounded by ``first_byte_s`` below,
        # the silence between two chunks by ``read_s`` in ``next_obj``.
        request = client.build_request(
            "POST",
            _url(server.url + path),
            json=payload,  # encoded here, at once: no copy needed
            # httpx merges them into headers of its own (read, never kept or changed).
            headers=server.headers or None,
            timeout=_timeout(connect_s, read_s),
        )
        exchange: Optional[Exchange] = None
        scope = anyio.CancelScope(deadline=loop_now() + first_byte_s)
        try:
            with scope:
                try:
                    response = await client.send(request, stream=True)
                except Exception as exc:
                    err = classify(exc, server.name)
                    if err is None:
                        raise
                    raise err from exc
                exchange = cls(server.name, response, started, streamed)
                if response.status_code != 200:
                    raise from_status(
                        response.status_code, await exchange._body(), server.name, model
                    )
                if streamed:
                    exchange.first = await exchange.next_obj()
                    if exchange.first is None:
                        raise AttemptError("reset", server.name, "empty answer")
                    if on_first is not None:
                        on_first()
                    if whole:
                        try:
                            await exchange._read_rest(scope, read_s)
                        except AttemptError as exc:
                            exchange.broken = exc
                else:
                    exchange.first = await exchange._whole(_ANSWER_KEY[path])
                    exchange.received = [exchange.first]
        except BaseException:
            if exchange is not None:
                await exchange.aclose()
            raise
        if scope.cancelled_caught:
            if exchange is None or exchange.first is None:
                if exchange is not None:
                    await exchange.aclose()
                raise AttemptError(
                    "timeout",
                    server.name,
                    f"no answer within first_byte_s={first_byte_s}s",
                    TimeoutError(),
                )
            exchange._read_s = read_s
            exchange.broken = exchange._silence(TimeoutError())
        assert exchange is not None  # set before anything that could end the block early
        exchange._read_s = read_s
        if whole and exchange.broken is None:
            await exchange.drain()
        return exchange

    async def _body(self) -> Any:
        """An error answer's body: its JSON, else its text."""
        try:
            await self.response.aread()
            return self.response.json()
        except Exception:
            return self.response.text if self.response.is_closed else ""

    async def _whole(self, key: str) -> Dict[str, Any]:
        """An unstreamed answer: one JSON object that must hold ``key``."""
        try:
            await self.response.aread()
        except Exception as exc:
            err = classify(exc, self.server)
            if err is None:
                raise
            raise err from exc
        try:
            body = self.response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or key not in body:
            raise AttemptError("server", self.server, f"answer without {key}")
        return body

    async def next_obj(self) -> Optional[Dict[str, Any]]:
        """The next JSON object of the stream, ``None`` at its end; errors as AttemptError."""
        if not self._streamed:
            return None
        if self._read_s is None:
            return await self._next()
        try:
            with anyio.fail_after(self._read_s):
                return await self._next()
        except TimeoutError as exc:
            raise self._silence(exc) from exc

    def _silence(self, exc: BaseException) -> AttemptError:
        return AttemptError("timeout", self.server, f"no chunk within read_s={self._read_s}s", exc)

    async def _next(self) -> Optional[Dict[str, Any]]:
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                return None
            except Exception as exc:
                err = classify(exc, self.server)
                if err is None:
                    raise
                raise err from exc
            try:
                obj, end = _scan(line, 0)
            except (StopIteration, ValueError):
                end = -1
            if end != len(line):  # blank, padded or bad: json.loads judges, as before
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise AttemptError(
                        "server", self.server, f"bad JSON line from server: {line[:80]!r}", exc
                    ) from exc
            if isinstance(obj, dict) and "error" in obj:
                raise mid_stream_error(str(obj["error"]), self.server)
            if not isinstance(obj, dict):
                raise AttemptError(
                    "server", self.server, f"unexpected line from server: {line[:80]!r}"
                )
            return obj

    async def read_all(self) -> List[Dict[str, Any]]:
        """Every object up to the final one (``done``); a stream cut short is an error.

        One cancel scope bounds the silence between chunks for the whole answer, its deadline
        pushed forward only when less than ``read_s`` is left (to ``1.25 * read_s`` ahead): a
        scope per chunk cost more than the rest of reading it from a fast host. So a silent
        host is cut after between ``read_s`` and ``1.25 * read_s`` (``next_obj``, used for
        streams handed to the caller, keeps one exact ``read_s`` deadline per chunk).
        """
        assert self.first is not None
        if not self._streamed:
            self.received = [self.first]
            return self.received
        with anyio.CancelScope() as scope:
            await self._read_rest(scope, self._read_s)
        if scope.cancelled_caught:
            raise self._silence(TimeoutError())
        return self.received

    async def _read_rest(self, scope: anyio.CancelScope, read_s: Optional[float]) -> None:
        """Read up to the final object into :attr:`received`, ``scope``'s deadline bounding
        the silences (see :meth:`read_all`)."""
        assert self.first is not None
        objs = self.received = [self.first]
        clock = loop_reader()
        if read_s is not None:
            scope.deadline = clock() + 1.25 * read_s
        while not objs[-1].get("done"):
            obj = await self._next()
            if obj is None:
                raise AttemptError("reset", self.server, "stream ended before done")
            objs.append(obj)
            if read_s is not None:
                now = clock()
                if scope.deadline - now < read_s:
                    scope.deadline = now + 1.25 * read_s

    async def drain(self) -> None:
        """Read what is left after the final chunk (the end of the chunked body), so httpx
        hands the connection back to the pool instead of closing it: without this every
        request would open a new connection."""
        if not self._streamed:
            return
        with contextlib.suppress(Exception):
            async for _ in self._lines:
                pass

    async def aclose(self) -> None:
        """Close the response (shielded: a cancelled caller still frees the connection)."""
        if self._closed:
            return
        self._closed = True
        if self.response.is_closed:  # read to its end: httpx closed it already
            return
        with anyio.CancelScope(shield=True):
            await self.response.aclose()
